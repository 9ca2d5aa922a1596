"""What row identity and line ranges cost (prints one JSON object; medians of interleaved
repetitions, pairs against another checkout of the code).

* ``--base DIR`` (a checkout of the code before, e.g. ``git archive``): on 2 ranks
  (mpiexec), paired, this code then DIR's: ``recs features`` rows/s (iterating the
  reader), and the same pass over ``Reader.with_origins()`` (what a job that records its
  rows' lines reads): rows/s and each rank's seconds to its first batch;
* each rank's reader alone (rank 0 and 1 of 2, no MPI, one warm process), passes with
  ``with_origins`` against iterating: wall and CPU seconds, seconds to the first batch;
* the scan behind a plain file's row lines (lines before the middle byte: rank 1 of 2);
* ``default_units`` of the window on 2 ranks with a 10% hold-out, the file plain, ``.gz``
  and ``.zst``;
* rank 1 of 2 reading its default units against reading its shard (``with_origins``,
  reader alone, in this process).

    python bench/bench_row_units.py --data c1m.txt --base /tmp/base --reps 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def worker(config: str, data: str, origins: bool) -> None:
    """One rank's pass (under mpiexec): features over the reader's batches (with their
    origins, or not)."""
    from recs_core.comm.world import job_world
    from recs_core.data.sources import open_input
    from recs_core.features.feature_pass import warm_up
    from recs_core.features.graph import FeatureGraph
    from recs_core.features.spec import load_spec

    world = job_world(None)
    spec = load_spec(config)
    warm_up(spec)
    graph = FeatureGraph(spec)
    reader, _ = open_input([data], spec.schema, spec.format, rank=world.rank,
                           world=world.size, batch_rows=spec.batch_size, policy=spec.policy)
    world.barrier()
    t0 = time.perf_counter()
    first, rows = None, 0
    for raw, _ in (reader.with_origins() if origins else ((b, None) for b in reader)):
        first = time.perf_counter() - t0 if first is None else first
        graph.process(raw)
        rows += len(raw)
    seconds = time.perf_counter() - t0
    out = {"rows": world.allreduce_sum(rows), "seconds": world.allreduce_max(seconds),
           "first": world.allgather(round(first or 0.0, 4))}
    if world.rank == 0:
        print(json.dumps(out))


def origins_against_iteration(config: str, data: str, reps: int) -> dict:
    """Rank 0's and rank 1's reader of 2 alone, in this (warm) process, a fresh reader per
    pass: ``with_origins`` against iterating (no row lines), alternated; medians of wall
    and CPU seconds (both threads) and of seconds to the first batch."""
    sys.path.insert(0, str(ROOT))
    from recs_core.data.sources import open_input
    from recs_core.features.spec import load_spec

    spec = load_spec(config)

    def one(rank: int, origins: bool) -> tuple[float, float, float]:
        reader, _ = open_input([data], spec.schema, spec.format, rank=rank, world=2,
                               batch_rows=spec.batch_size, policy=spec.policy)
        t0, c0 = time.perf_counter(), time.process_time()
        first = None
        for _ in (reader.with_origins() if origins else reader):
            first = time.perf_counter() - t0 if first is None else first
        return time.perf_counter() - t0, time.process_time() - c0, first or 0.0
    one(1, True)  # (kernels loaded)
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(reps):
        for rank in (0, 1):
            for origins in (True, False):
                runs.setdefault(f"rank{rank}_{'origins' if origins else 'iter'}", []).append(
                    one(rank, origins))
    return {k: {m: round(statistics.median(x[i] for x in v), 4)
                for i, m in enumerate(("wall", "cpu", "first"))} for k, v in runs.items()}


def on_two_ranks(code: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    out = subprocess.run([str(BIN / "mpiexec"), "-n", "2", sys.executable, *args],
                         capture_output=True, text=True, check=True, env=env, cwd=code).stdout
    return json.loads(out.strip().splitlines()[-1])


def paired(base: Path, config: str, data: str, reps: int) -> dict:
    """rows/s of recs features and of the pass with origins, this code and base's."""
    runs: dict[str, list] = {}
    for _ in range(reps):
        for name, code in (("new", ROOT), ("base", base)):
            f = on_two_ranks(code, ["-m", "recs_core", "features", "--config", config,
                                    "--data", data, "--quiet"])
            runs.setdefault(f"features_{name}", []).append(round(f["rows_per_sec"]))
            o = on_two_ranks(code, [str(ROOT / "bench" / "bench_row_units.py"), "--worker",
                                    "--config", config, "--data", data])
            runs.setdefault(f"origins_{name}", []).append(round(o["rows"] / o["seconds"]))
            runs.setdefault(f"origins_first_batch_s_{name}", []).append(o["first"])
    ratio = {k: [round(n / b, 3) for n, b in zip(runs[f"{k}_new"], runs[f"{k}_base"])]
             for k in ("features", "origins")}
    med = {k: statistics.median(v) for k, v in runs.items() if "first" not in k}
    return {"runs": runs, "median_rows_per_sec": med, "new_over_base_per_pair": ratio}


def timed(fn, reps: int) -> float:  # noqa: ANN001
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return round(statistics.median(t), 4)


def in_process(config: str, data: str, reps: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from recs_core.data.lines import scan_plain
    from recs_core.data.sources import default_units, open_input
    from recs_core.features.spec import load_spec
    from tests.test_sources import zst

    spec = load_spec(config)
    size = os.path.getsize(data)
    out: dict = {"mb": round(size / 1e6, 1),
                 "scan_half_s": timed(lambda: scan_plain(data, [size // 2]), reps)}
    tmp = Path(tempfile.mkdtemp(prefix="recs-units-"))
    text = Path(data).read_bytes()
    files = {"plain": data, ".gz": str(tmp / "d.txt.gz"), ".zst": str(tmp / "d.zst")}
    Path(files[".gz"]).write_bytes(gzip.compress(text, 6))
    Path(files[".zst"]).write_bytes(zst(text))
    del text
    for kind, path in files.items():
        out[f"default_units_s_{kind}"] = timed(
            lambda p=path: default_units([p], spec.schema, spec.format, 2, 0.1), reps)
    for path in files.values():
        if path != data:
            os.unlink(path)
    units = default_units([data], spec.schema, spec.format, 2, 0.0)

    def rank1(u) -> None:  # noqa: ANN001
        reader, _ = open_input([data], spec.schema, spec.format, rank=1, world=2,
                               batch_rows=spec.batch_size, policy=spec.policy, units=u)
        for _ in reader.with_origins():
            pass
    t = {"shard": [], "units": []}
    for _ in range(reps):
        t["shard"].append(timed(lambda: rank1(None), 1))
        t["units"].append(timed(lambda: rank1(units[1]), 1))
    out["rank1_read_s"] = {k: statistics.median(v) for k, v in t.items()} | {"runs": t}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--base", help="a checkout of the code to pair against")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.config, a.data, True)
        return
    out = {"load_before": os.getloadavg()[0]}
    if a.base:
        out["two_ranks"] = paired(Path(a.base), a.config, a.data, a.reps)
    out["origins_against_iteration"] = origins_against_iteration(a.config, a.data, a.reps)
    out["one_process"] = in_process(a.config, a.data, a.reps)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
