"""The scheduler across link rates: every `recs train --mode` on 2 ranks x 1 thread, per
link rate x workload x MPI, on the emulated network (each rank its own host by default:
bench/emulated_network.sh --hosts 2, a link of RATE each way per rank).

Runs are interleaved: repetition 1 of every (rate, workload, MPI, mode), then repetition 2,
...; the modes of one cell run side by side, so "paired" ratios (within a repetition,
medians over repetitions) cancel the machine's drift. Per cell it reports bench_scheduler's
figures (summarize / ratios / paired: samples/s, step CPU and comm, recs against the better
of sequential and prefetch, the bound max(CPU work + network CPU, comm) from the
sequential run and bench_network_cpu.py's CPU per MiB on that network and MPI), the guard's
choice in the recs run, a summary table, and a noise control: each of sequential, prefetch
and recs over the best of the other two, paired ("control": in how many cells each reaches
0.98; modes equally fast fall below 1 by the noise alone). Per cell and mode it also gives
the CPU busy time and the idle time on exchanges per step, against sequential's within
each repetition ("cpu_vs_sequential"; the mode recs-guard-off is recs with `--guard off`:
what overlap alone costs and hides). Per MPI, "pooled_recs_vs_best" is the geometric mean
over cells of recs / best baseline (each cell's paired median) with a 95% bootstrap
interval, over the fast cells (shm, 4, 2 Gbit/s), the others, and all;
"pooled_recs_vs_sequential" the same against sequential alone (not biased down the way a
maximum of two noisy rates is). Generated input files stay under 1 GB (fewer rows, never
shorter histories).

    python bench/bench_sweep.py --rows 200000 --heavy-rows 30000 --reps 5 \
        --out bench/results/sweep.json --png bench/results/sweep.png

A short run: --rates 1 --workloads canonical --modes sequential,recs --mpis mpich
--reps 1 --rows 20000 --network-cpu-mib 0. --hosts 0 uses the shared shaped loopback
instead (at twice RATE: both directions share it). The rate "shm" adds shared memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import bench_scheduler as bs
import numpy as np

ROOT = bs.ROOT
RATES = ("4", "2", "1", "0.5", "0.25")  # Gbit/s each way per link
WORKLOADS = ("canonical", "heavy")
MPIS = ("mpich", "openmpi")
MAX_FILE_BYTES = 1 << 30  # all generated input files together
HEAVY_HISTORY = 5000  # WORKLOAD.md: >= 40% feature share on one core
GEN_ARGS = {"canonical": ["--seed", "1"],
            "heavy": ["--seed", "7", "--heavy", "--max-history", str(HEAVY_HISTORY)]}


def network_of(rate: str, hosts: int) -> str:
    """bench_network_cpu.network_prefix's name of a link of ``rate`` Gbit/s each way (or
    "shm"): per-rank links with ``hosts`` > 0, else the shared loopback at twice the rate."""
    if rate == "shm":
        return "shm"
    mbit = round(float(rate) * 1000)
    if mbit <= 0:
        raise SystemExit(f"bench_sweep: rate must be > 0 Gbit/s, got {rate}")
    return f"hosts{hosts}@{mbit}mbit" if hosts else f"emulated@{2 * mbit}mbit"


def plan(reps: int, rates: list[str], workloads: list[str], mpis: list[str],
         modes: list[str]) -> list[tuple[int, str, str, str, str]]:
    """Run order, interleaved: (rep, rate, workload, mpi, mode), a repetition of every cell
    before the next, each cell's modes side by side."""
    return [(rep, r, w, mpi, m) for rep in range(reps) for r in rates for w in workloads
            for mpi in mpis for m in modes]


def rows_within(budget: int, bytes_per_row: dict[str, float], wanted: dict[str, int]) -> dict:
    """Rows per workload so that all files fit ``budget`` bytes: the budget is shared in
    proportion to each file's wanted size and only files above their share shrink."""
    total = sum(bytes_per_row[w] * n for w, n in wanted.items())
    if total <= budget:
        return dict(wanted)
    return {w: int(n * budget / total) for w, n in wanted.items()}


def gen(workload: str, rows: int, out: Path) -> None:
    """`recs gen` of ``workload``'s file (kept when it is already there)."""
    if out.exists():
        return
    tmp = out.with_name(out.name + ".part")
    cmd = [str(bs.HOST_BIN / "recs"), "gen", "--rows", str(rows), "--out", str(tmp), "--quiet",
           *GEN_ARGS[workload]]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"bench_sweep: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    tmp.rename(out)


def input_files(workdir: Path, wanted: dict[str, int]) -> dict[str, Path]:
    """Generate each workload's file under ``workdir`` (sized from a 1,000-row sample so that
    all fit MAX_FILE_BYTES)."""
    workdir.mkdir(parents=True, exist_ok=True)
    per_row = {}
    for w in wanted:
        sample = workdir / f"{w}-sample.txt"
        gen(w, 1000, sample)
        per_row[w] = sample.stat().st_size / 1000 * 1.05  # margin: rows vary
        sample.unlink()
    rows = rows_within(MAX_FILE_BYTES, per_row, wanted)
    files = {}
    for w, n in rows.items():
        if n < wanted[w]:
            print(f"bench_sweep: {w}: {n} rows instead of {wanted[w]} (files under 1 GB)",
                  file=sys.stderr)
        files[w] = workdir / f"{w}-{n}.txt"
        gen(w, n, files[w])
    return files


CONTROL_MODES = ("sequential", "prefetch", "recs")
DEFAULT_MODES = ("sequential", "prefetch", "recs", "recs-guard-off")
FAST_RATES = ("shm", "4", "2")  # where a blocking step idles little: overlap must not cost
ALL_MODES = (*bs.MODES, *bs.VARIANTS)


def versus_others(runs: dict[str, list[dict]]) -> dict:
    """The noise control: per mode of sequential, prefetch and recs, its samples/s over the
    best of the other two in each repetition (median, per repetition). Modes equally fast
    score alike here, below 1 by the machine's noise (a maximum of noisy rates is biased
    up), which is the floor that recs_vs_best is read against."""
    modes = [m for m in CONTROL_MODES if runs.get(m)]
    if len(modes) < 2:
        return {}
    reps = min(len(runs[m]) for m in modes)
    out = {}
    for m in modes:
        got = [runs[m][i]["samples_per_sec"]
               / max(runs[o][i]["samples_per_sec"] for o in modes if o != m)
               for i in range(reps)]
        out[m] = {"median": round(statistics.median(got), 3),
                  "reps": [round(x, 3) for x in got]}
    return out


def cell_of(runs: dict[str, list[dict]], cpu_ms_per_mib: float | None) -> dict:
    """bench_scheduler's figures of one (rate, workload, MPI): per mode, ratios, paired,
    and the noise control (:func:`versus_others`)."""
    cell: dict = {m: bs.summarize(r) for m, r in runs.items()}
    if {"sequential", "recs"} <= set(runs):
        cell["ratios"] = bs.ratios(cell, cpu_ms_per_mib)
        cell["paired"] = bs.paired(runs, cpu_ms_per_mib)
        cell["versus_others"] = versus_others(runs)
        cell["guard"] = [r.get("scheduler", {}).get("guard") for r in runs["recs"]]
    if "sequential" in runs:
        cell["cpu_vs_sequential"] = cpu_vs_sequential(runs)
    return cell


def cpu_vs_sequential(runs: dict[str, list[dict]]) -> dict:
    """Per mode: its CPU busy time per step over sequential's and its idle time on exchanges
    per step minus sequential's (ms), each within a repetition; medians and the reps."""
    seq = runs["sequential"]
    out = {}
    for m, got in runs.items():
        if m == "sequential":
            continue
        reps = min(len(got), len(seq))
        cpu = [got[i]["step"]["cpu_busy_ms"] / seq[i]["step"]["cpu_busy_ms"]
               for i in range(reps)]
        idle = [got[i]["step"]["idle_in_comm_ms"] - seq[i]["step"]["idle_in_comm_ms"]
                for i in range(reps)]
        out[m] = {"cpu": round(statistics.median(cpu), 4),
                  "idle_minus_sequential_ms": round(statistics.median(idle), 3),
                  "cpu_reps": [round(x, 4) for x in cpu],
                  "idle_reps": [round(x, 3) for x in idle]}
    return out


def pooled(cells: list[list[float]], draws: int = 4000, seed: int = 0) -> dict:
    """Geometric mean over ``cells`` of each cell's median ratio (its paired repetitions),
    with a 95% bootstrap interval (repetitions resampled within each cell)."""
    cells = [[x for x in c if x is not None] for c in cells]
    cells = [np.array(c) for c in cells if c]
    if not cells:
        return {}
    rng = np.random.default_rng(seed)

    def geomean(meds: list[float] | np.ndarray) -> float:
        return float(np.exp(np.mean(np.log(meds))))

    point = geomean([np.median(c) for c in cells])
    boot = np.array([geomean([np.median(rng.choice(c, len(c))) for c in cells])
                     for _ in range(draws)])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"geomean": round(point, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "cells": len(cells), "lowest_cell": round(float(min(np.median(c) for c in cells)),
                                                      4)}


def pooled_by_mpi(table: dict, key: str = "recs_vs_best") -> dict:
    """Per MPI: :func:`pooled` of ``key`` over the fast cells (FAST_RATES), the others and
    all."""
    out = {}
    for mpi, by_rate in table.items():
        groups: dict[str, list] = {"fast": [], "slow": [], "all": []}
        for rate, by_w in by_rate.items():
            for cell in by_w.values():
                reps = cell.get("paired", {}).get(key, {}).get("reps")
                if reps:
                    groups["fast" if rate in FAST_RATES else "slow"].append(reps)
                    groups["all"].append(reps)
        out[mpi] = {g: pooled(c) for g, c in groups.items() if c}
    return out


def control(table: dict, at_least: float = 0.98) -> dict:
    """Per mode: in how many cells its paired median over the best of the others reaches
    ``at_least`` (of how many)."""
    cells = [c for by_rate in table.values() for by_w in by_rate.values()
             for c in by_w.values() if c.get("versus_others")]
    return {m: {"cells_at_least": sum(c["versus_others"][m]["median"] >= at_least
                                      for c in cells if m in c["versus_others"]),
                "cells": sum(m in c["versus_others"] for c in cells), "at_least": at_least}
            for m in CONTROL_MODES}


def guard_of(runs: list[dict | None]) -> dict:
    """The recs runs' guard: the choice each repetition ended with, and the last run's
    last probe (idle ms hidden, CPU ms added a step, pooled over how many probes)."""
    got = [g for g in runs if g]
    if not got:
        return {}
    out: dict = {"choices": [g.get("choice") for g in got]}
    probes = got[-1].get("probes") or []
    if probes:
        out.update({k: probes[-1].get(k) for k in ("hidden_ms", "extra_cpu_ms", "pooled")})
    return out


def summary(table: dict) -> list[dict]:
    """One row per (mpi, rate, workload): samples/s per mode, recs (and its variants)
    against the better baseline (paired medians), the bound, the guard's last choice."""
    rows = []
    for mpi, by_rate in table.items():
        for rate, by_w in by_rate.items():
            for w, cell in by_w.items():
                row = {"mpi": mpi, "rate_gbit": rate, "workload": w,
                       "samples_per_sec": {m: cell[m]["samples_per_sec"]
                                           for m in ALL_MODES if m in cell}}
                if "paired" in cell:
                    p, r = cell["paired"], cell["ratios"]
                    for k in ("recs_vs_best", "recs-intra_vs_best", "recs-inter_vs_best",
                              "recs_share_of_bound", "recs_share_of_bound_with_network_cpu"):
                        if p.get(k, {}).get("median") is not None:
                            row[k] = p[k]["median"]
                    row["bound_samples_per_sec"] = r["bound_samples_per_sec"]
                    row["guard"] = guard_of(cell["guard"])
                row["cpu_busy_ms"] = {m: cell[m]["step_cpu_busy_ms"] for m in ALL_MODES
                                      if m in cell}
                row["idle_in_comm_ms"] = {m: cell[m]["step_idle_in_comm_ms"]
                                          for m in ALL_MODES if m in cell}
                if "cpu_vs_sequential" in cell:
                    row["cpu_vs_sequential"] = {m: v["cpu"] for m, v in
                                                cell["cpu_vs_sequential"].items()}
                rows.append(row)
    return rows


def chart(result: dict, path: str) -> None:
    """Per (MPI, workload): samples/s per mode against the link rate with the bound beside
    (top), each recs mode over the better baseline (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(mpi, w) for mpi in result["mpis"] for w in result["workloads"]]
    fig, axes = plt.subplots(2, len(cols), figsize=(4.4 * len(cols), 6.4), squeeze=False)
    colors = dict(zip(bs.MODES, ["#888", "#6a9fd4", "#d4553a", "#e8a33d", "#7cb562"]))
    for j, (mpi, w) in enumerate(cols):
        cells = {float(r): result["table"][mpi][r][w] for r in result["rates"] if r != "shm"}
        xs = sorted(cells)
        top, bottom = axes[0][j], axes[1][j]
        if not xs:
            continue
        for m in bs.MODES:
            if m in cells[xs[0]]:
                top.plot(xs, [cells[x][m]["samples_per_sec"] for x in xs], "o-",
                         color=colors[m], label=m)
            key = f"{m}_vs_best"
            if key in cells[xs[0]].get("paired", {}):
                bottom.plot(xs, [cells[x]["paired"][key]["median"] for x in xs], "o-",
                            color=colors[m], label=m)
        if "ratios" in cells[xs[0]]:
            top.plot(xs, [cells[x]["ratios"]["bound_samples_per_sec"] for x in xs], "kx--",
                     label="bound")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel("link rate (Gbit/s each way)")
        bottom.axhline(1.0, color="#444", lw=0.8)
        bottom.axhline(0.98, color="#444", lw=0.8, ls=":")
        top.set_title(f"{w}, {mpi}", fontsize=10)
        top.set_ylabel("samples/s")
        bottom.set_ylabel("/ max(sequential, prefetch)")
        top.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default=",".join(RATES),
                    help="comma list of link rates in Gbit/s each way, and/or shm")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help=f"comma list of {', '.join(ALL_MODES)}")
    ap.add_argument("--mpis", default=",".join(MPIS),
                    help="mpich (this Python's venv) and/or openmpi (.venv-openmpi)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--hosts", type=int, default=2,
                    help="emulated hosts (one per rank; 0: the shared shaped loopback)")
    ap.add_argument("--canonical", help="canonical input file (default: generated)")
    ap.add_argument("--heavy", help=f"feature-heavy input file (default: generated, "
                    f"`recs gen --heavy --max-history {HEAVY_HISTORY}`)")
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the generated "
                    "canonical file")
    ap.add_argument("--heavy-rows", type=int, default=30_000,
                    help="rows of the generated feature-heavy file")
    ap.add_argument("--workdir", type=Path, default=ROOT / "out" / "sweep",
                    help="where generated files go")
    ap.add_argument("--network-cpu-mib", type=float, default=200.0,
                    help="MiB per bench_network_cpu run for the bound's network CPU "
                    "(0: skip; the bound is then max(CPU work, comm))")
    ap.add_argument("--out", help="also write the JSON here (after every repetition)")
    ap.add_argument("--png", help="write the chart here (needs matplotlib)")
    a = ap.parse_args()
    rates, workloads = a.rates.split(","), a.workloads.split(",")
    modes, mpis = a.modes.split(","), a.mpis.split(",")
    for name, got, known in (("--workloads", workloads, WORKLOADS), ("--modes", modes, ALL_MODES),
                             ("--mpis", mpis, MPIS)):
        if set(got) - set(known):
            ap.error(f"{name}: unknown {sorted(set(got) - set(known))}")
    networks = {r: network_of(r, a.hosts) for r in rates}
    for out in (a.out, a.png):
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    given = {w: Path(f) for w, f in (("canonical", a.canonical), ("heavy", a.heavy))
             if f and w in workloads}
    wanted = {w: n for w, n in (("canonical", a.rows), ("heavy", a.heavy_rows))
              if w in workloads and w not in given}
    files = {**given, **(input_files(a.workdir, wanted) if wanted else {})}

    venvs, libraries, network_cpu = {}, {}, {}
    for mpi in mpis:
        bs.use_mpi(mpi)
        venvs[mpi] = (bs.BIN, bs.ENV)
        libraries[mpi] = bs.mpi_library()
        print(f"{mpi}: {libraries[mpi]['mpi_library']}", file=sys.stderr)
        for r, n in networks.items():
            if a.network_cpu_mib > 0:
                network_cpu.setdefault(mpi, {})[r] = bs.network_cpu_of(
                    n, bs.BIN, bs.ENV, mib=a.network_cpu_mib)
    runs: dict = {mpi: {r: {w: {m: [] for m in modes} for w in workloads} for r in rates}
                  for mpi in mpis}
    result: dict = {}

    def report() -> dict:
        table = {mpi: {r: {w: cell_of(runs[mpi][r][w], network_cpu.get(mpi, {}).get(r, {})
                                      .get("cpu_ms_per_mib"))
                           for w in workloads} for r in rates} for mpi in mpis}
        return {"ranks": 2, "threads_per_rank": 1, "reps": a.reps, "hosts": a.hosts,
                "rates": rates, "networks": networks, "workloads": workloads, "modes": modes,
                "mpis": mpis, "mpi_library": libraries,
                "files": {w: {"path": str(f), "bytes": f.stat().st_size}
                          for w, f in files.items()},
                "network_cpu": network_cpu, "table": table, "summary": summary(table),
                "pooled_recs_vs_best": pooled_by_mpi(table),
                "pooled_recs_vs_sequential": pooled_by_mpi(table, "recs_vs_sequential"),
                "control": control(table)}

    order = plan(a.reps, rates, workloads, mpis, modes)
    for i, (rep, r, w, mpi, m) in enumerate(order):
        got = bs.run_once(networks[r], bs.CONFIGS[w], str(files[w]), m, 2, venv=venvs[mpi])
        runs[mpi][r][w][m].append(got)
        print(f"[{i + 1}/{len(order)}] rep {rep + 1} {r} {w} {mpi} {m}: "
              f"{got['samples_per_sec']} samples/s", file=sys.stderr)
        if a.out and (i + 1 == len(order) or order[i + 1][0] != rep):
            result = report()
            Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    result = report()
    print(json.dumps(result, indent=1), flush=True)
    for row in result["summary"]:
        rates_txt = " ".join(f"{m} {v:.0f}" for m, v in row["samples_per_sec"].items())
        print(f"{row['mpi']} {row['rate_gbit']} {row['workload']}: {rates_txt}; recs/best "
              f"{row.get('recs_vs_best', '-')}, bound {row.get('bound_samples_per_sec', '-')}",
              file=sys.stderr)
    for versus in ("best", "sequential"):
        for mpi, groups in result[f"pooled_recs_vs_{versus}"].items():
            for g, p in groups.items():
                print(f"{mpi} {g} cells: recs/{versus} geometric mean {p['geomean']} (95% "
                      f"{p['ci95'][0]}-{p['ci95'][1]}, {p['cells']} cells, lowest "
                      f"{p['lowest_cell']})", file=sys.stderr)
    for m, c in result["control"].items():
        print(f"control: {m} at >= {c['at_least']} of the best of the others in "
              f"{c['cells_at_least']} of {c['cells']} cells", file=sys.stderr)
    if a.png:
        chart(result, a.png)


if __name__ == "__main__":
    main()
