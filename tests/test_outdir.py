"""Output directories: the checks before a job writes (save roots, delta targets), the
save directory's lock (owner, second job, stale lock taken over by exactly one job),
the cleanup of a failed save's staging, and prune's scope."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint import export_delta, prune, read_delta, read_rank, save, save_step
from recs_core.checkpoint.outdir import (
    LOCK,
    SaveLock,
    check_delta_target,
    check_save_root,
    claim_outputs,
)
from recs_core.errors import RecsError
from tests.conftest import ROOT

ARRAYS = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64)}


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(root: Path, pid: int, host: str | None = None) -> dict:
    owner = {"host": host or socket.gethostname(), "pid": pid, "started": "then",
             "token": "ab"}
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK).write_text(json.dumps(owner))
    return owner


# ---- the lock ----------------------------------------------------------------------------

def test_lock_names_its_owner_and_refuses_a_second_job(tmp_path: Path) -> None:
    root = tmp_path / "models"
    with SaveLock(root) as lock:
        owner = json.loads((root / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["started"] and lock.took_over is None
        with pytest.raises(RecsError, match=f"locked by another job \\(pid {os.getpid()} on "):
            SaveLock(root).acquire()
        assert (root / LOCK).exists()  # the refused job did not touch it
    assert not (root / LOCK).exists()  # released
    SaveLock(root).acquire().release()


def test_a_live_jobs_lock_is_kept(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = write_lock(tmp_path, other.pid)
        with pytest.raises(RecsError, match=f"pid {other.pid} .* remove .*{LOCK}"):
            SaveLock(tmp_path).acquire()
        assert json.loads((tmp_path / LOCK).read_text()) == before
    finally:
        other.kill()
        other.wait()


def test_a_live_lease_of_another_host_is_kept_and_an_expired_one_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = write_lock(tmp_path, dead_pid(), host="some-other-node")  # fresh: just written
    with pytest.raises(RecsError, match="on some-other-node since then, refreshed 0 s ago"):
        SaveLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK).read_text()) == before
    # not refreshed for longer than the lease (30 s by default): its holder is gone
    old = time.time() - 31
    os.utime(tmp_path / LOCK, (old, old))
    with SaveLock(tmp_path) as lock:
        assert lock.took_over == before
    monkeypatch.setenv("RECS_LEASE_SECONDS", "100")  # the lock's own length counts (30 s)
    owner = write_lock(tmp_path, dead_pid(), host="some-other-node") | {"lease_s": 30}
    (tmp_path / LOCK).write_text(json.dumps(owner))
    os.utime(tmp_path / LOCK, (old, old))
    with SaveLock(tmp_path) as lock:
        assert lock.took_over is not None


HOLDER = """
import sys, time
from pathlib import Path
from recs_core.checkpoint.outdir import SaveLock
from recs_core.errors import RecsError
lock = SaveLock(sys.argv[1]).acquire()
print("held", flush=True)
ask = Path(sys.argv[2])
while not ask.exists():
    time.sleep(0.01)
try:
    lock.check()
except RecsError as e:
    print("lost", e, flush=True)
else:
    print("kept", flush=True)
lock.release()
"""


def _holder(root: Path, ask: Path, host: str, lease: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RECS_HOST_ID=host,
               RECS_LEASE_SECONDS=str(lease))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(ask)], env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_two_hosts_live_leases_exclude_each_other_and_a_stopped_holder_loses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real processes under two host names and a 1.5 s lease: while the holder refreshes,
    the other host is refused (for longer than the lease); once it is stopped (SIGSTOP: no
    refresh), the other host takes the lock over after the lease, and the holder, resumed,
    finds it lost before writing."""
    import signal

    root, ask = tmp_path / "models", tmp_path / "ask"
    a = _holder(root, ask, "host-a", 1.5)
    try:
        monkeypatch.setenv("RECS_HOST_ID", "host-b")
        monkeypatch.setenv("RECS_LEASE_SECONDS", "1.5")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:  # over 2 leases: refreshed all along
            with pytest.raises(RecsError, match="locked by another job .* on host-a"):
                SaveLock(root).acquire()
            time.sleep(0.2)
        os.kill(a.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        while True:
            try:
                lock = SaveLock(root).acquire()
                break
            except RecsError:
                assert time.monotonic() - t_stop < 10, "the stopped holder's lease never expired"
                time.sleep(0.05)
        waited = time.monotonic() - t_stop
        assert waited >= 1.5 - 1.5 / 3 - 0.1, waited  # at least the lease since its last refresh
        assert lock.took_over is not None and lock.took_over["host"] == "host-a"
        os.kill(a.pid, signal.SIGCONT)
        ask.touch()
        out = a.communicate(timeout=60)[0]
        assert out.startswith("lost ") and "took it over: stopping before writing" in out, out
        assert "host-b" in out
        lock.check()  # the new holder keeps it
        lock.release()
        assert not (root / LOCK).exists()
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.wait()


def test_a_dead_jobs_lock_is_taken_over_and_its_staging_removed(tmp_path: Path) -> None:
    dead = write_lock(tmp_path, dead_pid())
    # what the dead job left: a checkpoint, an interrupted save, and the old copy of a
    # two-rename publish that crashed before its new copy was in place (the only copy)
    save_step(tmp_path, 3, ARRAYS, {})
    (tmp_path / "step-000000004.partial-0a1b2c").mkdir()
    (tmp_path / "step-000000005.replaced-0a1b2c").mkdir()
    (tmp_path / f".{LOCK}.00ff.tmp").write_text("{}")  # another job's, not linked yet
    check_save_root(tmp_path)  # all of it the store's
    with SaveLock(tmp_path) as lock:
        assert lock.took_over == dead
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f".{LOCK}.00ff.tmp", LOCK, "step-000000003", "step-000000005.replaced-0a1b2c"]


TAKER = """
import sys, time
from pathlib import Path
from recs_core.checkpoint.outdir import SaveLock
from recs_core.errors import RecsError
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
try:
    lock = SaveLock(sys.argv[1]).acquire()
except RecsError as e:
    print("refused", e)
else:
    print("took", lock.took_over is not None)
    time.sleep(3)  # holding it while the others try
"""


def test_exactly_one_of_several_jobs_takes_a_stale_lock(tmp_path: Path) -> None:
    root, go = tmp_path / "models", tmp_path / "go"
    write_lock(root, dead_pid())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    jobs = [subprocess.Popen([sys.executable, "-c", TAKER, str(root), str(go)], env=env,
                             stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(2.0)  # all started and waiting (imports done)
    go.touch()
    outs = [j.communicate(timeout=120)[0].strip() for j in jobs]
    assert sorted(o.split(" ")[0] for o in outs) == ["refused"] * 3 + ["took"], outs
    # the winner is usually the job that broke the stale lock ("took True"), but another job
    # may create the lock between the break and the breaker's own attempt: still exactly one
    assert all("locked by another job" in o for o in outs if o.startswith("refused"))
    assert not (root / (LOCK + ".break")).exists()


# ---- failed saves and prune --------------------------------------------------------------

def test_a_failed_save_removes_its_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    import errno

    from recs_core.checkpoint import manifest as mf

    real = mf.write_array

    def full_disk(root, rel, name, rank, arr):
        if name == "b":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(root, rel, name, rank, arr)

    monkeypatch.setattr(mf, "write_array", full_disk)
    for _ in range(3):  # every retry on a full disk: still nothing left behind
        with pytest.raises(RecsError, match=r"step-000000007 not saved: rank 0: \[Errno 28\]"):
            save_step(tmp_path, 7, ARRAYS, {})
        assert list(tmp_path.iterdir()) == []


def test_prune_touches_only_step_directories(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_step(tmp_path, step, ARRAYS, {})
    other = tmp_path / "step-000000004.partial-0123ab"  # another save, in progress
    (other / "rank00000-of-00001").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    elsewhere = tmp_path.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "step-000000000").symlink_to(elsewhere)
    assert prune(tmp_path, keep=1) == [str(tmp_path / "step-000000002"),
                                       str(tmp_path / "step-000000001")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "step-000000000", "step-000000003", other.name]
    assert (other / "rank00000-of-00001").is_dir() and (elsewhere / "keep.txt").exists()


def test_saving_over_a_symlink_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "ck").symlink_to(elsewhere)
    with pytest.raises(RecsError, match="ck: is a symbolic link"):
        save(tmp_path / "ck", ARRAYS, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "elsewhere"]
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_a_save_needs_no_new_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot)
    many = {f"x{i}": np.full(7, i, np.float32) for i in range(9)}
    path = save(tmp_path / "ck", many, {}, workers=4)
    got = read_rank(path, 0, workers=4)
    assert sorted(got) == sorted(many)
    assert all(np.array_equal(got[k], many[k]) for k in many)


# ---- checks before a job writes ----------------------------------------------------------

def test_save_root_checks(tmp_path: Path) -> None:
    check_save_root(tmp_path / "new" / "dir")
    check_save_root(tmp_path)  # empty
    save_step(tmp_path / "m", 1, ARRAYS, {})
    (tmp_path / "m" / "step-000000002.partial-00ff").mkdir()
    check_save_root(tmp_path / "m")  # checkpoints and an interrupted save
    (tmp_path / "f").write_text("x")
    with pytest.raises(RecsError, match="--save .*f: exists and is not a directory"):
        check_save_root(tmp_path / "f")
    with pytest.raises(RecsError, match="f exists and is not a directory"):
        check_save_root(tmp_path / "f" / "sub")
    with pytest.raises(RecsError, match="is one checkpoint"):
        check_save_root(tmp_path / "m" / "step-000000001")
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(RecsError, match="holds 'notes.txt' \\(a file\\)"):
        check_save_root(tmp_path / "m")
    (tmp_path / "m" / "notes.txt").unlink()
    (tmp_path / "m" / "step-000000009").symlink_to(tmp_path)
    with pytest.raises(RecsError, match="holds 'step-000000009' \\(a symbolic link\\)"):
        check_save_root(tmp_path / "m", "--resume")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RecsError, match="is not writable"):
            check_save_root(ro / "models")
        with pytest.raises(RecsError, match="is not writable"):
            check_delta_target(ro / "delta")
    finally:
        ro.chmod(0o700)


def test_delta_targets(tmp_path: Path) -> None:
    check_delta_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_delta_target(tmp_path / "empty")
    rows = {"t": (np.array([1, 3]), np.ones((2, 4), np.float32))}
    export_delta(tmp_path / "d", rows, {}, {"n": 1})
    export_delta(tmp_path / "d", rows, {}, {"n": 2})  # an earlier delta is replaced
    assert read_delta(tmp_path / "d")[2] == {"n": 2}
    root = tmp_path / "models"
    save_step(root, 5, ARRAYS, {})
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    refused = {root: "is a checkpoint directory \\(holds step-000000005\\)",
               root / "step-000000005": "is a checkpoint, not a delta",
               tmp_path / "user": "not empty and not a delta \\(holds 'notes.txt'\\)",
               tmp_path / "file": "exists and is not a directory",
               tmp_path / "link": "is a symbolic link"}
    for target, why in refused.items():
        with pytest.raises(RecsError, match=why):
            check_delta_target(target)
        with pytest.raises(RecsError, match=why):  # the library's export checks too
            export_delta(target, rows, {}, {})
    assert read_rank(root / "step-000000005", 0)["b"].tolist() == [1] * 5
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d", "empty", "file", "link", "models", "user"]


def test_claim_outputs_refuses_overlaps_and_locks(tmp_path: Path) -> None:
    with pytest.raises(RecsError, match="overlaps the save directory"):
        claim_outputs(tmp_path / "m", tmp_path / "m" / "delta")
    with pytest.raises(RecsError, match="overlaps the save directory"):
        claim_outputs(tmp_path / "d" / "m", tmp_path / "d")
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()
    lock = claim_outputs(tmp_path / "m", tmp_path / "delta")
    assert lock is not None and (tmp_path / "m" / LOCK).exists()
    check_save_root(tmp_path / "m")  # the lock is ours, not a foreign file
    lock.release()
    assert claim_outputs(None, tmp_path / "delta") is None
