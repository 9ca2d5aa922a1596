#!/usr/bin/env python3
"""The chain README shows (docs/images/chain.png): `recs follow --ranks 2` over six hourly
windows of a drifting synthetic stream landed one after another, where window 2 has its
labels shuffled (withheld by the gate), window 3 is broken lines (quarantined), and
window 4 is preempted (SIGTERM to the supervisor mid-window) and finished on 3 ranks
after a restart; then `recs report STATE --png PNG`.

    python examples/chain_report.py --rows 60000 --png docs/images/chain.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recs_core.data.synth import generate  # noqa: E402


def land(landing: Path, i: int, lines: list[str]) -> None:
    w = landing / "dt=2026-12-07" / f"hour={i:02d}"
    w.mkdir(parents=True)
    (w / "part-00000.txt").write_text("".join(lines))
    (w / "_SUCCESS").write_text("")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=60_000, help="rows per window")
    ap.add_argument("--png", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chain-report-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), RECS_PROGRESS_EVERY="0")
    try:
        landing, state, pub = work / "land", work / "state", work / "pub"
        landing.mkdir()
        windows = []
        for i in range(6):
            src = work / f"w{i}.txt"
            generate(src, a.rows, seed=7, window=i, drift=0.05)
            windows.append(src.read_text().splitlines(keepends=True))
        labels = [ln.split("\t", 1)[0] for ln in windows[2]]
        np.random.default_rng(0).shuffle(labels)
        windows[2] = [f"{y}\t{ln.split(chr(9), 1)[1]}" for y, ln in zip(labels, windows[2])]
        windows[3] = ["not\ta\tcriteo\tline\n"] * 500
        cmd = [sys.executable, "-m", "recs_core", "follow", "--config", a.config, "--watch",
               str(landing), "--state", str(state), "--publish", str(pub), "--poll", "1",
               "--checkpoint-every", "10"]
        for i in range(4):
            land(landing, i, windows[i])
        r = subprocess.run([*cmd, "--ranks", "2", "--once"], env=env, cwd=ROOT)
        if r.returncode != 0:
            return r.returncode
        land(landing, 4, windows[4])
        sup = subprocess.Popen([*cmd, "--ranks", "2", "--once"], env=env, cwd=ROOT)
        steps = state / "windows" / "dt=2026-12-07__hour=04" / "ckpt"
        while not any(steps.glob("step-*/manifest.json")) and sup.poll() is None:
            time.sleep(0.2)
        sup.send_signal(signal.SIGTERM)  # preempted mid-window
        print(json.dumps({"preempted_supervisor_rc": sup.wait()}), file=sys.stderr)
        land(landing, 5, windows[5])
        r = subprocess.run([*cmd, "--ranks", "3", "--once"], env=env, cwd=ROOT)
        if r.returncode != 0:
            return r.returncode
        return subprocess.run([sys.executable, "-m", "recs_core", "report", str(state),
                               "--png", a.png], env=env, cwd=ROOT).returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
