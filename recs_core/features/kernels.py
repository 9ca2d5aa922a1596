"""Compiled feature kernels: small pure functions over whole column batches.

Conventions shared by all id-producing kernels: id 0 means "missing", a present
value maps into ``1 .. buckets-1``. Wrappers that validate arguments live in
:mod:`recs_core.features.ops`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from recs_core.features.hashing import bucket_of, cross_init, cross_step, fmix64, hash_bytes

_INT_SALT = np.uint64(0xD6E8FEB86659FD93)


@njit(nogil=True, cache=True)
def fill_missing_int(values: np.ndarray, missing: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """int64 columns → float64 with fill[j] where missing (NaN fills keep them missing)."""
    n, k = values.shape
    out = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        for j in range(k):
            out[i, j] = fill[j] if missing[i, j] else np.float64(values[i, j])
    return out


@njit(nogil=True, cache=True)
def fill_nan(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Replace NaN in column j by fill[j]."""
    n, k = x.shape
    out = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        for j in range(k):
            v = x[i, j]
            out[i, j] = fill[j] if np.isnan(v) else v
    return out


@njit(nogil=True, cache=True)
def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clamp into [lo, hi] (NaN stays NaN)."""
    n, k = x.shape
    out = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        for j in range(k):
            v = x[i, j]
            out[i, j] = lo if v < lo else (hi if v > hi else v)
    return out


@njit(nogil=True, cache=True, error_model="numpy")
def log1p(x: np.ndarray) -> tuple[np.ndarray, int]:
    """log(1 + x) and the number of values below -1 (which become NaN).

    Uses log1p(x) = log(u) * x / (u - 1) with u = 1 + x (exact to a few ulps; x when
    u == 1): one plain log, which is 2.5x faster than libm's log1p.
    """
    n, k = x.shape
    out = np.empty((n, k), dtype=np.float64)
    bad = 0
    for i in range(n):
        for j in range(k):
            v = x[i, j]
            bad += v < -1.0
            u = 1.0 + v
            r = np.log(u) * (v / (u - 1.0))
            out[i, j] = v if (u == 1.0 or v == np.inf) else r
    return out, bad


@njit(nogil=True, cache=True)
def standardize(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """(x - mean[j]) * inv_std[j] per column (NaN stays NaN)."""
    n, k = x.shape
    out = np.empty((n, k), dtype=np.float64)
    for i in range(n):
        for j in range(k):
            out[i, j] = (x[i, j] - mean[j]) * inv_std[j]
    return out


@njit(nogil=True, cache=True)
def bucketize(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """0 for NaN, else 1 + (number of boundaries <= x)."""
    n, k = x.shape
    nb = bounds.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        for j in range(k):
            v = x[i, j]
            if np.isnan(v):
                out[i, j] = 0
                continue
            if nb <= 64:  # a linear count beats binary search's mispredicted branches
                lo = 0
                for t in range(nb):
                    lo += bounds[t] <= v
            else:
                lo, hi = 0, nb
                while lo < hi:
                    mid = (lo + hi) >> 1
                    if bounds[mid] <= v:
                        lo = mid + 1
                    else:
                        hi = mid
            out[i, j] = lo + 1
    return out


@njit(nogil=True, cache=True)
def bucketize_int(values: np.ndarray, missing: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """bucketize for integer columns: 0 for missing, else 1 + count of boundaries <= v."""
    n, k = values.shape
    nb = bounds.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        for j in range(k):
            if missing[i, j]:
                out[i, j] = 0
                continue
            v = np.float64(values[i, j])
            c = 0
            for t in range(nb):
                c += bounds[t] <= v
            out[i, j] = c + 1
    return out


# The id kernels below fill a given array and are compiled without Numba's runtime: an
# array handed to an inlined helper (hash_bytes) otherwise costs a reference count
# increment and decrement per value, which took 3-10x the hashing itself.
@njit(nogil=True, cache=True, inline="always")
def _str_hash(arena: np.ndarray, start: np.ndarray, length: np.ndarray, hashes: np.ndarray,
              known: np.ndarray, i: int, j: int) -> np.uint64:
    """recs-hash64 of string (i, j): given where its column is ``known``, else computed."""
    if known[j]:
        return hashes[i, j]
    return hash_bytes(arena, start[i, j], length[i, j])


@njit(nogil=True, cache=True, _nrt=False)
def _hash_str_into(arena, start, length, hashes, known, buckets, out):  # noqa: ANN001, ANN202
    n, k = start.shape
    for i in range(n):
        for j in range(k):
            out[i, j] = 0 if length[i, j] == 0 else bucket_of(
                _str_hash(arena, start, length, hashes, known, i, j), buckets)


def hash_str_ids(arena: np.ndarray, start: np.ndarray, length: np.ndarray,
                 hashes: np.ndarray, known: np.ndarray, buckets: int) -> np.ndarray:
    """Hash string columns to ids: 0 for empty, else bucket_of(hash, buckets) (the hashes
    of ``known`` columns given)."""
    out = np.empty(start.shape, dtype=np.int64)
    _hash_str_into(arena, start, length, hashes, known, buckets, out)
    return out


@njit(nogil=True, cache=True, _nrt=False)
def _hash_tokens_into(arena, start, length, buckets, out):  # noqa: ANN001, ANN202
    for t in range(start.shape[0]):
        ln = length[t]
        out[t] = 0 if ln == 0 else bucket_of(hash_bytes(arena, start[t], ln), buckets)


def hash_token_ids(arena: np.ndarray, start: np.ndarray, length: np.ndarray,
                   buckets: int) -> np.ndarray:
    """Hash a flat array of tokens to ids (0 for an empty one, as in hash_str_ids)."""
    out = np.empty(start.shape[0], dtype=np.int64)
    _hash_tokens_into(arena, start, length, buckets, out)
    return out


@njit(nogil=True, cache=True, _nrt=False)
def _cross_str_into(arena, start, length, hashes, known, arity, buckets, out):  # noqa: ANN001, ANN202
    n, groups = out.shape
    for i in range(n):
        for g in range(groups):
            acc = cross_init()
            present = False
            for a in range(arity):
                j = g * arity + a
                present = present or length[i, j] > 0
                acc = cross_step(acc, _str_hash(arena, start, length, hashes, known, i, j))
            out[i, g] = bucket_of(acc, buckets) if present else 0


def cross_str_ids(arena: np.ndarray, start: np.ndarray, length: np.ndarray,
                  hashes: np.ndarray, known: np.ndarray, arity: int,
                  buckets: int) -> np.ndarray:
    """Cross hash of consecutive groups of ``arity`` string columns (ids and hashes as in
    hash_str_ids).

    A row whose components are all missing gets id 0; a missing component
    contributes the hash of the empty string.
    """
    out = np.empty((start.shape[0], start.shape[1] // arity), dtype=np.int64)
    _cross_str_into(arena, start, length, hashes, known, arity, buckets, out)
    return out


@njit(nogil=True, cache=True)
def int_hash(v: np.int64) -> np.uint64:
    """Hash of an integer value for crosses: fmix64 of its two's complement bits, salted."""
    return fmix64(np.uint64(v) ^ _INT_SALT)


@njit(nogil=True, cache=True)
def cross_int_ids(values: np.ndarray, missing: np.ndarray, arity: int,
                  buckets: int) -> np.ndarray:
    """Cross hash of consecutive groups of ``arity`` integer columns (see cross_str_ids)."""
    n, k = values.shape
    groups = k // arity
    empty = hash_bytes(np.zeros(1, dtype=np.uint8), 0, 0)
    out = np.empty((n, groups), dtype=np.int64)
    for i in range(n):
        for g in range(groups):
            acc = cross_init()
            present = False
            for a in range(arity):
                j = g * arity + a
                if missing[i, j]:
                    acc = cross_step(acc, empty)
                else:
                    present = True
                    acc = cross_step(acc, int_hash(values[i, j]))
            out[i, g] = bucket_of(acc, buckets) if present else 0
    return out


@njit(nogil=True, cache=True)
def mod_ids(values: np.ndarray, missing: np.ndarray, buckets: int) -> np.ndarray:
    """Integer ids: 0 for missing, else 1 + (v mod (buckets - 1)) (non-negative mod)."""
    n, k = values.shape
    m = buckets - 1
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        for j in range(k):
            if missing[i, j]:
                out[i, j] = 0
            else:
                r = values[i, j] % m
                out[i, j] = (r + m if r < 0 else r) + 1
    return out


@njit(nogil=True, cache=True)
def vocab_index(arena: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[
        np.ndarray, np.ndarray]:
    """Sorted hashes of vocabulary entries and the entry index of each (for vocab_lookup)."""
    m = start.shape[0]
    hashes = np.empty(m, dtype=np.uint64)
    for t in range(m):
        hashes[t] = hash_bytes(arena, start[t], length[t])
    order = np.argsort(hashes, kind="mergesort")
    return hashes[order], order.astype(np.int64)


@njit(nogil=True, cache=True, inline="always")
def _bytes_equal(a: np.ndarray, sa: int, b: np.ndarray, sb: int, n: int) -> bool:
    for t in range(n):
        if a[sa + t] != b[sb + t]:
            return False
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _vocab_lookup_into(arena, start, length, v_arena, v_start, v_length, v_hashes,  # noqa: ANN001, ANN202
                       v_order, oov_buckets, out):
    m = start.shape[0]
    nv = v_hashes.shape[0]
    for t in range(m):
        ln = length[t]
        if ln == 0:
            out[t] = 0
            continue
        h = hash_bytes(arena, start[t], ln)
        lo, hi = 0, nv
        while lo < hi:
            mid = (lo + hi) >> 1
            if v_hashes[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        found = -1
        while lo < nv and v_hashes[lo] == h:
            e = v_order[lo]
            if v_length[e] == ln and _bytes_equal(arena, start[t], v_arena, v_start[e], ln):
                found = e
                break
            lo += 1
        if found >= 0:
            out[t] = 1 + found
        else:
            out[t] = 1 + nv + np.int64(h % np.uint64(oov_buckets))


def vocab_lookup_flat(arena: np.ndarray, start: np.ndarray, length: np.ndarray,
                      v_arena: np.ndarray, v_start: np.ndarray, v_length: np.ndarray,
                      v_hashes: np.ndarray, v_order: np.ndarray, oov_buckets: int) -> np.ndarray:
    """Ids for a flat array of strings: 0 empty, 1..V vocabulary entries, then OOV buckets."""
    out = np.empty(start.shape[0], dtype=np.int64)
    _vocab_lookup_into(arena, start, length, v_arena, v_start, v_length, v_hashes, v_order,
                       oov_buckets, out)
    return out


@njit(nogil=True, cache=True)
def split_tokens(arena: np.ndarray, start: np.ndarray, length: np.ndarray, sep: np.uint8,
                 max_len: int, keep_last: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one string column on ``sep`` into non-empty tokens, keeping at most ``max_len``
    per row (the first or the last ones). Returns (token start, token length, row offsets)."""
    n = start.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s = start[i, 0]
        e = s + length[i, 0]
        c = 0
        tok = s
        for p in range(s, e + 1):
            if p == e or arena[p] == sep:
                if p > tok:
                    c += 1
                tok = p + 1
        counts[i] = c
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + min(counts[i], max_len)
    nnz = offsets[n]
    t_start = np.empty(nnz, dtype=np.int64)
    t_len = np.empty(nnz, dtype=np.int32)
    for i in range(n):
        s = start[i, 0]
        e = s + length[i, 0]
        skip = counts[i] - max_len if (keep_last and counts[i] > max_len) else 0
        w = offsets[i]
        stop = offsets[i + 1]
        seen = 0
        tok = s
        for p in range(s, e + 1):
            if w >= stop:
                break
            if p == e or arena[p] == sep:
                if p > tok:
                    if seen >= skip:
                        t_start[w] = tok
                        t_len[w] = p - tok
                        w += 1
                    seen += 1
                tok = p + 1
    return t_start, t_len, offsets


@njit(nogil=True, cache=True)
def lower_copy(arena: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[
        np.ndarray, np.ndarray]:
    """ASCII-lowercased copies of the strings (flat arrays) in a new compact arena."""
    m = start.shape[0]
    total = 0
    for t in range(m):
        total += length[t]
    out = np.empty(total, dtype=np.uint8)
    new_start = np.empty(m, dtype=np.int64)
    w = 0
    for t in range(m):
        new_start[t] = w
        s = start[t]
        for p in range(length[t]):
            c = arena[s + p]
            out[w] = c + 32 if 65 <= c <= 90 else c
            w += 1
    return out, new_start


@njit(nogil=True, cache=True)
def pad_ids(ids: np.ndarray, offsets: np.ndarray, max_len: int, pad: int,
            keep_last: bool) -> np.ndarray:
    """Fixed-length rows: truncate to ``max_len`` (first or last ids) and pad with ``pad``."""
    n = offsets.shape[0] - 1
    out = np.full(n * max_len, pad, dtype=np.int64)
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        if b - a > max_len:
            if keep_last:
                a = b - max_len
            else:
                b = a + max_len
        for t in range(b - a):
            out[i * max_len + t] = ids[a + t]
    return out
