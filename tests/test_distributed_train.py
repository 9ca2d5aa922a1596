"""Training across real MPI ranks: equals 1-rank training on the same global batches,
handles ragged shards, and a failing rank stops every rank with its message."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, ROOT, held_out_rows, run_mpi

CHECK = str(ROOT / "tests" / "mpi" / "train_equivalence_check.py")


def small_config(tmp_path: Path, batch: int) -> Path:
    """The canonical config with small tables and the given global batch."""
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 4096")
                   .replace("batch_size = 2048", f"batch_size = {batch}"))
    return cfg


@pytest.mark.mpi
@pytest.mark.parametrize("n,placement,preset,extra", [
    (2, "row", "dlrm", []), (3, "table", "dlrm", []), (3, "row", "wdl", []),
    (2, "row", "dlrm", ["fitted"])])
def test_n_ranks_equal_one_rank(sample_1200: Path, n: int, placement: str,
                                preset: str, extra: list[str]) -> None:
    r = run_mpi(n, [CHECK, str(sample_1200), placement, preset, *extra], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("OK rank"))
    assert ok == [f"OK rank {i} of {n}" for i in range(n)], r.stdout  # one world of n


@pytest.mark.mpi
def test_train_cli_on_two_ranks_prints_global_figures(sample_1200: Path, tmp_path: Path) -> None:
    """Rank 0 prints the global figures, and the warnings of every rank once (here an
    empty file and the data given twice, read once)."""
    cfg = small_config(tmp_path, 256)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(cfg), "--data", str(empty),
                    str(sample_1200), str(sample_1200), "--quiet", "--mode", "sequential"],
                timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["world_size"] == 2 and out["train_rows"] == 1200
    assert out["warnings"] == [f"{empty}: empty file (0 bytes)",
                               f"{sample_1200}: given more than once: read once"]
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("recs: warning: ")]
    assert warned == [f"recs: warning: {w}" for w in out["warnings"]]
    assert set(out["comm_wait_seconds"]) == {"categorical", "bucketized", "crosses", "dense"}
    assert all(0 <= f < 1 for f in out["comm_wait_fraction"].values())


@pytest.mark.mpi
def test_train_cli_default_mode_is_scheduled_and_writes_a_trace(sample_1200: Path,
                                                                tmp_path: Path) -> None:
    cfg = small_config(tmp_path, 256)
    trace = tmp_path / "t.json"
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(cfg), "--data",
                    str(sample_1200), "--quiet", "--trace", str(trace)], timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])
    assert out["mode"] == "recs" and out["train_rows"] == 1200
    sched = out["scheduler"]
    assert sorted(sched["pipeline_order"]) == ["bucketized", "categorical", "crosses"]
    assert sched["consumer_late_ms"]["p95"] >= sched["consumer_late_ms"]["median"] >= 0
    assert out["step"]["wall_ms"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["pid"] for e in events} == {0, 1}


@pytest.mark.mpi
def test_a_failing_rank_stops_every_rank(sample_1200: Path, tmp_path: Path) -> None:
    lines = sample_1200.read_text().splitlines(keepends=True)
    lines[1100] = "garbage\n"  # in the last rank's shard
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    cfg = small_config(tmp_path, 64)
    t0 = time.monotonic()
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(cfg), "--data", str(bad),
                    "--on-error", "fail", "--quiet"], timeout=120)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 30
    assert f"{bad}:1101: field_count" in r.stderr


@pytest.mark.mpi
def test_a_killed_rank_stops_every_rank(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from recs_core.data.synth import generate
    from tests.conftest import mpiexec

    data = tmp_path / "killme.txt"
    generate(data, 150_000, seed=2)  # long enough to be mid-pass when killed
    cfg = small_config(tmp_path, 64)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", "recs_core", "train",
                             "--config", str(cfg), "--data", str(data), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            out = subprocess.run(["pgrep", "-f", f"recs_core train .*{data}"],
                                 capture_output=True, text=True).stdout
            pids = [int(p) for p in out.split() if int(p) != proc.pid]  # not mpiexec
            time.sleep(0.2)
        assert len(pids) == 2, "ranks did not start"
        time.sleep(2)  # inside the training loop
        assert proc.poll() is None, "the job ended before a rank could be killed"
        os.kill(max(pids), signal.SIGKILL)
        t0 = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 30
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.mpi
def test_eval_fraction_on_two_ranks(sample_1200: Path, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, 128)
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", str(cfg), "--data",
                    str(sample_1200), "--eval-fraction", "0.25", "--quiet"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])
    assert out["train_rows"] + out["eval_rows"] == 1200
    # the rows in the last quarter of each rank's byte range
    assert out["eval_rows"] == held_out_rows(sample_1200, 0.25, world=2)
    assert 0.0 < out["eval_auc"] < 1.0
