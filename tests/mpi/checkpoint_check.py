"""Run under mpiexec: every rank saves its rows of sharded tables (plus a row-wise state)
into one collective checkpoint; rank 0's manifest lists every rank's files; each rank
reads its shard back equal; all shards resharded to other world sizes give exactly the
rows of the full 1-rank tables; a failing rank makes every rank raise (no hang, no
manifest); replacing a step and pruning work across ranks.

argv: checkpoint root directory, placement ("row" | "table")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from recs_core.checkpoint import (
    latest_complete,
    load_manifest,
    read_all,
    read_rank,
    reshard_rows,
    save_step,
)
from recs_core.embedding.sharded import ShardedTables, owners
from recs_core.embedding.table import init_table
from recs_core.errors import RecsError

ROWS, DIM, SEED = [50, 7, 1000], 4, 3


def accumulator(t: int, ids: np.ndarray) -> np.ndarray:
    """A per-row state that depends on the global row alone."""
    return (ids * 0.25 + t).astype(np.float32)


def shard_arrays(tables: ShardedTables, rank: int, bump: float = 0.0) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for t in range(len(ROWS)):
        ids = tables.owned_rows(t).astype(np.int64)
        arrays[f"t{t}.ids"] = ids
        arrays[f"t{t}.values"] = tables.local_table(t) + np.float32(bump)
        arrays[f"t{t}.acc"] = accumulator(t, ids)
    if rank == 0:
        arrays["dense.w"] = np.arange(12, dtype=np.float32).reshape(3, 4)
    return arrays


def check_reshard(shards: list[dict[str, np.ndarray]], placement: str) -> None:
    world = len(shards)
    for new_world in sorted({1, max(world - 1, 1), world + 1}):
        for t, n in enumerate(ROWS):
            full = init_table(n, DIM, SEED, t)
            parts = [{k: s[f"t{t}.{k}"] for k in ("ids", "values", "acc")} for s in shards]
            seen = []
            for r in range(new_world):
                got = reshard_rows(parts, lambda ids, t=t, w=new_world: owners(t, ids, w,
                                                                              placement), r)
                want = np.flatnonzero(owners(t, np.arange(n), new_world, placement) == r)
                assert np.array_equal(got["ids"], want), (new_world, t, r)
                assert np.array_equal(got["values"], full[want])
                assert np.array_equal(got["acc"], accumulator(t, want))
                seen.append(got["ids"])
            assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n))


def main(root: str, placement: str) -> None:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    tables = ShardedTables(ROWS, DIM, SEED, rank, world, placement)
    arrays = shard_arrays(tables, rank)
    meta = {"feature_spec": "spec text", "hash_version": 1, "step": 7}
    path = save_step(root, 7, arrays, meta, comm, rank_meta={"position": 100 * rank + 1})

    got = read_rank(path, rank, world=world)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert np.array_equal(got[k], v) and got[k].dtype == v.dtype, k
    m = load_manifest(path, full=True)
    assert m.world_size == world and m.meta == meta
    assert [rm["position"] for rm in m.rank_meta] == [100 * r + 1 for r in range(world)]
    assert sorted({e.rank for e in m.files}) == list(range(world))
    assert len(m.files) == 9 * world + 1
    assert all(e.path.startswith(f"rank{e.rank:05d}-of-{world:05d}/") for e in m.files)
    m.check_meta({"feature_spec": "spec text", "hash_version": 1})
    check_reshard(read_all(path), placement)

    # one rank fails mid-save: every rank raises, the previous checkpoint stays the latest
    bad = dict(arrays, **({"../escape": arrays["t0.ids"]} if rank == world - 1 else {}))
    try:
        save_step(root, 8, bad, meta, comm)
        raise AssertionError("the save with a bad name succeeded")
    except RecsError as e:
        assert "escape" in str(e), str(e)
    assert latest_complete(root) == path

    # the same step again replaces it; a later step with keep=1 prunes the rest
    save_step(root, 7, shard_arrays(tables, rank, bump=1.0), meta, comm)
    again = read_rank(path, rank)
    assert np.array_equal(again["t2.values"], arrays["t2.values"] + 1)
    newest = save_step(root, 9, arrays, meta, comm, keep=1)
    assert latest_complete(root) == newest
    assert sorted(p.name for p in Path(root).iterdir()) == ["step-000000009"]
    os.write(1, f"OK rank {rank}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
