"""Throughput of the synthetic data generator (plain and heavy variants).

Usage: ``python bench/bench_synth.py --rows 1000000`` prints one JSON line with, per
variant, rows, seconds and rows_per_sec (median of ``--repeat`` runs, each writing
a temporary file that is deleted afterwards). The first, untimed call compiles
(or loads from cache) the Numba kernel and calibrates the hidden model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.data.synth import generate  # noqa: E402


def bench(rows: int, heavy: bool, repeat: int, tmpdir: str) -> dict:
    path = os.path.join(tmpdir, "heavy.tsv" if heavy else "plain.tsv")
    generate(path, min(rows, 1000), heavy=heavy)  # warm-up: JIT/cache load, bias calibration
    times, size = [], 0
    for r in range(repeat):
        t0 = time.perf_counter()
        stats = generate(path, rows, seed=r, heavy=heavy)
        times.append(time.perf_counter() - t0)
        size = stats.bytes_written
        os.remove(path)
    sec = statistics.median(times)
    return {"rows": rows, "seconds": round(sec, 4),
            "rows_per_sec": round(rows / sec, 1) if sec > 0 else None,
            "mb_per_sec": round(size / sec / 1e6, 1) if sec > 0 else None,
            "bytes": size, "runs": [round(t, 4) for t in times]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the temporary files")
    ap.add_argument("--only", choices=("plain", "heavy"), default=None)
    args = ap.parse_args(argv)
    result: dict = {"bench": "synth", "rows": args.rows, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmpdir:
        for variant in ("plain", "heavy"):
            if args.only in (None, variant):
                result[variant] = bench(args.rows, variant == "heavy", args.repeat, tmpdir)
    if "plain" in result:
        result["seconds"] = result["plain"]["seconds"]
        result["rows_per_sec"] = result["plain"]["rows_per_sec"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
