"""The recs command: help on every subcommand, features JSON, clean errors, multi-rank runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CONFIGS, ROOT, run_mpi

SUBCOMMANDS = ["gen", "features", "train", "predict", "spec", "convert"]


def recs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "recs_core", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_help_on_every_subcommand() -> None:
    top = recs("--help")
    assert top.returncode == 0
    for sub in SUBCOMMANDS:
        assert sub in top.stdout
        r = recs(sub, "--help")
        assert r.returncode == 0 and "usage: recs " + sub in r.stdout, sub


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "recs"
    if not exe.exists():
        pytest.fail("the recs console script is missing: install with pip install -e .")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "features" in r.stdout


def test_features_prints_figures_as_last_json_line(criteo_sample) -> None:
    r = recs("features", "--config", str(CONFIGS / "criteo_dlrm.toml"), "--data",
             str(criteo_sample), "--quiet")
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["rows"] == 5760 and out["lines"] == 5760 and out["bad_rows"] == {}
    assert out["rows_per_sec"] > 0 and out["world_size"] == 1


def test_errors_are_one_line_without_traceback(tmp_path: Path, criteo_sample) -> None:
    r = recs("features", "--config", str(CONFIGS / "criteo_dlrm.toml"), "--data",
             str(tmp_path / "missing.txt"))
    assert r.returncode == 2
    assert "recs: error:" in r.stderr and "missing.txt: data file not found" in r.stderr
    assert "Traceback" not in r.stderr
    bad_cfg = tmp_path / "c.toml"
    bad_cfg.write_text("[input]\n")
    r = recs("features", "--config", str(bad_cfg), "--data", str(criteo_sample))
    assert r.returncode == 2 and "input.columns: is required" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["latin1", "directory"])
def test_unreadable_config_is_one_line(tmp_path: Path, criteo_sample, kind: str) -> None:
    """A config that is not UTF-8, or a directory, is named in one line (was a traceback)."""
    cfg = tmp_path / "c.toml"
    if kind == "directory":
        cfg.mkdir()
        want = f"recs: error: {cfg}: is a directory, expected a TOML config file"
    else:
        cfg.write_bytes((CONFIGS / "criteo_dlrm.toml").read_bytes() + b"# caf\xe9\n")
        want = f"recs: error: {cfg}: not UTF-8 text (byte 0xe9 at offset"
    for args in (["spec", str(cfg)], ["train", "--config", str(cfg), "--data",
                                      str(criteo_sample), "--quiet"]):
        r = recs(*args)
        assert r.returncode == 2 and r.stderr.startswith(want), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_gen_max_history_needs_heavy_and_a_positive_length(tmp_path: Path) -> None:
    out = str(tmp_path / "h.txt")
    r = recs("gen", "--rows", "10", "--out", out, "--max-history", "2000")
    assert r.returncode == 2 and "recs: error: --max-history" in r.stderr and "--heavy" in r.stderr
    assert "Traceback" not in r.stderr
    r = recs("gen", "--rows", "10", "--out", out, "--heavy", "--max-history", "0")
    assert r.returncode == 2 and "recs: error: --max-history must be" in r.stderr
    assert not os.path.exists(out)
    r = recs("gen", "--rows", "10", "--out", out, "--heavy", "--max-history", "300", "--quiet")
    assert r.returncode == 0, r.stderr
    lens = [len(ln.split("\t")[40].split("|")) for ln in Path(out).read_text().splitlines()]
    assert len(lens) == 10 and max(lens) <= 300


def bad_copy(tmp_path: Path, criteo_sample: Path) -> Path:
    lines = criteo_sample.read_text().splitlines(keepends=True)
    lines[99] = "2" + lines[99][1:]  # label 2
    lines[4000] = "garbage\n"
    p = tmp_path / "bad.txt"
    p.write_text("".join(lines))
    return p


def test_on_error_flags(tmp_path: Path, criteo_sample) -> None:
    p = bad_copy(tmp_path, criteo_sample)
    cfg = str(CONFIGS / "criteo_dlrm.toml")
    r = recs("features", "--config", cfg, "--data", str(p), "--quiet")
    assert r.returncode == 0
    out = last_json(r.stdout)
    assert out["rows"] == 5758 and out["bad_rows"] == {"bad_label": 1, "field_count": 1}
    assert "skipped 2 bad line(s)" in r.stderr
    r = recs("features", "--config", cfg, "--data", str(p), "--on-error", "fail")
    assert r.returncode == 2 and f"{p}:100: bad_label in column label" in r.stderr
    r = recs("features", "--config", cfg, "--data", str(p), "--max-bad-fraction", "0.0001")
    assert r.returncode == 2 and "too many bad lines: 2 of 5760" in r.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_features_on_several_ranks(n: int, criteo_sample, tmp_path: Path) -> None:
    p = bad_copy(tmp_path, criteo_sample)
    r = run_mpi(n, ["-m", "recs_core", "features", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", str(p), str(criteo_sample), "--quiet"])
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    out = json.loads(lines[0])
    assert out["world_size"] == n and out["rows"] == 2 * 5760 - 2
    assert out["bad_rows"] == {"bad_label": 1, "field_count": 1}


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3, 4])
def test_lines_longer_than_the_read_chunk_across_rank_boundaries(n: int, criteo_sample,
                                                                 tmp_path: Path) -> None:
    """10,000 real rows in 4 equal segments joined by 5 MiB lines (longer than the 4 MiB
    read chunk), one across each 4-rank boundary: every rank count reads the 10,000 rows
    once (8196654: 10,001 on 2 ranks, 10,003 on 4). Exact rows: tests/test_reader.py."""
    rows = criteo_sample.read_bytes().splitlines(keepends=True)
    seg = [b"".join(rows[(s * 2500 + i) % len(rows)] for i in range(2500)) for s in range(4)]
    long = b"1\t" + b"x" * (5 << 20) + b"\n"
    p = tmp_path / "long.txt"
    p.write_bytes(long.join(seg))
    r = run_mpi(n, ["-m", "recs_core", "features", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", str(p), "--quiet"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert (out["world_size"], out["rows"], out["lines"]) == (n, 10000, 10003)
    assert out["bad_rows"] == {"line_too_long": 3}


@pytest.mark.mpi
def test_failing_rank_stops_every_rank(tmp_path: Path, criteo_sample) -> None:
    p = bad_copy(tmp_path, criteo_sample)
    r = run_mpi(2, ["-m", "recs_core", "features", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", str(p), "--on-error", "fail", "--quiet"], timeout=60)
    assert r.returncode != 0
    assert "bad_label" in r.stderr or "field_count" in r.stderr


@pytest.mark.mpi
def test_mpi_launch_runs_features(criteo_sample) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    r = subprocess.run([str(ROOT / "mpi_launch.sh"), "-n", "2", sys.executable, "-m", "recs_core",
                        "features", "--config", str(CONFIGS / "criteo_dlrm.toml"), "--data",
                        str(criteo_sample), "--quiet"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["world_size"] == 2 and out["rows"] == 5760


# ---- output locations: checked (and the save directory locked) before the pass ----------

def small_config(tmp_path: Path, rows: int | None = None) -> Path:
    """The canonical config with small tables; ``rows``: the cat table's rows instead."""
    cfg = tmp_path / "small.toml"
    text = (CONFIGS / "criteo_dlrm.toml").read_text().replace(
        "buckets = 262144", "buckets = 1024").replace("batch_size = 2048", "batch_size = 101")
    if rows is not None:
        text = text.replace("embedding = { dim = 16 }",
                            f"embedding = {{ dim = 16, rows = {rows} }}", 1)
    cfg.write_text(text)
    return cfg


def fake_checkpoints(root: Path) -> list[str]:
    from recs_core.checkpoint import save_step

    for step in (3, 6):
        save_step(root, step, {"x": np.ones(4, np.float32)}, {})
    return sorted(p.name for p in root.iterdir())


def refused_outputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(flags, the one-line error expected) for output locations that must be refused;
    what each points at is made here and must be left as it is."""
    (tmp_path / "afile").write_text("mine")
    fake_checkpoints(tmp_path / "models")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "step-000000009").symlink_to(tmp_path / "user")
    (tmp_path / "big.toml").write_text("")
    return [
        (["--save", str(tmp_path / "afile")], "afile: exists and is not a directory"),
        (["--export-delta", str(tmp_path / "models")],
         "models: is a checkpoint directory (holds step-000000003), not a delta"),
        (["--export-delta", str(tmp_path / "user")], "user: is not empty and not a delta"),
        (["--save", str(tmp_path / "user")], "user: holds 'notes.txt' (a file)"),
        (["--save", str(tmp_path / "linked")],
         "linked: holds 'step-000000009' (a symbolic link)"),
        (["--save", str(tmp_path / "m"), "--export-delta", str(tmp_path / "m" / "d")],
         "overlaps the save directory"),
    ]


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else
                                       p.read_bytes().hex() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def test_bad_output_locations_are_refused_before_the_pass(tmp_path: Path, sample_1200,
                                                           capsys) -> None:
    from recs_core.cli import main

    bad = tmp_path / "bad.txt"  # training would stop at its line 100 (label 2)
    lines = sample_1200.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:99] + ["2" + lines[99][1:]] + lines[100:]))
    base = ["train", "--config", str(small_config(tmp_path)), "--data", str(bad),
            "--on-error", "fail", "--quiet"]
    cases = refused_outputs(tmp_path)
    before = tree(tmp_path)
    for flags, why in cases:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [err.strip()] and err.startswith("recs: error: ")
        assert why in err, (flags, err)
        assert tree(tmp_path) == before, flags  # nothing deleted, written or locked
    assert main(base + ["--save", str(tmp_path / "new")]) == 2  # the data's own error
    assert f"{bad}:100: bad_label" in capsys.readouterr().err
    assert not (tmp_path / "new" / ".recs-save.lock").exists()  # released


def test_a_table_that_cannot_be_allocated_is_refused_with_its_size(tmp_path: Path,
                                                                    sample_1200) -> None:
    r = recs("train", "--config", str(small_config(tmp_path, rows=2**40)), "--data",
             str(sample_1200), "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # 26 tables of 2**40 float32 rows x 16 = 26 x 64 TiB (and the small others)
    assert r.stderr.startswith("recs: error: 47 embedding tables (the largest 'cat:C1': "
                               "1099511627776 rows x dim 16) need 1664.0 TiB, more than the "
                               "machine's memory ("), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@contextlib.contextmanager
def locked_by_a_live_job(save_dir: Path) -> Iterator[tuple[Path, int]]:
    """``save_dir`` with a lock whose owner is a live process on this host (killed after)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = save_dir / ".recs-save.lock"
        save_dir.mkdir()
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid,
                                    "started": "earlier", "token": "x"}))
        yield lock, other.pid
    finally:
        other.kill()
        other.wait()


def test_a_locked_save_directory_is_refused(tmp_path: Path, sample_1200) -> None:
    with locked_by_a_live_job(tmp_path / "m") as (lock, pid):
        r = recs("train", "--config", str(small_config(tmp_path)), "--data", str(sample_1200),
                 "--save", str(tmp_path / "m"), "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert re.fullmatch(
            re.escape(f"recs: error: {tmp_path / 'm'}: locked by another job (pid {pid} on "
                      f"{socket.gethostname()} since earlier, refreshed ") + r"\d+" +
            re.escape(f" s ago); wait for it, or if no job uses it, remove {lock} (a lock not "
                      f"refreshed for 30 s is taken over)"), r.stderr.strip()), r.stderr
        assert [p.name for p in lock.parent.iterdir()] == [lock.name]
    # its owner is gone now: the next job takes the lock over, trains and saves
    r = recs("train", "--config", str(small_config(tmp_path)), "--data", str(sample_1200),
             "--save", str(tmp_path / "m"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in lock.parent.iterdir()) == ["step-000000012"]


def test_a_full_disk_on_save_is_one_line_and_leaves_no_staging(
        tmp_path: Path, sample_1200, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from recs_core.checkpoint import manifest as mf
    from recs_core.cli import main

    real = mf.write_array

    def full_disk(root, rel, name, rank, arr):
        if name.startswith("dense"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(root, rel, name, rank, arr)

    monkeypatch.setattr(mf, "write_array", full_disk)
    args = ["train", "--config", str(small_config(tmp_path)), "--data", str(sample_1200),
            "--quiet", "--save", str(tmp_path / "m")]
    for _ in range(2):  # a retry on the full disk fails the same way, leaving nothing
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"recs: error: checkpoint {tmp_path / 'm' / 'step-000000012'} not "
                       f"saved: rank 0: [Errno 28] No space left on device")
        assert list((tmp_path / "m").iterdir()) == []  # no staging, the lock released


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_several_ranks_refuse_a_delta_onto_checkpoints(n: int, tmp_path: Path,
                                                       sample_1200) -> None:
    kept = fake_checkpoints(tmp_path / "models")
    r = run_mpi(n, ["-m", "recs_core", "train", "--config", str(small_config(tmp_path)),
                    "--data", str(sample_1200), "--quiet", "--export-delta",
                    str(tmp_path / "models")], timeout=180)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "is a checkpoint directory (holds step-000000003), not a delta" in r.stderr
    assert '"rows"' not in r.stdout  # no pass
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == kept


@pytest.mark.mpi
def test_several_ranks_refuse_a_locked_save_directory(tmp_path: Path, sample_1200) -> None:
    with locked_by_a_live_job(tmp_path / "m") as (lock, pid):
        r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(small_config(tmp_path)),
                        "--data", str(sample_1200), "--quiet", "--save",
                        str(tmp_path / "m")], timeout=180)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert f"locked by another job (pid {pid} on" in r.stderr
        assert [p.name for p in lock.parent.iterdir()] == [lock.name]


def test_resume_from_one_step_checkpoint_saves_beside_it(tmp_path: Path, sample_1200,
                                                         capsys) -> None:
    from recs_core.cli import main

    args = ["train", "--config", str(small_config(tmp_path)), "--data", str(sample_1200),
            "--quiet"]
    assert main(args + ["--save", str(tmp_path / "m")]) == 0
    step = tmp_path / "m" / "step-000000012"
    capsys.readouterr()
    assert main(args + ["--resume", str(step)]) == 0  # a finished window: saved again
    assert last_json(capsys.readouterr().out)["saved"] == str(step)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [step.name]
    assert sorted(p.name for p in step.iterdir()) == ["manifest.json", "rank00000-of-00001"]
