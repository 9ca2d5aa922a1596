"""Run under mpiexec: sharded lookup and row-wise Adagrad updates on N ranks equal the
same operations on full 1-rank tables (the reference every rank computes itself)."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from recs_core.comm.pending import Pending
from recs_core.embedding.sharded import ShardedLookup, ShardedTables, owners
from recs_core.embedding.sparse_optim import RowwiseAdagrad
from recs_core.embedding.table import dedup_grads, gather, init_table
from recs_core.stages import drive, relay


def counted(stage, sent: dict[str, int]):  # noqa: ANN001, ANN201
    """``stage``, adding the bytes each exchange it posts sends to ``sent``."""
    def count(need: object):  # noqa: ANN202
        if isinstance(need, Pending):
            sent[need.what] = sent.get(need.what, 0) + need.sent
        yield need
    return relay(stage, count)


def check_volume(got: dict[str, int], all_ids: list[list[np.ndarray]], rows: list[int],
                 dim: int, rank: int, world: int, placement: str) -> None:
    """The bytes the exchanges counted equal the distinct (table, row) pairs that cross
    ranks: this rank's ids owned elsewhere (ids out, gradients out) and the other ranks'
    ids this rank owns (rows back)."""
    def distinct(r: int, mine: bool) -> int:
        n = 0
        for t in range(len(rows)):
            u = np.unique(all_ids[r][t])
            own = owners(t, u, world, placement)
            n += int(np.sum(own == rank) if mine else np.sum(own != r))
        return n

    out = distinct(rank, mine=False)
    served = sum(distinct(r, mine=True) for r in range(world) if r != rank)
    want = {"id count exchange": 8 * (world - 1), "id exchange": 8 * out,
            "row exchange": 4 * dim * served, "gradient exchange": 4 * dim * out}
    assert {k: got.get(k, 0) for k in want} == want, (rank, got, want)


def main(placement: str) -> None:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    rows, dim, seed = [50, 7, 1000], 4, 3
    tables = ShardedTables(rows, dim, seed, rank, world, placement)
    ref = [init_table(n, dim, seed, t) for t, n in enumerate(rows)]
    lookup = ShardedLookup(tables, [0, 1, 2], comm)
    ref_opt, opt = RowwiseAdagrad(0.1), RowwiseAdagrad(0.1)
    for step in range(3):
        rng = np.random.default_rng([step, rank])
        n = int(rng.integers(0, 40)) if rank else 33  # unequal, possibly empty batches
        ids = [rng.integers(0, r, n) for r in rows]
        ids[1][: n // 2] = 3  # many duplicates
        sent: dict[str, int] = {}
        plan, got = drive(counted(lookup.lookup(ids), sent))
        for t, (g, i) in enumerate(zip(got, ids)):
            # exact before any update; after, sums of gradients differ in order only
            np.testing.assert_allclose(g, gather(ref[t], i), rtol=1e-5, atol=1e-6,
                                       err_msg=f"rank {rank} step {step} table {t}")
        grads = [rng.standard_normal((n, dim)).astype(np.float32) for _ in rows]
        drive(counted(lookup.push(plan, grads, opt), sent))
        # reference: the global batch's gradients applied to full tables on one "rank"
        all_ids = comm.allgather(ids)
        check_volume(sent, all_ids, rows, dim, rank, world, placement)
        all_grads = comm.allgather(grads)
        for t in range(len(rows)):
            i = np.concatenate([a[t] for a in all_ids])
            g = np.concatenate([a[t] for a in all_grads])
            u, s = dedup_grads(i, g)
            ref_opt.update(t, ref[t], u, s)
    for t in range(len(rows)):
        mine = tables.owned_rows(t)
        np.testing.assert_allclose(tables.local_table(t), ref[t][mine], rtol=1e-5, atol=1e-6)
    total = comm.allreduce(sum(len(tables.owned_rows(t)) for t in range(len(rows))))
    assert total == sum(rows)
    lookup.close()
    sys.stdout.write(f"OK rank {rank}\n")


if __name__ == "__main__":
    main(sys.argv[1])
