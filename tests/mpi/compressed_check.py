"""Run under mpiexec: the same rows as a plain file, a .gz and a .zst file, each read and
trained on by every rank. Prints one JSON object on rank 0, per file: the rows read over
all ranks (a CRC-32 per row, sorted: the multiset of rows), each rank's rows, the global
rows of every step of a training pass with a hold-out, its figures, and the scores of
the three files by the model trained on the plain one (in row order: the largest
difference to the plain file's, which batches of other sizes leave at float32 rounding).

argv: compressed range size in bytes (0: one range per rank), the plain file, the .gz
file, the .zst file.
"""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np

from recs_core.comm.world import mpi_world
from recs_core.data import shards
from recs_core.data.parse import RawBatch
from recs_core.data.sources import open_input
from recs_core.train.job import Job
from tests.conftest import small_test_spec

EVAL = 0.1


def row_crcs(batch: RawBatch) -> list[int]:
    """A CRC-32 of every row's label, ints (missing: none) and strings."""
    out = []
    strs = [batch.str_values(j) for j in range(batch.str_len.shape[1])]
    for i in range(len(batch)):
        ints = np.where(batch.int_missing[i], -1, batch.ints[i]).astype(np.int64)
        crc = zlib.crc32(ints.tobytes(), int(batch.labels[i]))
        for col in strs:
            crc = zlib.crc32(col[i].encode(), crc)
        out.append(crc)
    return out


def main(block: int, paths: list[str]) -> None:
    shards.COMPRESSED_BLOCK = block
    world = mpi_world()
    out = {}
    scorer = None
    for path in paths:
        spec = small_test_spec()
        reader, _ = open_input([path], spec.schema, rank=world.rank, world=world.size,
                               batch_rows=64)
        crcs = [c for b in reader for c in row_crcs(b)]
        job = Job(spec, world=world)
        figures = job.run([path], eval_fraction=EVAL)
        steps = world.allgather([len(p) for p in job.step_probs])
        assert len({len(s) for s in steps}) == 1  # every rank takes part in every step
        every = world.gather(crcs)
        if scorer is None:
            scorer = job  # trained on the plain file
        scores = [scorer.score([p]) for p in paths]
        if world.rank == 0:
            out[path] = {"crcs": sorted(c for part in every for c in part),
                         "rows_per_rank": [len(part) for part in every],
                         "rows_per_step": [int(sum(s)) for s in zip(*steps)],
                         "figures": {k: figures[k] for k in ("rows", "train_rows", "eval_rows",
                                                             "window_steps", "world_size")},
                         "decompression": figures.get("decompression"),
                         "scores_differ": [float(np.max(np.abs(scores[0] - s), initial=0))
                                           for s in scores[1:]]}
    if world.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
