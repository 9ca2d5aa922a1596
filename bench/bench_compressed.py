"""Compressed input against plain text (prints one JSON object). Interleaved repetitions;
each figure is the median.

* default: the same synthetic Criteo rows as plain text, ``.gz`` and ``.zst`` read on one
  rank (``ShardReader``: read, decompress, parse; no features), and the decompression
  alone: ``gzip.open`` (the standard library's reader) against the reader's own stream
  (``decompress.Decompressed``, which both codecs go through);
* ``--ranks 2,3``: what reading a compressed file costs each rank of N (each rank's reader
  in this process, one after another): seconds to its first batch and to its last,
  decompressed and parsed MB, seconds decompressing; for the file's ranges dealt to the
  ranks in turn (``shards.COMPRESSED_BLOCK``, the reader's way) and for one range per
  rank (block 0), against each rank's share of the plain file;
* ``--train-ranks 2``: ``recs train`` on N ranks (``mpi_launch.sh -n N --threads 1``) over
  the plain and the ``.zst`` file, paired (plain then ``.zst`` in each pair): samples/s,
  their ratio per pair, and the ``.zst`` runs' ``decompression`` figures per rank.

    python bench/bench_compressed.py --rows 300000 --reps 5      # one rank, reading
    python bench/bench_compressed.py --rows 100000 --reps 3 --ranks 2,3
    python bench/bench_compressed.py --rows 1000000 --reps 3 --train-ranks 2
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.data import shards  # noqa: E402
from recs_core.data.decompress import Decompressed  # noqa: E402
from recs_core.data.reader import ShardReader  # noqa: E402
from recs_core.data.synth import generate  # noqa: E402
from recs_core.features.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "criteo_dlrm.toml"


def _read(path: Path, schema) -> tuple[float, int]:  # noqa: ANN001
    t0 = time.perf_counter()
    rows = sum(len(b) for b in ShardReader([str(path)], schema, batch_rows=4096))
    return time.perf_counter() - t0, rows


def _drain(f) -> int:  # noqa: ANN001
    buf = memoryview(bytearray(4 << 20))
    n = 0
    while got := f.readinto(buf):
        n += got
    return n


def _decompress(path: Path, codec: str, which: str) -> float:
    t0 = time.perf_counter()
    if which == "gzip.open":
        with gzip.open(path, "rb") as f:
            _drain(f)
    else:
        with open(path, "rb") as raw:
            _drain(Decompressed(raw, codec))
    return time.perf_counter() - t0


def write_files(d: Path, rows: int) -> dict[str, Path]:
    """The same synthetic rows as plain text, .gz (level 6) and .zst."""
    import pyarrow as pa

    files = {"plain": d / "rows.txt", "gz": d / "rows.txt.gz", "zst": d / "rows.txt.zst"}
    generate(files["plain"], rows, seed=3)
    data = files["plain"].read_bytes()
    files["gz"].write_bytes(gzip.compress(data, 6))
    with pa.CompressedOutputStream(str(files["zst"]), "zstd") as out:
        out.write(data)
    return files


def one_rank(files: dict[str, Path], rows: int, reps: int) -> dict:
    schema = load_spec(CONFIG).schema
    text = files["plain"].stat().st_size
    times: dict[str, list[float]] = {k: [] for k in files}
    dec: dict[str, list[float]] = {"gz gzip.open": [], "gz stream": [], "zst stream": []}
    _read(files["plain"], schema)  # compile / warm caches
    for _ in range(reps):
        for k, p in files.items():
            sec, n = _read(p, schema)
            assert n == rows, (k, n)
            times[k].append(sec)
        dec["gz gzip.open"].append(_decompress(files["gz"], "gzip", "gzip.open"))
        dec["gz stream"].append(_decompress(files["gz"], "gzip", "stream"))
        dec["zst stream"].append(_decompress(files["zst"], "zstd", "stream"))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "read_rows_per_sec": {k: round(rows / v) for k, v in med.items()},
        "read_vs_plain": {k: round(med["plain"] / v, 3) for k, v in med.items()},
        "decompress_mb_per_sec": {k: round(text / 1e6 / statistics.median(v), 1)
                                  for k, v in dec.items()},
    }


def _rank_read(path: Path, schema, world: int, rank: int) -> dict:  # noqa: ANN001
    """One rank's pass over ``path``: seconds to the first batch and to the end, and what
    its decompression cost."""
    r = ShardReader([str(path)], schema, rank=rank, world=world, batch_rows=2048)
    t0 = time.perf_counter()
    first = None
    for _ in r:
        if first is None:
            first = time.perf_counter() - t0
    return {"first_s": first or 0.0, "total_s": time.perf_counter() - t0,
            "decompressed_mb": r.decompressed["bytes"] / 1e6,
            "parsed_mb": r.decompressed["kept_bytes"] / 1e6,
            "decompress_s": r.decompressed["seconds"]}


def per_rank(files: dict[str, Path], worlds: list[int], reps: int) -> dict:
    """Each rank's reading of the compressed files (module docstring), interleaved."""
    schema = load_spec(CONFIG).schema
    default = shards.COMPRESSED_BLOCK
    cases = [("plain", files["plain"], 0)] + [
        (f"{c} {how}", files[c], block) for c in ("zst", "gz")
        for how, block in (("ranges dealt in turn", default), ("one range per rank", 0))]
    runs: dict[str, list[dict]] = {}
    _read(files["plain"], schema)
    try:
        for _ in range(reps):
            for world in worlds:
                for name, path, block in cases:
                    shards.COMPRESSED_BLOCK = block
                    for rank in range(world):
                        runs.setdefault(f"{world} ranks: {name}: rank {rank}", []).append(
                            _rank_read(path, schema, world, rank))
    finally:
        shards.COMPRESSED_BLOCK = default
    return {key: {k: round(statistics.median(r[k] for r in v), 3) for k in v[0]}
            for key, v in runs.items()}


def train(files: dict[str, Path], ranks: int, reps: int) -> dict:
    """`recs train` on ``ranks`` ranks over the plain and the .zst file, paired."""
    launch = [str(ROOT / "mpi_launch.sh"), "-n", str(ranks), "--threads", "1"]
    runs: dict[str, list[dict]] = {"plain": [], "zst": []}
    for _ in range(reps):
        for k in runs:
            out = subprocess.run([*launch, str(Path(sys.executable).parent / "recs"), "train",
                                  "--config", str(CONFIG), "--data", str(files[k]),
                                  "--quiet"], check=True, capture_output=True, text=True,
                                 cwd=ROOT).stdout
            runs[k].append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps({k: runs[k][-1]["samples_per_sec"]}), file=sys.stderr, flush=True)
    sps = {k: [r["samples_per_sec"] for r in v] for k, v in runs.items()}
    pairs = [round(z / p, 3) for p, z in zip(sps["plain"], sps["zst"])]
    return {"ranks": ranks, "samples_per_sec": sps,
            "median_samples_per_sec": {k: statistics.median(v) for k, v in sps.items()},
            "zst_over_plain_per_pair": pairs, "median_zst_over_plain": statistics.median(pairs),
            "window_steps": {k: v[0]["window_steps"] for k, v in runs.items()},
            "rows": {k: v[0]["rows"] for k, v in runs.items()},
            "zst_decompression_per_rank": [r["decompression"] for r in runs["zst"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ranks", help="per-rank reading costs for these world sizes (2,3)")
    ap.add_argument("--train-ranks", type=int, help="paired recs train on this many ranks")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = write_files(Path(d), a.rows)
        sizes = {k: round(p.stat().st_size / 1e6, 2) for k, p in files.items()}
        out: dict = {"rows": a.rows, "reps": a.reps, "file_mb": sizes,
                     "compressed_block_bytes": shards.COMPRESSED_BLOCK}
        if a.train_ranks:
            out["train"] = train(files, a.train_ranks, a.reps)
        elif a.ranks:
            out["per_rank"] = per_rank(files, [int(x) for x in a.ranks.split(",")], a.reps)
        else:
            out.update(one_rank(files, a.rows, a.reps))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
