"""Sharded, atomic, verified checkpoints and delta exports (see store.py and delta.py)."""

from recs_core.checkpoint.delta import apply_delta, export_delta, read_delta, rows_changed
from recs_core.checkpoint.manifest import FORMAT, FileEntry, Manifest
from recs_core.checkpoint.reshard import reshard_rows
from recs_core.checkpoint.store import (
    latest_complete,
    load_manifest,
    prune,
    read_all,
    read_rank,
    save,
    save_step,
    step_path,
)

__all__ = ["FORMAT", "FileEntry", "Manifest", "apply_delta", "export_delta", "latest_complete",
           "load_manifest", "prune", "read_all", "read_delta", "read_rank", "reshard_rows",
           "rows_changed", "save", "save_step", "step_path"]
