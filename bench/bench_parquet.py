"""Parquet input: `recs features` rows/s against the text path and a pyarrow + NumPy
reference, and peak RSS on a 10x larger file (prints one JSON line).

The canonical spec (configs/criteo_dlrm.toml) over `recs gen --rows N --seed 1`, as text
and converted by `recs convert` (snappy, default row groups). Runs are interleaved and
repeated, each pinned to one core (taskset -c 0); medians are reported. The reference
computes the same features from the same Parquet file with pyarrow and vectorized NumPy
(recs-hash64 v1 on the Arrow string buffers, word by word over all rows at once); its
ids and dense values are checked against `recs` on the first batch. Peak RSS: `recs
features` on the 1x and a 10x file (the 1x file's row groups written 10 times), from
/usr/bin/time -v. Files go under --dir (default /tmp) and are deleted at the end.

    python bench/bench_parquet.py --rows 1000000 --reps 3 [--lock /work/cpu.lock]
    python bench/bench_parquet.py --rows 200000 --breakdown   # seconds per step
    python bench/bench_parquet.py --row-groups 2000 --reps 5  # one-row row groups

``--row-groups N``: files of N/4, N/2 and N one-row row groups (a streaming writer's
file) read by the reader (one rank, a whole pass) against pyarrow's own read of the same
columns (``pq.read_table``), interleaved; the reader's rows/s should not fall with N.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = ROOT / "configs" / "criteo_dlrm.toml"
BOUNDS = np.array([0] + [2**i for i in range(21)], dtype=np.float64)
BUCKETS = 262144
U = np.uint64


@contextlib.contextmanager
def locked(path: str | None):
    """Hold the shared CPU lock (if given) around one measured run."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recs_features(data: Path, lock: str | None, rss: bool = False) -> dict:
    cmd = ["taskset", "-c", "0", str(BIN / "recs"), "features", "--config", str(CONFIG),
           "--data", str(data), "--quiet"]
    if rss:
        cmd = ["/usr/bin/time", "-v", *cmd]
    with locked(lock):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if rss:
        out["peak_rss_mb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                                           r.stderr).group(1)) / 1024
    return out


# ---- the reference: pyarrow + vectorized NumPy ----------------------------------------

def _fmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> U(33))
    x = x * U(0xFF51AFD7ED558CCD)
    x = x ^ (x >> U(33))
    x = x * U(0xC4CEB9FE1A85EC53)
    return x ^ (x >> U(33))


def hash_strings(arr) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(recs-hash64 v1, length) of every value of an Arrow string array (null: empty)."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    data = np.concatenate([data, np.zeros(8, np.uint8)])
    start = offsets[:-1].astype(np.int64)
    length = np.diff(offsets).astype(np.int64)
    if arr.null_count:
        length[arr.is_null().to_numpy(zero_copy_only=False)] = 0
    h = U(0x27D4EB2F165667C5) ^ (length.astype(U) * U(0x9E3779B97F4A7C15))
    shifts = np.arange(8, dtype=U) * U(8)
    for w in range(0, int(length.max(initial=0)), 8):
        live = length > w
        nb = np.clip(length - w, 0, 8)
        idx = (start + w)[:, None] + np.arange(8)
        byte = data[np.minimum(idx, len(data) - 1)].astype(U)
        byte[np.arange(8)[None, :] >= nb[:, None]] = 0
        word = (byte << shifts).sum(axis=1, dtype=U)
        g = h ^ _fmix(word * U(0xC2B2AE3D27D4EB4F))
        g = ((g << U(27)) | (g >> U(37))) * U(0x9E3779B97F4A7C15) + U(0x52DCE729)
        h = np.where(live, g, h)
    return _fmix(h), length


def bucket(h: np.ndarray) -> np.ndarray:
    return (((h >> U(32)) * U(BUCKETS - 1)) >> U(32)).astype(np.int64) + 1


def reference_batch(rb) -> dict[str, np.ndarray]:  # noqa: ANN001
    """The canonical spec's features of one record batch, with pyarrow and NumPy."""
    names = rb.schema.names
    label = rb.column(names.index("label")).to_numpy().astype(np.float32)
    ints = np.stack([rb.column(names.index(f"I{i}")).to_numpy(zero_copy_only=False)
                     .astype(np.float64) for i in range(1, 14)], axis=1)  # NaN: missing
    dense = np.log1p(np.maximum(np.nan_to_num(ints, nan=0.0), 0.0)).astype(np.float32)
    buck = np.where(np.isnan(ints), 0, np.searchsorted(BOUNDS, ints, side="right") + 1)
    hashes, lens = zip(*(hash_strings(rb.column(names.index(f"C{i}"))) for i in range(1, 27)))
    cat = np.stack([np.where(n > 0, bucket(h), 0) for h, n in zip(hashes, lens)], axis=1)
    cross = []
    for k in range(8):
        c = np.full(len(label), U(0x9E3779B97F4A7C15))
        for j in (2 * k, 2 * k + 1):
            c = _fmix((c ^ hashes[j]) * U(0x100000001B3))
        present = (lens[2 * k] > 0) | (lens[2 * k + 1] > 0)
        cross.append(np.where(present, bucket(c), 0))
    return {"label": label, "dense": dense, "cat": cat, "bucket": buck,
            "cross": np.stack(cross, axis=1)}


def reference(data: Path, lock: str | None, batch: int = 65536) -> float:
    """rows/s of the reference over the whole file, pinned to core 0."""
    os.sched_setaffinity(0, {0})
    with locked(lock):
        t0 = time.perf_counter()
        n = 0
        for rb in pq.ParquetFile(data).iter_batches(batch_size=batch, use_threads=False):
            reference_batch(rb)
            n += rb.num_rows
        return n / (time.perf_counter() - t0)


def check_reference(data: Path) -> int:
    """Rows of the first batch on which the reference equals recs' feature batch."""
    from recs_core.data.parquet import ParquetReader
    from recs_core.features.graph import FeatureGraph
    from recs_core.features.spec import load_spec

    spec = load_spec(CONFIG)
    raw = next(iter(ParquetReader([str(data)], spec.schema, batch_rows=4096)))
    fb = FeatureGraph(spec).process(raw)
    rb = next(pq.ParquetFile(data).iter_batches(batch_size=4096))
    ref = reference_batch(rb)
    assert np.array_equal(ref["label"], fb.labels)
    assert np.allclose(ref["dense"], fb.dense, rtol=1e-6, atol=0)
    got = {o.names[0].split(":")[0]: o.ids for p in fb.sparse.values() for o in p}
    for key in ("cat", "bucket", "cross"):
        assert np.array_equal(ref[key], got[key]), key
    return len(raw)


def best_of(fn, reps: int = 3) -> float:  # noqa: ANN001
    """Fewest seconds of ``reps`` calls of ``fn``."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return round(min(out), 4)


def breakdown(text: Path, par: Path, lock: str | None) -> dict:
    """Seconds of each step of both paths on the whole file, in this process (core 0):
    text read + parse; pyarrow decode with strings plain and as dictionaries; conversion
    to raw batches; the whole Parquet read (what the reader does: dictionary-encoded
    chunks as dictionaries); the feature operators on the text's batches and on the
    Parquet reader's (which carry the dictionary columns' hashes)."""
    from recs_core.data.arrow import ArrowConverter, check_schema
    from recs_core.data.parquet import ParquetReader
    from recs_core.data.reader import ShardReader
    from recs_core.features.graph import FeatureGraph
    from recs_core.features.spec import load_spec

    os.sched_setaffinity(0, {0})
    spec = load_spec(CONFIG)
    schema, cols, strs = spec.schema, list(spec.schema.names), list(spec.schema.str_names)
    conv, graph = ArrowConverter(schema), FeatureGraph(spec)
    with locked(lock):
        table = pq.read_table(par, columns=cols, use_threads=False)
        dicts = pq.read_table(par, columns=cols, use_threads=False, read_dictionary=strs)
        idx = check_schema(schema, table.schema, str(par))
        raws = list(ShardReader([str(text)], schema, batch_rows=2048))
        praws = list(ParquetReader([str(par)], schema, batch_rows=2048))
        return {
            "text_read_parse": best_of(lambda: sum(len(b) for b in ShardReader(
                [str(text)], schema, batch_rows=2048))),
            "decode_plain": best_of(lambda: pq.read_table(par, columns=cols,
                                                          use_threads=False)),
            "decode_dictionary": best_of(lambda: pq.read_table(
                par, columns=cols, use_threads=False, read_dictionary=strs)),
            "decode_numbers_only": best_of(lambda: pq.read_table(
                par, columns=[c for c in cols if c not in strs], use_threads=False)),
            "convert_plain": best_of(lambda: [conv.convert(b, idx) for b in
                                              table.to_batches(max_chunksize=8192)]),
            "convert_dictionary": best_of(lambda: [conv.convert(b, idx) for b in
                                                   dicts.to_batches(max_chunksize=8192)]),
            "parquet_read": best_of(lambda: sum(len(b) for b in ParquetReader(
                [str(par)], schema, batch_rows=2048))),
            "features_text_batches": best_of(lambda: [graph.process(r) for r in raws]),
            "features_parquet_batches": best_of(lambda: [graph.process(r) for r in praws]),
        }


def small_row_groups(tmp: Path, n: int, reps: int) -> dict:
    """Seconds (medians) of the reader and of pyarrow over files of one-row row groups."""
    from recs_core.data.parquet import ParquetReader
    from recs_core.features.spec import load_spec

    schema = load_spec(CONFIG).schema
    cols = list(schema.names)
    text = tmp / "rows.txt"
    subprocess.run([str(BIN / "recs"), "gen", "--rows", str(n), "--seed", "1", "--out",
                    str(text), "--quiet"], check=True, capture_output=True)
    lines = text.read_bytes().splitlines(keepends=True)
    files = {}
    for k in (n // 4, n // 2, n):
        part, files[k] = tmp / f"rows{k}.txt", tmp / f"rows{k}.parquet"
        part.write_bytes(b"".join(lines[:k]))
        subprocess.run([str(BIN / "recs"), "convert", str(CONFIG), str(part), "-o",
                        str(files[k]), "--row-group-rows", "1"], check=True,
                       capture_output=True)
    runs: dict[str, list[float]] = {f"{w} {k}": [] for k in files for w in ("recs", "pyarrow")}
    sum(len(b) for b in ParquetReader([str(files[n // 4])], schema))  # load the kernels
    for _ in range(reps):
        for k, par in files.items():
            t0 = time.perf_counter()
            rows = sum(len(b) for b in ParquetReader([str(par)], schema, batch_rows=2048))
            runs[f"recs {k}"].append(time.perf_counter() - t0)
            assert rows == k, (rows, k)
            t0 = time.perf_counter()
            pq.read_table(par, columns=cols, use_threads=False)
            runs[f"pyarrow {k}"].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in runs.items()}
    return {"row_groups": list(files), "reps": reps,
            "seconds": {key: round(v, 4) for key, v in med.items()},
            "recs_rows_per_sec": {k: round(k / med[f"recs {k}"]) for k in files},
            "recs_over_pyarrow_time": {k: round(med[f"recs {k}"] / med[f"pyarrow {k}"], 2)
                                       for k in files}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp", help="where the generated files go (deleted)")
    ap.add_argument("--lock", help="a file to flock around each measured run")
    ap.add_argument("--no-rss", action="store_true", help="skip the 10x peak-RSS runs")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the seconds of each step of both paths (in process)")
    ap.add_argument("--row-groups", type=int, metavar="N",
                    help="only the reader against pyarrow on files of one-row row groups")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recs-bench-parquet-", dir=a.dir))
    try:
        if a.row_groups:
            print(json.dumps(small_row_groups(tmp, a.row_groups, a.reps)))
            return
        text, par, big = tmp / "syn.txt", tmp / "syn.parquet", tmp / "syn10x.parquet"
        with locked(a.lock):
            subprocess.run([str(BIN / "recs"), "gen", "--rows", str(a.rows), "--seed", "1",
                            "--out", str(text), "--quiet"], check=True, capture_output=True)
            conv = json.loads(subprocess.run(
                [str(BIN / "recs"), "convert", str(CONFIG), str(text), "-o", str(par)],
                check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            checked = check_reference(par)
        if a.breakdown:
            print(json.dumps({"rows": a.rows, "row_groups": conv["row_groups"],
                              "seconds": breakdown(text, par, a.lock)}))
            return
        runs: dict[str, list[float]] = {"text": [], "parquet": [], "reference": []}
        for _ in range(a.reps):
            runs["text"].append(recs_features(text, a.lock)["rows_per_sec"])
            runs["parquet"].append(recs_features(par, a.lock)["rows_per_sec"])
            runs["reference"].append(round(reference(par, a.lock), 1))
            print(json.dumps({"progress": runs}), file=sys.stderr, flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        out = {"rows": a.rows, "parquet_bytes": conv["bytes"], "row_groups": conv["row_groups"],
               "text_bytes": text.stat().st_size, "reference_checked_rows": checked,
               "runs_rows_per_sec": runs, "median_rows_per_sec": med,
               "parquet_over_text": round(med["parquet"] / med["text"], 3),
               "parquet_over_reference": round(med["parquet"] / med["reference"], 3)}
        text.unlink()
        if not a.no_rss:
            pf = pq.ParquetFile(par)
            with pq.ParquetWriter(big, pf.schema_arrow, compression="snappy") as w:
                for _ in range(10):
                    for g in range(pf.metadata.num_row_groups):
                        w.write_table(pf.read_row_group(g), row_group_size=1 << 20)
            rss = {"1x": [], "10x": []}
            for _ in range(2):
                rss["1x"].append(recs_features(par, a.lock, rss=True)["peak_rss_mb"])
                rss["10x"].append(recs_features(big, a.lock, rss=True)["peak_rss_mb"])
                print(json.dumps({"progress_rss": rss}), file=sys.stderr, flush=True)
            m1, m10 = statistics.median(rss["1x"]), statistics.median(rss["10x"])
            out.update({"peak_rss_mb_runs": rss, "peak_rss_mb": {"1x": m1, "10x": m10},
                        "rss_10x_over_1x": round(m10 / m1, 3),
                        "big_bytes": big.stat().st_size})
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
