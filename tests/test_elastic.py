"""--resume on another number of ranks: the rows no rank trained yet are dealt over the new
ranks, so every row of the window is trained exactly once (the trained-rows checksum and
train_rows equal the uninterrupted run's), the held-out rows stay the first job's, and the
held-out AUC stays close. Interrupted = the window's checkpoints after a step removed, as a
job killed after writing that periodic checkpoint leaves them. Under mpiexec, 1-3 ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recs_core.checkpoint import load_manifest
from recs_core.data.synth import generate
from tests.conftest import CONFIGS, run_mpi

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
ROWS = 200_000
KEYS = ("train_rows", "eval_rows", "trained_rows_checksum", "window_steps", "global_step")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("elastic")
    cfg = d / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 16384"))
    data = d / "w.txt"
    generate(data, ROWS, seed=21)
    return {"dir": d, "cfg": cfg, "data": data, "refs": {}}


def train(setup: dict, ranks: int, *args: str) -> dict:
    r = run_mpi(ranks, ["-m", "recs_core", "train", "--config", str(setup["cfg"]), "--data",
                        str(setup["data"]), "--eval-fraction", "0.1", "--quiet",
                        "--checkpoint-every", "10", *args], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


def reference(setup: dict, ranks: int) -> dict:
    """The uninterrupted run on ``ranks`` (its save directory kept for interruptions)."""
    if ranks not in setup["refs"]:
        root = setup["dir"] / f"ref{ranks}"
        setup["refs"][ranks] = (train(setup, ranks, "--save", str(root)), root)
    return setup["refs"][ranks]


def interrupted(src: Path, dst: Path, after_step: int) -> Path:
    """A copy of the save directory ``src`` as a job stopped after ``after_step`` leaves it."""
    shutil.copytree(src, dst)
    for p in dst.glob("step-*"):
        if int(p.name.split("-")[1]) > after_step:
            shutil.rmtree(p)
    return dst


@pytest.mark.parametrize(("first", "then"), [(3, [2]), (2, [3]), (2, [1]), (3, [2, 3])])
def test_every_row_is_trained_once_across_changes_of_ranks(setup: dict, tmp_path: Path,
                                                           first: int, then: list[int]) -> None:
    want, ref_root = reference(setup, first)
    root = interrupted(ref_root, tmp_path / "r", 30)
    for i, ranks in enumerate(then):
        got = train(setup, ranks, "--resume", str(root))
        assert got["world_size"] == ranks
        assert got["checkpoint"]["resharded_from_ranks"] == (first if i == 0 else then[i - 1])
        if i < len(then) - 1:  # interrupted again, 20 steps later
            step = int(Path(got["saved"]).name.split("-")[1])
            assert step == want["window_steps"]
            for p in root.glob("step-*"):
                if int(p.name.split("-")[1]) > 50:
                    shutil.rmtree(p)
    assert {k: got[k] for k in KEYS} == {k: want[k] for k in KEYS}
    assert abs(got["eval_auc"] - want["eval_auc"]) <= 0.002, (got["eval_auc"],
                                                              want["eval_auc"])
    assert abs(got["progressive_auc"] - want["progressive_auc"]) <= 0.005  # other batches


def test_same_ranks_after_a_change_resume_bit_identical(setup: dict, tmp_path: Path) -> None:
    """A window continued on 3 ranks after 2, interrupted again and resumed on 3: the
    model the uninterrupted 3-rank continuation gives, bit for bit."""
    _, ref_root = reference(setup, 2)
    once = interrupted(ref_root, tmp_path / "once", 30)
    whole = train(setup, 3, "--resume", str(once))
    twice = interrupted(once, tmp_path / "twice", 50)
    again = train(setup, 3, "--resume", str(twice))
    assert again["checkpoint"]["resumed_at_step"] == 50
    hashes = [{e.path: e.sha256 for e in load_manifest(o["saved"]).files}
              for o in (whole, again)]
    assert hashes[0] == hashes[1]
