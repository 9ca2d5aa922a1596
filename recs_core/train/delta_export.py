"""The delta of a window: the embedding rows it changed and the dense parameters, for
serving copies (format: ``recs_core.checkpoint.delta``, docs/CHECKPOINT_FORMAT.md)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from recs_core.checkpoint.delta import finish_delta, stage_delta, write_delta_arrays, writing
from recs_core.checkpoint.manifest import FileEntry
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
    (format: ``recs_core.checkpoint.delta``); collective. Each table's rows are gathered to
    one rank, which writes its files (table i: rank i mod N; like a checkpoint, every rank
    must see the directory), rank 0 the dense parameters and the manifest. Applied to the
    window's starting model it gives the current model bit for bit (a touched row whose
    update left it unchanged is listed too)."""
    staging = world.bcast(world.everyone(lambda: stage_delta(path) if world.rank == 0
                                         else None), "delta staging directory")
    assert staging is not None
    mine: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fields: dict[str, str] = {}
    dynamic: list[str] = []  # the dynamic tables' entries (by key; apply_delta skips them)
    for i, (stem, t, c) in enumerate(model.changed_rows()):
        name = stem + c.suffix
        parts = world.gather((c.ids, c.values), f"delta {name}: rows", root=i % world.size)
        if c.by_key:
            dynamic.append(name)
        fields[name] = model.spec.sparse_fields[t][0]
        if parts is not None:
            mine[name] = (np.concatenate([p[0] for p in parts]),
                          np.concatenate([p[1] for p in parts]))
    dense = {str(i): p for i, p in enumerate(model.dense_parameters())}

    def write() -> tuple[list[FileEntry], dict[str, int]]:
        rows = {k: v for k, v in mine.items() if len(v[0])}
        return (write_delta_arrays(staging, rows, dense if world.rank == 0 else {}),
                {k: len(v[0]) for k, v in rows.items()})

    with writing(staging, path, remove=world.rank == 0):  # (rank 0 owns the directory)
        every = world.gather(world.everyone(write), "delta entries")

    def finish() -> str | None:
        if every is None:
            return None
        entries = [e for part, _ in every for e in part]
        written = {k: n for _, counts in every for k, n in counts.items()}
        meta = {"trainer": TRAINER_FORMAT, "hash": HASH_VERSION,
                "base_step": window.base_step, "step": window.global_step,
                "tables": {k: v for k, v in fields.items() if k in written},
                "rows": sum(written.values())}
        if dynamic:
            meta["dynamic_entries"] = dynamic
        return finish_delta(staging, path, entries, meta)

    out = world.bcast(world.everyone(finish), "delta outcome")
    assert out is not None
    return out
