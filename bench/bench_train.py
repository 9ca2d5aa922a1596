"""End-to-end `recs train` on the canonical workload (prints one JSON line).

Generates (or reuses) a 1,000,000-row synthetic file with its true probabilities, runs
one pass with a 10% hold-out on one rank (BLAS threads: all cores), repeats, and reports
the median samples/s, held-out AUC/logloss, and the AUC of the true probabilities on the
same held-out rows.

    python bench/bench_train.py --rows 1000000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--eval-fraction", type=float, default=0.1)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recs-bench-"))
    try:
        data, probs = tmp / "data.txt", tmp / "data.probs"
        subprocess.run([str(BIN / "recs"), "gen", "--rows", str(a.rows), "--seed", "1", "--out",
                        str(data), "--probs-out", str(probs), "--quiet"], check=True)
        runs = []
        for _ in range(a.reps):
            out = subprocess.run([str(BIN / "recs"), "train", "--config", a.config, "--data",
                                  str(data), "--eval-fraction", str(a.eval_fraction), "--quiet"],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        start = a.rows - int(round(a.rows * a.eval_fraction))
        from recs_core.metrics.auc import auc

        p = np.loadtxt(probs, dtype=np.float64)[start:]
        with open(data, "rb") as f:
            y = np.array([ln[:1] == b"1" for ln in f.readlines()[start:]], dtype=np.float64)
        sps = [r["samples_per_sec"] for r in runs]
        med = runs[sps.index(statistics.median_low(sps))]
        print(json.dumps({
            "rows": a.rows, "reps": a.reps, "samples_per_sec_median": statistics.median(sps),
            "samples_per_sec_runs": sps, "eval_auc": med["eval_auc"],
            "eval_logloss": med["eval_logloss"], "true_prob_auc": round(auc(y, p), 6),
            "progressive_auc": med["progressive_auc"], "train_logloss": med["train_logloss"],
            "input_seconds": med["input_seconds"], "train_seconds": med["train_seconds"],
            "peak_rss_mb": med["peak_rss_mb"]}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
