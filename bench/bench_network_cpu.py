"""CPU time it takes to move bytes between two ranks: MPI's copies and socket calls plus
the kernel's network stack (on the emulated network: TCP over a shaped loopback, all on
the machine's own cores).

The scheduler's bound max(CPU work, comm) counts communication as free CPU-wise; with one
core per rank that is not so here, and this figure says how far. Two ranks exchange
``--mib`` MiB each way in ``--msg-mib`` messages (a heavy step sends 0.2-2.6 MiB per kind
of exchange), waiting with Test and a sleep of ``--poll-ms`` (no spinning, so the CPU
counted is the transfer's). Per poll interval it reports the wire rate, each rank's
process CPU (user + system) and the machine's (every core's non-idle time from /proc/stat,
which also holds the kernel's softirq work charged to no process), per MiB one rank sends
(and receives).

    python bench/bench_network_cpu.py --mpi openmpi --out network_cpu.json

bench/bench_scheduler.py runs the same measurement per network (in its JSON: network_cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine_jiffies() -> tuple[int, int]:
    """(busy, idle) clock ticks of every core since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle, iowait
    return sum(v[:8]) - idle, idle  # user nice system idle iowait irq softirq steal


def worker(mib: float, msg_mib: float, poll_s: float) -> None:
    """Under mpiexec (2 ranks): the exchange; rank 0 prints every rank's figures, one JSON
    line each (one writer: the launcher may interleave two ranks' output)."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, peer = comm.Get_rank(), 1 - comm.Get_rank()
    size = int(msg_mib * 2**20)
    count = max(1, int(mib / msg_mib))
    send, recv = np.ones(size, np.uint8), np.empty(size, np.uint8)
    # warm-up: connections and buffers set up before counting
    MPI.Request.Waitall([comm.Irecv(recv, peer, 0), comm.Isend(send, peer, 0)])
    comm.Barrier()
    ru0, m0, t0 = resource.getrusage(resource.RUSAGE_SELF), _machine_jiffies(), time.perf_counter()
    for i in range(count):
        reqs = [comm.Irecv(recv, peer, i + 1), comm.Isend(send, peer, i + 1)]
        while not MPI.Request.Testall(reqs):
            time.sleep(poll_s)
    t1, m1, ru1 = time.perf_counter(), _machine_jiffies(), resource.getrusage(resource.RUSAGE_SELF)
    comm.Barrier()
    sent = count * size / 2**20
    proc = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    tick = os.sysconf("SC_CLK_TCK")
    busy = (m1[0] - m0[0]) / tick
    mine = {"rank": rank, "mib_each_way": round(sent, 1), "seconds": round(t1 - t0, 4),
            "process_cpu_s": round(proc, 4), "machine_busy_s": round(busy, 3),
            "machine_idle_s": round((m1[1] - m0[1]) / tick, 3)}
    every = comm.gather(mine, root=0)
    if rank == 0:
        print("\n".join(json.dumps(x) for x in every), flush=True)


def network_prefix(network: str) -> list[str]:
    """The command prefix that runs a job on ``network``: "shm" (none), "emulated"
    (bench/emulated_network.sh's shaped loopback at its default rate), "emulated@RATE" (at
    tc's RATE, e.g. 2gbit, shared by both directions) or "hostsN@RATE" (--hosts N: every
    rank on its own link of RATE each way)."""
    if network == "shm":
        return []
    kind, _, rate = network.partition("@")
    script = [str(ROOT / "bench" / "emulated_network.sh")]
    rate_opt = ["--rate", rate] if rate else []
    if kind == "emulated":
        return [*script, *rate_opt, "--"]
    if kind.startswith("hosts") and kind[5:].isdigit():
        return [*script, "--hosts", kind[5:], *rate_opt, "--"]
    raise SystemExit(f"bench: unknown network {network!r} (shm, emulated[@RATE], "
                     "hostsN[@RATE])")


def measure(network: str, bin_dir: Path, env: dict | None, mib: float = 200.0,
            msg_mib: float = 2.0, poll_ms: float = 1.0, reps: int = 3) -> dict:
    """Median figures of ``reps`` runs on ``network`` (see :func:`network_prefix`); ms of
    CPU per MiB one rank sends (and receives the same)."""
    cmd = [*network_prefix(network), str(ROOT / "mpi_launch.sh"), "-n", "2", "--threads", "1",
           str(bin_dir / "python"), str(Path(__file__).resolve()), "--worker", "--mib",
           str(mib), "--msg-mib", str(msg_mib), "--poll-ms", str(poll_ms)]
    runs = []
    for _ in range(reps):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0:
            raise SystemExit(f"bench_network_cpu: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        ranks = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
        if len(ranks) != 2:
            raise SystemExit(f"bench_network_cpu: expected 2 ranks' lines, got:\n{r.stdout}")
        sent = ranks[0]["mib_each_way"]
        runs.append({
            "mib_per_s_each_way": sent / max(x["seconds"] for x in ranks),
            "process_cpu_ms_per_mib": statistics.mean(x["process_cpu_s"] for x in ranks)
            / sent * 1e3,
            # the whole machine's busy time, shared out over the two ranks
            "machine_cpu_ms_per_mib": ranks[0]["machine_busy_s"] / 2 / sent * 1e3})
    return {"network": network, "poll_ms": poll_ms, "msg_mib": msg_mib, "reps": reps,
            **{k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--networks", default="emulated,shm",
                    help="comma list of shm, emulated[@RATE], hostsN[@RATE]")
    ap.add_argument("--mib", type=float, default=200.0, help="MiB each way per run")
    ap.add_argument("--msg-mib", type=float, default=2.0, help="message size (MiB)")
    ap.add_argument("--poll-ms", default="0.2,1", help="comma list of poll intervals (ms)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mpi", choices=("mpich", "openmpi"), default="mpich")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    if a.worker:
        worker(a.mib, a.msg_mib, float(a.poll_ms) / 1e3)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_scheduler as bs

    bs.use_mpi(a.mpi)
    rows = [measure(n, bs.BIN, bs.ENV, a.mib, a.msg_mib, float(p), a.reps)
            for n in a.networks.split(",") for p in a.poll_ms.split(",")]
    text = json.dumps({"mpi": a.mpi, **bs.mpi_library(), "results": rows}, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
