"""Memory of dynamic (hash-keyed) embedding tables against a fixed one on a Zipf stream,
and the throughput of ``DynamicTable.observe``.

The stream: ``draws`` Zipf(``exponent``) ranks over ``ids`` possible ids (rank r is id
r - 1, folded into [0, ids)), drawn by ``numpy.random.default_rng(seed)`` and cut into
``windows`` windows of batches. The fixed table hashes every id into ``fixed_rows`` rows of
``dim`` float32 plus a row-wise Adagrad accumulator (float32 per row), whatever the stream.
Each dynamic table (one per ``admit_after``) carries the same accumulator as a row state,
closes every window with ``end_window`` (row budget, optional age limit) and reports its
live rows, its row capacity and the bytes of all its arrays (sketch included; capacities
never shrink, so this is also the peak), and the share of draws that found a row.

Throughput is keys observed per second over the whole stream (growth included), the median
of ``reps`` runs on fresh tables; the dict reference is the same admission rule
(``admit_after=1``: a dict key -> row, plus frequency and last-seen lists) in plain Python
on the first ``dict_subset`` keys, against ``observe`` on the same keys.

    python bench/bench_dynamic.py                 # one JSON document on stdout
    python bench/bench_dynamic.py --draws 20000000 --ids 100000000 --row-budget 1048576
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.embedding.dynamic import DynamicTable  # noqa: E402

_K1 = np.uint64(0x9E3779B97F4A7C15)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--draws", type=int, default=2_000_000, help="keys in the stream")
    p.add_argument("--ids", type=int, default=10_000_000, help="possible ids")
    p.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent (> 1)")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--fixed-rows", type=int, default=2**20, help="rows of the fixed table")
    p.add_argument("--admit", type=int, nargs="+", default=[1, 2, 5],
                   help="admit_after values of the dynamic tables")
    p.add_argument("--row-budget", type=int, default=2**18, help="0: no budget")
    p.add_argument("--evict-after", type=int, default=-1,
                   help="evict rows unseen for more windows than this (-1: never)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--batch", type=int, default=65_536, help="keys per observe call")
    p.add_argument("--sketch-width", type=int, default=2**18)
    p.add_argument("--sketch-depth", type=int, default=4)
    p.add_argument("--dict-subset", type=int, default=200_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def zipf_stream(args: argparse.Namespace) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    return ((rng.zipf(args.exponent, args.draws) - 1) % args.ids).astype(np.int64)


def fixed_table(args: argparse.Namespace, keys: np.ndarray) -> dict:
    """Bytes of the fixed table, and the share of distinct ids that share a row."""
    distinct = np.unique(keys)
    buckets = (distinct.astype(np.uint64) * _K1) >> np.uint64(64 - _log2(args.fixed_rows))
    rows, counts = np.unique(buckets, return_counts=True)
    shared = int(counts[counts > 1].sum())
    nbytes = args.fixed_rows * args.dim * 4 + args.fixed_rows * 4
    return {"rows": args.fixed_rows, "bytes": nbytes, "rows_touched": len(rows),
            "ids_sharing_a_row": round(shared / len(distinct), 4)}


def _log2(n: int) -> int:
    if n < 2 or n & (n - 1):
        raise SystemExit(f"--fixed-rows must be a power of two >= 2, got {n}")
    return n.bit_length() - 1


def _new_table(args: argparse.Namespace, admit_after: int) -> DynamicTable:
    table = DynamicTable(args.dim, args.seed, admit_after=admit_after,
                         row_budget=args.row_budget or None,
                         evict_after_windows=None if args.evict_after < 0 else args.evict_after,
                         sketch_width=args.sketch_width, sketch_depth=args.sketch_depth)
    table.add_row_state("adagrad", 0.0)
    return table


def run_stream(args: argparse.Namespace, keys: np.ndarray, admit_after: int) -> dict:
    """One pass of the stream through a fresh table: observe time, rows and bytes."""
    table = _new_table(args, admit_after)
    spent, admitted = 0.0, 0
    for w, part in enumerate(np.array_split(keys, args.windows)):
        for lo in range(0, len(part), args.batch):
            t0 = time.perf_counter()
            rows = table.observe(part[lo:lo + args.batch], w)
            spent += time.perf_counter() - t0
            admitted += int((rows >= 0).sum())
        table.end_window(w)
    return {"seconds": spent, "rows": len(table), "row_capacity": table.row_capacity,
            "bytes": table.nbytes, "sketch_bytes": table.state()["sketch"].nbytes,
            "hit_share": round(admitted / len(keys), 4)}


def dynamic_case(args: argparse.Namespace, keys: np.ndarray, admit_after: int,
                 fixed_bytes: int) -> dict:
    runs = [run_stream(args, keys, admit_after) for _ in range(args.reps)]
    last = runs[-1]
    assert all(r["rows"] == last["rows"] and r["bytes"] == last["bytes"] for r in runs)
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"admit_after": admit_after, **{k: v for k, v in last.items() if k != "seconds"},
            "bytes_vs_fixed": round(last["bytes"] / fixed_bytes, 3),
            "observe_mkeys_s": round(len(keys) / seconds / 1e6, 2)}


def dict_observe(keys: list[int], window: int) -> dict[int, int]:
    """The pure-Python reference: admit_after=1, frequency and last-seen per row."""
    where: dict[int, int] = {}
    freq: list[int] = []
    seen: list[int] = []
    for k in keys:
        r = where.get(k)
        if r is None:
            where[k] = len(freq)
            freq.append(1)
            seen.append(window)
        else:
            freq[r] += 1
            seen[r] = window
    return where


def dict_case(args: argparse.Namespace, keys: np.ndarray) -> dict:
    sub = keys[:args.dict_subset]
    as_list = sub.tolist()
    py, nb = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        where = dict_observe(as_list, 0)
        py.append(time.perf_counter() - t0)
        table = _new_table(args, 1)
        t0 = time.perf_counter()
        rows = table.observe(sub, 0)
        nb.append(time.perf_counter() - t0)
    assert len(where) == len(table) and (rows >= 0).all()
    py_s, nb_s = statistics.median(py), statistics.median(nb)
    return {"keys": len(sub), "dict_mkeys_s": round(len(sub) / py_s / 1e6, 2),
            "observe_mkeys_s": round(len(sub) / nb_s / 1e6, 2),
            "speedup": round(py_s / nb_s, 1)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    keys = zipf_stream(args)
    _new_table(args, 2).observe(keys[:1000], 0)  # compile (or load) the kernels
    fixed = fixed_table(args, keys)
    out = {"config": vars(args),
           "stream": {"draws": len(keys), "distinct": len(np.unique(keys))},
           "fixed": fixed,
           "dynamic": [dynamic_case(args, keys, k, fixed["bytes"]) for k in args.admit],
           "dict_reference": dict_case(args, keys)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
