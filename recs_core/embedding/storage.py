"""One table's rows on this rank, fixed or dynamic, behind one interface: what a checkpoint
saves and loads of it (on the same or another world size) and what a delta lists.

The embedding layer builds one store per table (:func:`table_stores`); checkpoints and
deltas go through the layer's ``state_dict`` / ``load_state_dict`` / ``load_resharded`` /
``changed_rows`` and never look at a table's kind.

Array names are relative to the table's stem (``emb.cat.C1``):

* fixed: ``values`` float32 [k, dim] (this rank's rows, ascending global row), ``acc``
  float32 [k] (row-wise Adagrad; absent for SGD), ``touched`` uint8 (``numpy.packbits``
  of the rows updated this window); in an increment ``values`` and ``acc`` are row
  patches of the rows changed since the last checkpoint;
* dynamic: ``dyn.keys`` / ``dyn.values`` / ``dyn.freq`` / ``dyn.last_seen`` /
  ``dyn.sketch`` / ``dyn.acc`` / ``dyn.touched`` (see ``dynamic_store.DynamicStore.arrays``),
  whole in increments too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recs_core.checkpoint.reshard import reshard_rows
from recs_core.checkpoint.store import RowPatch
from recs_core.embedding.dynamic_store import DynamicStore, merge_shards
from recs_core.embedding.sharded import owners
from recs_core.embedding.sparse_optim import DIRTY, UPDATED
from recs_core.errors import RecsError

# an old shard's array by (old rank, name relative to the stem), None when absent
ShardRead = Callable[[int, str], "np.ndarray | None"]
_DYN_PARTS = ("keys", "values", "freq", "last_seen", "sketch", "acc", "touched")
_DYN_NEEDED = ("keys", "values", "freq", "last_seen", "sketch", "touched")


@dataclass(frozen=True)
class ChangedRows:
    """Rows of one delta entry on this rank: ids (fixed tables: global rows; dynamic:
    keys) and their values (``[n, 0]`` for evicted keys)."""

    suffix: str  # appended to the table's stem: "", ".dyn" or ".dyn.evicted"
    ids: np.ndarray
    values: np.ndarray
    by_key: bool  # a dynamic table's entry (applied by key, not by row)


class TableStore(Protocol):
    """This rank's part of one table, as checkpoints and deltas see it."""

    def state(self) -> dict[str, np.ndarray]:
        """Its arrays (names above); views where possible."""

    def increment(self) -> dict[str, np.ndarray | RowPatch]:
        """:meth:`state` as an increment over the state at the last checkpoint: the rows
        changed since (``sparse_optim.DIRTY``) as patches where the kind allows."""

    def load(self, arrays: dict[str, np.ndarray], where: str, touched: bool) -> None:
        """Restore from :meth:`state`'s arrays (``where``: the stem, for messages);
        ``touched``: keep the window's touched marks (a resume), else clear them."""

    def load_resharded(self, read: ShardRead, old_world: int, old_placement: str,
                       where: str, touched: bool) -> None:
        """Restore from every old shard's arrays: keep the rows this rank owns now."""

    def changed(self) -> list[ChangedRows]:
        """The rows this window updated (for a delta)."""

    def apply(self, suffix: str, ids: np.ndarray, values: np.ndarray) -> None:
        """Apply one delta entry (:meth:`changed`'s ``suffix``) to this rank's rows."""


def need(arrays: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    """``arrays[name]``, else RecsError naming ``where.name``."""
    a = arrays.get(name)
    if a is None:
        full = f"{where}.{name}" if where else name
        raise RecsError(f"the checkpoint has no {full!r} for this rank")
    return a


def assign(dst: np.ndarray, src: np.ndarray, what: str) -> None:
    """``dst[...] = src`` when shape and dtype agree, else RecsError naming ``what``."""
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise RecsError(f"checkpoint array {what} is {src.shape} {src.dtype}, the model's "
                        f"{dst.shape} {dst.dtype}")
    dst[...] = src


def old_owner(t: int, rows: int, world: int, placement: str) -> np.ndarray:
    """The rank owning each row of table ``t`` under a writer's world and placement."""
    if world == 1:
        return np.zeros(rows, dtype=np.int64)
    return owners(t, np.arange(rows, dtype=np.int64), world, placement)


class FixedRows(Protocol):
    """What a fixed table's store needs of its layer (both backends offer it)."""

    def owned_rows(self, t: int) -> np.ndarray: ...
    def rows_view(self, t: int) -> np.ndarray: ...
    def accumulator_view(self, t: int) -> np.ndarray | None: ...
    def touched_view(self, t: int) -> np.ndarray: ...
    def owner_of(self, t: int, ids: np.ndarray) -> np.ndarray: ...


class FixedStore:
    """Table ``t`` of ``rows`` rows, its rows sharded by placement (layer views)."""

    def __init__(self, layer: FixedRows, t: int, rows: int, rank: int) -> None:
        self.layer, self.t, self.rows, self.rank = layer, t, rows, rank

    def state(self) -> dict[str, np.ndarray]:
        lay, t = self.layer, self.t
        out = {"values": lay.rows_view(t)}
        acc = lay.accumulator_view(t)
        if acc is not None:
            out["acc"] = acc
        out["touched"] = np.packbits(lay.touched_view(t) & UPDATED)
        return out

    def increment(self) -> dict[str, np.ndarray | RowPatch]:
        lay, t = self.layer, self.t
        full = self.state()
        rows = np.flatnonzero(lay.touched_view(t) & DIRTY)
        out: dict[str, np.ndarray | RowPatch] = {
            k: RowPatch(rows, full[k][rows], len(full[k])) for k in ("values", "acc")
            if k in full}
        out["touched"] = full["touched"]
        return out

    def load(self, arrays: dict[str, np.ndarray], where: str, touched: bool) -> None:
        lay, t = self.layer, self.t
        assign(lay.rows_view(t), need(arrays, "values", where), f"{where}.values")
        acc = lay.accumulator_view(t)
        if acc is not None:
            assign(acc, need(arrays, "acc", where), f"{where}.acc")
        mark = lay.touched_view(t)
        if touched:
            bits = np.unpackbits(need(arrays, "touched", where), count=len(mark))
            assign(mark, bits * np.uint8(UPDATED), f"{where}.touched")
        else:
            mark[:] = 0

    def load_resharded(self, read: ShardRead, old_world: int, old_placement: str,
                       where: str, touched: bool) -> None:
        lay, t = self.layer, self.t
        old = old_owner(t, self.rows, old_world, old_placement)
        acc = lay.accumulator_view(t)
        keys = ["values"] + (["acc"] if acc is not None else []) + (["touched"] if touched
                                                                     else [])
        shards = []
        for r in range(old_world):
            part: dict[str, np.ndarray] = {"ids": np.flatnonzero(old == r)}
            for k in keys:
                a = read(r, k)
                if a is None:
                    raise RecsError(f"rank {r} has no {where}.{k}")
                if k == "touched":
                    a = np.unpackbits(a, count=len(part["ids"]))
                part[k] = a
                if len(a) != len(part["ids"]):
                    raise RecsError(f"rank {r}'s {where}.{k} has {len(a)} rows, the "
                                    f"placement gives it {len(part['ids'])}")
            shards.append(part)
        got = reshard_rows(shards, lambda ids: lay.owner_of(t, ids), self.rank)
        if not np.array_equal(got["ids"], lay.owned_rows(t)):
            raise RecsError(f"{where}: the resharded rows are not this rank's")
        assign(lay.rows_view(t), got["values"], f"{where}.values")
        if acc is not None:
            assign(acc, got["acc"], f"{where}.acc")
        mark = lay.touched_view(t)
        if touched:
            assign(mark, got["touched"] * np.uint8(UPDATED), f"{where}.touched")
        else:
            mark[:] = 0

    def changed(self) -> list[ChangedRows]:
        lay, t = self.layer, self.t
        mark = (lay.touched_view(t) & UPDATED).astype(bool)
        return [ChangedRows("", lay.owned_rows(t)[mark], lay.rows_view(t)[mark], False)]

    def apply(self, suffix: str, ids: np.ndarray, values: np.ndarray) -> None:
        lay, t = self.layer, self.t
        if suffix or (len(ids) and not 0 <= ids.min() <= ids.max() < self.rows):
            raise RecsError(f"table {t}: a delta entry {suffix!r} with ids up to "
                            f"{ids.max() if len(ids) else None} does not fit {self.rows} rows")
        mine = lay.owner_of(t, ids) == self.rank
        rows = lay.rows_view(t)
        rows[np.searchsorted(lay.owned_rows(t), ids[mine])] = values[mine]


def dynamic_part(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """A dynamic table's arrays of one shard (``dyn.<part>`` names, returned without the
    ``dyn.``), checked for completeness."""
    out = {k: arrays[f"dyn.{k}"] for k in _DYN_PARTS if f"dyn.{k}" in arrays}
    for k in _DYN_NEEDED:
        if k not in out:
            raise RecsError(f"the checkpoint has no {where}.dyn.{k} for this rank (was the "
                            "table dynamic when it was written?)")
    return out


class DynamicStoreTable:
    """Dynamic table ``t`` of a set's :class:`DynamicStore` (rows by key)."""

    def __init__(self, store: DynamicStore, t: int, rank: int,
                 owner_of: Callable[[np.ndarray], np.ndarray]) -> None:
        self.store, self.t, self.rank, self.owner_of = store, t, rank, owner_of

    def state(self) -> dict[str, np.ndarray]:
        return {f"dyn.{k}": a for k, a in self.store.arrays(self.t).items()}

    def increment(self) -> dict[str, np.ndarray | RowPatch]:
        """The whole table: its rows move (admission, growth), and its budget bounds it."""
        return dict(self.state())

    def load(self, arrays: dict[str, np.ndarray], where: str, touched: bool) -> None:
        self.store.load_arrays(self.t, dynamic_part(arrays, where), touched=touched)

    def load_resharded(self, read: ShardRead, old_world: int, old_placement: str,
                       where: str, touched: bool) -> None:
        """Every old shard's rows, kept where this rank owns their key now, in key order;
        the sketch is the saturating sum of the old shards' (``merge_shards``)."""
        parts = []
        for r in range(old_world):
            found = {f"dyn.{k}": a for k in _DYN_PARTS
                     if (a := read(r, f"dyn.{k}")) is not None}
            parts.append(dynamic_part(found, where))
        merged = merge_shards(parts, lambda keys: self.owner_of(keys) == self.rank)
        self.store.load_arrays(self.t, merged, touched=touched)

    def changed(self) -> list[ChangedRows]:
        """The rows looked up or updated this window, by key, and the keys evicted at its
        end."""
        a = self.store.arrays(self.t)
        mark = a["touched"].astype(bool)
        gone = self.store.evicted[self.t]
        return [ChangedRows(".dyn", a["keys"][mark], a["values"][mark], True),
                ChangedRows(".dyn.evicted", gone, np.zeros((len(gone), 0), np.float32), True)]

    def apply(self, suffix: str, ids: np.ndarray, values: np.ndarray) -> None:
        """Listed keys this rank owns get their rows (new keys are added, seen once in the
        current window), evicted keys are removed."""
        if suffix not in (".dyn", ".dyn.evicted"):
            raise RecsError(f"table {self.t}: a delta entry {suffix!r} for a dynamic table")
        a = self.store.arrays(self.t)
        mine = self.owner_of(ids) == self.rank
        ids, values = ids[mine], values[mine]
        keep = ~np.isin(a["keys"], ids)
        out = {k: v[keep] for k, v in a.items() if k != "sketch"}
        if suffix == ".dyn":
            n = len(ids)
            new = {"keys": ids, "values": values, "freq": np.ones(n, np.int64),
                   "last_seen": np.full(n, self.store.window, np.int64),
                   "touched": np.zeros(n, np.uint8)}
            if "acc" in a:
                new["acc"] = np.full(n, a["acc"].dtype.type(0), a["acc"].dtype)
            out = {k: np.concatenate([out[k], new[k]]) for k in out}
        order = np.argsort(out["keys"], kind="stable")
        out = {k: v[order] for k, v in out.items()}
        out["sketch"] = a["sketch"]
        self.store.load_arrays(self.t, out, touched=False)
