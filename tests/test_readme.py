"""The README's library example runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, ROOT, run_mpi

EXPECTED = ["5760 rows; 0 bad lines", "1 5760 True"]


def examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"<!-- readme-example.*?-->\s*```python\n(.*?)```", text, re.S)


def test_readme_library_examples_run() -> None:
    blocks = examples()
    assert len(blocks) == len(EXPECTED), "README's library examples changed"
    for code, expected in zip(blocks, EXPECTED):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expected


def test_readme_names_every_flag() -> None:
    """Every long option of every subcommand appears in README.md (its user's guide)."""
    import argparse

    from recs_core.cli import build_parser

    text = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {o}" for name, p in sub.choices.items() for a in p._actions
               for o in a.option_strings if o.startswith("--") and o != "--help" and o not in text]
    assert not missing, f"flags not in README.md: {missing}"
    assert len(text.encode()) <= 12_500, "README.md is a user's guide: details go to docs/"


# figures of a pass that depend on its rows, their order and the model (not on timing)
SAME = ("rows", "train_rows", "eval_rows", "train_logloss", "progressive_auc", "eval_auc",
        "eval_logloss", "window_steps", "global_step", "world_size")


@pytest.mark.mpi
def test_the_training_example_on_two_ranks_is_one_job(tmp_path: Path) -> None:
    """Launched on 2 ranks, README's training example is one 2-rank job (world size 2,
    printed once) with the figures of `recs train` on 2 ranks; a process launched on 2
    ranks that builds a one-rank job is warned."""
    code = examples()[1].replace("/tmp/recs-readme-model", str(tmp_path / "lib"))
    code += ("if job.world.rank == 0:\n    import json\n"
             f"    print(json.dumps({{k: figures[k] for k in {SAME}}}))\n")
    r = run_mpi(2, ["-c", code], timeout=300)
    assert r.returncode == 0, r.stderr
    printed, lib = r.stdout.strip().splitlines()
    assert printed == "2 5760 True"
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", "data/samples/criteo/train.txt", "--eval-fraction", "0.2",
                    "--save", str(tmp_path / "cli"), "--quiet"], timeout=300)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout.strip().splitlines()[-1])
    assert json.loads(lib) == {k: cli[k] for k in SAME}
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == sorted(
        p.name for p in (tmp_path / "cli").iterdir())  # the same step-N
    r = run_mpi(2, ["-c", "import recs_core\nfrom recs_core.comm.world import World\n"
                    "recs_core.Job.from_config('configs/criteo_dlrm.toml', world=World())"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("RuntimeWarning: a one-rank job in a process launched on 2 ranks: "
                          "each rank runs a whole job of its own") == 2, r.stderr
