"""The Ray engine's commit gate: once a run stops, no worker commits another part.

Every worker asks the gate before it commits a unit's part, and tells it once done. When the
run stops (Ctrl-C, SIGTERM) the driver closes the gate, ends the pool, and waits for the
commits already under way; then the part names it lists are all this run will ever have
written, so its record counts every committed row, no more and no fewer. A driver killed
outright takes the gate with it (Ray ends the actors a driver owns), and a worker that
cannot reach the gate commits nothing.

A plain class, without torch or batchvision's stages: the gate is a small actor process.
"""

from __future__ import annotations


class CommitGate:
    """Admits commits until closed; counts the ones under way."""

    def __init__(self) -> None:
        self.closed = False
        self.under_way: set[str] = set()

    def begin(self, key: str) -> bool:
        """Whether the unit ``key`` may commit its part now (then :meth:`end` must follow)."""
        if self.closed:
            return False
        self.under_way.add(key)
        return True

    def end(self, key: str) -> None:
        self.under_way.discard(key)

    def close(self) -> int:
        """Admit no more commits; returns how many are under way."""
        self.closed = True
        return len(self.under_way)

    def pending(self) -> int:
        return len(self.under_way)
