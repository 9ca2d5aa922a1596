#!/usr/bin/env python3
"""What periodic checkpoints cost a window: the canonical config on N rows, `recs train`
on --ranks ranks, three ways interleaved per repetition: no periodic checkpoint, one every
--every steps as increments (the default: a whole one every 8), and one every --every
steps all whole (--full-checkpoint-every 1). Per run: the pass's seconds and each save's
seconds (the slowest rank's) and kind. Prints one JSON object with the medians: the
increment's cost against a whole save's, and the window with increments against the one
without (paired per repetition).

    python bench/bench_periodic.py --rows 1000000 --every 100 --ranks 2 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recs_core.data.synth import generate  # noqa: E402


def run(a: argparse.Namespace, data: Path, work: Path, extra: list[str]) -> dict:
    save = work / "save"
    shutil.rmtree(save, ignore_errors=True)
    cmd = [str(ROOT / "mpi_launch.sh"), "-n", str(a.ranks), sys.executable, "-m", "recs_core",
           "train", "--config", a.config, "--data", str(data), "--quiet", "--save", str(save),
           *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RECS_PROGRESS_EVERY="0")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    each = out.get("checkpoint", {}).get("each", [])
    return {"seconds": out["seconds"], "samples_per_sec": out["samples_per_sec"],
            "saves": each[:-1], "final": each[-1] if each else None,
            "bytes": sum(f.stat().st_size for f in save.rglob("*.npy"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--data", help="a data file (default: generated, --rows rows, seed 1)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_periodic-"))
    try:
        data = Path(a.data) if a.data else work / "d.txt"
        if not a.data:
            generate(data, a.rows, seed=1)
        ways = {"none": [], "increments": ["--checkpoint-every", str(a.every)],
                "whole": ["--checkpoint-every", str(a.every), "--full-checkpoint-every", "1"]}
        runs: dict[str, list[dict]] = {k: [] for k in ways}
        for rep in range(a.reps):
            order = list(ways) if rep % 2 == 0 else list(reversed(ways))
            for k in order:
                runs[k].append(run(a, data, work, ways[k]))
        inc = [s for r in runs["increments"] for s, kind in r["saves"] if kind == "increment"]
        whole = [s for r in runs["whole"] for s, _ in r["saves"]]
        pairs = [i["seconds"] / n["seconds"] for i, n in zip(runs["increments"], runs["none"])]
        out = {"date": time.strftime("%Y-%m-%d"), "rows": a.rows, "every": a.every,
               "ranks": a.ranks, "reps": a.reps,
               "increment_save_s_median": statistics.median(inc) if inc else None,
               "whole_save_s_median": statistics.median(whole) if whole else None,
               "increment_over_whole": (statistics.median(inc) / statistics.median(whole)
                                        if inc and whole else None),
               "window_with_increments_over_none_per_pair": [round(x, 4) for x in pairs],
               "window_with_increments_over_none": statistics.median(pairs),
               "window_with_whole_over_none": statistics.median(
                   w["seconds"] / n["seconds"] for w, n in zip(runs["whole"], runs["none"])),
               "runs": runs}
        print(json.dumps(out))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
