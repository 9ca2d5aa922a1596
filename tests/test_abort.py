"""Every failure on one rank ends every rank, within a bound, with that rank's message:
any exception (not only a RecsError), a second Ctrl-C at any point (also while a
checkpoint is being written, when the other ranks wait in its collectives; the first
asks ``recs train`` to stop at a step boundary: tests/test_preemption.py), and a stopped
rank (the others' deadline, ``--comm-timeout``, ends the job, mpiexec included).

Failures are injected by tests/mpi/inject.py, which patches the library in the ranks'
processes (the library has no such hook); signals are real, sent to a rank or to
mpiexec as Ctrl-C in a terminal would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recs_core.errors import EXIT_PREEMPTED
from tests.conftest import ROOT, mpiexec, run_mpi

INJECT = str(ROOT / "tests" / "mpi" / "inject.py")


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory) -> Path:
    from tests.test_distributed_train import small_config

    return small_config(tmp_path_factory.mktemp("cfg"), 64)


@pytest.fixture(scope="module")
def warm(sample_1200: Path, small_cfg: Path, tmp_path_factory) -> None:
    """One 2-rank run like the tests' (Numba compiles and caches its kernels): a first
    compile, minutes on a loaded machine and not in step across ranks, would pass a short
    deadline before any rank is stopped."""
    d = tmp_path_factory.mktemp("warm")
    r = run_mpi(2, ["-m", "recs_core", *_train(small_cfg, sample_1200, "--save", str(d),
                                               "--checkpoint-every", "4")], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


def _train(cfg: Path, data: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--data", str(data), "--quiet", *extra]


@pytest.mark.mpi
@pytest.mark.parametrize("n,kind", [(2, "RuntimeError"), (2, "OSError"), (3, "MemoryError")])
def test_any_error_on_one_rank_ends_every_rank(sample_1200: Path, small_cfg: Path, n: int,
                                               kind: str) -> None:
    bad = n - 1
    t0 = time.monotonic()
    # (before: the other ranks waited for the 300 s deadline, or for ever in a collective)
    r = run_mpi(n, [INJECT, "--raise", f"{bad}:{kind}:3", "--", *_train(small_cfg, sample_1200)],
                timeout=150)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert f"recs: error: {kind}: injected {kind} on rank {bad} at batch 3 (rank {bad})" \
        in r.stderr, r.stderr[-3000:]
    assert took < 90, f"the job took {took:.0f} s to end"


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def survivors(pids: list[int], grace: float = 5.0) -> list[int]:
    """Those of ``pids`` still running after up to ``grace`` s (a rank that mpiexec or
    MPI_Abort killed may outlive mpiexec by a moment)."""
    t0 = time.monotonic()
    while [p for p in pids if alive(p)] and time.monotonic() - t0 < grace:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


class _Job:
    """An mpiexec job of inject.py whose ranks mark their pid and the start of each
    checkpoint save in ``marks``."""

    def __init__(self, n: int, marks: Path, inject: list[str], recs: list[str]) -> None:
        self.n, self.marks = n, marks
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [mpiexec(), "-n", str(n), sys.executable, INJECT, "--marks", str(marks), *inject,
             "--", *recs], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=ROOT)

    def pid(self, rank: int, what: str = "pid") -> int:
        return int((self.marks / f"rank{rank}.{what}").read_text())

    def wait_for(self, ready, what: str, limit: float = 240) -> None:  # noqa: ANN001
        t0 = time.monotonic()
        while not ready():
            assert self.proc.poll() is None, f"the job ended before {what}: " + \
                self.proc.communicate()[1][-3000:]
            assert time.monotonic() - t0 < limit, f"no {what} within {limit} s"
            time.sleep(0.05)

    def wait_saving(self) -> None:
        """Until every rank is inside a checkpoint save."""
        self.wait_for(lambda: all((self.marks / f"rank{r}.saving").exists()
                                  for r in range(self.n)), "checkpoint save")

    def ended_within(self, limit: float) -> tuple[float, str]:
        """Seconds until mpiexec ended (fails past ``limit``) and its stderr (its stdout
        in ``self.out``)."""
        t0 = time.monotonic()
        try:
            self.out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not end within {limit} s")
        return time.monotonic() - t0, err

    def cleanup(self) -> None:
        for r in range(self.n):  # a stopped rank the test left behind
            try:
                pid = self.pid(r)
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.mpi
@pytest.mark.parametrize("n,target", [(2, "waiting"), (2, "writing"), (2, "mpiexec"),
                                      (3, "waiting")])
def test_ctrl_c_twice_during_a_checkpoint_write_ends_every_rank(
        sample_1200: Path, small_cfg: Path, tmp_path: Path, n: int, target: str) -> None:
    """Two SIGINTs, 1.5 s apart, to a rank waiting in the save's collectives (its files
    written), to the rank still writing (slowed down), or to mpiexec (Ctrl-C twice in a
    terminal: it forwards the first to every rank, and ends them on the second). The
    first asks the job to stop after the save; the second aborts it. Before: the job
    hung for good."""
    job = _Job(n, tmp_path, ["--slow-save", f"{n - 1}:0.5"],
               _train(small_cfg, sample_1200, "--save", str(tmp_path / "ck"),
                      "--checkpoint-every", "4"))
    try:
        job.wait_saving()
        time.sleep(1.0)  # rank 0 has written its shard and waits; the last rank writes
        pid = {"waiting": job.pid(0), "writing": job.pid(n - 1), "mpiexec": job.proc.pid}
        os.kill(pid[target], signal.SIGINT)
        time.sleep(1.5)  # (one within 1 s of the first is the same request delivered twice)
        os.kill(pid[target], signal.SIGINT)
        took, err = job.ended_within(60)
        if target == "mpiexec":  # it kills the ranks itself on a second Ctrl-C (its status:
            assert job.proc.returncode != EXIT_PREEMPTED  # 0 or 255, seen with MPICH 5.0.2)
        else:
            assert job.proc.returncode not in (0, EXIT_PREEMPTED)
            assert "recs: interrupted (rank" in err, err[-3000:]
        assert took < 30, f"the job took {took:.0f} s to end"
        assert not survivors([job.pid(r) for r in range(n)])
        assert not (tmp_path / "ck" / "step-000000004").exists()  # not published
    finally:
        job.cleanup()


@pytest.mark.mpi
@pytest.mark.parametrize("n,when", [(2, "save"), (3, "save"), (2, "pass")])
def test_a_stopped_rank_ends_the_job_within_the_deadline(sample_1200: Path, small_cfg: Path,
                                                         tmp_path: Path, warm: None, n: int,
                                                         when: str) -> None:
    """SIGSTOP the last rank while it writes its checkpoint shard (the others wait in the
    save's gather) or mid-pass: the others' deadline (--comm-timeout 5) ends the job,
    mpiexec included, though the stopped rank never runs again. Before: the save's
    collectives had no deadline (a hang for good), and the deadline was 300 s, fixed."""
    deadline = 5
    if when == "save":
        inject = ["--slow-save", f"{n - 1}:0.5"]
        data, every = sample_1200, "4"
    else:  # a long pass, stopped after its first checkpoint
        from recs_core.data.synth import generate

        data = tmp_path / "long.txt"
        generate(data, 60_000, seed=3)
        inject, every = [], "10"
    job = _Job(n, tmp_path, inject, _train(small_cfg, data, "--save", str(tmp_path / "ck"),
                                           "--checkpoint-every", every, "--comm-timeout",
                                           str(deadline)))
    try:
        if when == "save":
            job.wait_saving()
            time.sleep(1.0)
        else:
            job.wait_for(lambda: (tmp_path / "ck" / "step-000000010").exists(),
                         "first checkpoint")
            time.sleep(0.5)
        os.kill(job.pid(n - 1), signal.SIGSTOP)
        took, err = job.ended_within(120)
        assert job.proc.returncode != 0
        assert f"did not complete within {deadline} s" in err, err[-3000:]
        assert took < deadline + 20, f"the job took {took:.0f} s to end"
    finally:
        job.cleanup()


def test_comm_timeout_must_be_positive(sample_1200: Path, small_cfg: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "recs_core", *_train(small_cfg, sample_1200,
                                                                   "--comm-timeout", "0")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "recs: error: --comm-timeout must be a positive number of seconds, got 0"]


@pytest.mark.mpi
def test_a_rank_failing_before_mpi_starts_ends_every_rank(sample_1200: Path, small_cfg: Path,
                                                          tmp_path: Path) -> None:
    """One rank given a config that does not exist (MPMD launch) fails before it starts
    MPI; it starts MPI to end the others, which wait in MPI_Init. Before: they waited
    there for ever."""
    py = [sys.executable, "-m", "recs_core"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    missing = tmp_path / "missing.toml"
    t0 = time.monotonic()
    r = subprocess.run([mpiexec(), "-n", "1", *py, *_train(small_cfg, sample_1200), ":",
                        "-n", "1", *py, *_train(missing, sample_1200)], capture_output=True,
                       text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2
    assert f"recs: error: {missing}: config file not found (rank 1)" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60
