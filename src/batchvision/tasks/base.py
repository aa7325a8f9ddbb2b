"""What a task is: its head, postprocess, output columns, run record and report view.

A task is one small class (see :mod:`batchvision.tasks` for the registry). Engines and
stages never branch on the task's name: they call the task the spec names, so adding a
task is one new module here plus an adapter per model source (``models/*.py``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from batchvision.io.sinks import COMMON_FIELDS, common_columns

if TYPE_CHECKING:
    import torch

    from batchvision.config import RunConfig
    from batchvision.models.spec import ModelSpec
    from batchvision.stages.predict import Predictor


class Task:
    """One task: subclasses set ``name`` and ``fields`` and implement :meth:`predict`.

    Attributes:
        name: the ``--task`` value.
        fields: the output columns after the common ones (``id``, ``path``, ...).
        options: ``(RunConfig field, flag)`` of the options that apply to this task only.
        resume_fields: keys of :meth:`manifest_fields` that ``--resume`` requires equal
            (missing in an earlier run's manifest counts as different).
        report_view: how the report shows a row: ``labels`` (top-1 and top-k), ``classes``
            (classes present, with an overlay), ``boxes`` (detections drawn on the image,
            with a legend) or ``vectors`` (the image only).
        light_columns: what the report reads for every row (beyond ``status``/``error``).
        row_columns: what the report reads for the rows it shows (beyond the common ones).
    """

    name: ClassVar[str]
    fields: ClassVar[tuple[pa.Field, ...]]
    options: ClassVar[tuple[tuple[str, str], ...]] = ()
    resume_fields: ClassVar[tuple[str, ...]] = ()
    report_view: ClassVar[str] = "vectors"
    light_columns: ClassVar[tuple[str, ...]] = ()
    row_columns: ClassVar[tuple[str, ...]] = ()

    def check(self, config: RunConfig, spec: ModelSpec) -> None:
        """Refuse option values this task cannot honour for ``spec`` (ConfigError)."""

    def prepare(
        self, spec: ModelSpec, config: RunConfig, state_dict: dict[str, torch.Tensor] | None
    ) -> ModelSpec:
        """On the driver, once a run, after the weights are read: ``spec`` completed with
        what this task needs made once (e.g. zero-shot's text embeddings)."""
        return spec

    def setup(self, predictor: Predictor) -> None:
        """Called once when ``predictor`` is built: check its options, prepare constants."""

    def predict(self, predictor: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's raw outputs for a decoded batch, as columns; ``image`` dropped."""
        raise NotImplementedError

    def postprocess(self, batch: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
        """Model outputs to the columns the sink writes (pure; every engine calls it)."""
        return dict(batch)

    def columns(self, batch: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        """The task's Arrow columns of a postprocessed batch; nulls where ``ok`` is False."""
        raise NotImplementedError

    def manifest_fields(self, spec: ModelSpec, config: RunConfig) -> dict[str, Any]:
        """What ``_manifest.json`` records about this task beyond the common fields."""
        return {}

    def schema(self) -> pa.Schema:
        """The output schema of this task's part files."""
        return pa.schema([*COMMON_FIELDS, *self.fields])

    def schemas(self) -> dict[str, pa.Schema]:
        """Every schema this task writes, by the name the docs give it."""
        return {self.name: self.schema()}

    def table_schema(self, columns: dict[str, pa.Array]) -> pa.Schema:
        """The schema of a table of these ``columns``: :meth:`schema`, unless a field's type
        depends on the model (embed's list size)."""
        return self.schema()

    def to_table(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A postprocessed batch as the output table: plain Arrow, nulls on error rows."""
        ok = np.asarray(batch["status"] == "ok")
        columns = {**common_columns(batch, ok), **self.columns(batch, ok)}
        return pa.table(columns, schema=self.table_schema(columns))

    def label_values(self, table: pa.Table, ok: pa.Array) -> pa.Array | None:
        """The report's label chart: one label per counted occurrence among ok rows."""
        return None

    def label_hits(self, table: pa.Table, label: str) -> np.ndarray | None:
        """The report's ``--label`` filter: rows that have ``label`` (None: not supported)."""
        return None


class ListedLabels(Task):
    """A task whose rows list labelled things in ``labelled_column`` (a list of structs
    with a ``label``): the report counts and filters by the labels listed."""

    labelled_column: ClassVar[str]

    def _listed(self, table: pa.Table, ok: pa.Array | None = None) -> pa.Array | None:
        if self.labelled_column not in table.column_names or not table.num_rows:
            return None
        column = table.column(self.labelled_column)
        column = (column if ok is None else column.filter(ok)).combine_chunks()
        return column if pa.types.is_list(column.type) else None

    def label_values(self, table: pa.Table, ok: pa.Array) -> pa.Array | None:
        listed = self._listed(table, ok)
        return None if listed is None else pc.struct_field(pc.list_flatten(listed), "label")

    def label_hits(self, table: pa.Table, label: str) -> np.ndarray | None:
        """Rows that list ``label`` at least once."""
        hit = np.zeros(table.num_rows, dtype=bool)
        listed = self._listed(table)
        if listed is None:
            return hit
        labels = pc.struct_field(pc.list_flatten(listed), "label")
        parents = np.asarray(pc.list_parent_indices(listed).to_numpy(zero_copy_only=False))
        match = pc.fill_null(pc.equal(labels, label), False).to_numpy(zero_copy_only=False)
        hit[parents[np.asarray(match, dtype=bool)]] = True
        return hit


def without_image(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` without the decoded image and its padding sizes."""
    drop = ("image", "input_height", "input_width")
    return {k: v for k, v in batch.items() if k not in drop}


def ok_rows(batch: dict[str, Any]) -> tuple[np.ndarray, Any]:
    """Indices of the ``ok`` rows and their images (``None`` when there are none)."""
    ok = np.flatnonzero(batch["status"] == "ok")
    if not len(ok):
        return ok, None
    images = batch["image"]
    return ok, images if len(ok) == len(images) else take_rows(images, ok)


def take_rows(images: Any, rows: np.ndarray) -> Any:
    """``images[rows]`` for a numpy array, or a tensor (on the GPU after device decoding).

    A tensor is never indexed with a numpy array: torch copies such an index to the device
    from pageable memory and waits for the device to finish all its queued work first
    (a boolean mask, whose count must come back, likewise). Consecutive rows are a slice
    (a view, no copy); others an index sent to the device without blocking.
    """
    if isinstance(images, np.ndarray):
        return images[rows]
    if len(rows) and (np.diff(rows) == 1).all():
        return images[int(rows[0]) : int(rows[-1]) + 1]
    return images.index_select(0, device_index(rows, images.device))


def device_index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Row indices as an int64 tensor on ``device``, copied without waiting for its queue
    (from pinned memory: a copy from pageable memory would wait)."""
    index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


def scatter_rows(values: torch.Tensor, rows: np.ndarray, n: int) -> torch.Tensor:
    """An ``(n, ...)`` tensor on ``values``' device: ``values`` at ``rows``, zeros elsewhere.

    Stays on the device (no readback): the engine copies the batch's columns back at once.
    """
    if len(rows) == n:
        return values
    out = values.new_zeros((n, *values.shape[1:]))
    out[device_index(rows, values.device)] = values
    return out


def config_defaults() -> dict[str, Any]:
    """``RunConfig``'s default value of every field, for the options checks."""
    from batchvision.config import RunConfig

    return {f.name: f.default for f in fields(RunConfig)}
