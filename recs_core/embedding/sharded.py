"""Embedding tables sharded across MPI ranks, and the lookup / gradient exchange.

Placement: ``"row"`` puts global row ``r`` of table ``t`` on rank
``fmix64(r ^ salt(t)) % world`` (rows of every table spread over all ranks);
``"table"`` puts whole table ``t`` on rank ``t % world``. Each rank stores only its
rows, initialized exactly like the corresponding rows of a 1-rank table.

One exchange serves a group of fields (a pipeline) over that pipeline's own
communicator: ids are de-duplicated per field, sent to their owners (Ialltoallv), the
owners gather the rows and send them back (Ialltoallv). The backward pass sends the
per-id gradient sums to the owners, which apply the sparse optimizer. Each step is a
posted request (:class:`~recs_core.comm.pending.Pending`) so other work can run
between post and wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from recs_core.comm.pending import DEFAULT_TIMEOUT_S, Pending
from recs_core.embedding.table import dedup_grads, init_table
from recs_core.features.hashing import fmix64

_KEY_BITS = 40  # key = table << 40 | row: rows < 2^40, tables < 2^23
_ROW_MASK = (1 << _KEY_BITS) - 1


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
    """This rank's rows of every table (``local[t]``) and the global→local row map."""

    def __init__(self, rows: list[int], dim: int, seed: int, rank: int, world: int,
                 placement: str = "row") -> None:
        if placement not in ("row", "table"):
            raise ValueError(f"placement must be 'row' or 'table', not {placement!r}")
        self.rows, self.dim, self.rank, self.world = rows, dim, rank, world
        self.placement = placement
        self.local: list[np.ndarray] = []
        self.to_local: list[np.ndarray] = []
        for t, n in enumerate(rows):
            mine = np.flatnonzero(owners(t, np.arange(n), world, placement) == rank)
            index = np.full(n, -1, dtype=np.int64)
            index[mine] = np.arange(len(mine))
            full = init_table(n, dim, seed, t) if len(mine) else None
            self.local.append(full[mine] if full is not None else np.zeros((0, dim), np.float32))
            self.to_local.append(index)

    def owned_rows(self, t: int) -> np.ndarray:
        """Global row numbers this rank stores for table ``t`` (in local order)."""
        return np.flatnonzero(self.to_local[t] >= 0)


@dataclass
class _Plan:
    """What a lookup sent, kept for its backward pass."""

    uniq: list[np.ndarray]  # per field: unique ids
    inverse: list[np.ndarray]  # per field: position of each id in uniq
    order: np.ndarray  # send order of the concatenated unique keys (by owner)
    send_counts: np.ndarray
    recv_counts: np.ndarray
    recv_keys: np.ndarray  # keys this rank owns and was asked for, by source rank


class ShardedLookup:
    """Lookups and gradient pushes for one pipeline's fields over its own communicator."""

    def __init__(self, tables: ShardedTables, fields: list[int], comm: Any,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.tables, self.fields = tables, fields
        self.comm = comm.Dup()  # pipelines never share a communicator
        self.timeout = timeout

    def close(self) -> None:
        self.comm.Free()

    def _alltoallv(self, send: np.ndarray, send_counts: np.ndarray, recv_counts: np.ndarray,
                   width: int, what: str) -> tuple[Pending, np.ndarray]:
        from mpi4py import MPI

        dtype = MPI.INT64_T if send.dtype == np.int64 else MPI.FLOAT
        sc = (send_counts * width).astype(np.int64)
        rc = (recv_counts * width).astype(np.int64)
        recv = np.empty((int(recv_counts.sum()),) + send.shape[1:], dtype=send.dtype)
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        req = self.comm.Ialltoallv([send, (sc, sd), dtype], [recv, (rc, rd), dtype])
        return Pending([req], lambda: recv, what, self.comm, self.timeout), recv

    def post_ids(self, ids: list[np.ndarray]) -> Pending[_Plan]:
        """Post the id exchange for one batch: ``ids[j]`` are the global ids of field j."""
        world = self.tables.world
        uniq, inverse, keys, dest = [], [], [], []
        for t, field_ids in zip(self.fields, ids):
            u, inv = np.unique(field_ids, return_inverse=True)
            uniq.append(u)
            inverse.append(inv.reshape(-1))
            keys.append((np.int64(t) << _KEY_BITS) | u)
            dest.append(owners(t, u, world, self.tables.placement))
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        all_dest = np.concatenate(dest) if dest else np.zeros(0, np.int64)
        order = np.argsort(all_dest, kind="stable")
        send_keys = all_keys[order]
        send_counts = np.bincount(all_dest, minlength=world).astype(np.int64)
        recv_counts = np.empty(world, dtype=np.int64)
        from mpi4py import MPI

        req_counts = self.comm.Ialltoall([send_counts, MPI.INT64_T], [recv_counts, MPI.INT64_T])
        counts = Pending([req_counts], lambda: recv_counts, "id count exchange", self.comm,
                         self.timeout)
        counts.wait()  # a few bytes; the id exchange itself below stays in flight
        pending, recv = self._alltoallv(send_keys, send_counts, recv_counts, 1, "id exchange")

        def finish() -> _Plan:
            return _Plan(uniq, inverse, order, send_counts, recv_counts, recv)

        return Pending(pending.requests, finish, "id exchange", self.comm, self.timeout)

    def serve_rows(self, plan: _Plan) -> Pending[list[np.ndarray]]:
        """Owner side: gather the asked rows and post them back; the result is each
        field's rows for every id of the batch (in the order of ``ids``)."""
        keys = plan.recv_keys
        rows = np.empty((len(keys), self.tables.dim), dtype=np.float32)
        tabs = keys >> _KEY_BITS
        for t in np.unique(tabs):
            sel = np.flatnonzero(tabs == t)
            local = self.tables.to_local[int(t)][keys[sel] & _ROW_MASK]
            rows[sel] = self.tables.local[int(t)][local]
        pending, back = self._alltoallv(rows, plan.recv_counts, plan.send_counts,
                                        self.tables.dim, "row exchange")

        def finish() -> list[np.ndarray]:
            ordered = np.empty_like(back)
            ordered[plan.order] = back  # back to concatenated unique-key order
            out, start = [], 0
            for u, inv in zip(plan.uniq, plan.inverse):
                out.append(ordered[start:start + len(u)][inv])
                start += len(u)
            return out

        return Pending(pending.requests, finish, "row exchange", self.comm, self.timeout)

    def post_grads(self, plan: _Plan, grads: list[np.ndarray]) -> Pending[None]:
        """Send each field's per-id gradient sums to the owners (``grads[j]`` is [n_j, dim],
        one row per id of the batch); ``apply`` runs the owner update once they arrive."""
        sums = []
        for u, inv, g in zip(plan.uniq, plan.inverse, grads):
            s = np.zeros((len(u), self.tables.dim), dtype=np.float32)
            _segment_sum(inv.astype(np.int64), np.ascontiguousarray(g, dtype=np.float32), s)
            sums.append(s)
        send = (np.concatenate(sums) if sums else np.zeros((0, self.tables.dim), np.float32))
        send = np.ascontiguousarray(send[plan.order])
        pending, recv = self._alltoallv(send, plan.send_counts, plan.recv_counts,
                                        self.tables.dim, "gradient exchange")
        self._last = (plan, recv)
        return Pending(pending.requests, lambda: None, "gradient exchange", self.comm,
                       self.timeout)

    def apply(self, optimizer: Any) -> None:
        """Owner side: sum the gradients received for each owned row (in source-rank order)
        and apply ``optimizer.update(t, local_table, local_ids, grads)``."""
        plan, recv = self._last
        keys = plan.recv_keys
        tabs = keys >> _KEY_BITS
        for t in np.unique(tabs):
            sel = np.flatnonzero(tabs == t)
            local = self.tables.to_local[int(t)][keys[sel] & _ROW_MASK]
            ids, g = dedup_grads(local, np.ascontiguousarray(recv[sel]))
            optimizer.update(int(t), self.tables.local[int(t)], ids, g)


@njit(nogil=True, cache=True)
def _segment_sum(inverse: np.ndarray, grads: np.ndarray, out: np.ndarray) -> None:
    """out[inverse[i]] += grads[i], in row order (deterministic)."""
    for i in range(inverse.shape[0]):
        r = inverse[i]
        for k in range(grads.shape[1]):
            out[r, k] += grads[i, k]
