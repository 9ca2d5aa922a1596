"""Microbenchmark: the compiled TSV parser vs a NumPy/Python reference on one ~4 MB chunk.

The chunk is the real Criteo sample (``data/samples/criteo/train.txt``) repeated to
~4 MB of whole lines, parsed with the canonical spec's schema (label, I1..I13 int,
C1..C26 str). The reference splits with ``bytes.split`` and converts columns with
``np.array(..., dtype=...)``; its output is checked against the parser's once.

    PYTHONPATH=. python -m pytest bench/bench_parse.py --benchmark-only -q \\
        --benchmark-columns=median
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recs_core.data.parse import COL_INT, COL_LABEL, ChunkParser
from recs_core.features.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "samples" / "criteo" / "train.txt"
CHUNK_BYTES = 4 << 20


@pytest.fixture(scope="module")
def chunk() -> bytes:
    if not SAMPLE.exists():
        pytest.skip(f"real sample missing: {SAMPLE}")
    data = SAMPLE.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    reps = max(1, round(CHUNK_BYTES / len(data)))
    return data * reps


@pytest.fixture(scope="module")
def schema():
    return load_spec(ROOT / "configs" / "criteo_dlrm.toml").schema


def numpy_parse(data: bytes, schema) -> tuple[np.ndarray, ...]:
    """labels int8 [n], ints int64 [n, n_int], missing bool [n, n_int], strings S [n, n_str]."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    rows = [ln.rstrip(b"\r").split(b"\t") for ln in lines]
    ncols = len(schema.kinds)
    if any(len(r) != ncols for r in rows):
        raise ValueError("field count")
    cols = list(zip(*rows))
    int_idx = [i for i, k in enumerate(schema.kinds) if k == COL_INT]
    str_idx = [i for i, k in enumerate(schema.kinds) if k not in (COL_INT, COL_LABEL)]
    lab = schema.kinds.index(COL_LABEL)
    labels = np.array(cols[lab], dtype="S1").astype(np.int8)
    raw = np.array([cols[i] for i in int_idx], dtype="S24").T
    missing = raw == b""
    ints = np.where(missing, b"0", raw).astype(np.int64)
    strs = np.array([cols[i] for i in str_idx], dtype="S64").T
    return labels, ints, missing, strs


def _check(chunk: bytes, schema) -> None:
    buf = np.frombuffer(chunk, dtype=np.uint8)
    c = ChunkParser(schema).parse(buf, len(chunk), True)
    labels, ints, missing, strs = numpy_parse(chunk, schema)
    b = c.batch
    assert len(c.bad_line) == 0 and len(b) == len(labels) == c.n_lines
    np.testing.assert_array_equal(b.labels, labels)
    np.testing.assert_array_equal(b.int_missing, missing)
    np.testing.assert_array_equal(np.where(b.int_missing, 0, b.ints), ints)
    for i in range(0, len(b), 997):  # spot-check the strings
        got = [bytes(b.arena[s:s + n]) for s, n in zip(b.str_start[i], b.str_len[i])]
        assert got == strs[i].tolist(), i


def test_parse_compiled(benchmark, chunk: bytes, schema) -> None:
    _check(chunk, schema)  # also compiles / loads the kernel outside the timing
    parser = ChunkParser(schema)
    buf = np.frombuffer(chunk, dtype=np.uint8)
    benchmark.group = "parse"
    benchmark.extra_info.update(bytes=len(chunk), lines=chunk.count(b"\n"))
    out = benchmark(parser.parse, buf, len(chunk), True)
    assert len(out.batch) == chunk.count(b"\n")


def test_parse_numpy(benchmark, chunk: bytes, schema) -> None:
    benchmark.group = "parse"
    benchmark.extra_info.update(bytes=len(chunk), lines=chunk.count(b"\n"))
    labels, *_ = benchmark(numpy_parse, chunk, schema)
    assert len(labels) == chunk.count(b"\n")
