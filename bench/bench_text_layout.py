"""CSV with a header and quoting against the TSV path, on the same rows, on one core.

``python bench/bench_text_layout.py --rows 500000 --reps 5`` writes ``recs gen`` rows
(Criteo layout, canonical spec) as a TSV, then the same rows with Python's csv module as
a CSV with a header line: ``csv_minimal`` (QUOTE_MINIMAL: only fields that need quotes
are quoted; these rows have none) and ``csv_all`` (QUOTE_ALL: every field quoted, so
every field takes the quoted path and its doubled-quote scan). Each variant is read
twice per repetition: ``read`` (the ShardReader alone: read, split, validate, type) and
``features`` (``recs features``' pass: the reader plus every operator of the canonical
spec). Repetitions interleave the variants; the JSON line gives medians of rows/s and
each CSV variant's ratio to the TSV path, of the medians and paired (per repetition, then
the median). The process is pinned to one core.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time

import tomllib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.data.reader import ShardReader  # noqa: E402
from recs_core.data.synth import generate  # noqa: E402
from recs_core.features.feature_pass import run_features  # noqa: E402
from recs_core.features.spec import parse_spec  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
NAMES = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]


def specs():
    data = tomllib.loads(open(os.path.join(ROOT, "configs", "criteo_dlrm.toml")).read())
    tsv = parse_spec(data)
    data["input"]["header"] = True  # a .csv: comma, RFC 4180 quotes
    return tsv, parse_spec(data)


def to_csv(src: str, dst: str, quoting: int) -> None:
    with open(src, newline="") as f, open(dst, "w", newline="") as out:
        w = csv.writer(out, quoting=quoting, lineterminator="\n")
        w.writerow(NAMES)
        w.writerows(line.rstrip("\n").split("\t") for line in f)


def time_read(path: str, spec) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = ShardReader([path], spec.schema, batch_rows=spec.batch_size, policy=spec.policy)
    rows = sum(len(b) for b in r)
    return time.perf_counter() - t0, rows


def time_features(path: str, spec) -> tuple[float, int]:
    s = run_features(spec, [path], quiet=True)
    return s.seconds, s.rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core", type=int, default=None, help="the core to pin to (default: "
                    "the first allowed)")
    ap.add_argument("--dir", default=None, help="where to write the temporary files")
    args = ap.parse_args(argv)
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    tsv_spec, csv_spec = specs()
    result: dict = {"bench": "text_layout", "rows": args.rows, "reps": args.reps, "core": core}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = {"tsv": os.path.join(tmp, "rows.tsv"),
                 "csv_minimal": os.path.join(tmp, "rows_minimal.csv"),
                 "csv_all": os.path.join(tmp, "rows_all.csv")}
        generate(paths["tsv"], args.rows, seed=args.seed)
        to_csv(paths["tsv"], paths["csv_minimal"], csv.QUOTE_MINIMAL)
        to_csv(paths["tsv"], paths["csv_all"], csv.QUOTE_ALL)
        spec_of = {"tsv": tsv_spec, "csv_minimal": csv_spec, "csv_all": csv_spec}
        result["bytes"] = {k: os.path.getsize(p) for k, p in paths.items()}
        runs: dict[str, dict[str, list[float]]] = {k: {"read": [], "features": []}
                                                   for k in paths}
        for k in paths:  # warm-up: kernels compiled or loaded from the cache
            time_read(paths[k], spec_of[k])
        for _ in range(args.reps):
            for what, fn in (("read", time_read), ("features", time_features)):
                for k, p in paths.items():
                    sec, rows = fn(p, spec_of[k])
                    if rows != args.rows:
                        raise SystemExit(f"{k}: {rows} rows read, expected {args.rows}")
                    runs[k][what].append(args.rows / sec)
        for what in ("read", "features"):
            med = {k: statistics.median(runs[k][what]) for k in paths}
            result[what] = {
                "rows_per_sec": {k: round(v, 1) for k, v in med.items()},
                "ratio_to_tsv": {k: round(med[k] / med["tsv"], 3) for k in paths if k != "tsv"},
                # per repetition, then the median: the machine's drift cancels
                "paired_ratio_to_tsv": {
                    k: round(statistics.median(a / b for a, b in zip(runs[k][what],
                                                                     runs["tsv"][what])), 3)
                    for k in paths if k != "tsv"},
                "runs": {k: [round(x, 1) for x in runs[k][what]] for k in paths},
            }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
