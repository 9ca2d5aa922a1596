"""Sparse optimizers for embedding tables: they read and write only the rows a batch
touched. ``ids`` must be unique (see :func:`~recs_core.embedding.table.dedup_grads`);
``grads[i]`` is the summed gradient of row ``ids[i]``. Updates are in place and
bit-deterministic (fixed loop order, no threads).

Each optimizer also marks the rows it updated: ``touched_rows(t, table)`` is a uint8
[rows] map set inside the update kernels at no measurable cost, two bits per row:
:data:`UPDATED` (since the last :meth:`clear_touched`, the window's start: a delta export
lists those rows) and :data:`DIRTY` (since the last :meth:`clear_dirty`, the last
checkpoint: an increment saves those rows)."""

from __future__ import annotations

import numpy as np
from numba import njit

from recs_core.embedding.table import AHEAD, prefetch_w

UPDATED, DIRTY = 1, 2  # bits of the touched map (see the module docstring)
_MARK = np.uint8(UPDATED | DIRTY)


@njit(nogil=True, cache=True)
def _first_bad(ids: np.ndarray, rows: int) -> int:
    """Position of the first id outside [0, rows), or -1 (checked before any write)."""
    for i in range(ids.shape[0]):
        if ids[i] < 0 or ids[i] >= rows:
            return i
    return -1


@njit(nogil=True, cache=True)
def _sgd(table: np.ndarray, touched: np.ndarray, ids: np.ndarray, grads: np.ndarray,
         lr: float) -> int:
    rows, dim = table.shape
    bad = _first_bad(ids, rows)
    if bad >= 0:
        return bad
    step = table.dtype.type(lr)
    n = ids.shape[0]
    for i in range(n):
        if i + AHEAD < n:
            prefetch_w(table, ids[i + AHEAD] * dim)
        r = ids[i]
        touched[r] = _MARK
        for d in range(dim):
            table[r, d] -= step * grads[i, d]
    return -1


@njit(nogil=True, cache=True)
def _rowwise_adagrad(table: np.ndarray, acc: np.ndarray, touched: np.ndarray, ids: np.ndarray,
                     grads: np.ndarray, lr: float, eps: float) -> int:
    """acc[r] += mean(g^2); table[r] -= lr * g / (sqrt(acc[r]) + eps), all in the table's
    dtype; the sum of squares runs over d in order. A row whose denominator is 0 (eps = 0,
    zero history) is left as is."""
    rows, dim = table.shape
    ft = table.dtype.type
    bad = _first_bad(ids, rows)
    if bad >= 0:
        return bad
    lr_t, eps_t, dim_t = ft(lr), ft(eps), ft(dim)
    n = ids.shape[0]
    for i in range(n):
        if i + AHEAD < n:
            ahead = ids[i + AHEAD]
            prefetch_w(table, ahead * dim)
            prefetch_w(acc, ahead)
        r = ids[i]
        touched[r] = _MARK
        sq = ft(0.0)
        for d in range(dim):
            g = grads[i, d]
            sq += g * g
        a = acc[r] + sq / dim_t
        acc[r] = a
        den = np.sqrt(a) + eps_t
        if den == 0:  # eps = 0 and an all-zero history: no step (not 0 / 0)
            continue
        scale = lr_t / den
        for d in range(dim):
            table[r, d] -= scale * grads[i, d]
    return -1


def _check(table: np.ndarray, ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, ...]:
    if table.ndim != 2 or not table.flags.c_contiguous or not table.flags.writeable:
        raise ValueError(f"table must be a writeable C-contiguous 2-d array, got {table.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    grads = np.ascontiguousarray(grads, dtype=table.dtype)
    if ids.ndim != 1 or grads.shape != (len(ids), table.shape[1]):
        raise ValueError(f"ids {ids.shape} / grads {grads.shape} do not match a "
                         f"{table.shape} table")
    return ids, grads


def _raise_bad(bad: int, ids: np.ndarray, t: int, rows: int) -> None:
    if bad >= 0:
        raise IndexError(f"table {t}: id {ids[bad]} is outside [0, {rows}) (nothing updated)")


class _Touched:
    """The per-table map of updated rows, shared by both optimizers."""

    def __init__(self) -> None:
        self.touched: dict[int, np.ndarray] = {}

    def touched_rows(self, t: int, table: np.ndarray) -> np.ndarray:
        """Table t's uint8 [rows] map of rows updated since the last clear (created on
        first use, all 0)."""
        mark = self.touched.get(t)
        if mark is None:
            mark = np.zeros(table.shape[0], dtype=np.uint8)
            self.touched[t] = mark
        elif mark.shape != (table.shape[0],):
            raise ValueError(f"table {t}: touched map {mark.shape} does not match table "
                             f"{table.shape}")
        return mark

    def clear_touched(self) -> None:
        """Forget which rows were updated (at the start of a new window); rows changed
        since the last checkpoint stay marked :data:`DIRTY`."""
        for mark in self.touched.values():
            mark &= np.uint8(DIRTY)

    def clear_dirty(self) -> None:
        """Rows are saved (a checkpoint): none is :data:`DIRTY` any more."""
        for mark in self.touched.values():
            mark &= np.uint8(UPDATED)


class SparseSGD(_Touched):
    """table[r] -= lr * g_r for each touched row r."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        if not 0 <= lr < np.inf:
            raise ValueError(f"lr must be finite and >= 0, got {lr}")
        self.lr = float(lr)
        self.state: dict[int, np.ndarray] = {}

    def update(self, t: int, table: np.ndarray, ids: np.ndarray, grads: np.ndarray) -> None:
        """Updates table number t in place at the (unique) rows ids."""
        ids, grads = _check(table, ids, grads)
        mark = self.touched_rows(t, table)
        _raise_bad(self.apply_rows(table, mark, ids, grads, None), ids, t, table.shape[0])

    def apply_rows(self, table: np.ndarray, touched: np.ndarray, ids: np.ndarray,
                   grads: np.ndarray, acc: np.ndarray | None) -> int:
        """The kernel on rows held elsewhere (a dynamic table's); the first bad id's
        position, or -1."""
        return _sgd(table, touched, ids, grads, self.lr)


class RowwiseAdagrad(_Touched):
    """Row-wise Adagrad (DLRM / FBGEMM style): one accumulator per row,
    acc[r] += mean_over_dim(g_r^2); table[r] -= lr * g_r / (sqrt(acc[r]) + eps).

    ``state[t]`` is table t's accumulator [rows] (table dtype, float32 for the model's
    tables), created on its first update filled with ``initial_accumulator``."""

    def __init__(self, lr: float, eps: float = 1e-8, initial_accumulator: float = 0.0) -> None:
        super().__init__()
        if not (0 <= lr < np.inf and 0 <= eps < np.inf and 0 <= initial_accumulator < np.inf):
            raise ValueError(f"need finite lr, eps, initial_accumulator >= 0; got {lr}, {eps}, "
                             f"{initial_accumulator}")
        self.lr = float(lr)
        self.eps = float(eps)
        self.initial_accumulator = float(initial_accumulator)
        self.state: dict[int, np.ndarray] = {}

    def accumulator(self, t: int, table: np.ndarray) -> np.ndarray:
        """Table t's accumulator, created on first use."""
        acc = self.state.get(t)
        if acc is None:
            acc = np.full(table.shape[0], self.initial_accumulator, dtype=table.dtype)
            self.state[t] = acc
        elif acc.shape != (table.shape[0],) or acc.dtype != table.dtype:
            raise ValueError(f"table {t}: accumulator {acc.shape} {acc.dtype} does not match "
                             f"table {table.shape} {table.dtype}")
        return acc

    def update(self, t: int, table: np.ndarray, ids: np.ndarray, grads: np.ndarray) -> None:
        """Updates table number t in place at the (unique) rows ids."""
        ids, grads = _check(table, ids, grads)
        mark = self.touched_rows(t, table)
        bad = self.apply_rows(table, mark, ids, grads, self.accumulator(t, table))
        _raise_bad(bad, ids, t, table.shape[0])

    def apply_rows(self, table: np.ndarray, touched: np.ndarray, ids: np.ndarray,
                   grads: np.ndarray, acc: np.ndarray | None) -> int:
        """The kernel on rows held elsewhere (a dynamic table's, ``acc`` its
        accumulator); the first bad id's position, or -1."""
        assert acc is not None
        return _rowwise_adagrad(table, acc, touched, ids, grads, self.lr, self.eps)


SPARSE_OPTIMIZERS = ("sgd", "adagrad")
SparseOptimizer = SparseSGD | RowwiseAdagrad


def make_sparse_optimizer(name: str, lr: float, **kw) -> SparseOptimizer:
    """"sgd" (:class:`SparseSGD`) or "adagrad" (:class:`RowwiseAdagrad`, row-wise);
    ``kw`` goes to the constructor."""
    if name == "sgd":
        return SparseSGD(lr, **kw)
    if name == "adagrad":
        return RowwiseAdagrad(lr, **kw)
    raise ValueError(f"unknown sparse optimizer {name!r}; choices: "
                     f"{', '.join(SPARSE_OPTIMIZERS)}")
