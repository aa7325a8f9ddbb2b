"""``python -m batchvision``."""

from batchvision.cli import main

main()
