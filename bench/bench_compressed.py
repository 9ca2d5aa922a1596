"""Reading the same synthetic Criteo rows as plain text, ``.gz`` and ``.zst`` on one rank
(``ShardReader``: read, decompress, parse; no features), and the decompression alone:
``gzip.open`` (the standard library's reader) against the reader's own stream
(``decompress.Decompressed``, which both codecs go through). Interleaved repetitions; each
figure is the median.

    python bench/bench_compressed.py --rows 300000 --reps 5      # one JSON object
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.data.decompress import Decompressed  # noqa: E402
from recs_core.data.reader import ShardReader  # noqa: E402
from recs_core.data.synth import generate  # noqa: E402
from recs_core.features.spec import load_spec  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "criteo_dlrm.toml"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    import pyarrow as pa

    schema = load_spec(CONFIG).schema
    with tempfile.TemporaryDirectory() as d:
        plain = Path(d) / "rows.txt"
        generate(plain, a.rows, seed=3)
        data = plain.read_bytes()
        files = {"plain": plain, "gz": Path(d) / "rows.gz", "zst": Path(d) / "rows.zst"}
        files["gz"].write_bytes(gzip.compress(data, 6))
        with pa.CompressedOutputStream(str(files["zst"]), "zstd") as out:
            out.write(data)
        sizes = {k: p.stat().st_size for k, p in files.items()}
        times: dict[str, list[float]] = {k: [] for k in files}
        dec: dict[str, list[float]] = {"gz gzip.open": [], "gz stream": [], "zst stream": []}
        _read(plain, schema)  # compile / warm caches
        for _ in range(a.reps):
            for k, p in files.items():
                sec, rows = _read(p, schema)
                assert rows == a.rows, (k, rows)
                times[k].append(sec)
            dec["gz gzip.open"].append(_decompress(files["gz"], "gzip", "gzip.open"))
            dec["gz stream"].append(_decompress(files["gz"], "gzip", "stream"))
            dec["zst stream"].append(_decompress(files["zst"], "zstd", "stream"))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "rows": a.rows, "reps": a.reps, "text_mb": round(len(data) / 1e6, 1),
        "file_mb": {k: round(v / 1e6, 2) for k, v in sizes.items()},
        "read_rows_per_sec": {k: round(a.rows / v) for k, v in med.items()},
        "read_vs_plain": {k: round(med["plain"] / v, 3) for k, v in med.items()},
        "decompress_mb_per_sec": {k: round(len(data) / 1e6 / statistics.median(v), 1)
                                  for k, v in dec.items()},
    }))


if __name__ == "__main__":
    main()
