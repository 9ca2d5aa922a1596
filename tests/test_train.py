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

from recs_core.data.synth import generate
from recs_core.features.spec import load_spec, parse_spec
from recs_core.metrics.auc import auc, logloss
from recs_core.train.job import Job
from tests.conftest import CONFIGS, ROOT, held_out_rows

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
