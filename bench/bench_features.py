"""End-to-end `recs features` throughput on the canonical workload (prints one JSON line).

Runs, interleaved and repeated: 1 rank pinned to one core (taskset), 2 ranks with
mpiexec, and a plain NumPy/Python pipeline of the same features on a slice of the same
file, for scale. Reports medians.

    python bench/bench_features.py --rows 1000000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def recs_features(cmd_prefix: list[str], config: Path, data: Path) -> dict:
    cmd = [*cmd_prefix, str(BIN / "recs"), "features", "--config", str(config), "--data",
           str(data), "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def numpy_pipeline(data: Path, rows: int) -> float:
    """rows/s of a straightforward NumPy pipeline: Python split, vectorized ops per column,
    Python's hash for strings (a stand-in for a real stable hash, which would be slower)."""
    bounds = np.array([0] + [2**i for i in range(21)], dtype=np.float64)
    t0 = time.perf_counter()
    with open(data, "rb") as f:
        lines = [f.readline() for _ in range(rows)]
    n = 0
    for a in range(0, len(lines), 2048):
        fields = [ln.rstrip(b"\n").split(b"\t") for ln in lines[a:a + 2048]]
        cols = list(zip(*fields))
        ints = np.array([[float(x) if x else np.nan for x in c] for c in cols[1:14]]).T
        _dense = np.log1p(np.maximum(np.nan_to_num(ints, nan=0.0), 0))
        _buck = np.where(np.isnan(ints), 0, np.searchsorted(bounds, ints, side="right") + 1)
        _cat = np.array([[hash(x) % (2**18 - 1) + 1 if x else 0 for x in c] for c in cols[14:40]])
        _cross = np.array([[hash((x, y)) % (2**18 - 1) + 1 for x, y in zip(cols[14 + 2 * k],
                                                                         cols[15 + 2 * k])]
                           for k in range(8)])
        n += len(fields)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", help="existing file (default: generate one with recs gen)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--numpy-rows", type=int, default=100_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recs-bench-"))
    try:
        data = Path(a.data) if a.data else tmp / "data.txt"
        if not a.data:
            subprocess.run([str(BIN / "recs"), "gen", "--rows", str(a.rows), "--seed", "1",
                            "--out", str(data), "--quiet"], check=True, capture_output=True)
        one_core = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        runs: dict[str, list[float]] = {"1rank_1core": [], "2ranks": [], "numpy": []}
        for _ in range(a.reps):
            cfg = Path(a.config)
            runs["1rank_1core"].append(recs_features(one_core, cfg, data)["rows_per_sec"])
            mpi = [str(BIN / "mpiexec"), "-n", "2"]
            runs["2ranks"].append(recs_features(mpi, cfg, data)["rows_per_sec"])
            runs["numpy"].append(numpy_pipeline(data, a.numpy_rows))
        med = {k: round(statistics.median(v)) for k, v in runs.items()}
        print(json.dumps({"rows": a.rows, "reps": a.reps, "median_rows_per_sec": med,
                          "runs": {k: [round(x) for x in v] for k, v in runs.items()},
                          "speedup_vs_numpy_1core": round(med["1rank_1core"] / med["numpy"], 1)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
