"""Microbenchmarks: each feature operator (compiled kernel) vs a NumPy reference.

One batch of 2048 Criteo-like rows: 13 int columns (~20% missing, heavy-tailed, a few
negatives) and 26 string columns of 8 hex characters (~4% empty), laid out in one arena
as the parser leaves them (tab-separated). Every pair runs on the same input, and the
NumPy reference's output is checked against the operator's once before timing.

    PYTHONPATH=. python -m pytest bench/bench_ops.py --benchmark-only -q \\
        --benchmark-columns=median
"""

from __future__ import annotations

import numpy as np

from recs_core.features.ops import VType, make_operator
from recs_core.features.values import FloatValues, IntValues, StrValues

N = 2048
N_INT, N_STR = 13, 26
BUCKETS = 1 << 18
BOUNDS = [0] + [2 ** i for i in range(21)]  # the canonical spec's bucketize boundaries
VOCAB_SIZE, OOV = 5000, 16
SPLIT_MAX = 5

# ---------------------------------------------------------------------------------------
# Input batch
# ---------------------------------------------------------------------------------------


def _criteo_like(seed: int = 0) -> tuple[IntValues, StrValues, list[bytes]]:
    rng = np.random.default_rng(seed)
    ints = np.floor(rng.lognormal(1.5, 2.5, (N, N_INT))).astype(np.int64)
    ints[rng.random((N, N_INT)) < 0.01] = -1  # Criteo's I2 has a few -1 .. -3
    missing = rng.random((N, N_INT)) < 0.2
    ints[missing] = 0
    # per column a Zipf-ish draw from a pool of 8-hex values (the vocab is the top of it)
    pool = [f"{x:08x}".encode() for x in rng.integers(0, 1 << 32, 50_000)]
    ranks = np.minimum(rng.zipf(1.2, (N, N_STR)) - 1, len(pool) - 1)
    empty = rng.random((N, N_STR)) < 0.04
    parts, start, length = [], np.zeros((N, N_STR), np.int64), np.zeros((N, N_STR), np.int32)
    pos = 0
    for i in range(N):
        for j in range(N_STR):
            s = b"" if empty[i, j] else pool[(ranks[i, j] * N_STR + j) % len(pool)]
            start[i, j], length[i, j] = pos, len(s)
            parts.append(s + b"\t")
            pos += len(s) + 1
    arena = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    return IntValues(ints, missing), StrValues(arena, start, length), pool


INTS, STRS, POOL = _criteo_like()
FLOATS = FloatValues(np.where(INTS.missing, np.nan, INTS.values.astype(np.float64)))
FILLED = FloatValues(np.where(INTS.missing, 0.0, np.maximum(INTS.values, 0)).astype(np.float64))
VOCAB = [p.decode() for p in POOL[:VOCAB_SIZE]]


def _split_input(seed: int = 1) -> StrValues:
    """One column of 0..10 '|'-joined hex tokens per row (some empty tokens)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(N):
        toks = [POOL[int(t)] if rng.random() > 0.05 else b""
                for t in rng.integers(0, 1000, int(rng.integers(0, 11)))]
        rows.append(b"|".join(toks))
    parts, start, length, pos = [], np.zeros((N, 1), np.int64), np.zeros((N, 1), np.int32), 0
    for i, r in enumerate(rows):
        start[i, 0], length[i, 0] = pos, len(r)
        parts.append(r + b"\t")
        pos += len(r) + 1
    return StrValues(np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), start, length)


SPLIT_IN = _split_input()


def _op(raw: dict, t: VType, arity: int = 1):
    op = make_operator(raw, "bench", arity)
    op.check_input(t)
    op.out_type(t)
    return op


# ---------------------------------------------------------------------------------------
# NumPy references (vectorized; the hashes rely on strings of 0 or 8 bytes)
# ---------------------------------------------------------------------------------------

U = np.uint64
_K1, _K2, _SEED = U(0x9E3779B97F4A7C15), U(0xC2B2AE3D27D4EB4F), U(0x27D4EB2F165667C5)
_M1, _M2, _ADD, _FNV = U(0xFF51AFD7ED558CCD), U(0xC4CEB9FE1A85EC53), U(0x52DCE729), U(0x100000001B3)
_H8 = _SEED ^ U((8 * 0x9E3779B97F4A7C15) & ((1 << 64) - 1))  # seed of every 8-byte string


def np_fmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> U(33))
    x *= _M1
    x ^= x >> U(33)
    x *= _M2
    x ^= x >> U(33)
    return x


def np_words8(arena: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The 8 bytes at each start as little-endian uint64 (a gather, then a view)."""
    b = arena[np.minimum(start, len(arena) - 8)[..., None] + np.arange(8)]
    return np.ascontiguousarray(b).view("<u8")[..., 0]


def np_hash8(w: np.ndarray, length: np.ndarray) -> np.ndarray:
    """recs-hash64 of 8-byte strings (words w), or of "" where length is 0."""
    h = _H8 ^ np_fmix(w * _K2)
    h = ((h << U(27)) | (h >> U(37))) * _K1 + _ADD
    h = np_fmix(h)
    return np.where(length == 0, EMPTY_HASH, h)


def np_bucket(h: np.ndarray, buckets: int) -> np.ndarray:
    return (((h >> U(32)) * U(buckets - 1)) >> U(32)).astype(np.int64) + 1


EMPTY_HASH = np_fmix(np.array([_SEED], dtype=np.uint64))[0]


def np_hash_bucket(v: StrValues, buckets: int) -> np.ndarray:
    h = np_hash8(np_words8(v.arena, v.start), v.length)
    return np.where(v.length == 0, 0, np_bucket(h, buckets))


def np_hash_cross(v: StrValues, arity: int, buckets: int) -> np.ndarray:
    h = np_hash8(np_words8(v.arena, v.start), v.length)
    n, k = h.shape
    h = h.reshape(n, k // arity, arity)
    c = np.full((n, k // arity), _K1, dtype=np.uint64)
    for a in range(arity):
        c = np_fmix((c ^ h[:, :, a]) * _FNV)
    present = (v.length.reshape(n, k // arity, arity) > 0).any(axis=2)
    return np.where(present, np_bucket(c, buckets), 0)


def np_vocab_index(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    w = np.frombuffer(b"".join(x.encode() for x in words), dtype="<u8")
    order = np.argsort(w, kind="stable")
    return w[order], order


def np_vocab(v: StrValues, sorted_words: np.ndarray, order: np.ndarray, oov: int) -> np.ndarray:
    w = np_words8(v.arena, v.start)
    pos = np.minimum(np.searchsorted(sorted_words, w), len(sorted_words) - 1)
    hit = sorted_words[pos] == w
    oov_ids = (1 + len(order) + np_hash8(w, v.length) % U(oov)).astype(np.int64)
    ids = np.where(hit, 1 + order[pos], oov_ids)
    return np.where(v.length == 0, 0, ids)


def np_split(v: StrValues, sep: int, max_len: int) -> tuple[np.ndarray, ...]:
    """Tokens of one string column (keep first): runs of non-sep bytes inside each string."""
    s, ln = v.start[:, 0], v.length[:, 0].astype(np.int64)
    inside = np.zeros(len(v.arena) + 1, dtype=np.int8)
    np.add.at(inside, s, 1)
    np.add.at(inside, s + ln, -1)
    tok = (np.cumsum(inside[:-1]) > 0) & (v.arena != sep)
    edges = np.diff(np.concatenate(([False], tok, [False])).view(np.int8))
    t_start = np.flatnonzero(edges == 1)
    t_end = np.flatnonzero(edges == -1)
    row = np.searchsorted(s, t_start, side="right") - 1
    counts = np.bincount(row, minlength=len(s))
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keep = (np.arange(len(row)) - first[row]) < max_len
    offsets = np.concatenate(([0], np.cumsum(np.minimum(counts, max_len))))
    return t_start[keep], (t_end - t_start)[keep].astype(np.int32), offsets


def np_lower(arena: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, ...]:
    s, ln = start.reshape(-1), length.reshape(-1).astype(np.int64)
    new_start = np.concatenate(([0], np.cumsum(ln)[:-1]))
    idx = np.repeat(s - new_start, ln) + np.arange(new_start[-1] + ln[-1] if len(ln) else 0)
    c = arena[idx]
    out = np.where((c >= 65) & (c <= 90), c + np.uint8(32), c)
    return out, new_start.reshape(start.shape)


def np_pad(ids: np.ndarray, offsets: np.ndarray, max_len: int, pad: int) -> np.ndarray:
    n = len(offsets) - 1
    counts = np.diff(offsets)
    row = np.repeat(np.arange(n), counts)
    rank = np.arange(len(ids)) - offsets[:-1][row]
    keep = rank < max_len
    out = np.full(n * max_len, pad, dtype=np.int64)
    out[row[keep] * max_len + rank[keep]] = ids[keep]
    return out


# ---------------------------------------------------------------------------------------
# The pairs: (operator + input) and the NumPy reference on the same input
# ---------------------------------------------------------------------------------------

_SW, _ORDER = np_vocab_index(VOCAB)
_MEAN = np.nanmean(FLOATS.values, axis=0)
_INV_STD = 1.0 / np.nanstd(FLOATS.values, axis=0)
_TOKENS = _op({"op": "split", "sep": "|", "max_len": 10}, VType("str", 1)).apply(SPLIT_IN)
_TOKEN_IDS = _op({"op": "hash_bucket", "buckets": BUCKETS}, VType("list_str", 1)).apply(_TOKENS)


def _case(name: str):
    """(compiled fn, numpy fn, comparable-output fn) of one operator benchmark."""
    t_int, t_float, t_str = VType("int", N_INT), VType("float", N_INT), VType("str", N_STR)
    if name == "fill_missing":
        op = _op({"op": "fill_missing", "value": 0}, t_int)
        return (lambda: op.apply(INTS).values,
                lambda: np.where(INTS.missing, 0.0, INTS.values.astype(np.float64)))
    if name == "clip":
        op = _op({"op": "clip", "min": 0}, t_float)
        return lambda: op.apply(FLOATS).values, lambda: np.maximum(FLOATS.values, 0.0)
    if name == "log1p":
        op = _op({"op": "log1p"}, t_float)

        def np_log1p() -> np.ndarray:
            x = FILLED.values
            if (x < -1).any():
                raise ValueError("below -1")
            return np.log1p(x)
        return lambda: op.apply(FILLED).values, np_log1p
    if name == "standardize":
        op = _op({"op": "standardize", "mean": _MEAN.tolist(), "std": (1 / _INV_STD).tolist()},
                 t_float)
        return lambda: op.apply(FLOATS).values, lambda: (FLOATS.values - _MEAN) * _INV_STD
    if name == "bucketize":
        op = _op({"op": "bucketize", "boundaries": BOUNDS}, t_int)
        b = np.asarray(BOUNDS, dtype=np.float64)

        def np_bucketize() -> np.ndarray:
            x = INTS.values.astype(np.float64)
            return np.where(INTS.missing, 0, np.searchsorted(b, x, side="right") + 1)
        return lambda: op.apply(INTS).ids, np_bucketize
    if name == "hash_bucket":
        op = _op({"op": "hash_bucket", "buckets": BUCKETS}, t_str)
        return lambda: op.apply(STRS).ids, lambda: np_hash_bucket(STRS, BUCKETS)
    if name == "hash_cross":
        pairs = StrValues(STRS.arena, STRS.start[:, :16], STRS.length[:, :16])
        op = _op({"op": "hash_cross", "buckets": BUCKETS}, VType("str", 16), 2)
        return lambda: op.apply(pairs).ids, lambda: np_hash_cross(pairs, 2, BUCKETS)
    if name == "id_mod":
        op = _op({"op": "id_mod", "buckets": 1000}, t_int)
        return (lambda: op.apply(INTS).ids,
                lambda: np.where(INTS.missing, 0, INTS.values % 999 + 1))
    if name == "vocab":
        op = _op({"op": "vocab", "values": VOCAB, "oov_buckets": OOV}, t_str)
        return lambda: op.apply(STRS).ids, lambda: np_vocab(STRS, _SW, _ORDER, OOV)
    if name == "split":
        op = _op({"op": "split", "sep": "|", "max_len": SPLIT_MAX}, VType("str", 1))

        def compiled() -> tuple:
            r = op.apply(SPLIT_IN)
            return r.start, r.length, r.offsets
        return compiled, lambda: np_split(SPLIT_IN, ord("|"), SPLIT_MAX)
    if name == "lowercase":
        op = _op({"op": "lowercase"}, t_str)

        def compiled_lower() -> tuple:
            r = op.apply(STRS)
            return r.arena, r.start
        return compiled_lower, lambda: np_lower(STRS.arena, STRS.start, STRS.length)
    if name == "pad":
        op = _op({"op": "pad", "max_len": SPLIT_MAX}, VType("list_id", 1, False, BUCKETS))
        return (lambda: op.apply(_TOKEN_IDS).ids,
                lambda: np_pad(_TOKEN_IDS.ids, _TOKEN_IDS.offsets, SPLIT_MAX, 0))
    raise KeyError(name)


OPS = ["fill_missing", "clip", "log1p", "standardize", "bucketize", "hash_bucket",
       "hash_cross", "id_mod", "vocab", "split", "lowercase", "pad"]
_CASES = {name: _case(name) for name in OPS}


def _same(a, b) -> None:
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif a.dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(a, b)


def test_references_agree() -> None:
    """Each NumPy reference computes the same thing as its operator (runs without
    --benchmark-only; the benchmarks repeat the check for their own operator)."""
    for name in OPS:
        _check(name)


def _check(name: str) -> None:
    compiled, ref = _CASES[name]
    try:
        _same(compiled(), ref())  # also compiles / warms up outside the timing
    except AssertionError as e:
        raise AssertionError(f"{name}: NumPy reference disagrees: {e}") from e


def _bench(benchmark, name: str, which: int) -> None:
    _check(name)
    benchmark.group = name
    benchmark.extra_info["rows"] = N
    benchmark(_CASES[name][which])


def test_fill_missing_compiled(benchmark) -> None:
    _bench(benchmark, "fill_missing", 0)


def test_fill_missing_numpy(benchmark) -> None:
    _bench(benchmark, "fill_missing", 1)


def test_clip_compiled(benchmark) -> None:
    _bench(benchmark, "clip", 0)


def test_clip_numpy(benchmark) -> None:
    _bench(benchmark, "clip", 1)


def test_log1p_compiled(benchmark) -> None:
    _bench(benchmark, "log1p", 0)


def test_log1p_numpy(benchmark) -> None:
    _bench(benchmark, "log1p", 1)


def test_standardize_compiled(benchmark) -> None:
    _bench(benchmark, "standardize", 0)


def test_standardize_numpy(benchmark) -> None:
    _bench(benchmark, "standardize", 1)


def test_bucketize_compiled(benchmark) -> None:
    _bench(benchmark, "bucketize", 0)


def test_bucketize_numpy(benchmark) -> None:
    _bench(benchmark, "bucketize", 1)


def test_hash_bucket_compiled(benchmark) -> None:
    _bench(benchmark, "hash_bucket", 0)


def test_hash_bucket_numpy(benchmark) -> None:
    _bench(benchmark, "hash_bucket", 1)


def test_hash_cross_compiled(benchmark) -> None:
    _bench(benchmark, "hash_cross", 0)


def test_hash_cross_numpy(benchmark) -> None:
    _bench(benchmark, "hash_cross", 1)


def test_id_mod_compiled(benchmark) -> None:
    _bench(benchmark, "id_mod", 0)


def test_id_mod_numpy(benchmark) -> None:
    _bench(benchmark, "id_mod", 1)


def test_vocab_compiled(benchmark) -> None:
    _bench(benchmark, "vocab", 0)


def test_vocab_numpy(benchmark) -> None:
    _bench(benchmark, "vocab", 1)


def test_split_compiled(benchmark) -> None:
    _bench(benchmark, "split", 0)


def test_split_numpy(benchmark) -> None:
    _bench(benchmark, "split", 1)


def test_lowercase_compiled(benchmark) -> None:
    _bench(benchmark, "lowercase", 0)


def test_lowercase_numpy(benchmark) -> None:
    _bench(benchmark, "lowercase", 1)


def test_pad_compiled(benchmark) -> None:
    _bench(benchmark, "pad", 0)


def test_pad_numpy(benchmark) -> None:
    _bench(benchmark, "pad", 1)
