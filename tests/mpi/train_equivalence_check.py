"""Run under mpiexec: N-rank training (sharded embeddings, data-parallel MLP) equals a
1-rank run on the same global batches: every row's pre-update score (the loss
trajectory) and the final parameters agree within float32 tolerance.

argv: data file, placement ("row" | "table"), preset ("dlrm" | "wdl"), optionally
"fitted" (a standardize fitted on the first batch: every rank fits on the global one)
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from recs_core.comm.world import World, mpi_world
from recs_core.data.parse import RawBatch
from recs_core.data.reader import ShardReader
from recs_core.train.job import Job
from tests.conftest import assert_n_ranks_close, small_test_spec


def spec_for(placement: str, preset: str, fitted: bool = False):
    """The canonical spec with small tables; ``fitted`` adds a dense feature standardized
    with statistics fitted on the first batch (an operator whose batch order matters)."""
    return small_test_spec(preset, fitted=fitted, placement=placement)


def main(path: str, placement: str, preset: str, fitted: bool = False) -> None:
    world = mpi_world()
    comm = world.comm
    job = Job(spec_for(placement, preset, fitted), world=world)
    out = job.run([path])
    mine = job.step_probs
    dense = [p.copy() for p in job.model.net.params]
    tables = job.model.emb.gather_tables(comm)
    all_steps = comm.gather(mine, root=0)
    if world.rank == 0:
        spec = spec_for(placement, preset, fitted)
        ref = Job(spec, world=World())
        parts = []
        for r in range(world.size):
            b = ref.spec.batch_size
            local = b // world.size + (1 if r < b % world.size else 0)
            parts.append(list(ShardReader([path], spec.schema, rank=r, world=world.size,
                                          batch_rows=local)))
        steps = max(len(p) for p in parts)
        batches = [RawBatch.concat([p[s] for p in parts if s < len(p)]) for s in range(steps)]
        ref_out = ref.run_batches(iter(batches))
        assert out["train_rows"] == ref_out["train_rows"], (out, ref_out)
        dev: dict[str, float] = {}
        for s in range(steps):
            got = np.concatenate([all_steps[r][s] for r in range(world.size)
                                  if s < len(all_steps[r])])
            assert_n_ranks_close(got, ref.step_probs[s], f"scores step {s}", dev)
        for i, (a, b) in enumerate(zip(dense, ref.model.net.params)):
            assert_n_ranks_close(a, b, f"dense {i}", dev)
        for t, (a, b) in enumerate(zip(tables, ref.model.emb.tables)):
            assert_n_ranks_close(a, b, f"table {t}", dev)
        print("max deviation " + json.dumps(dev), flush=True)
        assert abs(out["progressive_auc"] - ref_out["progressive_auc"]) < 1e-3
    comm.Barrier()
    sys.stdout.write(f"OK rank {world.rank} of {world.size}\n")
    sys.stdout.flush()
    MPI.COMM_WORLD.Barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] == ["fitted"])
