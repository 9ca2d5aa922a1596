"""Preemption: SIGTERM (or SIGINT, SIGUSR1) to any rank or to mpiexec stops every rank at
the same step boundary; ``recs train`` writes a checkpoint into its save root, prints its
JSON with ``"preempted": true`` and exits with EXIT_PREEMPTED (75); ``--resume`` then ends
bit-identical to an uninterrupted run. A second signal aborts. ``--checkpoint-every`` as
a duration checkpoints at steps the ranks agree on.

Signals are real, sent to a rank or to mpiexec as a scheduler would (Kubernetes and
Slurm send SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recs_core.checkpoint import load_manifest
from recs_core.cli import main
from recs_core.errors import EXIT_PREEMPTED, RecsError
from recs_core.sched.training_pass import StepHook
from recs_core.train.command import checkpoint_interval
from recs_core.train.job import Job
from tests.conftest import CONFIGS, ROOT, mpiexec, run_mpi, small_test_spec
from tests.test_abort import _Job, survivors
from tests.test_incremental import FIGURES, hashes, last_json, rank_pid, small_config, train_cmd

EVERY = "10"  # periodic checkpoints of the MPI tests' windows (94 steps)


# ---- one process: the library and the command ---------------------------------------------

@pytest.mark.parametrize("mode", ["sequential", "recs"])
def test_request_stop_ends_the_pass_at_a_step_and_resumes_bit_identical(
        two_windows: tuple[Path, Path], tmp_path: Path, mode: str) -> None:
    data = two_windows[0]

    def spec():  # noqa: ANN202
        return small_test_spec(fitted=True, optimizer="adagrad")

    full = Job(spec())
    ref = full.run([data], eval_fraction=0.2, mode=mode)
    final = full.save_step(tmp_path / "ref")
    job = Job(spec())
    out = job.run([data], eval_fraction=0.2, mode=mode,
                  hook=StepHook(3, lambda _: job.request_stop()))
    # asked after step 3: sequential admits each batch at its step, recs one step ahead
    assert out["preempted"] and out["window_steps"] == (3 if mode == "sequential" else 4)
    assert out["eval_rows"] == 0 and out["eval_auc"] is None  # the held-out rows: later
    assert ref["preempted"] is False
    saved = job.checkpoint(tmp_path / "a")
    assert job.checkpoint(tmp_path / "a") == saved  # already there: not written twice
    assert load_manifest(saved).meta["window"]["done"] is False
    again = Job(spec())
    again.resume(saved)
    got = again.run([data], eval_fraction=0.2, mode=mode)
    assert {k: got[k] for k in FIGURES} == {k: ref[k] for k in FIGURES}
    assert hashes(again.save_step(tmp_path / "b")) == hashes(final)


@pytest.fixture(scope="module")
def cli_cfg(tmp_path_factory) -> Path:
    cfg = tmp_path_factory.mktemp("cfg") / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 128"))
    return cfg


def _signal_self(monkeypatch, target: str, *gaps: float) -> None:  # noqa: ANN001
    """SIGTERM this process when the job reaches ``target`` ("setup": the JIT warm-up
    before the pass; "eval": the held-out rows after it), again after each of ``gaps``."""
    import recs_core.train.job as job_module

    def send() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for gap in gaps:
            time.sleep(gap)
            os.kill(os.getpid(), signal.SIGTERM)

    if target == "setup":
        original = job_module.warm_up

        def warm_up(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            send()
            return original(*args, **kw)

        monkeypatch.setattr(job_module, "warm_up", warm_up)
    else:
        original_eval = Job._evaluate

        def evaluate(self, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            send()
            return original_eval(self, *args, **kw)

        monkeypatch.setattr(Job, "_evaluate", evaluate)


def _last_line(capsys) -> tuple[dict, str]:  # noqa: ANN001
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_a_signal_while_setting_up_stops_before_the_first_step(
        two_windows: tuple[Path, Path], cli_cfg: Path, tmp_path: Path, capsys,
        monkeypatch) -> None:
    args = ["train", "--config", str(cli_cfg), "--data", str(two_windows[0]), "--quiet",
            "--eval-fraction", "0.1"]
    assert main(args + ["--save", str(tmp_path / "ref")]) == 0
    ref, _ = _last_line(capsys)
    with monkeypatch.context() as m:
        _signal_self(m, "setup")
        assert main(args + ["--save", str(tmp_path / "r"), "--checkpoint-every", "3"]) \
            == EXIT_PREEMPTED
    out, err = _last_line(capsys)
    assert out["preempted"] and out["train_rows"] == 0 and out["window_steps"] == 0
    assert out["saved"] == str(tmp_path / "r" / "step-000000000")
    assert load_manifest(out["saved"]).meta["window"] == {
        **load_manifest(out["saved"]).meta["window"], "steps": 0, "done": False}
    assert "no rows trained" not in err  # (the window is not over)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handler: gone
    assert main(args + ["--resume", str(tmp_path / "r"), "--checkpoint-every", "3"]) == 0
    got, _ = _last_line(capsys)
    assert {k: got[k] for k in FIGURES} == {k: ref[k] for k in FIGURES}
    assert hashes(got["saved"]) == hashes(ref["saved"])


def test_a_signal_after_the_pass_lets_the_window_finish(
        two_windows: tuple[Path, Path], cli_cfg: Path, tmp_path: Path, capsys,
        monkeypatch) -> None:
    _signal_self(monkeypatch, "eval")
    args = ["train", "--config", str(cli_cfg), "--data", str(two_windows[0]), "--quiet",
            "--eval-fraction", "0.1", "--save", str(tmp_path / "r")]
    assert main(args) == 0  # held-out rows scored, final checkpoint written: nothing to resume
    out, _ = _last_line(capsys)
    assert out["preempted"] is False and out["eval_rows"] > 0
    assert load_manifest(out["saved"]).meta["window"]["done"] is True


def test_without_a_save_root_nothing_is_kept_and_the_status_says_so(
        two_windows: tuple[Path, Path], cli_cfg: Path, capsys, monkeypatch) -> None:
    _signal_self(monkeypatch, "setup")
    code = main(["train", "--config", str(cli_cfg), "--data", str(two_windows[0]), "--quiet"])
    assert code == 128 + signal.SIGTERM  # not resumable
    out, err = _last_line(capsys)
    assert out["preempted"] and "saved" not in out
    assert "recs: warning: preempted without --save or --resume: nothing was saved" in err


def test_a_second_signal_aborts(two_windows: tuple[Path, Path], cli_cfg: Path, tmp_path: Path,
                                capsys, monkeypatch) -> None:
    # the first asks to stop; the same one again within 1 s is the same request
    # (delivered to the ranks and to mpiexec); one after that aborts
    _signal_self(monkeypatch, "setup", 0.2, 1.2)
    code = main(["train", "--config", str(cli_cfg), "--data", str(two_windows[0]), "--quiet",
                 "--save", str(tmp_path / "r")])
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "recs: interrupted"
    assert not list((tmp_path / "r").glob("step-*"))


@pytest.mark.parametrize("text,want", [("200", (200, None)), ("300s", (None, 300.0)),
                                       ("5m", (None, 300.0)), ("1h", (None, 3600.0)),
                                       ("0.5s", (None, 0.5))])
def test_checkpoint_every_takes_steps_or_a_duration(text: str, want: tuple) -> None:
    assert checkpoint_interval(text) == want


@pytest.mark.parametrize("text", ["0", "-3", "5x", "m", "0s", "infs", "1.5"])
def test_checkpoint_every_refuses_other_values_with_one_line(text: str) -> None:
    with pytest.raises(RecsError, match=r"^--checkpoint-every takes a number of steps >= 1 "
                                        r"\(200\) or a duration \(300s, 5m, 1h\), got "):
        checkpoint_interval(text)


# ---- several ranks, real signals ------------------------------------------------------------

@pytest.fixture(scope="module")
def window(tmp_path_factory) -> dict:
    """A window of 12,000 synthetic rows (94 steps of 128) and its uninterrupted runs,
    made on first use per number of ranks."""
    from recs_core.data.synth import generate

    d = tmp_path_factory.mktemp("preempt")
    data = d / "window.txt"
    generate(data, 12_000, seed=3)
    cfg = small_config(d, 128)
    refs: dict[int, dict] = {}

    def reference(n: int) -> dict:
        if n not in refs:
            refs[n] = last_json(run_mpi(n, train_cmd(cfg, data, "--save", str(d / f"ref{n}"),
                                                     "--eval-fraction", "0.1"), timeout=600))
        return refs[n]

    return {"dir": d, "data": data, "cfg": cfg, "reference": reference}


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (recs train installs its own as
    it starts; before, SIGTERM ends the process)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def _launch(n: int, cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def _wait_for(proc: subprocess.Popen, path: Path, limit: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, "the job ended early: " + proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < limit, f"no {path} within {limit} s"
        time.sleep(0.02)


def assert_preempted(proc: subprocess.Popen, ranks: list[int], limit: float = 30) -> dict:
    """The job ends within ``limit`` s of the signal with EXIT_PREEMPTED, no rank left, a
    complete checkpoint of the unfinished window, and the JSON (preempted) last on stdout;
    returns the JSON."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=limit + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not end")
    took = time.monotonic() - t0
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert took < limit, f"the job took {took:.1f} s to end"
    assert not survivors(ranks, 0.0), "a rank outlived mpiexec"
    got = json.loads(out.strip().splitlines()[-1])
    assert got["preempted"] is True
    m = load_manifest(got["saved"])  # complete (verified)
    assert m.meta["window"]["done"] is False and m.meta["step"] == got["global_step"]
    assert {r["steps"] for r in m.rank_meta} == {got["window_steps"]}
    return got


@pytest.mark.mpi
@pytest.mark.parametrize("n,target", [(2, "mpiexec"), (2, "rank"), (3, "mpiexec"),
                                      (3, "rank")])
def test_sigterm_mid_window_checkpoints_and_resumes_bit_identical(window: dict, n: int,
                                                                  target: str) -> None:
    ref = window["reference"](n)
    root = window["dir"] / f"{target}{n}"
    cmd = train_cmd(window["cfg"], window["data"], "--save", str(root), "--eval-fraction",
                    "0.1", "--checkpoint-every", EVERY)
    proc = _launch(n, cmd)
    try:
        _wait_for(proc, root / f"step-{int(EVERY):09d}" / "manifest.json")
        ranks = [rank_pid(str(root), r) for r in range(n)]
        # mpiexec forwards it to every rank; to one rank, the others learn it in the next
        # step agreement
        os.kill(proc.pid if target == "mpiexec" else ranks[n - 1], signal.SIGTERM)
        got = assert_preempted(proc, ranks)
    finally:
        if proc.poll() is None:
            proc.kill()
    # mid-window (at the periodic checkpoint's step when the request rode on the batch
    # admitted right after it: that one is the preemption checkpoint then)
    assert int(EVERY) <= got["window_steps"] < ref["window_steps"]
    out = last_json(run_mpi(n, train_cmd(window["cfg"], window["data"], "--resume", str(root),
                                         "--eval-fraction", "0.1", "--checkpoint-every",
                                         EVERY), timeout=600))
    assert out["checkpoint"]["resumed_at_step"] == got["window_steps"]
    assert {k: out[k] for k in FIGURES} == {k: ref[k] for k in FIGURES}
    assert hashes(out["saved"]) == hashes(ref["saved"])


@pytest.mark.mpi
def test_sigterm_during_a_periodic_save_lets_it_finish(window: dict, tmp_path: Path) -> None:
    """SIGTERM to rank 0 while the ranks write a periodic checkpoint (the last rank's
    files slowed down): the save completes, the ranks stop at the next step boundary and
    write the preemption checkpoint."""
    root = tmp_path / "ck"
    job = _Job(2, tmp_path, ["--slow-save", "1:0.01"],
               ["train", "--config", str(window["cfg"]), "--data", str(window["data"]),
                "--quiet", "--save", str(root), "--checkpoint-every", EVERY])
    try:
        job.wait_saving()
        os.kill(job.pid(0), signal.SIGTERM)
        got = assert_preempted(job.proc, [job.pid(0), job.pid(1)], limit=60)
    finally:
        job.cleanup()
    assert (root / f"step-{int(EVERY):09d}" / "manifest.json").exists()
    assert got["window_steps"] >= int(EVERY)


@pytest.mark.mpi
@pytest.mark.parametrize("target", ["rank", "mpiexec"])
def test_a_second_sigterm_aborts_the_preemption_checkpoint(window: dict, tmp_path: Path,
                                                           target: str) -> None:
    """The first SIGTERM stops the job and starts its checkpoint (slowed down on the last
    rank); a second, during that save, aborts every rank: nothing published."""
    root = tmp_path / "ck"
    job = _Job(2, tmp_path, ["--slow-save", "1:0.5"],
               ["train", "--config", str(window["cfg"]), "--data", str(window["data"]),
                "--quiet", "--save", str(root)])
    try:
        job.wait_for(lambda: all((tmp_path / f"rank{r}.pid").exists()
                                 and catches_sigterm(job.pid(r)) for r in (0, 1)),
                     "the stop handlers")
        pid = job.pid(1) if target == "rank" else job.proc.pid
        os.kill(pid, signal.SIGTERM)
        job.wait_saving()
        time.sleep(1.2)
        os.kill(pid, signal.SIGTERM)
        took, err = job.ended_within(60)
        assert job.proc.returncode not in (0, EXIT_PREEMPTED)
        assert "recs: interrupted (rank" in err, err[-3000:]
        assert took < 30, err[-3000:]
        assert not survivors([job.pid(0), job.pid(1)])
        assert not list(root.glob("step-*/manifest.json"))
    finally:
        job.cleanup()


@pytest.mark.mpi
def test_checkpoint_every_seconds_saves_at_agreed_steps_and_resumes_bit_identical(
        window: dict, tmp_path: Path) -> None:
    ref = window["reference"](2)
    root = tmp_path / "timed"
    out = last_json(run_mpi(2, train_cmd(window["cfg"], window["data"], "--save", str(root),
                                         "--eval-fraction", "0.1", "--checkpoint-every",
                                         "0.1s", "--keep-checkpoints", "1000",
                                         "--full-checkpoint-every", "3"), timeout=600))
    assert hashes(out["saved"]) == hashes(ref["saved"])  # saving changes nothing
    periodic = sorted(p for p in root.glob("step-*") if p.name != Path(out["saved"]).name)
    assert len(periodic) >= 2, [p.name for p in periodic]
    for p in periodic:  # each written at one step by both ranks
        m = load_manifest(p)
        step = int(p.name.split("-")[1])
        assert m.meta["step"] == m.meta["window"]["steps"] == step
        assert [r["steps"] for r in m.rank_meta] == [step, step]
    assert out["checkpoint"]["saves"] == len(periodic) + 1
    middle = periodic[len(periodic) // 2]
    again = last_json(run_mpi(2, train_cmd(window["cfg"], window["data"], "--resume",
                                           str(middle), "--save", str(tmp_path / "rest"),
                                           "--eval-fraction", "0.1"), timeout=600))
    assert again["checkpoint"]["resumed_at_step"] == int(middle.name.split("-")[1])
    assert {k: again[k] for k in FIGURES} == {k: ref[k] for k in FIGURES}
    assert hashes(again["saved"]) == hashes(ref["saved"])
