"""Embedding tables sharded across MPI ranks, and the lookup / gradient exchange.

Placement: ``"row"`` puts global row ``r`` of table ``t`` on rank
``fmix64(r ^ salt(t)) % world`` (rows of every table spread over all ranks);
``"table"`` puts whole table ``t`` on rank ``t % world``. Each rank stores only its
rows, initialized exactly like the corresponding rows of a 1-rank table.

One exchange serves a group of fields (a pipeline) over that pipeline's own
communicator: ids are de-duplicated per (table, row), sent to their owners (an all-to-all
of point-to-point messages, :func:`~recs_core.comm.pending.post_alltoallv`), the owners
gather the rows and send them back. The backward pass sends the
per-id gradient sums to the owners, which apply the sparse optimizer. Each step is a
posted request (:class:`~recs_core.comm.pending.Pending`) so other work can run
between post and wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from recs_core.comm.objects import dup
from recs_core.comm.pending import Pending, post_alltoallv
from recs_core.embedding.dynamic_store import DynamicStore
from recs_core.embedding.sparse_optim import SparseOptimizer
from recs_core.embedding.table import AHEAD, dedup_grads, gather, init_table, prefetch
from recs_core.features.hashing import fmix64
from recs_core.stages import NeedRows, Stage

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

DYN_SHIFT = 52  # a dynamic table's id travels as ((t + 1) << DYN_SHIFT) | id
ID_MASK = (1 << DYN_SHIFT) - 1
TAG_COUNTS, TAG_KEYS, TAG_ROWS, TAG_GRADS = 1, 2, 3, 4  # message tags of the exchanges


def dyn_flat_keys(t: int, ids: np.ndarray) -> np.ndarray:
    """The exchange key of dynamic table ``t``'s ids (ValueError outside [0, 2**52))."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() > ID_MASK):
        raise ValueError(f"table {t}: dynamic-table ids must lie in [0, 2**52), got "
                         f"{ids.min()}..{ids.max()}")
    return ids | np.int64((t + 1) << DYN_SHIFT)


@njit(nogil=True, cache=True)
def _row_owners(ids: np.ndarray, salt: np.uint64, world: int) -> np.ndarray:
    out = np.empty(ids.shape[0], dtype=np.int64)
    for i in range(ids.shape[0]):
        out[i] = np.int64(fmix64(np.uint64(ids[i]) ^ salt) % np.uint64(world))
    return out


def owners(table: int, ids: np.ndarray, world: int, placement: str) -> np.ndarray:
    """The rank owning each global row ``ids`` of ``table``."""
    if placement == "table":
        return np.full(len(ids), table % world, dtype=np.int64)
    salt = np.uint64((table * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF)
    return _row_owners(np.ascontiguousarray(ids, dtype=np.int64), salt, world)


class ShardedTables:
    """This rank's rows of every table, stored as one flat ``local`` array [L, dim].

    A row is addressed by its flat key ``offsets[t] + row``; ``to_local[key]`` is its
    index in ``local`` (-1 when another rank owns it). The rows of table ``t`` sit
    contiguously in ``local`` (``local_table(t)``), in global row order.
    """

    def __init__(self, rows: list[int], dim: int, seed: int, rank: int, world: int,
                 placement: str = "row") -> None:
        if placement not in ("row", "table"):
            raise ValueError(f"placement must be 'row' or 'table', not {placement!r}")
        self.rows, self.dim, self.rank, self.world = rows, dim, rank, world
        self.placement = placement
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.to_local = np.full(total, -1, dtype=np.int32 if total < 2**31 else np.int64)
        parts, self._spans, start = [], [], 0
        for t, n in enumerate(rows):
            mine = np.flatnonzero(owners(t, np.arange(n), world, placement) == rank)
            self.to_local[self.offsets[t] + mine] = start + np.arange(len(mine))
            if len(mine):
                parts.append(init_table(n, dim, seed, t)[mine])
            self._spans.append((start, start + len(mine)))
            start += len(mine)
        self.local = (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))
        # this rank's dynamic tables, if any: their ids travel as ((t + 1) << 52) | id and
        # are served by it
        self.dynamic: DynamicStore | None = None

    def owned_rows(self, t: int) -> np.ndarray:
        """Global row numbers of table ``t`` this rank stores (in local order)."""
        a, b = self.offsets[t], self.offsets[t + 1]
        return np.flatnonzero(self.to_local[a:b] >= 0)

    def local_table(self, t: int) -> np.ndarray:
        """This rank's rows of table ``t`` (a view into ``local``)."""
        a, b = self._spans[t]
        return self.local[a:b]


@njit(nogil=True, cache=True)
def _plan_exchange(keys: np.ndarray, dest: np.ndarray, world: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """De-duplicate keys and order the unique ones by destination rank (stable, first
    appearance within a rank). Returns (send keys, send counts per rank, position of
    every input key in the send buffer)."""
    m = keys.shape[0]
    cap = 1
    while cap < 2 * m + 2:
        cap *= 2
    slot_key = np.empty(cap, dtype=np.int64)
    slot_idx = np.full(cap, -1, dtype=np.int64)
    first = np.empty(m, dtype=np.int64)  # unique number -> first input position
    uniq_of = np.empty(m, dtype=np.int64)  # input position -> unique number
    nu = 0
    mask = np.uint64(cap - 1)
    for i in range(m):
        k = keys[i]
        h = np.int64(fmix64(np.uint64(k)) & mask)
        while slot_idx[h] >= 0 and slot_key[h] != k:
            h = (h + 1) & (cap - 1)
        if slot_idx[h] < 0:
            slot_idx[h] = nu
            slot_key[h] = k
            first[nu] = i
            nu += 1
        uniq_of[i] = slot_idx[h]
    counts = np.zeros(world, dtype=np.int64)
    for u in range(nu):
        counts[dest[first[u]]] += 1
    start = np.zeros(world, dtype=np.int64)
    for r in range(1, world):
        start[r] = start[r - 1] + counts[r - 1]
    pos_of_uniq = np.empty(nu, dtype=np.int64)
    send = np.empty(nu, dtype=np.int64)
    for u in range(nu):
        r = dest[first[u]]
        pos_of_uniq[u] = start[r]
        send[start[r]] = keys[first[u]]
        start[r] += 1
    position = np.empty(m, dtype=np.int64)
    for i in range(m):
        position[i] = pos_of_uniq[uniq_of[i]]
    return send, counts, position


@dataclass
class _Counted:
    """A batch's de-duplicated ids, bucketed by owner, and the count exchange's buffers."""

    lengths: list[int]
    position: np.ndarray
    send_keys: np.ndarray
    send_counts: np.ndarray
    recv_counts: np.ndarray  # filled by the count exchange
    pending: Pending | None = None


@dataclass
class ExchangePlan:
    """What a lookup sent, kept for its backward pass."""

    lengths: list[int]  # per field: ids in the batch
    position: np.ndarray  # every id of the batch -> its row in the send buffer
    send_counts: np.ndarray
    recv_counts: np.ndarray
    recv_keys: np.ndarray  # flat keys this rank owns and was asked for, by source rank
    count_seconds: float = 0.0  # the count exchange's post-to-completion time
    dynamic: dict[int, tuple[np.ndarray, np.ndarray]] | None = None  # served dynamic rows


class ShardedLookup:
    """Lookups and gradient pushes for one pipeline's fields over its own communicator."""

    def __init__(self, tables: ShardedTables, fields: list[int], comm: Comm,
                 timeout: float | None = None, name: str = "") -> None:
        self.tables, self.fields, self.name = tables, fields, name
        # Pipelines never share a communicator, and a pipeline's gradient push has its
        # own: a scheduler may post the next batch's lookup before this batch's push, and
        # each communicator still sees its collectives in the same order on every rank.
        self.comm = dup(comm, "communicator duplication")
        self.grad_comm = dup(comm, "communicator duplication")
        self.timeout = timeout

    def close(self) -> None:
        self.comm.Free()
        self.grad_comm.Free()

    def lookup(self, ids: list[np.ndarray]) -> Stage[tuple[ExchangePlan, list[np.ndarray]]]:
        """The lookup of one batch as a stage: the count and id exchanges, then (after
        a :class:`NeedRows` marker) the owners' rows. ``ids[j]``: the global ids of field j.
        Returns the plan (for :meth:`push`) and each field's rows for every id."""
        counted = self.post_counts(ids)
        yield counted
        keys = self.post_keys(counted.result())
        yield keys
        plan = keys.result()
        yield NeedRows(self.name)
        rows = self.serve_rows(plan)
        yield rows
        return plan, rows.result()

    def push(self, plan: ExchangePlan, grads: list[np.ndarray],
             optimizer: SparseOptimizer) -> Stage[None]:
        """The gradient push of one batch as a stage: post each field's per-id gradients
        (``grads[j]`` [n_j, dim]) to the owners, then the owners' update."""
        pushed = self.post_grads(plan, grads)
        yield pushed
        self.apply(plan, pushed.result(), optimizer)

    def post_counts(self, ids: list[np.ndarray]) -> Pending[_Counted]:
        """De-duplicate and bucket one batch's ids by owner, and post the count exchange;
        its result goes to :meth:`post_keys` (the first exchange of :meth:`lookup`)."""
        t_ = self.tables
        dyn = t_.dynamic
        keys = [dyn_flat_keys(t, i) if dyn is not None and t in dyn
                else t_.offsets[t] + np.asarray(i, dtype=np.int64)
                for t, i in zip(self.fields, ids)]
        dest = [owners(t, i, t_.world, t_.placement) for t, i in zip(self.fields, ids)]
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        all_dest = np.concatenate(dest) if dest else np.zeros(0, np.int64)
        send_keys, send_counts, position = _plan_exchange(all_keys, all_dest, t_.world)
        counted = _Counted([len(i) for i in ids], position, send_keys, send_counts,
                           np.zeros(t_.world, np.int64))

        def received(recv_counts: np.ndarray) -> _Counted:
            counted.recv_counts = recv_counts
            return counted

        one = np.ones(t_.world, np.int64)
        pending: Pending[_Counted] = post_alltoallv(
            self.comm, send_counts, one, one, "id count exchange", TAG_COUNTS, self.timeout,
            finish=received)
        counted.pending = pending
        return pending

    def post_keys(self, c: _Counted) -> Pending[ExchangePlan]:
        """Post the exchange of the de-duplicated ids to their owners (after the counts)."""
        counts = c.pending
        count_s = ((counts.completed or counts.posted) - counts.posted) if counts else 0.0

        def finish(recv: np.ndarray) -> ExchangePlan:
            return ExchangePlan(c.lengths, c.position, c.send_counts, c.recv_counts, recv, count_s)

        return post_alltoallv(self.comm, c.send_keys, c.send_counts, c.recv_counts,
                              "id exchange", TAG_KEYS, self.timeout, finish)

    def serve_rows(self, plan: ExchangePlan) -> Pending[list[np.ndarray]]:
        """Owner side: gather the asked rows and post them back; the result is each
        field's rows for every id of the batch (in the order of ``ids``)."""
        if self.tables.dynamic is None:
            rows = gather(self.tables.local, _local_ids(self.tables.to_local, plan.recv_keys))
        else:
            rows = self._serve_mixed(plan)
        def finish(back: np.ndarray) -> list[np.ndarray]:
            every = back[plan.position]
            ends = np.cumsum(plan.lengths)
            return [every[e - n:e] for e, n in zip(ends.tolist(), plan.lengths)]

        return post_alltoallv(self.comm, rows, plan.recv_counts, plan.send_counts,
                              "row exchange", TAG_ROWS, self.timeout, finish)

    def _serve_mixed(self, plan: ExchangePlan) -> np.ndarray:
        """Rows of fixed and dynamic tables; the dynamic tables' ids are observed (one
        count per unique id of the batch, ascending) and their rows kept for ``apply``."""
        keys, dyn = plan.recv_keys, self.tables.dynamic
        high = keys >> DYN_SHIFT
        rows = np.empty((len(keys), self.tables.dim), dtype=np.float32)
        fixed = high == 0
        if fixed.any():
            rows[fixed] = gather(self.tables.local,
                                 _local_ids(self.tables.to_local, keys[fixed]))
        plan.dynamic = {}
        for t in self.fields:
            if t not in dyn:
                continue
            sel = np.flatnonzero(high == t + 1)
            if len(sel):
                rows[sel], r = dyn.vectors(t, keys[sel] & ID_MASK)
                plan.dynamic[t] = (sel, r)
        return rows

    def post_grads(self, plan: ExchangePlan, grads: list[np.ndarray]) -> Pending[np.ndarray]:
        """Send each field's per-id gradient sums to the owners (``grads[j]`` is [n_j, dim],
        one row per id of the batch); the result, the gradients this rank owns, goes to
        :meth:`apply`."""
        sums = np.zeros((int(plan.send_counts.sum()), self.tables.dim), dtype=np.float32)
        if grads:
            every = np.concatenate([np.asarray(g, dtype=np.float32) for g in grads])
            _segment_sum(plan.position, every, sums)
        return post_alltoallv(self.grad_comm, sums, plan.send_counts, plan.recv_counts,
                              "gradient exchange", TAG_GRADS, self.timeout)

    def apply(self, plan: ExchangePlan, recv: np.ndarray, optimizer: SparseOptimizer) -> None:
        """Owner side: sum the gradients ``recv`` (the push's result) for each owned row
        (in source-rank order) and apply ``optimizer.update(0, local rows, local ids,
        grads)``."""
        if plan.dynamic is None:
            ids, g = dedup_grads(_local_ids(self.tables.to_local, plan.recv_keys), recv)
            optimizer.update(0, self.tables.local, ids, g)
            return
        fixed = np.flatnonzero((plan.recv_keys >> DYN_SHIFT) == 0)
        ids, g = dedup_grads(_local_ids(self.tables.to_local, plan.recv_keys[fixed]),
                             recv[fixed])
        optimizer.update(0, self.tables.local, ids, g)
        for t, (sel, r) in plan.dynamic.items():
            keep = r >= 0
            if keep.any():
                rows, g = dedup_grads(r[keep], recv[sel[keep]])
                self.tables.dynamic.update(t, rows, g)


@njit(nogil=True, cache=True)
def _local_ids(to_local: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """to_local[keys], prefetching ahead (the map is large and accessed at random)."""
    n = keys.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        if i + AHEAD < n:
            prefetch(to_local, keys[i + AHEAD])
        out[i] = to_local[keys[i]]
    return out


@njit(nogil=True, cache=True)
def _segment_sum(inverse: np.ndarray, grads: np.ndarray, out: np.ndarray) -> None:
    """out[inverse[i]] += grads[i], in row order (deterministic)."""
    for i in range(inverse.shape[0]):
        r = inverse[i]
        for k in range(grads.shape[1]):
            out[r, k] += grads[i, k]
