"""The model's embedding lookups and sparse updates, on one rank or sharded across ranks.

Both backends take a :class:`FeatureBatch` and give the ``[n, F, dim]`` block of its
fields' vectors (pooled for list fields), and take that block's gradient back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recs_core.comm.pending import Pending
from recs_core.embedding.sharded import ShardedLookup, ShardedTables
from recs_core.embedding.table import (
    EmbeddingSet,
    dedup_grads,
    gather_fields,
    gather_pooled,
    pooled_grads,
)
from recs_core.features.graph import FeatureBatch
from recs_core.features.spec import DynamicSpec, Spec
from recs_core.train.dynamic_tables import DynamicStore


@dataclass(frozen=True)
class Slot:
    """Where one spec output's fields sit in the [n, F, dim] embedding block."""

    pipeline: str
    index: int  # position in FeatureBatch.sparse[pipeline]
    first: int  # first field index
    width: int  # number of fields (1 for a list field)
    pooled: str | None  # "sum" / "mean" for list fields


def slots_of(spec: Spec) -> list[Slot]:
    """The slots of a spec's sparse outputs, in field order."""
    slots, first, count = [], 0, {}
    for f in spec.features:
        if f.output != "sparse":
            continue
        pooled = f.table.pooling if f.out_type.kind == "list_id" else None
        index = count.get(f.pipeline, 0)
        count[f.pipeline] = index + 1
        slots.append(Slot(f.pipeline, index, first, len(f.field_names), pooled))
        first += len(f.field_names)
    return slots


def _field_ids(fb: FeatureBatch, s: Slot) -> list[np.ndarray]:
    o = fb.sparse[s.pipeline][s.index]
    return [o.ids] if s.pooled else [np.ascontiguousarray(o.ids[:, j]) for j in range(s.width)]


def _field_grads(fb: FeatureBatch, s: Slot, d: np.ndarray) -> list[np.ndarray]:
    """Per-id gradient rows of a slot's fields (token rows for a pooled field)."""
    o = fb.sparse[s.pipeline][s.index]
    if s.pooled:
        g = np.ascontiguousarray(d[:, s.first, :])
        return [pooled_grads(o.ids, o.offsets, g, s.pooled == "mean")]
    return [np.ascontiguousarray(d[:, s.first + j, :]) for j in range(s.width)]


class LocalEmbeddings:
    """Every table on this rank."""

    def __init__(self, rows: list[int], dim: int, seed: int, slots: list[Slot],
                 optimizer: Any, dynamic: dict[int, DynamicSpec] | None = None) -> None:
        dynamic = dynamic or {}
        self.set = EmbeddingSet([max(r, 1) for r in rows], [dim] * len(rows), seed)
        for t in dynamic:  # a dynamic table has no fixed rows (its DynamicTable holds them)
            self.set.tables[t] = np.zeros((0, dim), dtype=np.float32)
        self.dim, self.slots, self.optimizer = dim, slots, optimizer
        self.dynamic = DynamicStore(dynamic, dim, seed, optimizer)

    @property
    def tables(self) -> list[np.ndarray]:
        return self.set.tables

    # ---- per-table views for checkpoints (same interface as ShardedEmbeddings) ----------

    def owned_rows(self, t: int) -> np.ndarray:
        """Global row numbers of table ``t`` this rank stores (all of them), ascending."""
        return np.arange(len(self.set.tables[t]), dtype=np.int64)

    def rows_view(self, t: int) -> np.ndarray:
        """This rank's rows of table ``t``, in :meth:`owned_rows` order (a view)."""
        return self.set.tables[t]

    def accumulator_view(self, t: int) -> np.ndarray | None:
        """The row-wise optimizer state of those rows (a view), None for SGD."""
        if not hasattr(self.optimizer, "accumulator"):
            return None
        return self.optimizer.accumulator(t, self.set.tables[t])

    def touched_view(self, t: int) -> np.ndarray:
        """uint8 map of those rows: 1 where the optimizer updated the row (a view)."""
        return self.optimizer.touched_rows(t, self.set.tables[t])

    def lookup(self, fb: FeatureBatch) -> np.ndarray:
        out = np.empty((len(fb), len(self.set.tables), self.dim), dtype=np.float32)
        dyn = self.dynamic
        for s in self.slots:
            o = fb.sparse[s.pipeline][s.index]
            if s.first in dyn:
                for j, ids in enumerate(_field_ids(fb, s)):
                    vec, _ = dyn.vectors(s.first + j, ids)
                    if s.pooled is None:
                        out[:, s.first + j, :] = vec
                    else:
                        out[:, s.first, :] = gather_pooled(vec, np.arange(len(vec)), o.offsets,
                                                           s.pooled == "mean")
            elif s.pooled is None:
                gather_fields(self.set.tables, o.ids, out, s.first)
            else:
                out[:, s.first, :] = gather_pooled(self.set.tables[s.first], o.ids, o.offsets,
                                                   s.pooled == "mean")
        return out

    def update(self, fb: FeatureBatch, d: np.ndarray) -> None:
        for s in self.slots:
            for j, (ids, g) in enumerate(zip(_field_ids(fb, s), _field_grads(fb, s, d))):
                u, summed = dedup_grads(ids, g)
                t = s.first + j
                if t in self.dynamic:
                    self.dynamic.update(t, self.dynamic.tables[t].rows_of(u), summed)
                else:
                    self.optimizer.update(t, self.set.tables[t], u, summed)


class ShardedEmbeddings:
    """Tables sharded over the ranks of ``comm``; one exchange (communicator) per pipeline."""

    def __init__(self, rows: list[int], dim: int, seed: int, slots: list[Slot],
                 optimizer: Any, comm: Any, placement: str = "row",
                 dynamic: dict[int, DynamicSpec] | None = None) -> None:
        self.shards = ShardedTables(rows, dim, seed, comm.Get_rank(), comm.Get_size(),
                                    placement)
        self.dynamic = DynamicStore(dynamic or {}, dim, seed, optimizer, comm.Get_size())
        self.shards.dynamic = self.dynamic if dynamic else None
        self.dim, self.slots, self.optimizer = dim, slots, optimizer
        self.pipelines = list(dict.fromkeys(s.pipeline for s in slots))
        self.lookups = {}
        for p in self.pipelines:
            fields = [s.first + j for s in slots if s.pipeline == p for j in range(s.width)]
            self.lookups[p] = ShardedLookup(self.shards, fields, comm)
        self._plans: dict[str, Any] = {}
        self.wait_seconds: dict[str, float] = {p: 0.0 for p in self.pipelines}
        counts = [len(self.shards.owned_rows(t)) for t in range(len(rows))]
        ends = np.cumsum(counts).tolist()
        self._spans = [(e - c, e) for c, e in zip(counts, ends)]  # table t in ``local``

    # ---- per-table views for checkpoints (same interface as LocalEmbeddings) ----------

    def owned_rows(self, t: int) -> np.ndarray:
        """Global row numbers of table ``t`` this rank owns, ascending (its local order)."""
        return self.shards.owned_rows(t).astype(np.int64)

    def rows_view(self, t: int) -> np.ndarray:
        """This rank's rows of table ``t``, in :meth:`owned_rows` order (a view)."""
        return self.shards.local_table(t)

    def accumulator_view(self, t: int) -> np.ndarray | None:
        """The row-wise optimizer state of those rows (a view), None for SGD."""
        if not hasattr(self.optimizer, "accumulator"):
            return None
        a, b = self._spans[t]
        return self.optimizer.accumulator(0, self.shards.local)[a:b]

    def touched_view(self, t: int) -> np.ndarray:
        """uint8 map of those rows: 1 where the owner updated the row (a view)."""
        a, b = self._spans[t]
        return self.optimizer.touched_rows(0, self.shards.local)[a:b]

    def pipeline_ids(self, fb: FeatureBatch, p: str) -> list[np.ndarray]:
        """The ids of pipeline ``p``'s fields, one array per field (tokens for lists)."""
        return [i for s in self.slots if s.pipeline == p for i in _field_ids(fb, s)]

    def new_block(self, n: int) -> np.ndarray:
        """An uninitialized [n, F, dim] block for a batch's vectors."""
        return np.empty((n, sum(s.width for s in self.slots), self.dim), dtype=np.float32)

    def fill_block(self, out: np.ndarray, fb: FeatureBatch, p: str,
                   rows: list[np.ndarray]) -> None:
        """Put the rows looked up for pipeline ``p`` into its fields of ``out`` (pooling
        list fields)."""
        got = iter(rows)
        for s in (s for s in self.slots if s.pipeline == p):
            if s.pooled is None:
                for j in range(s.width):
                    out[:, s.first + j, :] = next(got)
            else:
                o = fb.sparse[s.pipeline][s.index]
                tok = next(got)
                out[:, s.first, :] = gather_pooled(tok, np.arange(len(tok)), o.offsets,
                                                   s.pooled == "mean")

    def pipeline_grads(self, fb: FeatureBatch, p: str, d: np.ndarray) -> list[np.ndarray]:
        """Per-id gradient rows of pipeline ``p``'s fields from the block gradient ``d``."""
        return [g for s in self.slots if s.pipeline == p for g in _field_grads(fb, s, d)]

    def lookup(self, fb: FeatureBatch) -> np.ndarray:
        """The batch's [n, F, dim] block (every pipeline's exchange posted, then waited)."""
        posted = {p: self.lookups[p].post_ids(self.pipeline_ids(fb, p)) for p in self.pipelines}
        rows: dict[str, Pending] = {}
        for p in self.pipelines:  # every rank serves the pipelines in the same order
            self._plans[p] = posted[p].wait()
            self.wait_seconds[p] += posted[p].waited
            rows[p] = self.lookups[p].serve_rows(self._plans[p])
        out = self.new_block(len(fb))
        for p in self.pipelines:
            self.fill_block(out, fb, p, rows[p].wait())
            self.wait_seconds[p] += rows[p].waited
        return out

    def update(self, fb: FeatureBatch, d: np.ndarray) -> None:
        """Push the block gradient ``d`` to the owners and apply their sparse updates."""
        pending = {p: self.lookups[p].post_grads(self._plans[p], self.pipeline_grads(fb, p, d))
                   for p in self.pipelines}
        for p in self.pipelines:
            pending[p].wait()
            self.wait_seconds[p] += pending[p].waited
            self.lookups[p].apply(self.optimizer)

    def gather_tables(self, comm: Any) -> list[np.ndarray] | None:
        """Full tables assembled on rank 0 (None elsewhere); for tests and checkpoints."""
        parts = comm.gather([(self.shards.owned_rows(t), self.shards.local_table(t))
                             for t in range(len(self.shards.rows))], root=0)
        if parts is None:
            return None
        full = [np.zeros((n, self.dim), np.float32) for n in self.shards.rows]
        for rank_parts in parts:
            for t, (ids, vals) in enumerate(rank_parts):
                full[t][ids] = vals
        return full
