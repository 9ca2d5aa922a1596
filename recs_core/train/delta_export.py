"""The delta of a window: the embedding rows it changed and the dense parameters, for
serving copies (format: ``recs_core.checkpoint.delta``, docs/CHECKPOINT_FORMAT.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from recs_core.checkpoint import export_delta
from recs_core.comm.world import World
from recs_core.features.hashing import HASH_VERSION
from recs_core.train.compat import TRAINER_FORMAT
from recs_core.train.window import Window

if TYPE_CHECKING:
    from recs_core.train.model import Model


def export_window_delta(model: Model, window: Window, world: World,
                        path: str | os.PathLike) -> str:
    """Write the rows the window updated (every embedding set and table: the rows whose
    touched bit is set, their current values) and every dense parameter as a delta
    (format: ``recs_core.checkpoint.delta``); collective, rank 0 writes. Applied to the
    window's starting model it gives the current model bit for bit (a touched row whose
    update left it unchanged is listed too)."""
    deltas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fields: dict[str, str] = {}
    dynamic: list[str] = []  # the dynamic tables' entries (by key; apply_delta skips them)
    rows = 0
    for stem, t, c in model.changed_rows():
        name = stem + c.suffix
        parts = world.gather((c.ids, c.values), f"delta {name}: rows")
        if parts is None:
            continue
        if c.by_key:
            dynamic.append(name)
        ids = np.concatenate([p[0] for p in parts])
        if len(ids):
            deltas[name] = (ids, np.concatenate([p[1] for p in parts]))
            fields[name] = model.spec.sparse_fields[t][0]
            rows += len(ids)
    dense = {str(i): p for i, p in enumerate(model.dense_parameters())}
    meta = {"trainer": TRAINER_FORMAT, "hash": HASH_VERSION, "base_step": window.base_step,
            "step": window.global_step, "tables": fields, "rows": rows}
    if dynamic:
        meta["dynamic_entries"] = dynamic

    def write() -> str | None:
        return export_delta(path, deltas, dense, meta) if world.rank == 0 else None

    out = world.bcast(world.everyone(write), "delta outcome")
    assert out is not None
    return out
