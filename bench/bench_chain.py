#!/usr/bin/env python3
"""What a chain costs per window besides training: `recs follow` over N landed windows of
R rows each (synthetic, drifting), then each window's parts from the ledger: launch (the
job's wall time outside its own command), load, train (the pass), save, delta, and the
supervisor's gate + publish. Prints one JSON object; the overhead is (wall - train) /
train per window, medians over the windows after the first (which has nothing to load,
compare or publish a delta of).

    python bench/bench_chain.py --rows 2000000 --windows 4 --ranks 2 --dir /tmp/chain
    python bench/bench_chain.py --rows 2000000 --windows 4 --ranks 2 --dir /tmp/chain --relaunch

(``--dir`` keeps the generated windows for the next run.)
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
from recs_core.follow.ledger import Ledger  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows per window")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--checkpoint-every", default=None,
                    help="passed to recs follow (default: none)")
    ap.add_argument("--relaunch", action="store_true",
                    help="recs follow --relaunch: a job per window (default: one worker)")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="bench_chain-"))
    try:
        landing = work / "land"
        for i in range(a.windows):
            w = landing / "dt=2026-12-07" / f"hour={i:02d}"
            w.mkdir(parents=True, exist_ok=True)
            if not (w / "_SUCCESS").exists():
                generate(w / "part-00000.txt", a.rows, seed=11, window=i, drift=0.05)
                (w / "_SUCCESS").write_text("")
        state, pub = work / "state", work / "pub"
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(pub, ignore_errors=True)
        cmd = [sys.executable, "-m", "recs_core", "follow", "--config", a.config, "--watch",
               str(landing), "--state", str(state), "--publish", str(pub), "--once",
               "--ranks", str(a.ranks)]
        if a.checkpoint_every:
            cmd += ["--checkpoint-every", a.checkpoint_every]
        if a.relaunch:
            cmd.append("--relaunch")
        env = dict(os.environ, PYTHONPATH=str(ROOT), RECS_PROGRESS_EVERY="0")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        windows = []
        for wid, st in Ledger(state).windows().items():
            f = st.fields
            parts = f.get("parts") or {}
            job = f.get("seconds") or 0.0
            train = parts.get("train") or 0.0
            windows.append({"window": wid, "status": st.status, "rows": f.get("rows"),
                            "job_seconds": job, "parts": parts,
                            "overhead": round((job + (parts.get("publish") or 0) - train)
                                              / train, 4) if train else None})
        later = [w["overhead"] for w in windows[1:] if w["overhead"] is not None]
        out = {"rows_per_window": a.rows, "windows": a.windows, "ranks": a.ranks,
               "mode": "relaunch" if a.relaunch else "worker",
               "wall_seconds": round(wall, 2), "per_window": windows,
               "overhead_median": statistics.median(later) if later else None,
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(out))
        return 0
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
