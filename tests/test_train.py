"""The single-rank trainer end to end: learns on real and synthetic data, is deterministic,
saves/loads (checkpoint directories), and its CLI prints the job's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint.outdir import LOCK
from recs_core.data.synth import generate
from recs_core.errors import RecsError
from recs_core.features.spec import load_spec, parse_spec
from recs_core.metrics.auc import auc, logloss
from recs_core.train.job import Job
from tests.conftest import CONFIGS, ROOT, held_out_rows
from tests.test_outdir import write_lock

SMALL_MODEL = {"model": {"preset": "dlrm", "bottom_mlp": [16, 16], "top_mlp": [32, 16]},
               "optimizer": {"name": "adagrad", "lr": 0.05}}


def small_spec(batch: int = 256, **extra) -> object:
    """The canonical features with smaller tables and MLPs, so tests run fast."""
    import tomllib

    data = tomllib.loads((CONFIGS / "criteo_dlrm.toml").read_text())
    data["input"]["batch_size"] = batch
    for p in data["pipeline"]:
        for f in p["feature"]:
            for op in f["ops"]:
                if "buckets" in op:
                    op["buckets"] = 1 << 14
    data.update(SMALL_MODEL)
    data.update(extra)
    return parse_spec(data, str(CONFIGS / "criteo_dlrm.toml"))


def test_real_sample_beats_constant_predictor(criteo_sample) -> None:
    job = Job(small_spec())
    out = job.run([criteo_sample], eval_fraction=0.2)
    held = held_out_rows(criteo_sample, 0.2)  # the rows in the last 20% of the bytes
    assert out["train_rows"] + out["eval_rows"] == 5760 and out["eval_rows"] == held
    assert abs(held - 1152) < 60
    labels = np.loadtxt(criteo_sample, usecols=0, delimiter="\t", dtype=np.float64)
    base = labels[:-held].mean()
    const = logloss(labels[-held:], np.full(held, base))
    assert out["eval_logloss"] < const - 0.005, (out, const)
    assert 0.6 < out["eval_auc"] < 1.0 and 0.55 < out["progressive_auc"] < 1.0
    for key in ("rows", "seconds", "samples_per_sec", "train_logloss", "world_size",
                "input_seconds", "train_seconds"):
        assert key in out


def test_wide_and_deep_learns(criteo_sample) -> None:
    spec = small_spec(model={"preset": "wdl", "deep_mlp": [32, 16]})
    out = Job(spec).run([criteo_sample], eval_fraction=0.2)
    assert out["model"] == "wdl" and out["eval_auc"] > 0.6


@pytest.mark.parametrize("opt", [{"name": "sgd", "lr": 0.01, "sparse": "sgd"},
                                 {"name": "adam", "lr": 0.001, "sparse": "adagrad"}])
def test_other_optimizers_train(criteo_sample, opt) -> None:
    out = Job(small_spec(optimizer=opt)).run([criteo_sample], eval_fraction=0.2)
    assert np.isfinite(out["train_logloss"]) and out["eval_auc"] > 0.55


def test_same_seed_same_data_gives_bit_identical_model(criteo_sample) -> None:
    states = []
    for _ in range(2):
        job = Job(small_spec())
        job.run([criteo_sample])
        states.append(job.model.state())
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert np.array_equal(states[0][k], states[1][k]), k
    job = Job(small_spec(train={"seed": 1}))
    assert not np.array_equal(job.model.state()["dense/0"], states[0]["dense/0"])


def test_save_load_score_roundtrip(tmp_path: Path, criteo_sample) -> None:
    job = Job(small_spec())
    job.run([criteo_sample])
    job.save(tmp_path / "m")
    probs = job.score([criteo_sample])
    other = Job(small_spec())
    other.load(tmp_path / "m")
    assert np.array_equal(other.score([criteo_sample]), probs)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging directory left


def test_save_step_locks_its_directory_as_save_does(tmp_path: Path, two_windows) -> None:  # noqa: ANN001
    """A library job's save_step checks and locks the directory as ``--save`` does: while
    another live job (process) holds it, refused with the owner named (nothing written);
    once taken, held for this process (its jobs share it) until close(), and `recs train
    --save` refused meanwhile; a directory holding other files refused."""
    w1, w2 = two_windows
    job = Job(small_spec())
    job.run([w1])
    root = tmp_path / "models"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(root, other.pid)
        with pytest.raises(RecsError, match=f"locked by another job \\(pid {other.pid} "):
            job.save_step(root)
        assert [p.name for p in root.iterdir()] == [LOCK]
    finally:
        other.kill()
        other.wait()
    (root / LOCK).unlink()
    first = job.save_step(root)
    assert json.loads((root / LOCK).read_text())["pid"] == os.getpid()
    job.run([w2])
    assert job.save_step(root) != first  # the same job saves on under its lock
    assert Job(small_spec()).save_step(root).endswith("step-000000000")  # and the process's
    r = subprocess.run([sys.executable, "-m", "recs_core", "train", "--config",
                        str(CONFIGS / "criteo_dlrm.toml"), "--data", str(w1), "--save",
                        str(root)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and f"locked by another job (pid {os.getpid()} " in r.stderr
    job.close()
    assert not (root / LOCK).exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RecsError, match="holds 'notes.txt' \\(a file\\) that is not a "
                                        "checkpoint"):
        job.save_step(tmp_path / "mine")


@pytest.mark.slow
def test_one_pass_over_a_million_rows_gets_near_the_true_auc(tmp_path: Path) -> None:
    data, probs = tmp_path / "d.txt", tmp_path / "d.probs"
    generate(data, 1_000_000, seed=11, probs_out=probs)
    job = Job(load_spec(CONFIGS / "criteo_dlrm.toml"))
    out = job.run([data], eval_fraction=0.1)
    held = held_out_rows(data, 0.1)
    p_true = np.loadtxt(probs, dtype=np.float64)[-held:]
    with open(data, "rb") as f:
        y = np.array([ln[:1] == b"1" for ln in f.readlines()[-held:]], dtype=np.float64)
    best = auc(y, p_true)
    assert out["eval_rows"] == held and abs(held - 100_000) < 2_000
    assert out["eval_auc"] > best - 0.05, (out["eval_auc"], best)


def test_train_cli_prints_json(criteo_sample, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    text = (CONFIGS / "criteo_dlrm.toml").read_text().replace("buckets = 262144", "buckets = 16384")
    cfg.write_text(text.replace("batch_size = 2048", "batch_size = 512"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "recs_core", "train", "--config", str(cfg),
                        "--data", str(criteo_sample), "--eval-fraction", "0.1", "--quiet",
                        "--save", str(tmp_path / "m")], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rows"] == 5760 and out["world_size"] == 1 and out["eval_auc"] is not None
    steps = -(-(5760 - held_out_rows(criteo_sample, 0.1)) // 512)
    assert out["saved"] == str(tmp_path / "m" / f"step-{steps:09d}")
    assert (tmp_path / "m" / f"step-{steps:09d}" / "manifest.json").exists()


# ---- what a user is told: warnings on stderr and in the JSON --------------------------------

def train_main(capsys, *args: str) -> tuple[int, dict | None, list[str]]:
    """``recs train ARGS`` in process: (exit code, the JSON line, stderr lines)."""
    from recs_core.cli import main

    cfg = CONFIGS / "criteo_dlrm.toml"
    code = main(["train", "--config", str(cfg), "--quiet", *args])
    cap = capsys.readouterr()
    lines = cap.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None, cap.err.strip().splitlines()


def test_an_empty_window_is_told(tmp_path: Path, capsys) -> None:
    """A zero-byte file: rc 0 and what was asked is written, but the file and the untrained
    model are named on stderr and in "warnings" (8196654: silent)."""
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    code, out, err = train_main(capsys, "--data", str(empty), "--save", str(tmp_path / "m"),
                                "--export-delta", str(tmp_path / "d"))
    assert code == 0 and out["train_rows"] == 0 and out["saved"] and out["delta"]
    assert out["warnings"] == [f"{empty}: empty file (0 bytes)",
                               "no rows trained in this window: the model is unchanged (what "
                               "was asked is still written: checkpoint, delta)"]
    assert err == [f"recs: warning: {w}" for w in out["warnings"]]


def test_a_file_given_twice_is_read_once(sample_1200, tmp_path: Path, capsys) -> None:
    """The same file twice (also under another name) trains once, with a warning (8196654:
    trained on it twice, silently); the model is the one-file run's."""
    link = tmp_path / "link.txt"
    link.symlink_to(sample_1200)
    code, once, err = train_main(capsys, "--data", str(sample_1200))
    assert code == 0 and once["warnings"] == [] and err == []
    code, twice, err = train_main(capsys, "--data", str(sample_1200), str(link),
                                  str(sample_1200))
    assert code == 0 and twice["train_rows"] == once["train_rows"] == 1200
    assert twice["train_logloss"] == once["train_logloss"]
    assert twice["warnings"] == [f"{link}: given more than once (as {sample_1200}): read once",
                                 f"{sample_1200}: given more than once: read once"]
    assert err == [f"recs: warning: {w}" for w in twice["warnings"]]


def test_a_file_truncated_while_being_read_is_told(sample_1200, tmp_path: Path) -> None:
    """A file cut to half during the pass: its held-out rows (read again after the pass)
    are lost, and the job says so in "warnings" (8196654: only truncated_last_line)."""
    from recs_core.sched.training_pass import StepHook

    data = tmp_path / "w.txt"
    data.write_bytes(sample_1200.read_bytes())
    size = data.stat().st_size
    job = Job(small_spec())
    full = Job(small_spec()).run([data], eval_fraction=0.25)
    assert full["warnings"] == []

    def cut(steps: int) -> None:
        if steps == 1:
            os.truncate(data, size // 2)

    out = job.run([data], eval_fraction=0.25, hook=StepHook(1, cut))
    assert out["eval_rows"] < full["eval_rows"]
    assert out["warnings"] == [f"{data}: shrank from {size} to {size // 2} bytes while being "
                               "read: its lines were read only in part (rows of the training "
                               "or held-out share may be missing)"]
