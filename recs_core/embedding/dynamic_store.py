"""The dynamic (hash-keyed) tables of one embedding set on this rank, as the embedding
layer uses them.

A table with ``embedding = { dim = 16, dynamic = { ... } }`` (:class:`DynamicSpec`) keeps a
compiled :class:`~recs_core.embedding.dynamic.DynamicTable` per rank (its shard: the ids
``owners(t, id)`` gives this rank, any int64) instead of a fixed ``[rows, dim]`` array.

* **Ids and flat keys.** A dynamic table's ids must lie in ``[0, 2**52)`` (e.g.
  ``hash_bucket`` with up to ``2**32`` buckets). In the sharded exchange, a fixed table's
  row travels as ``offsets[t] + row`` (< 2**52), a dynamic table's id as
  ``((t + 1) << 52) | id`` (``sharded.dyn_flat_keys``): unique across tables, decoded by
  the owner.
* **Admission counts** are per unique id per global batch: the owner de-duplicates the ids
  it is asked for (over all source ranks) and observes them in ascending order, so an id
  seen in k batches has count k whatever the world size (each id has one owner; only
  count-min collisions inside a shard's sketch could differ between world sizes).
  Lookups that do not train (held-out rows, ``score``) read rows without counting.
* **Window index** = the number of passes this set's dynamic tables have ended
  (:attr:`DynamicStore.window`, saved with the checkpoint); :meth:`DynamicStore.end_window`
  runs at the end of each pass (eviction: ``evict_after_windows`` / ``row_budget``; a
  shard's budget is ``ceil(row_budget / world_size)``).
* **Optimizer state.** Not-admitted ids read as zeros and their gradients are dropped.
  Row-wise Adagrad keeps its accumulator as the row state ``acc``; ``touched`` (1.0 = the
  row was looked up for training or updated this window) feeds the delta.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from recs_core.embedding.dynamic import DynamicTable
from recs_core.embedding.sparse_optim import RowwiseAdagrad, SparseOptimizer
from recs_core.features.spec import DynamicSpec


def table_seed(seed: int, t: int) -> int:
    """The DynamicTable seed of table ``t`` of a set seeded ``seed`` (< 2**63)."""
    return ((int(seed) & ((1 << 40) - 1)) << 20 | t) & ((1 << 63) - 1)


class DynamicStore:
    """This rank's dynamic tables of one embedding set, by table (field) index."""

    def __init__(self, specs: dict[int, DynamicSpec], dim: int, seed: int,
                 optimizer: SparseOptimizer, world: int = 1) -> None:
        self.specs, self.dim, self.optimizer = specs, dim, optimizer
        self.tables: dict[int, DynamicTable] = {}
        for t, s in specs.items():
            budget = None if s.row_budget is None else math.ceil(s.row_budget / world)
            d = DynamicTable(dim, table_seed(seed, t), admit_after=s.admit_after,
                             row_budget=budget, evict_after_windows=s.evict_after_windows,
                             sketch_width=s.sketch_width, sketch_depth=s.sketch_depth)
            if isinstance(optimizer, RowwiseAdagrad):
                d.add_row_state("acc", optimizer.initial_accumulator)
            d.add_row_state("touched", 0.0)
            self.tables[t] = d
        self.window = 0
        self.counting = True
        self.admitted = dict.fromkeys(specs, 0)  # this pass
        self.evicted = {t: np.zeros(0, np.int64) for t in specs}  # at this window's end

    def __contains__(self, t: int) -> bool:
        return t in self.tables

    def rows(self, t: int, ids: np.ndarray) -> np.ndarray:
        """Rows of table ``t``'s unique ids (ascending for determinism): observed (counted,
        admitted, marked touched) while training, else only looked up."""
        d = self.tables[t]
        if not self.counting:
            return d.rows_of(ids)
        before = len(d)
        rows = d.observe(ids, self.window)
        self.admitted[t] += len(d) - before
        d.row_state("touched")[rows[rows >= 0]] = 1.0
        return rows

    def vectors(self, t: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim] of ids (any order, repeats), each id's row) of table t."""
        u, inv = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        r = self.rows(t, u)
        return self.tables[t].gather_rows(r)[inv], r[inv]

    def update(self, t: int, rows: np.ndarray, grads: np.ndarray) -> None:
        """The sparse optimizer step on table t's (unique) ``rows``; -1 rows are dropped."""
        keep = rows >= 0
        rows = np.ascontiguousarray(rows[keep], dtype=np.int64)
        if not len(rows):
            return
        d = self.tables[t]
        grads = np.ascontiguousarray(grads[keep], dtype=np.float32)
        scratch = np.empty(d.row_capacity, dtype=np.uint8)
        acc = d.row_state("acc") if isinstance(self.optimizer, RowwiseAdagrad) else None
        bad = self.optimizer.apply_rows(d.values, scratch, rows, grads, acc)
        assert bad < 0
        d.row_state("touched")[rows] = 1.0

    def end_window(self) -> None:
        """Evict (see the module docstring) and move to the next window."""
        for t, d in self.tables.items():
            self.evicted[t] = d.end_window(self.window)
        self.window += 1

    def clear_touched(self) -> None:
        """A new window: no row touched, nothing admitted or evicted yet."""
        for t, d in self.tables.items():
            d.row_state("touched")[:] = 0.0
            self.admitted[t] = 0
            self.evicted[t] = np.zeros(0, np.int64)

    def figures(self) -> dict[int, list[int]]:
        """Per table: [live rows, admitted this pass, evicted at its end, bytes]."""
        return {t: [len(d), self.admitted[t], len(self.evicted[t]), d.nbytes]
                for t, d in self.tables.items()}

    # ---- checkpoints ---------------------------------------------------------------------

    def arrays(self, t: int) -> dict[str, np.ndarray]:
        """Table t's state for a checkpoint: keys (ascending), values, freq, last_seen,
        acc (Adagrad), touched (uint8), sketch."""
        s = self.tables[t].state()
        out = {k: s[k] for k in ("keys", "values", "freq", "last_seen", "sketch")}
        if "extra/acc" in s:
            out["acc"] = s["extra/acc"]
        out["touched"] = s["extra/touched"].astype(np.uint8)
        return out

    def load_arrays(self, t: int, a: dict[str, np.ndarray], touched: bool) -> None:
        """Restore table t from :meth:`arrays` (``touched``: keep the touched marks)."""
        d = self.tables[t]
        n = len(a["keys"])
        state = {k: a[k] for k in ("keys", "values", "freq", "last_seen", "sketch")}
        state["keys"] = np.asarray(state["keys"], dtype=np.int64)
        for name in ("acc", "touched"):
            try:
                init = d._extra_init[name]
            except KeyError:
                continue
            if name == "acc":
                if "acc" not in a:
                    raise ValueError(f"table {t}: the checkpoint has no accumulator")
                state["extra/acc"] = np.asarray(a["acc"], dtype=np.float32)
            else:
                state["extra/touched"] = (np.asarray(a["touched"], dtype=np.float32)
                                          if touched else np.zeros(n, np.float32))
            state[f"extra_init/{name}"] = np.array(init, dtype=np.float32)
        d.load_state(state)


def merge_shards(parts: list[dict[str, np.ndarray]],
                 mine: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One shard's arrays from several old shards' (disjoint keys): the rows whose
    ``mine(keys)`` is true, by ascending key; the sketch is the saturating sum of the old
    sketches (a count-min sketch of the union of their keys: never undercounts)."""
    out: dict[str, np.ndarray] = {}
    keys = np.concatenate([p["keys"] for p in parts])
    order = np.argsort(keys, kind="stable")
    for name in parts[0]:
        if name == "sketch":
            continue
        out[name] = np.concatenate([p[name] for p in parts])[order]
    if mine is not None:
        keep = mine(out["keys"])
        out = {k: v[keep] for k, v in out.items()}
    total = np.zeros(parts[0]["sketch"].shape, dtype=np.uint64)
    for p in parts:
        total += p["sketch"].astype(np.uint64)
    out["sketch"] = np.minimum(total, np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return out
