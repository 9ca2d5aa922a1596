"""The column-batch value types that flow between feature operators.

Every operator takes one of these and returns one; all hold whole batches
(``n`` rows, ``k`` columns of one feature), never single rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class IntValues:
    """Integer columns with a missing mask."""

    values: np.ndarray  # int64 [n, k]
    missing: np.ndarray  # bool [n, k]


@dataclass
class FloatValues:
    """Float columns; NaN marks a missing value."""

    values: np.ndarray  # float64 [n, k]


_NO_HASHES = np.zeros((0, 0), dtype=np.uint64)


@dataclass
class StrValues:
    """String columns as (start, length) into a byte arena; length 0 = missing. Columns
    marked in ``known`` also carry each string's recs-hash64 in ``hashes``."""

    arena: np.ndarray  # uint8
    start: np.ndarray  # int64 [n, k]
    length: np.ndarray  # int32 [n, k]
    hashes: np.ndarray | None = None  # uint64 [n, k]; None: no column known
    known: np.ndarray | None = None  # bool [k]

    def __post_init__(self) -> None:
        if self.hashes is None or self.known is None:
            self.hashes = _NO_HASHES
            self.known = np.zeros(self.start.shape[1], dtype=np.bool_)


@dataclass
class ListStrValues:
    """One multi-valued string column: row i holds tokens offsets[i]..offsets[i+1]-1."""

    arena: np.ndarray  # uint8
    start: np.ndarray  # int64 [nnz]
    length: np.ndarray  # int32 [nnz]
    offsets: np.ndarray  # int64 [n + 1]


@dataclass
class IdValues:
    """Embedding row ids of k single-valued sparse fields."""

    ids: np.ndarray  # int64 [n, k]


@dataclass
class ListIdValues:
    """Embedding row ids of one multi-valued field, CSR by row (for pooling)."""

    ids: np.ndarray  # int64 [nnz]
    offsets: np.ndarray  # int64 [n + 1]


Value = IntValues | FloatValues | StrValues | ListStrValues | IdValues | ListIdValues

# Static type names used by the spec's type checker.
TYPE_OF = {
    IntValues: "int",
    FloatValues: "float",
    StrValues: "str",
    ListStrValues: "list_str",
    IdValues: "id",
    ListIdValues: "list_id",
}


def concat_rows(parts: list[Value]) -> Value:
    """The rows of ``parts`` one after another, as one value: what a feature chain run on
    row chunks joins at its end (chains end in float, id or id-list values; list offsets
    of each part start at 0)."""
    v = parts[0]
    if len(parts) == 1:
        return v
    if isinstance(v, FloatValues):
        return FloatValues(np.concatenate([p.values for p in parts]))
    if isinstance(v, IdValues):
        return IdValues(np.concatenate([p.ids for p in parts]))
    if isinstance(v, ListIdValues):
        shift = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])
        offsets = [p.offsets[:-1] + s for p, s in zip(parts, shift[:-1])]
        return ListIdValues(np.concatenate([p.ids for p in parts]),
                            np.concatenate(offsets + [shift[-1:]]).astype(np.int64))
    raise TypeError(f"a feature chain cannot end in {type(v).__name__}")
