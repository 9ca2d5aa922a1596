"""Embedding kernels on one 2^18 x 16 float32 table with 2048*26 Zipf-distributed ids:
gather and row-wise Adagrad (dedup + update) against plain random-gather baselines
(NumPy fancy indexing ``table[ids]`` and a minimal Numba loop) on the same table and ids.

Ids are Zipf(1.2) ranks scattered over the table by a fixed permutation (hashed ids put
hot rows anywhere). Every gather is checked against ``table[ids]`` before timing.
"hot" repeats each call back to back (the touched rows stay in cache); the script also
times "cold" calls, each after streaming 64 MiB through the cache, which is closer to a
training step (the MLP work in between evicts the table rows).

    PYTHONPATH=. python -m pytest bench/bench_embedding.py --benchmark-only -q \\
        --benchmark-columns=median
    python bench/bench_embedding.py --repeat 50     # one JSON line: rows/s per case
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
from numba import njit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.embedding.sparse_optim import RowwiseAdagrad  # noqa: E402
from recs_core.embedding.table import dedup_grads, gather, init_table  # noqa: E402

ROWS, DIM = 1 << 18, 16
M = 2048 * 26
ZIPF_A = 1.2


def _ids(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = (rng.zipf(ZIPF_A, M) - 1) % ROWS
    return rng.permutation(ROWS)[ranks].astype(np.int64)


TABLE = init_table(ROWS, DIM, seed=0, index=0)
IDS = _ids()
GRADS = np.random.default_rng(1).standard_normal((M, DIM)).astype(np.float32)
UNIQ, SUMMED = dedup_grads(IDS, GRADS)


@njit(nogil=True, cache=True)
def _plain_gather_kernel(table: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """The minimal loop: no bounds check, no prefetch."""
    dim = table.shape[1]
    for i in range(ids.shape[0]):
        r = ids[i]
        for d in range(dim):
            out[i, d] = table[r, d]


def numba_plain_gather(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.empty((len(ids), table.shape[1]), dtype=table.dtype)
    _plain_gather_kernel(table, ids, out)
    return out


class _Update:
    """Row-wise Adagrad on a private copy of the table (repeated updates keep it finite)."""

    def __init__(self) -> None:
        self.table = TABLE.copy()
        self.opt = RowwiseAdagrad(0.01)

    def dedup_update(self) -> None:
        ids, g = dedup_grads(IDS, GRADS)
        self.opt.update(0, self.table, ids, g)

    def update_only(self) -> None:
        self.opt.update(0, self.table, UNIQ, SUMMED)


_UPD = _Update()

CASES: dict[str, Callable[[], object]] = {
    "gather": lambda: gather(TABLE, IDS),
    "numpy_fancy_gather": lambda: TABLE[IDS],
    "numba_plain_gather": lambda: numba_plain_gather(TABLE, IDS),
    "dedup_grads": lambda: dedup_grads(IDS, GRADS),
    "adagrad_update_only": _UPD.update_only,
    "adagrad_dedup_update": _UPD.dedup_update,
}


def check() -> None:
    """Gathers agree with table[ids]; dedup keeps every id (also compiles everything)."""
    ref = TABLE[IDS]
    for name in ("gather", "numba_plain_gather"):
        np.testing.assert_array_equal(CASES[name](), ref, err_msg=name)
    np.testing.assert_array_equal(UNIQ, np.unique(IDS))
    for f in CASES.values():
        f()


def test_references_agree() -> None:
    check()


def _bench(benchmark, name: str) -> None:
    check()
    benchmark.group = "gather" if "gather" in name else "update"
    benchmark.extra_info["rows"] = M
    benchmark.extra_info["unique_rows"] = len(UNIQ)
    benchmark(CASES[name])


def test_gather(benchmark) -> None:
    _bench(benchmark, "gather")


def test_numpy_fancy_gather(benchmark) -> None:
    _bench(benchmark, "numpy_fancy_gather")


def test_numba_plain_gather(benchmark) -> None:
    _bench(benchmark, "numba_plain_gather")


def test_dedup_grads(benchmark) -> None:
    _bench(benchmark, "dedup_grads")


def test_adagrad_update_only(benchmark) -> None:
    _bench(benchmark, "adagrad_update_only")


def test_adagrad_dedup_update(benchmark) -> None:
    _bench(benchmark, "adagrad_dedup_update")


def _time(f: Callable[[], object], repeat: int, flush: np.ndarray | None) -> dict:
    times = []
    for _ in range(repeat):
        if flush is not None:
            flush += 1  # evicts the table rows, the ids and the previous outputs
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    med, best = statistics.median(times), min(times)
    return {"median_ms": round(med * 1e3, 3), "min_ms": round(best * 1e3, 3),
            "ids_per_sec": round(M / med)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    check()
    result: dict = {"bench": "embedding", "rows": ROWS, "dim": DIM, "ids": M,
                    "unique_ids": len(UNIQ), "zipf_a": ZIPF_A, "repeat": args.repeat}
    flush = np.zeros(64 << 20, dtype=np.uint8)
    for mode in ("hot", "cold"):
        result[mode] = {name: _time(f, args.repeat, flush if mode == "cold" else None)
                        for name, f in CASES.items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
