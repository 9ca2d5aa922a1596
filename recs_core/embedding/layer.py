"""The model's embedding layer: its tables on one rank or sharded across ranks.

Both backends offer the same stages per pipeline (see ``recs_core.stages``):
``lookup(fb, p, block)`` fills pipeline ``p``'s fields of a batch's ``[n, F, dim]`` block
(pooled for list fields), yielding its exchanges (none on one rank) and a
:class:`NeedRows` marker before it reads rows; ``push(fb, p, looked, d)`` takes that
block's gradient back and applies the sparse update. A scheduler composes the stages;
``read`` drives every lookup to the end (scoring). The layer owns its state:
``state_dict`` / ``load_state_dict`` / ``load_resharded`` / ``changed_rows`` (through one
store per table, fixed or dynamic: ``recs_core.embedding.storage``), ``new_window`` and
``end_window``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from recs_core.checkpoint.store import RowPatch
from recs_core.embedding.dynamic_store import DynamicStore
from recs_core.embedding.sharded import ExchangePlan, ShardedLookup, ShardedTables, owners
from recs_core.embedding.sparse_optim import SparseOptimizer
from recs_core.embedding.storage import (
    ChangedRows,
    DynamicStoreTable,
    FixedStore,
    ShardRead,
    TableStore,
    need,
)
from recs_core.embedding.table import (
    EmbeddingSet,
    dedup_grads,
    gather_fields,
    gather_pooled,
    pooled_grads,
)
from recs_core.errors import RecsError
from recs_core.features.graph import FeatureBatch
from recs_core.features.spec import DynamicSpec, Spec
from recs_core.stages import NeedRows, Stage, drive

if TYPE_CHECKING:
    from mpi4py.MPI import Comm


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


class _Layer(ABC):
    """What both backends share: the slots, the block, the per-pipeline ids and grads."""

    def __init__(self, dim: int, slots: list[Slot], optimizer: SparseOptimizer,
                 dynamic: DynamicStore, rows: list[int], rank: int,
                 names: list[str] | None, prefix: str) -> None:
        self.dim, self.slots, self.optimizer, self.dynamic = dim, slots, optimizer, dynamic
        self.pipelines = list(dict.fromkeys(s.pipeline for s in slots))
        self._slots_of = {p: [s for s in slots if s.pipeline == p] for p in self.pipelines}
        self.prefix = prefix
        self.names = names or [f"{prefix}.t{t:04d}" for t in range(len(rows))]
        self.stores: list[TableStore] = [
            DynamicStoreTable(dynamic, t, rank, lambda ids, t=t: self.owner_of(t, ids))
            if t in dynamic else FixedStore(self, t, rows[t], rank) for t in range(len(rows))]

    @abstractmethod
    def owned_rows(self, t: int) -> np.ndarray:
        """Global row numbers of table ``t`` this rank stores, ascending."""

    @abstractmethod
    def rows_view(self, t: int) -> np.ndarray:
        """This rank's rows of table ``t``, in :meth:`owned_rows` order (a view)."""

    @abstractmethod
    def owner_of(self, t: int, ids: np.ndarray) -> np.ndarray:
        """The rank owning each of table ``t``'s ``ids`` (rows or dynamic keys)."""

    def accumulator_view(self, t: int) -> np.ndarray | None:
        """The row-wise optimizer state of those rows (a view), None for SGD."""
        if not hasattr(self.optimizer, "accumulator"):
            return None
        return self._local_part(t, self.optimizer.accumulator)

    def touched_view(self, t: int) -> np.ndarray:
        """uint8 map of those rows: 1 where the optimizer updated the row (a view)."""
        return self._local_part(t, self.optimizer.touched_rows)

    @abstractmethod
    def _local_part(self, t: int, per_table: Callable[[int, np.ndarray], np.ndarray]
                    ) -> np.ndarray:
        """Table ``t``'s part of an optimizer's per-row array (``per_table(t', table)``)."""

    # ---- state (checkpoints, deltas, windows) ----------------------------------------------

    def state_dict(self, increment: bool = False) -> dict[str, np.ndarray | RowPatch]:
        """This rank's arrays of every table (``<stem>.<name>``, see
        ``recs_core.embedding.storage``), and the dynamic tables' window index;
        ``increment``: over the last checkpoint (:meth:`saved`)."""
        out = {f"{stem}.{k}": a for stem, store in zip(self.names, self.stores)
               for k, a in (store.increment() if increment else store.state()).items()}
        if self.dynamic.tables:
            out[f"{self.prefix}.dyn_window"] = np.array([self.dynamic.window], np.int64)
        return out

    def saved(self) -> None:
        """The state is checkpointed: the next increment starts from here."""
        self.optimizer.clear_dirty()

    def load_state_dict(self, arrays: dict[str, np.ndarray], touched: bool = False) -> None:
        """Restore from this rank's :meth:`state_dict` of the same world size and
        placement; ``touched``: keep the window's touched marks (a resume)."""
        for stem, store in zip(self.names, self.stores):
            part = {k[len(stem) + 1:]: a for k, a in arrays.items() if k.startswith(stem + ".")}
            store.load(part, stem, touched)
        if self.dynamic.tables:
            self.dynamic.window = int(need(arrays, f"{self.prefix}.dyn_window", "")[0])

    def load_resharded(self, read: ShardRead, old_world: int, old_placement: str,
                       touched: bool = False) -> None:
        """Restore from the :meth:`state_dict` of every rank of another world size or
        placement (``read(old_rank, name)``): keep the rows this rank owns now."""
        for stem, store in zip(self.names, self.stores):
            store.load_resharded(lambda r, k, stem=stem: read(r, f"{stem}.{k}"), old_world,
                                 old_placement, stem, touched)
        if self.dynamic.tables:
            window = read(0, f"{self.prefix}.dyn_window")
            if window is None:
                raise RecsError(f"rank 0 has no {self.prefix}.dyn_window")
            self.dynamic.window = int(window[0])

    def apply_delta(self, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Apply a delta's table entries (``<stem><suffix>``: ids or keys, values) of this
        set to this rank's rows; entries of other sets are ignored."""
        for stem, store in zip(self.names, self.stores):
            for name, (ids, values) in entries.items():
                if name == stem or (name.startswith(stem + ".dyn") and
                                    name[len(stem):] in (".dyn", ".dyn.evicted")):
                    store.apply(name[len(stem):], ids, values)

    def changed_rows(self) -> list[tuple[int, ChangedRows]]:
        """(table, rows) of every delta entry of this rank: the rows this window updated."""
        return [(t, c) for t, store in enumerate(self.stores) for c in store.changed()]

    def new_window(self) -> None:
        """A new window: no row touched (nothing admitted or evicted yet)."""
        self.optimizer.clear_touched()
        self.dynamic.clear_touched()

    def end_window(self) -> dict[int, list[int]]:
        """End the dynamic tables' window (eviction); per dynamic table: [live rows,
        admitted this pass, evicted at its end, bytes] of this rank."""
        if not self.dynamic.tables:
            return {}
        self.dynamic.end_window()
        return self.dynamic.figures()

    def new_block(self, n: int) -> np.ndarray:
        """An uninitialized [n, F, dim] block for a batch's vectors."""
        return np.empty((n, sum(s.width for s in self.slots), self.dim), dtype=np.float32)

    def pipeline_ids(self, fb: FeatureBatch, p: str) -> list[np.ndarray]:
        """The ids of pipeline ``p``'s fields, one array per field (tokens for lists)."""
        return [i for s in self._slots_of[p] for i in _field_ids(fb, s)]

    def pipeline_grads(self, fb: FeatureBatch, p: str, d: np.ndarray) -> list[np.ndarray]:
        """Per-id gradient rows of pipeline ``p``'s fields from the block gradient ``d``."""
        return [g for s in self._slots_of[p] for g in _field_grads(fb, s, d)]

    def fill_block(self, out: np.ndarray, fb: FeatureBatch, p: str,
                   rows: list[np.ndarray]) -> None:
        """Put the rows of every id of pipeline ``p``'s fields (one array per field, in
        :meth:`pipeline_ids` order) into its fields of ``out``, pooling list fields."""
        got = iter(rows)
        for s in self._slots_of[p]:
            if s.pooled is None:
                for j in range(s.width):
                    out[:, s.first + j, :] = next(got)
            else:
                o = fb.sparse[s.pipeline][s.index]
                tok = next(got)
                out[:, s.first, :] = gather_pooled(tok, np.arange(len(tok)), o.offsets,
                                                   s.pooled == "mean")

    @abstractmethod
    def lookup(self, fb: FeatureBatch, p: str, block: np.ndarray) -> Stage[ExchangePlan | None]:
        """Fill pipeline ``p``'s fields of ``block``; returns what :meth:`push` needs."""

    @abstractmethod
    def push(self, fb: FeatureBatch, p: str, looked: ExchangePlan | None,
             d: np.ndarray) -> Stage[None]:
        """Apply the block gradient ``d`` of pipeline ``p``'s fields."""

    def read(self, fb: FeatureBatch) -> np.ndarray:
        """The batch's [n, F, dim] block, every pipeline's lookup driven to the end."""
        out = self.new_block(len(fb))
        for p in self.pipelines:  # every rank looks the pipelines up in the same order
            drive(self.lookup(fb, p, out))
        return out


class LocalEmbeddings(_Layer):
    """Every table on this rank: the stages move nothing."""

    def __init__(self, rows: list[int], dim: int, seed: int, slots: list[Slot],
                 optimizer: SparseOptimizer, dynamic: dict[int, DynamicSpec] | None = None,
                 names: list[str] | None = None, prefix: str = "emb") -> None:
        dynamic = dynamic or {}
        self.set = EmbeddingSet([max(r, 1) for r in rows], [dim] * len(rows), seed)
        for t in dynamic:  # a dynamic table has no fixed rows (its DynamicTable holds them)
            self.set.tables[t] = np.zeros((0, dim), dtype=np.float32)
        super().__init__(dim, slots, optimizer, DynamicStore(dynamic, dim, seed, optimizer),
                         [len(a) for a in self.set.tables], 0, names, prefix)

    @property
    def tables(self) -> list[np.ndarray]:
        return self.set.tables

    # ---- per-table views (same interface as ShardedEmbeddings) --------------------------

    def owned_rows(self, t: int) -> np.ndarray:
        return np.arange(len(self.set.tables[t]), dtype=np.int64)

    def rows_view(self, t: int) -> np.ndarray:
        return self.set.tables[t]

    def owner_of(self, t: int, ids: np.ndarray) -> np.ndarray:
        return np.zeros(len(ids), dtype=np.int64)

    def _local_part(self, t: int, per_table: Callable[[int, np.ndarray], np.ndarray]
                    ) -> np.ndarray:
        return per_table(t, self.set.tables[t])

    # ---- stages ---------------------------------------------------------------------------

    def lookup(self, fb: FeatureBatch, p: str, block: np.ndarray) -> Stage[None]:
        """Gather pipeline ``p``'s rows into ``block`` (after :class:`NeedRows`)."""
        yield NeedRows(p)
        dyn = self.dynamic
        for s in self._slots_of[p]:
            o = fb.sparse[s.pipeline][s.index]
            if s.first in dyn:
                for j, ids in enumerate(_field_ids(fb, s)):
                    vec, _ = dyn.vectors(s.first + j, ids)
                    if s.pooled is None:
                        block[:, s.first + j, :] = vec
                    else:
                        block[:, s.first, :] = gather_pooled(vec, np.arange(len(vec)),
                                                             o.offsets, s.pooled == "mean")
            elif s.pooled is None:
                gather_fields(self.set.tables, o.ids, block, s.first)
            else:
                block[:, s.first, :] = gather_pooled(self.set.tables[s.first], o.ids,
                                                     o.offsets, s.pooled == "mean")

    def push(self, fb: FeatureBatch, p: str, looked: None, d: np.ndarray) -> Stage[None]:
        """The sparse update of pipeline ``p``'s tables from the block gradient ``d``."""
        for s in self._slots_of[p]:
            for j, (ids, g) in enumerate(zip(_field_ids(fb, s), _field_grads(fb, s, d))):
                u, summed = dedup_grads(ids, g)
                t = s.first + j
                if t in self.dynamic:
                    self.dynamic.update(t, self.dynamic.tables[t].rows_of(u), summed)
                else:
                    self.optimizer.update(t, self.set.tables[t], u, summed)
        return
        yield  # a stage that moves nothing


class ShardedEmbeddings(_Layer):
    """Tables sharded over the ranks of ``comm``; one exchange (communicator) per pipeline."""

    def __init__(self, rows: list[int], dim: int, seed: int, slots: list[Slot],
                 optimizer: SparseOptimizer, comm: Comm, placement: str = "row",
                 dynamic: dict[int, DynamicSpec] | None = None,
                 names: list[str] | None = None, prefix: str = "emb") -> None:
        self.shards = ShardedTables(rows, dim, seed, comm.Get_rank(), comm.Get_size(),
                                    placement)
        store = DynamicStore(dynamic or {}, dim, seed, optimizer, comm.Get_size())
        self.shards.dynamic = store if dynamic else None
        super().__init__(dim, slots, optimizer, store, rows, comm.Get_rank(), names, prefix)
        self.lookups = {}
        for p in self.pipelines:
            fields = [s.first + j for s in self._slots_of[p] for j in range(s.width)]
            self.lookups[p] = ShardedLookup(self.shards, fields, comm, name=p)
        counts = [len(self.shards.owned_rows(t)) for t in range(len(rows))]
        ends = np.cumsum(counts).tolist()
        self._spans = [(e - c, e) for c, e in zip(counts, ends)]  # table t in ``local``

    # ---- per-table views (same interface as LocalEmbeddings) ----------------------------

    def owned_rows(self, t: int) -> np.ndarray:
        return self.shards.owned_rows(t).astype(np.int64)

    def rows_view(self, t: int) -> np.ndarray:
        return self.shards.local_table(t)

    def owner_of(self, t: int, ids: np.ndarray) -> np.ndarray:
        s = self.shards
        return owners(t, ids, s.world, s.placement)

    def _local_part(self, t: int, per_table: Callable[[int, np.ndarray], np.ndarray]
                    ) -> np.ndarray:
        a, b = self._spans[t]
        return per_table(0, self.shards.local)[a:b]

    # ---- stages ---------------------------------------------------------------------------

    def lookup(self, fb: FeatureBatch, p: str, block: np.ndarray) -> Stage[ExchangePlan]:
        """Pipeline ``p``'s exchange (counts, ids, then the owners' rows) into ``block``;
        returns what the push needs."""
        plan, rows = yield from self.lookups[p].lookup(self.pipeline_ids(fb, p))
        self.fill_block(block, fb, p, rows)
        return plan

    def push(self, fb: FeatureBatch, p: str, looked: ExchangePlan | None,
             d: np.ndarray) -> Stage[None]:
        """Push pipeline ``p``'s gradients from the block gradient ``d`` to their owners,
        which update (``looked``: the lookup's result)."""
        assert looked is not None
        yield from self.lookups[p].push(looked, self.pipeline_grads(fb, p, d), self.optimizer)

    def gather_tables(self, comm: Comm) -> list[np.ndarray] | None:
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


Embeddings = LocalEmbeddings | ShardedEmbeddings
