"""The documented incremental chain (examples/incremental_chain.py) on 2 ranks: three
drifting synthetic windows, each job from the previous checkpoint; the chained model
beats one trained on the latest window alone on the same held-out rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, ROOT


@pytest.mark.mpi
def test_chained_windows_beat_the_latest_window_alone(tmp_path: Path) -> None:
    cfg = tmp_path / "small.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 4096"))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "incremental_chain.py"),
                        "--ranks", "2", "--rows", "8000", "--config", str(cfg),
                        "--workdir", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:4]] == ["window 0", "window 1", "window 2",
                                                       "last window alone"]
    out = json.loads(lines[-1])
    assert [w["window"] for w in out["windows"]] == [0, 1, 2]
    assert out["chained_beats_alone"], out
    # each window's checkpoint was written and the next job started from it
    assert all((tmp_path / "work" / f"model{w}").is_dir() for w in range(3))
