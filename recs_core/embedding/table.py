"""Embedding tables and their compiled kernels: gathers (single-valued, pooled, many
fields at once) and the gradient helpers of the backward pass.

Ids are int64 row numbers; an id outside ``[0, rows)`` raises IndexError (checked inside
the kernels, no extra pass). Every loop runs in a fixed order, so results are
bit-deterministic. The random-access loops prefetch the row AHEAD ids later, which
makes them 2-3x faster when the table rows are not in cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.typed import List as TypedList

from recs_core.errors import RecsError

AHEAD = 16  # rows prefetched ahead in the random-access loops (3x faster on cold tables)

# ---------------------------------------------------------------------------------------
# Initialization
# ---------------------------------------------------------------------------------------


def init_table(rows: int, dim: int, seed: int, index: int, dtype=np.float32) -> np.ndarray:
    """A [rows, dim] table drawn uniform(-sqrt(1/rows), sqrt(1/rows)) like DLRM, fixed by
    (seed, index) alone."""
    if rows < 1 or dim < 1:
        raise ValueError(f"table {index}: rows and dim must be >= 1, got {rows} x {dim}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"table dtype must be float32 or float64, got {dtype}")
    rng = np.random.default_rng([seed, index])
    table = rng.random((rows, dim), dtype=dtype)  # [0, 1)
    bound = np.sqrt(1.0 / rows)
    table *= dtype.type(2.0 * bound)
    table -= dtype.type(bound)
    return table


def memory_limit() -> tuple[int, str]:
    """The bytes a process here can hold at most, and what sets it: the machine's physical
    memory, or the address-space limit (``ulimit -v``) when lower."""
    import resource

    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    what = "the machine's memory"
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY and soft < limit:
        limit, what = soft, "the address-space limit (ulimit -v)"
    return limit, what


def size_text(nbytes: float) -> str:
    """``nbytes`` as e.g. ``64.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError


def check_fits(nbytes: int, what: str) -> None:
    """RecsError (naming ``what`` and the size) when ``nbytes`` cannot fit in this
    process's memory (:func:`memory_limit`), before anything is allocated."""
    limit, source = memory_limit()
    if nbytes > limit:
        raise RecsError(f"{what} need {size_text(nbytes)}, more than {source} "
                        f"({size_text(limit)}): use fewer rows, a smaller dim or more ranks")


# ---------------------------------------------------------------------------------------
# Kernels (the gathers return -1, or the position of the first out-of-range id)
# ---------------------------------------------------------------------------------------


def _make_prefetch(write: int):  # noqa: ANN202
    @intrinsic
    def prefetch(typingctx, arr, idx):  # noqa: ANN001, ANN202
        if not (isinstance(arr, types.Array) and isinstance(idx, types.Integer)):
            return None

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            index = context.cast(builder, args[1], signature.args[1], types.intp)
            ptr = builder.bitcast(builder.gep(ary.data, [index]), i8p)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0")
            # (address, read 0 / write 1, locality 3 = keep in all levels, data cache)
            builder.call(fn, [ptr, ir.Constant(i32, write), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(arr, idx), codegen

    return prefetch


# prefetch(arr, idx) / prefetch_w(arr, idx), in kernels: hint the cache line of arr.flat[idx]
# (arr C-contiguous) for reading / writing. Only a hint: never faults, even out of range.
prefetch = _make_prefetch(0)
prefetch_w = _make_prefetch(1)


@njit(nogil=True, cache=True)
def _gather(table: np.ndarray, ids: np.ndarray, out: np.ndarray) -> int:
    rows, dim = table.shape
    n = ids.shape[0]
    for i in range(n):
        if i + AHEAD < n:
            prefetch(table, ids[i + AHEAD] * dim)
        r = ids[i]
        if r < 0 or r >= rows:
            return i
        for d in range(dim):
            out[i, d] = table[r, d]
    return -1


@njit(nogil=True, cache=True)
def _gather_pooled(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray, mean: bool,
                   out: np.ndarray) -> int:
    rows, dim = table.shape
    nnz = ids.shape[0]
    for i in range(offsets.shape[0] - 1):
        lo, hi = offsets[i], offsets[i + 1]
        for d in range(dim):
            out[i, d] = 0
        for j in range(lo, hi):
            if j + AHEAD < nnz:
                prefetch(table, ids[j + AHEAD] * dim)
            r = ids[j]
            if r < 0 or r >= rows:
                return j
            for d in range(dim):
                out[i, d] += table[r, d]
        if mean and hi > lo:
            for d in range(dim):  # exact division, as NumPy's float32 sum / count
                out[i, d] = out[i, d] / (hi - lo)
    return -1


@njit(nogil=True, cache=True)
def _gather_field(table: np.ndarray, ids: np.ndarray, j: int, out: np.ndarray, f: int) -> int:
    """out[:, f, :] = table[ids[:, j]]."""
    rows, dim = table.shape
    n = ids.shape[0]
    for i in range(n):
        if i + AHEAD < n:
            prefetch(table, ids[i + AHEAD, j] * dim)
        r = ids[i, j]
        if r < 0 or r >= rows:
            return i
        for d in range(dim):
            out[i, f, d] = table[r, d]
    return -1


@njit(nogil=True, cache=True)
def _gather_fields(tables, ids: np.ndarray, out: np.ndarray, first: int) -> int:
    """Field-major (one table at a time: far fewer cache and TLB misses than row-major).
    Returns -1, i * k + j of a bad id, or -2 - j when table first+j has the wrong dim."""
    n, k = ids.shape
    dim = out.shape[2]
    for j in range(k):
        t = tables[first + j]
        if t.shape[1] != dim:
            return -2 - j
        rows = t.shape[0]
        for i in range(n):
            if i + AHEAD < n:
                prefetch(t, ids[i + AHEAD, j] * dim)
            r = ids[i, j]
            if r < 0 or r >= rows:
                return i * k + j
            for d in range(dim):
                out[i, first + j, d] = t[r, d]
    return -1


@njit(nogil=True, cache=True)
def _hash_slots(ids: np.ndarray, uniq: np.ndarray, slot: np.ndarray) -> int:
    """Open-addressing dedup: uniq[:u] gets the distinct ids in order of first appearance,
    slot[i] the index in uniq of ids[i]. Returns u."""
    m = ids.shape[0]
    bits = 1
    while (1 << bits) < 2 * m:
        bits += 1
    mask = (1 << bits) - 1
    where = np.full(1 << bits, -1, dtype=np.int32)
    u = 0
    for i in range(m):
        r = ids[i]
        h = np.int64((np.uint64(r) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))
        while True:
            s = where[h]
            if s < 0:
                where[h] = u
                uniq[u] = r
                slot[i] = u
                u += 1
                break
            if uniq[s] == r:
                slot[i] = s
                break
            h = (h + 1) & mask
    return u


@njit(nogil=True, cache=True)
def _radix_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable LSD radix argsort (11-bit digits, as many passes as max - min needs)."""
    n = keys.shape[0]
    perm = np.arange(n).astype(np.int32)
    if n < 2:
        return perm
    lo = keys[0]
    hi = keys[0]
    for i in range(n):
        lo = min(lo, keys[i])
        hi = max(hi, keys[i])
    span = np.uint64(hi) - np.uint64(lo)
    k = np.empty(n, dtype=np.uint64)
    for i in range(n):
        k[i] = np.uint64(keys[i]) - np.uint64(lo)
    k2 = np.empty(n, dtype=np.uint64)
    p2 = np.empty(n, dtype=np.int32)
    count = np.empty(2049, dtype=np.int64)
    shift = np.uint64(0)
    while shift < 64 and (span >> shift) != 0:
        count[:] = 0
        for i in range(n):
            count[np.int64((k[i] >> shift) & np.uint64(2047)) + 1] += 1
        for d in range(2048):
            count[d + 1] += count[d]
        for i in range(n):
            d = np.int64((k[i] >> shift) & np.uint64(2047))
            j = count[d]
            count[d] = j + 1
            k2[j] = k[i]
            p2[j] = perm[i]
        k, k2 = k2, k
        perm, p2 = p2, perm
        shift += np.uint64(11)
    return perm


@njit(nogil=True, cache=True)
def _dedup(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, dim = grads.shape
    uniq = np.empty(m, dtype=np.int64)
    slot = np.empty(m, dtype=np.int32)
    u = _hash_slots(ids, uniq, slot)
    acc = np.empty((u, dim), dtype=grads.dtype)
    nxt = 0
    for i in range(m):  # in order of appearance: the first one copies, the others add
        s = slot[i]
        if s == nxt:
            nxt += 1
            for d in range(dim):
                acc[s, d] = grads[i, d]
        else:
            for d in range(dim):
                acc[s, d] += grads[i, d]
    perm = _radix_argsort(uniq[:u])
    out_ids = np.empty(u, dtype=np.int64)
    out = np.empty((u, dim), dtype=grads.dtype)
    for j in range(u):
        p = perm[j]
        out_ids[j] = uniq[p]
        for d in range(dim):
            out[j, d] = acc[p, d]
    return out_ids, out


@njit(nogil=True, cache=True)
def _pooled_grads(offsets: np.ndarray, grad_out: np.ndarray, mean: bool,
                  out: np.ndarray) -> None:
    dim = grad_out.shape[1]
    for i in range(offsets.shape[0] - 1):
        lo, hi = offsets[i], offsets[i + 1]
        for j in range(lo, hi):
            if mean:
                for d in range(dim):
                    out[j, d] = grad_out[i, d] / (hi - lo)
            else:
                for d in range(dim):
                    out[j, d] = grad_out[i, d]


# ---------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------


def _ids(ids: np.ndarray, ndim: int = 1) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim != ndim:
        raise ValueError(f"ids must be {ndim}-d, got shape {ids.shape}")
    return ids


def _offsets(offsets: np.ndarray, nnz: int) -> np.ndarray:
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != nnz:
        raise ValueError(f"offsets must be 1-d, start at 0 and end at nnz={nnz}")
    if (offsets[1:] < offsets[:-1]).any():
        raise ValueError("offsets must be non-decreasing")
    return offsets


def _table(table: np.ndarray) -> None:
    if table.ndim != 2:
        raise ValueError(f"a table is 2-d [rows, dim], got shape {table.shape}")


def _raise_bad(bad: int, ids: np.ndarray, rows: int) -> None:
    if bad >= 0:
        raise IndexError(f"id {ids[bad]} at position {bad} is outside [0, {rows})")


def gather(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows table[ids]: int64 ids [n] -> [n, dim]."""
    _table(table)
    ids = _ids(ids)
    out = np.empty((len(ids), table.shape[1]), dtype=table.dtype)
    _raise_bad(_gather(table, ids, out), ids, table.shape[0])
    return out


def gather_pooled(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray,
                  mean: bool) -> np.ndarray:
    """Sum (or mean) of the rows of each CSR bag: ids [nnz], offsets [n+1] -> [n, dim].
    Rows are added in id order; an empty bag gives zeros."""
    _table(table)
    ids = _ids(ids)
    offsets = _offsets(offsets, len(ids))
    out = np.empty((len(offsets) - 1, table.shape[1]), dtype=table.dtype)
    _raise_bad(_gather_pooled(table, ids, offsets, bool(mean), out), ids, table.shape[0])
    return out


def gather_fields(tables: Sequence[np.ndarray] | TypedList | EmbeddingSet, ids: np.ndarray,
                  out: np.ndarray, first: int) -> None:
    """k single-valued fields: ids [n, k] where field j uses tables[first+j]; writes
    out[:, first+j, :] (out is [n, F, dim]).

    ``tables`` may be a list (one kernel call per field), or an :class:`EmbeddingSet` or a
    numba typed List (one call for all k fields; the set caches its typed List)."""
    ids = _ids(ids, 2)
    n, k = ids.shape
    if isinstance(tables, EmbeddingSet):
        typed, plain = (tables.typed() if k > 1 else None), tables.tables
    elif isinstance(tables, TypedList):
        typed, plain = tables, None
    else:
        typed, plain = None, tables
    count = len(plain) if plain is not None else len(typed)
    if out.ndim != 3 or out.shape[0] != n or first < 0 or first + k > out.shape[1]:
        raise ValueError(f"out {out.shape} cannot hold fields {first}..{first + k - 1} "
                         f"of {n} rows")
    if first + k > count:
        raise ValueError(f"fields {first}..{first + k - 1} need {first + k} tables, "
                         f"got {count}")
    if typed is None:
        for j in range(k):
            t = plain[first + j]
            if t.ndim != 2 or t.shape[1] != out.shape[2]:
                raise ValueError(f"table {first + j} {t.shape} does not match out {out.shape}")
            bad = _gather_field(t, ids, j, out, first + j)
            if bad >= 0:
                _raise_field(first + j, bad, ids[bad, j], t.shape[0])
        return
    if k == 0:
        return
    bad = _gather_fields(typed, ids, out, first)
    if bad <= -2:
        j = first - 2 - bad
        raise ValueError(f"table {j} has dim {typed[j].shape[1]}, out has {out.shape[2]}")
    if bad >= 0:
        i, j = divmod(bad, k)
        _raise_field(first + j, i, ids[i, j], typed[first + j].shape[0])


def _raise_field(field: int, row: int, r: int, rows: int) -> None:
    raise IndexError(f"field {field}, row {row}: id {r} is outside [0, {rows})")


def dedup_grads(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids ascending [u], summed grads [u, dim]) of ids [m], grads [m, dim].
    Duplicates are summed in their order of appearance, so the result is deterministic
    (a hash pass, then a radix sort of the unique ids)."""
    ids = _ids(ids)
    grads = np.ascontiguousarray(grads)
    if grads.ndim != 2 or grads.shape[0] != len(ids):
        raise ValueError(f"grads {grads.shape} do not match {len(ids)} ids")
    return _dedup(ids, grads)


def pooled_grads(ids: np.ndarray, offsets: np.ndarray, grad_out: np.ndarray,
                 mean: bool) -> np.ndarray:
    """Per-token gradients [nnz, dim] of gather_pooled from grad_out [n, dim]: each token
    gets its bag's gradient (divided by the bag size when mean)."""
    ids = _ids(ids)
    offsets = _offsets(offsets, len(ids))
    grad_out = np.ascontiguousarray(grad_out)
    if grad_out.ndim != 2 or grad_out.shape[0] != len(offsets) - 1:
        raise ValueError(f"grad_out {grad_out.shape} does not match {len(offsets) - 1} bags")
    out = np.empty((len(ids), grad_out.shape[1]), dtype=grad_out.dtype)
    _pooled_grads(offsets, grad_out, bool(mean), out)
    return out


def _typed_list(tables: Sequence[np.ndarray]) -> TypedList:
    typed = TypedList()
    for j, t in enumerate(tables):
        if not (t.ndim == 2 and t.flags.c_contiguous and t.dtype == tables[0].dtype):
            raise ValueError(f"table {j} must be 2-d, C-contiguous and {tables[0].dtype}; "
                             f"got {t.shape} {t.dtype}")
        typed.append(t)
    return typed


# ---------------------------------------------------------------------------------------
# All tables of a model
# ---------------------------------------------------------------------------------------


class EmbeddingSet:
    """All tables of a model: tables[i] is [rows_i, dim_i] float32, drawn by
    :func:`init_table` from (seed, i)."""

    def __init__(self, rows: list[int], dims: list[int], seed: int) -> None:
        if len(rows) != len(dims):
            raise ValueError(f"{len(rows)} row counts but {len(dims)} dims")
        self.tables: list[np.ndarray] = [init_table(r, d, seed, i)
                                         for i, (r, d) in enumerate(zip(rows, dims))]
        self._typed: TypedList | None = None
        self._typed_of: tuple[np.ndarray, ...] = ()

    def __len__(self) -> int:
        return len(self.tables)

    def typed(self) -> TypedList:
        """The tables as a numba typed List (same memory), rebuilt only after an entry of
        ``tables`` was replaced."""
        if (self._typed is None or len(self._typed_of) != len(self.tables)
                or any(a is not b for a, b in zip(self._typed_of, self.tables))):
            self._typed = _typed_list(self.tables)
            self._typed_of = tuple(self.tables)
        return self._typed
