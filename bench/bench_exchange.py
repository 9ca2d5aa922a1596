"""Polls an exchange needs to complete while the rank computes between polls.

Run under MPI (shared memory, or inside bench/emulated_network.sh for TCP)::

    .venv/bin/mpiexec -n 2 .venv/bin/python bench/bench_exchange.py [--gap-ms 1]

Each rank posts one all-to-all of SIZE bytes per peer -- as MPI's Ialltoallv, as
point-to-point Isend/Irecv (what the sharded embeddings post), or an Iallreduce of that
size -- then spins ``--gap-ms`` of CPU between ``Testall`` calls, as the task loop runs a
task between polls. Prints one JSON object (rank 0): per kind and size, the median number
of polls and the median time to completion over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

KINDS = ("ialltoallv", "p2p", "iallreduce")


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def post(kind: str, comm: MPI.Intracomm, send: np.ndarray, recv: np.ndarray,
         n: int) -> list[MPI.Request]:
    rank, size = comm.Get_rank(), comm.Get_size()
    if kind == "iallreduce":
        return [comm.Iallreduce(send, recv, op=MPI.SUM)]
    if kind == "ialltoallv":
        counts = np.full(size, n, np.int64)
        displ = np.arange(size, dtype=np.int64) * n
        return [comm.Ialltoallv([send, (counts, displ), MPI.FLOAT],
                                [recv, (counts, displ), MPI.FLOAT])]
    peers = [p for p in range(size) if p != rank]
    return ([comm.Irecv(recv[p * n:(p + 1) * n], source=p, tag=7) for p in peers]
            + [comm.Isend(send[p * n:(p + 1) * n], dest=p, tag=7) for p in peers])


def measure(kind: str, kib: int, gap_s: float, reps: int) -> dict[str, float]:
    comm = MPI.COMM_WORLD
    n = kib * 1024 // 4
    send = np.ones(n * comm.Get_size(), np.float32)
    recv = np.empty_like(send)
    polls, ms = [], []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        reqs = post(kind, comm, send, recv, n)
        count = 1
        while not MPI.Request.Testall(reqs):
            busy(gap_s)
            count += 1
        polls.append(count)
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"kib_per_peer": kib, "polls": float(np.median(polls)),
            "ms": round(float(np.median(ms)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gap-ms", type=float, default=1.0, help="CPU spun between polls")
    ap.add_argument("--kib", default="4,32,128,512,2048", help="sizes per peer (KiB)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    out = {kind: [measure(kind, int(k), a.gap_ms / 1e3, a.reps) for k in a.kib.split(",")]
           for kind in a.kinds.split(",")}
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "gap_ms": a.gap_ms,
                          "mpi": MPI.Get_library_version().splitlines()[0],
                          "results": out}))


if __name__ == "__main__":
    main()
