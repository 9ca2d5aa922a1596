"""bench/bench_sweep.py's planning and figures (no MPI runs): interleaved order, link
names, the 1 GB file budget, recs against the better baseline, the bound, the chart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_network_cpu  # noqa: E402
import bench_sweep  # noqa: E402


def job(sps: float, wall: float, cpu: float, comm: float, *, guard: str | None = None,
        loss: float = 0.5) -> dict:
    """A `recs train` JSON line with the fields the bench reads."""
    out = {"samples_per_sec": sps, "window_steps": 10, "train_logloss": loss,
           "step": {"wall_ms": wall, "cpu_busy_ms": cpu, "comm_ms": comm,
                    "idle_in_comm_ms": 0.0},
           "sent_mib_per_step": {"total": 2.0}}
    if guard:
        out["scheduler"] = {"consumer_late_ms": {"median": 1.0, "p95": 2.0},
                            "overhead_us_per_task": 5.0, "overhead_mpi_us_per_task": 1.0,
                            "tasks": 100, "pipeline_order": ["a"],
                            "guard": {"choice": guard}}
    return out


def test_network_names() -> None:
    assert bench_sweep.network_of("1", 2) == "hosts2@1000mbit"
    assert bench_sweep.network_of("0.25", 2) == "hosts2@250mbit"
    assert bench_sweep.network_of("4", 0) == "emulated@8000mbit"  # loopback: both ways
    assert bench_sweep.network_of("shm", 2) == "shm"
    script = str(ROOT / "bench" / "emulated_network.sh")
    prefix = bench_network_cpu.network_prefix
    assert prefix("hosts2@250mbit") == [script, "--hosts", "2", "--rate", "250mbit", "--"]
    assert prefix("emulated@2gbit") == [script, "--rate", "2gbit", "--"]
    assert prefix("emulated") == [script, "--"]
    assert prefix("shm") == []
    with pytest.raises(SystemExit):
        prefix("hostsx@1gbit")


def test_plan_interleaves_repetitions() -> None:
    order = bench_sweep.plan(2, ["1", "0.5"], ["canonical"], ["mpich", "openmpi"],
                             ["sequential", "recs"])
    assert len(order) == 2 * 2 * 2 * 2
    assert order[:3] == [(0, "1", "canonical", "mpich", "sequential"),
                         (0, "1", "canonical", "mpich", "recs"),
                         (0, "1", "canonical", "openmpi", "sequential")]
    assert {o[0] for o in order[:8]} == {0} and {o[0] for o in order[8:]} == {1}


def test_rows_fit_the_budget() -> None:
    per_row = {"canonical": 250.0, "heavy": 20_000.0}
    assert bench_sweep.rows_within(10**9, per_row, {"canonical": 1000, "heavy": 100}) == \
        {"canonical": 1000, "heavy": 100}
    got = bench_sweep.rows_within(10**9, per_row, {"canonical": 2_000_000, "heavy": 100_000})
    # wanted 0.5 GB + 2 GB: both scaled by 1/2.5
    assert got == {"canonical": 800_000, "heavy": 40_000}
    assert sum(per_row[w] * n for w, n in got.items()) <= 10**9


def test_cell_against_the_better_baseline_and_the_bound() -> None:
    runs = {"sequential": [job(1000, 100, 60, 50), job(1100, 90, 55, 45)],
            "prefetch": [job(1200, 80, 60, 40), job(1000, 100, 60, 50)],
            "recs": [job(1300, 70, 60, 20, guard="blocking"),
                     job(1210, 75, 60, 20, guard="overlap")]}
    cell = bench_sweep.cell_of(runs, cpu_ms_per_mib=5.0)
    # medians: sequential 1050, prefetch 1100, recs 1255
    assert cell["ratios"]["recs_vs_best"] == round(1255 / 1100, 3)
    # per repetition: 1300/1200, 1210/1100
    assert cell["paired"]["recs_vs_best"]["reps"] == [round(1300 / 1200, 3),
                                                       round(1210 / 1100, 3)]
    # bound from sequential's medians: max(57.5 + 2 MiB x 5 ms, 47.5) = 67.5 ms a step;
    # as samples/s: sequential's 1050 at its 95 ms step
    r = cell["ratios"]
    assert r["bound_with_network_cpu_ms"] == 67.5 and r["bound_step_ms"] == 57.5
    assert r["bound_samples_per_sec"] == round(1050 * 95 / 67.5, 1)
    assert cell["guard"] == [{"choice": "blocking"}, {"choice": "overlap"}]
    row = bench_sweep.summary({"mpich": {"1": {"canonical": cell}}})[0]
    assert row["recs_vs_best"] == cell["paired"]["recs_vs_best"]["median"]
    assert row["guard"] == {"choices": ["blocking", "overlap"]}
    assert row["samples_per_sec"]["recs"] == 1255
    assert row["cpu_busy_ms"] == {"sequential": 57.5, "prefetch": 60.0, "recs": 60.0}
    # CPU per step within each repetition: 60/60, 60/55
    assert row["cpu_vs_sequential"]["recs"] == round((1 + 60 / 55) / 2, 4)


def test_cpu_and_idle_time_against_sequential_within_each_repetition() -> None:
    def idle(j: dict, ms: float) -> dict:
        j["step"]["idle_in_comm_ms"] = ms
        return j

    runs = {"sequential": [idle(job(1000, 100, 50, 50), 3.0), idle(job(900, 110, 55, 50), 2.0)],
            "recs-guard-off": [idle(job(1000, 100, 51, 50), 4.0),
                               idle(job(900, 110, 55, 50), 1.0)]}
    got = bench_sweep.cell_of(runs, None)["cpu_vs_sequential"]["recs-guard-off"]
    assert got["cpu_reps"] == [1.02, 1.0] and got["cpu"] == 1.01
    assert got["idle_reps"] == [1.0, -1.0] and got["idle_minus_sequential_ms"] == 0.0


def test_pooled_geometric_mean_and_its_interval() -> None:
    # cell medians 1.0, 1.1, 0.9 (5 paired reps each): geometric mean (0.99)^(1/3)
    cells = [[0.98, 1.0, 1.02, 0.99, 1.01], [1.1, 1.08, 1.12, 1.09, 1.11],
             [0.9, 0.88, 0.92, 0.91, 0.89]]
    p = bench_sweep.pooled(cells)
    assert p["geomean"] == round(0.99 ** (1 / 3), 4) and p["cells"] == 3
    assert p["lowest_cell"] == 0.9
    lo, hi = p["ci95"]
    assert lo < p["geomean"] < hi and hi - lo < 0.03  # the reps' spread, not more
    wide = bench_sweep.pooled([[0.8, 1.0, 1.2, 0.9, 1.1]] * 3)
    assert wide["ci95"][1] - wide["ci95"][0] > hi - lo  # noisier reps, wider interval
    table = {"mpich": {r: {"canonical": {"paired": {"recs_vs_best": {"reps": c}}}}
                       for r, c in zip(("shm", "4", "0.25"), cells)}}
    by = bench_sweep.pooled_by_mpi(table)["mpich"]
    assert by["fast"]["cells"] == 2 and by["slow"]["cells"] == 1 and by["all"]["cells"] == 3
    assert by["fast"]["geomean"] == round((1.0 * 1.1) ** 0.5, 4)


def test_chart_is_written(tmp_path: Path) -> None:
    runs = {"sequential": [job(1000, 100, 60, 50)], "recs": [job(1300, 70, 60, 20)]}
    cell = bench_sweep.cell_of(runs, None)
    result = {"mpis": ["mpich"], "workloads": ["canonical"], "rates": ["1", "0.5", "shm"],
              "table": {"mpich": {r: {"canonical": cell} for r in ("1", "0.5", "shm")}}}
    bench_sweep.chart(result, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_noise_control_scores_each_mode_against_the_best_of_the_others() -> None:
    runs = {"sequential": [job(1000, 100, 60, 50), job(1200, 90, 55, 45)],
            "prefetch": [job(1100, 80, 60, 40), job(1000, 100, 60, 50)],
            "recs": [job(1050, 70, 60, 20), job(1100, 75, 60, 20)]}
    cell = bench_sweep.cell_of(runs, None)
    v = cell["versus_others"]
    assert v["sequential"]["reps"] == [round(1000 / 1100, 3), 1.091]
    assert v["prefetch"]["reps"] == [1.048, round(1000 / 1200, 3)]
    assert v["recs"]["reps"] == [round(1050 / 1100, 3), round(1100 / 1200, 3)]
    assert v["recs"]["reps"] == cell["paired"]["recs_vs_best"]["reps"]  # the same figure
    c = bench_sweep.control({"mpich": {"1": {"canonical": cell, "heavy": cell}}})
    # medians: sequential 1.0, prefetch 0.941, recs 0.936
    assert c["sequential"] == {"cells_at_least": 2, "cells": 2, "at_least": 0.98}
    assert c["prefetch"]["cells_at_least"] == 0 and c["recs"]["cells_at_least"] == 0
