"""Preemption time of ``recs train`` under MPI: the canonical workload (the config, 1M
rows) launched with ``mpi_launch.sh -n N`` and ``--checkpoint-every 200 --save DIR``; once
the first periodic checkpoint exists and ``--delay`` seconds more have passed (mid-window),
SIGTERM goes to ``mpiexec`` or to the last rank. Timed from the signal: until the job's
preemption checkpoint is complete (its manifest is there) and until every process of
the job (launcher and ranks) is gone. Each run also checks the status (75), that the last
stdout line is the JSON with ``"preempted": true`` and that it names that checkpoint.

    .venv/bin/recs gen --rows 1000000 --out /tmp/c1m.txt --seed 1
    .venv/bin/python bench/bench_preemption.py --data /tmp/c1m.txt --ranks 2 3 \\
        --targets mpiexec rank --reps 5          # one JSON object

Measure on an otherwise idle machine: ``--quiet-below L`` waits before each case until
the 1-minute load average is below L (the job's own runs raise it too); the JSON gives
the load average before and after each case, and per run ``foreign_cpu_s``: CPU seconds
the machine spent between the signal and the end on other processes than the job's
(``/proc/stat`` busy time less the job's own, its ranks' CPU taken from ``/proc`` at the
signal and from ``getrusage`` once it ended, and less this script's polling).
``--redo-above S`` runs a run again when that exceeds S (at most 5 x ``--reps`` times a
case).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recs_core.checkpoint import load_manifest  # noqa: E402

CONFIG = ROOT / "configs" / "criteo_dlrm.toml"
POLL_S = 0.005
TICK = os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _ranks(marker: str, n: int) -> dict[int, int]:
    """rank -> pid of the job's ranks (their command line holds ``marker``)."""
    found: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"recs_core" not in cmd or marker.encode() not in cmd:
            continue
        for var in env:
            if var.startswith((b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK=")):
                found[int(var.split(b"=")[1])] = int(d.name)
    if len(found) != n:
        raise RuntimeError(f"found ranks {sorted(found)} of {n}")
    return found


def _busy_s() -> float:
    """CPU seconds the machine has been busy (user, nice, system, irq, softirq)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(x) for x in f[1:4] + f[6:8]) / TICK


def _tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by process ``root`` and its descendants."""
    procs: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            procs[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / TICK)
    tree, grew = {root}, True
    while grew:
        more = {p for p, (pp, _) in procs.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(procs[p][1] for p in tree if p in procs)


def _rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _manifests(save: Path) -> set[str]:
    return {p.parent.name for p in save.glob("step-*/manifest.json")}


def one_run(n: int, target: str, data: str, every: int, delay: float, work: Path,
            limit: float) -> dict:
    """One job, signalled once; its timings and checks."""
    save = work / f"ck-{n}-{target}-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [str(ROOT / "mpi_launch.sh"), "-n", str(n), "--", sys.executable, "-m", "recs_core",
           "train", "--config", str(CONFIG), "--data", data, "--quiet", "--save", str(save),
           "--checkpoint-every", str(every)]
    children0 = _rusage_s(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        first = save / f"step-{every:09d}" / "manifest.json"
        t_start = time.monotonic()
        while not first.exists():
            if proc.poll() is not None:
                raise RuntimeError("the job ended early: " + proc.communicate()[1][-2000:])
            if time.monotonic() - t_start > 1800:
                raise RuntimeError(f"no {first} within 1800 s")
            time.sleep(0.02)
        time.sleep(delay)
        ranks = _ranks(str(save), n)
        before = _manifests(save)
        pid = proc.pid if target == "mpiexec" else ranks[n - 1]
        job_cpu0, busy0 = _tree_cpu_s(proc.pid), _busy_s()
        self0 = _rusage_s(resource.RUSAGE_SELF)  # (this polling is not foreign either)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        t_ckpt = t_gone = None
        while t_gone is None:
            now = time.monotonic() - t0
            if now > limit:
                raise RuntimeError(f"the job still runs {limit} s after the signal")
            if t_ckpt is None and _manifests(save) - before:
                t_ckpt = now
            if proc.poll() is not None and not any(_alive(p) for p in ranks.values()):
                t_gone, busy1 = now, _busy_s() - _rusage_s(resource.RUSAGE_SELF) + self0
            time.sleep(POLL_S)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    last = json.loads(out.strip().splitlines()[-1])
    saved = Path(last["saved"]).name
    if proc.returncode != 75 or last.get("preempted") is not True or \
            saved not in _manifests(save):
        raise RuntimeError(f"rc {proc.returncode}, preempted {last.get('preempted')}, saved "
                           f"{saved}: {err[-2000:]}")
    if t_ckpt is None:  # the stop came at a step already saved: nothing new to write
        t_ckpt = 0.0 if saved in before else t_gone
    increment = load_manifest(save / saved).base is not None
    job_cpu = _rusage_s(resource.RUSAGE_CHILDREN) - children0 - job_cpu0  # after the signal
    shutil.rmtree(save, ignore_errors=True)
    return {"checkpoint_s": round(t_ckpt, 3), "gone_s": round(t_gone, 3),
            "stopped_at_step": last["global_step"], "saved": saved, "increment": increment,
            "rc": proc.returncode, "foreign_cpu_s": round(max(0.0, busy1 - busy0 - job_cpu), 3)}


def wait_quiet(below: float | None, limit: float = 3600) -> float:
    """Wait until the 1-minute load average is below ``below``; returns the seconds
    waited."""
    t0 = time.monotonic()
    while below is not None and os.getloadavg()[0] >= below:
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"the load stayed above {below} for {limit:.0f} s")
        time.sleep(15)
    return time.monotonic() - t0


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the window (e.g. 1M rows of recs gen)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--targets", nargs="+", choices=("mpiexec", "rank"),
                    default=["mpiexec", "rank"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--every", type=int, default=200, help="--checkpoint-every (steps)")
    ap.add_argument("--delay", type=float, default=1.0,
                    help="seconds after the first periodic checkpoint before the signal")
    ap.add_argument("--limit", type=float, default=120.0,
                    help="give up this long after the signal")
    ap.add_argument("--dir", help="where the save directories go (default: a temp dir)")
    ap.add_argument("--redo-above", type=float, metavar="SECONDS",
                    help="run a run again when other processes took more CPU seconds than "
                    "this between its signal and its end")
    ap.add_argument("--quiet-below", type=float, metavar="LOAD",
                    help="before each case, wait until the 1-minute load average is below "
                    "LOAD")
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="recs-preempt-"))
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for n in a.ranks:
        for target in a.targets:
            waited = wait_quiet(a.quiet_below)
            load_before = os.getloadavg()
            runs, redone = [], 0
            while len(runs) < a.reps:
                run = one_run(n, target, a.data, a.every, a.delay, work, a.limit)
                if a.redo_above is not None and run["foreign_cpu_s"] > a.redo_above \
                        and redone < 5 * a.reps:
                    redone += 1
                    print(f"redone: {run}", file=sys.stderr, flush=True)
                    wait_quiet(a.quiet_below)
                    continue
                runs.append(run)
            cases.append({"ranks": n, "target": target, "runs": runs,
                          "checkpoint_s": _summary([r["checkpoint_s"] for r in runs]),
                          "gone_s": _summary([r["gone_s"] for r in runs]),
                          "waited_for_quiet_s": round(waited), "redone": redone,
                          "load_before": [round(x, 2) for x in load_before],
                          "load_after": [round(x, 2) for x in os.getloadavg()]})
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    if not a.dir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"config": str(CONFIG.relative_to(ROOT)), "data": a.data,
                      "every": a.every, "delay_s": a.delay, "cases": cases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
