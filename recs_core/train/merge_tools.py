"""Offline tools on written checkpoints and deltas (one process): whole tables merged from
every shard, and a delta's dynamic-table entries applied (for tests, serving copies and
tools)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from recs_core.checkpoint import load_manifest, read_rank
from recs_core.embedding.dynamic_store import merge_shards
from recs_core.embedding.storage import dynamic_part, old_owner
from recs_core.train.compat import stems


def merged_checkpoint(path: str | os.PathLike, part: str = "values", verify: bool = True
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """A checkpoint's full tables (``{stem: [rows, dim]}``, every shard merged by the
    placement in its meta; ``part="acc"``: the row-wise accumulators instead), its dense
    parameters (``{"<i>": array}``, the delta's names) and its meta. For tests, serving
    copies and tools (one process)."""
    m = load_manifest(path)
    shards = [read_rank(path, r, verify, manifest=m) for r in range(m.world_size)]
    placement = m.meta.get("placement", "row")
    model_tables = m.meta["model"]["tables"]
    tables: dict[str, np.ndarray] = {}
    for prefix in ("emb", "wide"):
        for t, stem in enumerate(stems([f for f, _, _ in model_tables], prefix)):
            first = shards[0].get(f"{stem}.{part}")
            if first is None:
                continue
            rows = model_tables[t][1]
            old = old_owner(t, rows, m.world_size, placement)
            full = np.zeros((rows,) + first.shape[1:], first.dtype)
            for r, s in enumerate(shards):
                full[np.flatnonzero(old == r)] = s[f"{stem}.{part}"]
            tables[stem] = full
    dense = {k.split(".", 1)[1]: v for k, v in shards[0].items()
             if k.startswith("dense.") and not k.startswith("dense_opt.")}
    return tables, dense, m.meta


def merged_dynamic(path: str | os.PathLike, verify: bool = True) -> dict[
        str, dict[str, np.ndarray]]:
    """A checkpoint's dynamic tables, every shard merged: ``{stem + ".dyn": {"keys",
    "values", "freq", "last_seen", ...}}`` by ascending key (sketches summed). For tests,
    serving copies and tools (one process)."""
    m = load_manifest(path)
    shards = [read_rank(path, r, verify, manifest=m) for r in range(m.world_size)]
    stems = sorted({n.rsplit(".dyn.", 1)[0] for n in shards[0] if ".dyn." in n})
    def part(s: dict[str, np.ndarray], stem: str) -> dict[str, np.ndarray]:
        return dynamic_part({k[len(stem) + 1:]: a for k, a in s.items()
                             if k.startswith(stem + ".dyn.")}, stem)

    return {f"{stem}.dyn": merge_shards([part(s, stem) for s in shards]) for stem in stems}


def apply_dynamic_delta(tables: dict[str, dict[int, np.ndarray]],
                        delta_dir: str | os.PathLike) -> None:
    """Apply a delta's dynamic-table entries to ``{stem + ".dyn": {key: row}}`` in place:
    listed keys get their new rows, evicted keys are removed. (:func:`apply_delta`
    applies the fixed tables and the dense parameters and skips these entries.)"""
    from recs_core.checkpoint import read_delta

    changed, _, meta = read_delta(delta_dir)
    for name in meta.get("dynamic_entries", []):
        if name not in changed:
            continue
        ids, values = changed[name]
        if name.endswith(".dyn.evicted"):
            table = tables.setdefault(name[:-len(".evicted")], {})
            for k in ids.tolist():
                table.pop(k, None)
        else:
            table = tables.setdefault(name, {})
            for k, v in zip(ids.tolist(), values):
                table[k] = v
