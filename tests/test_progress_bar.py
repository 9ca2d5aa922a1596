"""The progress line: redrawn in place on a terminal; in logs (not a terminal) a plain
timestamped line every RECS_PROGRESS_EVERY seconds, and one at the end."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recs_core.progress_bar import ProgressBar
from tests.conftest import CONFIGS, ROOT


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn() -> None:
    out = _Tty()
    bar = ProgressBar("train", stream=out, every=0.0)
    bar.update(10, "logloss 0.5")
    bar.update(20)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and "train: 20 rows" in text


def test_a_log_gets_plain_lines_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECS_PROGRESS_EVERY", "0.05")
    out = io.StringIO()
    bar = ProgressBar("train", stream=out)
    bar.update(5)  # before the interval: nothing
    assert out.getvalue() == ""
    bar.last -= 1.0
    bar.update(100, "logloss 0.4")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ recs train: 100 rows, [\d,]+ rows/s "
                    r"logloss 0\.4, \d+ s$", lines[0]), lines
    monkeypatch.setenv("RECS_PROGRESS_EVERY", "0")
    quiet = io.StringIO()
    bar = ProgressBar("train", stream=quiet)
    bar.last -= 100
    bar.update(1)
    bar.close()
    assert quiet.getvalue() == ""


def test_recs_train_logs_progress_when_stderr_is_a_file(tmp_path: Path, criteo_sample) -> None:
    """7909061 printed nothing on a non-terminal stderr (cron, Kubernetes, Slurm logs)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 64"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), RECS_PROGRESS_EVERY="0.001")
    r = subprocess.run([sys.executable, "-m", "recs_core", "train", "--config", str(cfg),
                        "--data", str(criteo_sample)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if " recs train: " in ln]
    assert len(lines) >= 2 and "logloss" in lines[-1]
    assert json.loads(r.stdout.splitlines()[-1])["train_rows"] == 5760
