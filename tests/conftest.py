"""Shared fixtures: paths to the real samples and helpers to write small input files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CRITEO_SAMPLE = SHARED / "data" / "criteo" / "train.txt"
CONFIGS = ROOT / "configs"


def mpiexec() -> str:
    """The mpiexec next to the running Python (the one the setup installed), else PATH's."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: run the setup command in README.md")
    return found


def run_mpi(n: int, args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run ``python args...`` on n ranks and return the completed process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, **kw)


@pytest.fixture
def criteo_sample() -> Path:
    if not CRITEO_SAMPLE.exists():
        pytest.fail(f"real sample missing: {CRITEO_SAMPLE} (shared/ is laid beside the repo)")
    return CRITEO_SAMPLE


@pytest.fixture(scope="module")
def sample_1200(tmp_path_factory) -> Path:
    """The first 1,200 rows of the real Criteo sample (time-ordered), as a file."""
    src = ROOT.parent / "shared" / "data" / "criteo" / "train.txt"
    p = tmp_path_factory.mktemp("data") / "head.txt"
    p.write_text("".join(src.read_text().splitlines(keepends=True)[:1200]))
    return p
