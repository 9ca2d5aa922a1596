"""Run under mpiexec -n 2: training with dynamic tables (Wide&Deep: both embedding sets)
on 2 ranks equals a 1-rank run on the same global batches (scores, dense parameters and
every dynamic row: same keys, frequencies, last-seen windows; values and accumulators
within float32 tolerance); the 2-rank checkpoint is written to ``<out>/two``; a 1-rank
checkpoint (``<out>/one``) loads on 2 ranks with its rows resharded by owner. Each rank
writes its live dynamic rows to ``<out>/live-rank<r>.npz`` and prints
``OK rank <r> of <world size>``.

argv: window 1 file, window 2 file (unused here), output directory
"""

from __future__ import annotations

import json
import sys

import numpy as np

from recs_core.comm.world import World, mpi_world
from recs_core.data.parse import RawBatch
from recs_core.data.reader import ShardReader
from recs_core.embedding.sharded import owners
from recs_core.train.job import Job
from tests.conftest import assert_n_ranks_close
from tests.test_dynamic_train import DYN, spec


def gathered(job: Job, comm) -> dict:
    """{(set, t): merged arrays} of the job's dynamic tables (on rank 0)."""
    from recs_core.embedding.dynamic_store import merge_shards

    out = {}
    for prefix, emb in (("emb", job.model.emb), ("wide", job.model.wide)):
        for t in emb.dynamic.tables:
            parts = comm.gather(emb.dynamic.arrays(t), root=0) if comm else [
                emb.dynamic.arrays(t)]
            if parts is not None:
                out[(prefix, t)] = merge_shards(parts)
    return out


def same(got: dict, want: dict, dev: dict | None = None) -> None:
    assert got.keys() == want.keys()
    for k in want:
        for name in ("keys", "freq", "last_seen"):
            assert np.array_equal(got[k][name], want[k][name]), (k, name)
        for name in ("values", "acc"):
            if name in want[k]:
                assert_n_ranks_close(got[k][name], want[k][name], f"{name} {k}", dev)


def main(w1: str, out_dir: str) -> None:
    world = mpi_world()
    comm = world.comm
    job = Job(spec("wdl", dynamic=DYN), world=world)
    out = job.run([w1])
    steps = comm.gather(job.step_probs, root=0)
    mine = gathered(job, comm)
    dense = [p.copy() for p in job.model.net.params]
    job.save(f"{out_dir}/two")
    # this rank's live rows, as trained (the test compares a 1-rank load of "two" with them)
    np.savez(f"{out_dir}/live-rank{world.rank}.npz", **{
        f"{prefix}.{t}.{k}": a for prefix, emb in (("emb", job.model.emb),
                                                   ("wide", job.model.wide))
        for t in emb.dynamic.tables for k, a in emb.dynamic.arrays(t).items()})
    ref = None
    if world.rank == 0:
        ref = Job(spec("wdl", dynamic=DYN), world=World())
        parts = []
        for r in range(world.size):
            b = ref.spec.batch_size
            local = b // world.size + (1 if r < b % world.size else 0)
            parts.append(list(ShardReader([w1], ref.spec.schema, rank=r, world=world.size,
                                          batch_rows=local)))
        n = max(len(p) for p in parts)
        batches = [RawBatch.concat([p[s] for p in parts if s < len(p)]) for s in range(n)]
        ref_out = ref.run_batches(iter(batches))
        dev: dict[str, float] = {}
        assert out["dynamic_tables"] == ref_out["dynamic_tables"] or all(
            out["dynamic_tables"][k][f] == ref_out["dynamic_tables"][k][f]
            for k in ref_out["dynamic_tables"] for f in ("rows", "admitted", "evicted"))
        for s in range(n):
            got = np.concatenate([steps[r][s] for r in range(world.size) if s < len(steps[r])])
            assert_n_ranks_close(got, ref.step_probs[s], f"scores step {s}", dev)
        for i, (a, b) in enumerate(zip(dense, ref.model.net.params)):
            assert_n_ranks_close(a, b, f"dense {i}", dev)
        same(mine, gathered(ref, None), dev)
        print("max deviation " + json.dumps(dev), flush=True)
        ref.save(f"{out_dir}/one")
    comm.Barrier()
    again = Job(spec("wdl", dynamic=DYN), world=world)
    again.load(f"{out_dir}/one")  # 1 rank -> 2 ranks: each keeps the keys it owns
    got = gathered(again, comm)
    if world.rank == 0:
        same(got, gathered(ref, None))
    for emb in (again.model.emb, again.model.wide):
        for t in emb.dynamic.tables:
            keys = emb.dynamic.arrays(t)["keys"]
            assert (owners(t, keys, world.size, "row") == world.rank).all()
        assert emb.dynamic.window == 1
    comm.Barrier()
    sys.stdout.write(f"OK rank {world.rank} of {world.size}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3])
