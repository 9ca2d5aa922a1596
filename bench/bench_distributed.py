"""Distributed figures on the canonical workload (prints one JSON line).

* exchange: run under mpiexec by this script itself — one global batch (2048 rows) of
  the canonical workload: the lookup's exchanges (count Ialltoall, key and row
  Ialltoallv, each from post to completion) and the whole lookup path (with the CPU
  work: de-duplication, owner gather, rows back to fields) against a raw Alltoallv of
  the same bytes, and the bytes de-duplication saves;
* end to end: `recs train` with 2 ranks x 1 thread on shared memory, and under the
  emulated 1 Gbit/s network (bench/emulated_network.sh), with each exchange's wait share.

    python bench/bench_distributed.py --rows 1000000 [--emulated-rows 200000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = ROOT / "configs" / "criteo_dlrm.toml"


def exchange_worker(data: str, reps: int) -> None:
    """Under mpiexec: lookup-path vs raw Alltoallv timing and de-duplication savings."""
    from mpi4py import MPI

    from recs_core.comm.world import mpi_world
    from recs_core.data.reader import ShardReader
    from recs_core.embedding.layer import _field_ids, slots_of
    from recs_core.embedding.sharded import ShardedLookup, ShardedTables
    from recs_core.features.graph import FeatureGraph
    from recs_core.features.spec import load_spec

    world = mpi_world()
    comm = world.comm
    spec = load_spec(CONFIG)
    raw = next(iter(ShardReader([data], spec.schema, rank=world.rank, world=world.size,
                                batch_rows=spec.batch_size // world.size)))
    fb = FeatureGraph(spec).process(raw)
    slots = slots_of(spec)
    dim = spec.sparse_fields[0][1].dim
    tables = ShardedTables([t.rows for _, t in spec.sparse_fields], dim, 0, world.rank,
                           world.size)
    ids = [i for s in slots for i in _field_ids(fb, s)]
    lookup = ShardedLookup(tables, list(range(len(ids))), comm)
    raw_ids = sum(len(i) for i in ids)
    uniq_ids = sum(len(np.unique(i)) for i in ids)
    lookup_t, comm_t, raw_t = [], [], []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        posted = lookup.post_keys(lookup.post_counts(ids).wait())
        plan = posted.wait()
        served = lookup.serve_rows(plan)
        served.wait()
        lookup_t.append(time.perf_counter() - t0)
        # the exchange's own time: each collective from its post to its completion
        comm_t.append([plan.count_seconds, posted.completed - posted.posted,
                       served.completed - served.posted])
        # the same bytes through one raw Alltoallv each way (keys out, rows back)
        sc, rc = plan.send_counts, plan.recv_counts
        keys = np.zeros(int(sc.sum()), np.int64)
        rows = np.zeros((int(rc.sum()), dim), np.float32)
        kin = np.empty(int(rc.sum()), np.int64)
        rin = np.empty((int(sc.sum()), dim), np.float32)
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Alltoallv([keys, sc], [kin, rc])
        comm.Alltoallv([rows, rc * dim], [rin, sc * dim])
        raw_t.append(time.perf_counter() - t0)
    lk = comm.allreduce(statistics.median(lookup_t), op=MPI.MAX)
    # Per collective, the rank that posts last waits for no peer: its post-to-completion
    # time is the exchange's own cost (MIN over ranks); MAX adds the peers' compute skew.
    med = np.median(np.array(comm_t, np.float64), axis=0)
    lo, hi = np.empty_like(med), np.empty_like(med)
    comm.Allreduce(med, lo, op=MPI.MIN)
    comm.Allreduce(med, hi, op=MPI.MAX)
    ex, ex_skew = float(lo.sum()), float(hi.sum())
    rw = comm.allreduce(statistics.median(raw_t), op=MPI.MAX)
    ids_total = comm.allreduce(raw_ids)
    uniq_total = comm.allreduce(uniq_ids)
    if world.rank == 0:
        per_id = 8 + 4 * dim  # key out + row back
        print(json.dumps({
            "raw_alltoallv_ms": round(rw * 1e3, 3),
            "exchange_ms": round(ex * 1e3, 3), "exchange_throughput_vs_raw": round(rw / ex, 3),
            "exchange_with_peer_skew_ms": round(ex_skew * 1e3, 3),
            "exchange_parts_ms": {k: round(float(v) * 1e3, 3)
                                  for k, v in zip(("counts", "ids", "rows"), lo)},
            "lookup_path_ms": round(lk * 1e3, 3), "lookup_path_vs_raw": round(rw / lk, 3),
            "ids": ids_total,
            "unique_ids": uniq_total, "bytes_without_dedup": ids_total * per_id,
            "bytes_with_dedup": uniq_total * per_id,
            "dedup_saving": round(1 - uniq_total / ids_total, 4)}), flush=True)


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--emulated-rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help="existing canonical data file (default: recs gen)")
    a = ap.parse_args()
    if a.worker:
        exchange_worker(a.worker, a.reps)
        return
    tmp = Path(tempfile.mkdtemp(prefix="recs-bench-"))
    data = Path(a.data) if a.data else tmp / "data.txt"
    if not a.data:
        subprocess.run([str(BIN / "recs"), "gen", "--rows", str(a.rows), "--seed", "1",
                        "--out", str(data), "--quiet"], check=True, capture_output=True)
    small = tmp / "small.txt"
    with open(data, "rb") as f, open(small, "wb") as g:
        for _ in range(a.emulated_rows):
            g.write(f.readline())
    launch = [str(ROOT / "mpi_launch.sh"), "-n", "2", "--threads", "1"]
    emulated = [str(ROOT / "bench" / "emulated_network.sh"), "--"]
    train = ["recs", "train", "--config", str(CONFIG), "--quiet", "--data"]
    result = {
        "exchange_shared_memory": run([*launch, sys.executable, __file__, "--worker",
                                       str(data), "--reps", str(a.reps)]),
        "exchange_emulated_1gbit": run([*emulated, *launch, sys.executable, __file__,
                                        "--worker", str(data), "--reps", str(a.reps)]),
    }
    keys = ("samples_per_sec", "seconds", "train_rows", "progressive_auc", "comm_wait_fraction")
    shm = run([*launch, *train, str(data)])
    emu = run([*emulated, *launch, *train, str(small)])
    result["train_2ranks_shared_memory"] = {k: shm[k] for k in keys}
    result["train_2ranks_emulated_1gbit"] = {k: emu[k] for k in keys}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
