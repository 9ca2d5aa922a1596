"""recs follow for real: windows landing while it runs, a job killed with SIGKILL and
retried, the supervisor itself killed and restarted, a window with shuffled labels
withheld by the gate, a quarantined window, published versions served by recs predict,
and the faults it must answer with one line. 2 ranks under mpiexec."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint import load_manifest
from recs_core.data.synth import generate
from recs_core.follow.ledger import Ledger
from tests.conftest import CONFIGS, ROOT

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
WINDOW_ROWS = 12_000


def hashes(ckpt: str | Path) -> dict[str, str]:
    return {e.path: e.sha256 for e in load_manifest(ckpt).files}


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RECS_PROGRESS_EVERY="0")
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A config and 5 windows of a drifting synthetic stream (not landed yet)."""
    d = tmp_path_factory.mktemp("chain")
    cfg = d / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 4096")
                   .replace("batch_size = 2048", "batch_size = 256"))
    src = []
    for i in range(5):
        p = d / "src" / f"w{i}.txt"
        p.parent.mkdir(exist_ok=True)
        generate(p, WINDOW_ROWS, seed=7, window=i, drift=0.1)
        src.append(p)
    return {"dir": d, "cfg": cfg, "src": src}


def land(landing: Path, i: int, src: Path, marker: bool = True) -> Path:
    w = landing / "dt=2026-12-07" / f"hour={i:02d}"
    w.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, w / "part-00000.txt")
    if marker:
        (w / "_SUCCESS").write_text("")
    return w


def follow(made: dict, state: Path, landing: Path, *extra: str, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recs_core", "follow", "--config", str(made["cfg"]),
           "--watch", str(landing), "--state", str(state), "--ranks", "2", "--poll", "0.5",
           "--backoff", "0.5", "--checkpoint-every", "10", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), cwd=ROOT, **kw)


def finished(p: subprocess.Popen, timeout: float = 600) -> tuple[int, dict, str]:
    out, err = p.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else {}), err


def statuses(state: Path) -> dict[str, str]:
    if not (state / "ledger.jsonl").exists():
        return {}
    return {k: v.status for k, v in Ledger(state).windows().items()}


def wait_for(cond, timeout: float = 300, what: str = "") -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def predicted(made: dict, model: str | Path, data: Path, tmp: Path) -> bytes:
    """What ``recs predict --model MODEL --data DATA`` writes."""
    out = tmp / f"predicted-{len(list(tmp.glob('predicted-*')))}.csv"
    r = subprocess.run([sys.executable, "-m", "recs_core", "predict", "--config",
                        str(made["cfg"]), "--model", str(model), "--data", str(data),
                        "--out", str(out)], capture_output=True, text=True, env=env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def final_checkpoint(state: Path, window: str) -> str:
    return Ledger(state).windows()[window].fields["checkpoint"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def job_ranks(sup: subprocess.Popen) -> list[int]:
    """Pids of the python ranks training under the supervisor ``sup``."""
    pids = []
    for pid in descendants(sup.pid):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and b"python" in Path(args[0].decode()).name.encode() and b"recs_core" in args:
            pids.append(pid)
    return pids


def rank_processes() -> list[int]:
    """Every process of this machine running ``python -m recs_core worker`` or ``train``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"recs_core" in args and (b"worker" in args or b"train" in args):
                pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def reference(made: dict) -> dict:
    """The uninterrupted chain of the first 4 windows (all landed, --once)."""
    d = made["dir"] / "ref"
    landing = d / "land"
    for i in range(4):
        land(landing, i, made["src"][i])
    code, out, err = finished(follow(made, d / "state", landing, "--once",
                                     "--publish", str(d / "pub")))
    assert code == 0, err
    assert set(out["windows"].values()) == {"published"}, out
    return {"state": d / "state", "landing": landing, "pub": d / "pub",
            "final": {w: final_checkpoint(d / "state", w) for w in out["windows"]}}


def test_windows_landing_while_it_runs_and_a_killed_job_retried(made: dict, reference: dict,
                                                                tmp_path: Path) -> None:
    """4 windows land one after another; the job of window 3 is killed with SIGKILL (a
    rank) after a periodic checkpoint and retried with --resume: every window's final
    checkpoint equals the uninterrupted chain's, bit for bit."""
    landing, state = tmp_path / "land", tmp_path / "state"
    landing.mkdir()
    sup = follow(made, state, landing, "--publish", str(tmp_path / "pub"))
    try:
        for i in range(4):
            land(landing, i, made["src"][i])
            wid = f"dt=2026-12-07/hour={i:02d}"
            if i == 2:  # window 3: kill a rank once a periodic checkpoint is written
                ckpt = state / "windows" / f"dt=2026-12-07__hour={i:02d}" / "ckpt"
                wait_for(lambda c=ckpt: c.is_dir() and any(c.glob("step-*"))
                         and job_ranks(sup), what="window 3's first checkpoint")
                os.kill(job_ranks(sup)[0], signal.SIGKILL)
            wait_for(lambda wid=wid: statuses(state).get(wid) == "published",
                     what=f"{wid} published")
        sup.send_signal(signal.SIGTERM)  # idle: it stops at once
        code, out, err = finished(sup, 120)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert code == 0, err
    states = Ledger(state).windows()
    three = states["dt=2026-12-07/hour=02"]
    assert three.attempts == 2 and three.status == "published"
    assert any(r["status"] == "error" for r in Ledger(state).records
               if r["window"] == "dt=2026-12-07/hour=02")
    for wid, ref in reference["final"].items():
        assert hashes(states[wid].fields["checkpoint"]) == hashes(ref), wid


def test_the_supervisor_killed_and_restarted_mid_chain(made: dict, reference: dict,
                                                       tmp_path: Path) -> None:
    """SIGKILL of the supervisor while window 2 trains: its job is told to stop (it dies
    with its parent), the restarted supervisor resumes the window from its checkpoint,
    and the chain ends as the uninterrupted one."""
    landing, state = tmp_path / "land", tmp_path / "state"
    for i in range(4):
        land(landing, i, made["src"][i])
    sup = follow(made, state, landing, "--once", "--publish", str(tmp_path / "pub"))
    ckpt = state / "windows" / "dt=2026-12-07__hour=01" / "ckpt"
    wait_for(lambda: ckpt.is_dir() and any(ckpt.glob("step-*")), what="window 2's checkpoint")
    ranks = job_ranks(sup)
    assert ranks
    sup.kill()
    sup.wait()
    wait_for(lambda: not set(ranks) & set(rank_processes()), timeout=60,
             what="window 2's job to end with its supervisor")
    assert statuses(state)["dt=2026-12-07/hour=01"] == "running"
    code, out, err = finished(follow(made, state, landing, "--once", "--publish",
                                     str(tmp_path / "pub")))
    assert code == 0, err
    assert "resuming the window in progress" in err
    states = Ledger(state).windows()
    for wid, ref in reference["final"].items():
        assert hashes(states[wid].fields["checkpoint"]) == hashes(ref), wid


def test_the_gate_withholds_shuffled_labels_and_quarantines_bad_rows(made: dict,
                                                                      tmp_path: Path) -> None:
    """Window 2 with its labels shuffled is withheld (the guard rows, the last good
    window's held-out, say why), window 3 of broken lines is quarantined, window 4 is
    published from the last good model; the published versions served by recs predict
    give the trained models' scores."""
    landing, state, pub = tmp_path / "land", tmp_path / "state", tmp_path / "pub"
    land(landing, 0, made["src"][0])
    w = land(landing, 1, made["src"][1])
    lines = (w / "part-00000.txt").read_text().splitlines(keepends=True)
    labels = [ln.split("\t", 1)[0] for ln in lines]
    np.random.default_rng(0).shuffle(labels)
    (w / "part-00000.txt").write_text("".join(
        f"{y}\t{ln.split(chr(9), 1)[1]}" for y, ln in zip(labels, lines)))
    bad = land(landing, 2, made["src"][2])
    (bad / "part-00000.txt").write_text("not\ta\tcriteo\tline\n" * 500)
    land(landing, 3, made["src"][3])
    code, out, err = finished(follow(made, state, landing, "--once", "--publish", str(pub)))
    assert code == 0, err
    assert out["windows"] == {"dt=2026-12-07/hour=00": "published",
                              "dt=2026-12-07/hour=01": "withheld",
                              "dt=2026-12-07/hour=02": "quarantined",
                              "dt=2026-12-07/hour=03": "published"}
    states = Ledger(state).windows()
    why = states["dt=2026-12-07/hour=01"].fields["gate"]["why"]
    assert why.startswith("guard (last good window's held-out) logloss"), why
    assert "too many bad lines" in states["dt=2026-12-07/hour=02"].fields["error"]
    # window 4 continued from the last good model, so its version is a delta over 1
    assert json.loads((pub / "2" / "version.json").read_text())["kind"] == "delta"
    data = landing / "dt=2026-12-07" / "hour=03" / "part-00000.txt"
    for version, wid in ((1, "dt=2026-12-07/hour=00"), (2, "dt=2026-12-07/hour=03")):
        assert predicted(made, pub / str(version), data, tmp_path) == predicted(
            made, states[wid].fields["checkpoint"], data, tmp_path), version
    report = subprocess.run([sys.executable, "-m", "recs_core", "report", str(state), "--png",
                             str(tmp_path / "chain.png")], capture_output=True, text=True,
                            env=env(), timeout=120)
    assert report.returncode == 0, report.stderr
    assert "withheld" in report.stdout and (tmp_path / "chain.png").stat().st_size > 10_000


@pytest.mark.mpi
def test_old_windows_lose_their_checkpoints_and_published_versions_still_serve(
        made: dict, reference: dict, tmp_path: Path) -> None:
    """--keep-versions 2 over the reference's 4 windows: windows 0 and 1 lose their
    checkpoints and deltas in --state (2 keeps its, 3 is the next start and the last good
    model); the final model is the uninterrupted chain's, and the newest version, deltas
    down to window 0's full model (its files removed from --state), still serves it."""
    state, pub = tmp_path / "state", tmp_path / "pub"
    code, out, err = finished(follow(made, state, reference["landing"], "--once",
                                     "--publish", str(pub), "--keep-versions", "2"))
    assert code == 0, err
    ids = list(out["windows"])
    assert len(ids) == 4 and set(out["windows"].values()) == {"published"}, out
    for i, wid in enumerate(ids):
        base = state / "windows" / wid.replace("/", "__")
        assert (base / "ckpt").exists() == (i >= 2), wid
        assert (base / "delta").exists() == (i >= 2), wid
    assert err.count("its checkpoint removed") == 2, err
    final = final_checkpoint(state, ids[-1])
    assert hashes(final) == hashes(reference["final"][ids[-1]])
    assert json.loads((pub / "1" / "version.json").read_text())["kind"] == "full"
    data = reference["landing"] / "dt=2026-12-07" / "hour=03" / "part-00000.txt"
    assert predicted(made, pub / "4", data, tmp_path) == predicted(made, final, data, tmp_path)


def run_follow(made: dict, state: Path, landing: Path, *extra: str,
               timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "recs_core", "follow", "--config", str(made["cfg"]),
           "--watch", str(landing), "--state", str(state), "--once", "--ranks", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=timeout)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("recs: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def test_faults_are_one_line_or_a_ledger_entry(made: dict, tmp_path: Path) -> None:
    small = made["dir"] / "small.txt"
    if not small.exists():
        small.write_text("".join(made["src"][0].read_text().splitlines(keepends=True)[:600]))
    landing, state = tmp_path / "land", tmp_path / "state"
    landing.mkdir()
    # a launcher template without {ranks}
    assert "must contain {ranks}" in one_line(run_follow(made, state, landing, "--launcher",
                                                         "mpiexec -n 2"))
    # a publish directory that is not writable (checked before any training)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "notes.txt").write_text("mine")
    assert "holds 'notes.txt', which is not a version" in one_line(
        run_follow(made, state, landing, "--publish", str(ro)))
    # a _SUCCESS marker with no data: a ledger entry, and the chain goes on
    (landing / "day=1").mkdir()
    (landing / "day=1" / "_SUCCESS").write_text("")
    w2 = landing / "day=2"
    w2.mkdir()
    shutil.copy(small, w2 / "part.txt")
    (w2 / "_SUCCESS").write_text("")
    r = run_follow(made, state, landing)
    assert r.returncode == 0, r.stderr
    assert statuses(state) == {"day=1": "quarantined", "day=2": "accepted"}
    # files that change after the window was trained: noted once, not retrained
    with open(w2 / "part.txt", "a") as f:
        f.write(small.read_text().splitlines(keepends=True)[0])
    r = run_follow(made, state, landing)
    assert r.returncode == 0 and "changed after it was trained" in r.stderr
    assert Ledger(state).windows()["day=2"].fields["note"].startswith("its files changed")
    n = len(Ledger(state).records)
    run_follow(made, state, landing)
    assert len(Ledger(state).records) == n  # noted once
    # a state directory held by another live supervisor
    from recs_core.checkpoint.outdir import SaveLock
    from recs_core.follow.supervisor import FOLLOW_LOCK

    held = SaveLock(state, FOLLOW_LOCK).acquire()
    try:
        assert "locked by another job" in one_line(run_follow(made, state, landing))
    finally:
        held.release()
    # a corrupt ledger line: named, nothing guessed
    text = (state / "ledger.jsonl").read_text().splitlines()
    bad = text[:1] + ["{oops"] + text[1:]
    (state / "ledger.jsonl").write_text("\n".join(bad) + "\n")
    assert "ledger.jsonl:2: corrupt ledger line" in one_line(run_follow(made, state, landing))
    (state / "ledger.jsonl").write_text("\n".join(text) + "\n")
    # a damaged pointer: rebuilt from the ledger
    (state / "current.json").write_text("{")
    r = run_follow(made, state, landing)
    assert r.returncode == 0 and "rebuilt from the ledger" in r.stderr
    assert json.loads((state / "current.json").read_text())["window"] == "day=2"
    # the chain was made with another config
    other = tmp_path / "other.toml"
    other.write_text(made["cfg"].read_text().replace("batch_size = 256", "batch_size = 128"))
    r = subprocess.run([sys.executable, "-m", "recs_core", "follow", "--config", str(other),
                        "--watch", str(landing), "--state", str(state), "--once"],
                       capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert "its chain was made with another config" in one_line(r)
    # the landing directory deleted under it
    shutil.rmtree(landing)
    assert "no such directory (the landing location is gone" in one_line(
        run_follow(made, state, landing))


def test_sigterm_stops_the_chain_resumably(made: dict, reference: dict, tmp_path: Path) -> None:
    """SIGTERM to the supervisor mid-window: forwarded to the job, which stops (with a
    checkpoint once preemption checkpoints, or at its last periodic one); the supervisor
    exits 75 and a restart ends the chain as the uninterrupted one."""
    landing, state = tmp_path / "land", tmp_path / "state"
    for i in range(2):
        land(landing, i, made["src"][i])
    sup = follow(made, state, landing, "--once")
    ckpt = state / "windows" / "dt=2026-12-07__hour=01" / "ckpt"
    wait_for(lambda: ckpt.is_dir() and any(ckpt.glob("step-*")), what="window 2's checkpoint")
    sup.send_signal(signal.SIGTERM)
    code, out, err = finished(sup, 120)
    assert code == 75, err
    assert statuses(state)["dt=2026-12-07/hour=01"] == "preempted"
    assert not job_ranks(sup)
    code, out, err = finished(follow(made, state, landing, "--once"))
    assert code == 0, err
    states = Ledger(state).windows()
    for wid in ("dt=2026-12-07/hour=00", "dt=2026-12-07/hour=01"):
        assert hashes(states[wid].fields["checkpoint"]) == hashes(reference["final"][wid])


def test_a_preempted_window_finishes_on_another_number_of_ranks(made: dict, reference: dict,
                                                               tmp_path: Path) -> None:
    """SIGTERM while window 2 trains on 2 ranks; the chain restarts with 3 (--ranks @FILE):
    the window resumes elastically and trains every row once (its trained-rows checksum
    and rows equal the uninterrupted chain's)."""
    landing, state, ranks = tmp_path / "land", tmp_path / "state", tmp_path / "ranks"
    ranks.write_text("2\n")
    for i in range(2):
        land(landing, i, made["src"][i])
    cmd = [sys.executable, "-m", "recs_core", "follow", "--config", str(made["cfg"]), "--watch",
           str(landing), "--state", str(state), "--ranks", f"@{ranks}", "--once",
           "--checkpoint-every", "10"]
    sup = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env(), cwd=ROOT)
    ckpt = state / "windows" / "dt=2026-12-07__hour=01" / "ckpt"
    wait_for(lambda: ckpt.is_dir() and any(ckpt.glob("step-*")), what="window 2's checkpoint")
    sup.send_signal(signal.SIGTERM)
    code, _, err = finished(sup, 120)
    assert code == 75, err
    pre = [r for r in Ledger(state).records if r["status"] == "preempted"]
    assert pre and pre[-1]["checkpoint"], pre  # the job checkpointed as it stopped
    ranks.write_text("3\n")
    code, out, err = finished(subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True, env=env(),
                                               cwd=ROOT))
    assert code == 0, err
    ref = Ledger(reference["state"]).windows()["dt=2026-12-07/hour=01"].fields
    got = Ledger(state).windows()["dt=2026-12-07/hour=01"].fields
    assert got["ranks"] == 3
    assert (got["trained_rows_checksum"], got["train_rows"]) == (
        ref["trained_rows_checksum"], ref["train_rows"])
    assert abs(got["eval_auc"] - ref["eval_auc"]) < 0.005


def test_a_worker_starts_the_next_window_from_the_model_in_memory(made: dict,
                                                                  tmp_path: Path) -> None:
    """recs worker: window 2 starts from window 1's model in memory (nothing loaded) and
    compares with it as the job's own model before the pass; its figures and checkpoint
    equal a recs train of the same window loading that checkpoint."""
    def args(i: int, *extra: str) -> list[str]:
        return ["--config", str(made["cfg"]), "--data", str(made["src"][i]), "--save",
                str(tmp_path / f"w{i}"), "--eval-fraction", "0.1", "--quiet", *extra]

    first = tmp_path / "w0"
    second = ["--init-from", "INIT", "--compare-with", "INIT", "--compare-data",
              str(made["src"][0])]
    r = subprocess.run([sys.executable, "-m", "recs_core", "worker"], input="\n".join(
        json.dumps({"args": a}) for a in (args(0), [x.replace("INIT", str(first))
                                                     for x in args(1, *second)])) + "\n",
                       capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    outs = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    saved0 = outs[0]["saved"]
    assert outs[1]["checkpoint"]["loaded_from"] == saved0
    assert outs[1]["checkpoint"]["kept_in_memory"] is True
    assert outs[1]["baseline"]["model"] == saved0  # its own model, scored before the pass
    again = subprocess.run([sys.executable, "-m", "recs_core", "train", *[
        x.replace("INIT", saved0).replace(str(tmp_path / "w1"), str(tmp_path / "ref"))
        for x in args(1, *second)]],
        capture_output=True, text=True, env=env(), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    ref = json.loads([ln for ln in again.stdout.splitlines() if ln.startswith("{")][-1])
    for k in ("eval_auc", "eval_logloss", "train_logloss", "trained_rows_checksum",
              "baseline"):
        assert outs[1][k] == ref[k], k
    assert ref["saved"] != outs[1]["saved"]
    assert hashes(outs[1]["saved"]) == hashes(ref["saved"])


@pytest.mark.mpi
def test_guard_rows_are_the_held_out_rows_their_window_set_aside(made: dict,
                                                                 tmp_path: Path) -> None:
    """A window trained on 2 ranks, then the next on 3 with it as baseline and guard: the
    guard rows are the first window's held-out rows (its 2-rank cut, not a 3-rank one,
    whose held-out rows it trained on), so the baseline scores them as it scored its own
    held-out rows."""
    from tests.conftest import run_mpi

    def train(n: int, i: int, *extra: str) -> dict:
        r = run_mpi(n, ["-m", "recs_core", "train", "--config", str(made["cfg"]), "--data",
                        str(made["src"][i]), "--save", str(tmp_path / f"w{i}"),
                        "--eval-fraction", "0.1", "--quiet", *extra], timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])

    first = train(2, 0)
    out = train(3, 1, "--init-from", first["saved"], "--compare-with", first["saved"],
                "--compare-data", str(made["src"][0]))
    guard = out["baseline"]["guard"]
    assert guard["rows"] == first["eval_rows"]
    assert (guard["baseline_auc"], guard["baseline_logloss"]) == (first["eval_auc"],
                                                                  first["eval_logloss"])
