#!/usr/bin/env python3
"""`recs train` under a bare `mpiexec -n R` (no mpi_launch.sh): with no thread variable
set, as a user launches it (recs_core/threads.py gives each rank cores / local ranks
threads), against every thread variable set to the machine's cores (what each rank's BLAS
and Numba took before), and under `mpi_launch.sh -n R`. Interleaved repetitions; prints
one JSON object with each run's samples/s and the medians.

    python bench/bench_bare_mpiexec.py --rows 200000 --ranks 2 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recs_core.data.synth import generate  # noqa: E402
from recs_core.threads import THREAD_VARS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    with tempfile.TemporaryDirectory(prefix="bench_bare-") as d:
        data = Path(d) / "w.txt"
        generate(data, a.rows, seed=3)
        train = [sys.executable, "-m", "recs_core", "train", "--config", a.config, "--data",
                 str(data), "--eval-fraction", "0.1", "--quiet"]
        clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
        clean["PYTHONPATH"] = str(ROOT)
        cases = {
            "bare_mpiexec": ([mpiexec, "-n", str(a.ranks), *train], clean),
            "bare_mpiexec_all_cores": ([mpiexec, "-n", str(a.ranks), *train],
                                       {**clean, **{v: str(cores) for v in THREAD_VARS}}),
            "mpi_launch": ([str(ROOT / "mpi_launch.sh"), "-n", str(a.ranks), *train], clean),
        }
        runs: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(a.reps):
            for name, (cmd, env) in cases.items():
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                if r.returncode != 0:
                    print(r.stderr[-2000:], file=sys.stderr)
                    return 1
                out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
                runs[name].append({"samples_per_sec": out["samples_per_sec"],
                                   "seconds": out["seconds"],
                                   "wall": round(time.perf_counter() - t0, 2)})
    med = {k: statistics.median(x["samples_per_sec"] for x in v) for k, v in runs.items()}
    print(json.dumps({"rows": a.rows, "ranks": a.ranks, "cores": cores, "runs": runs,
                      "median_samples_per_sec": med,
                      "bare_over_all_cores": round(med["bare_mpiexec"]
                                                   / med["bare_mpiexec_all_cores"], 3),
                      "date": time.strftime("%Y-%m-%d")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
