"""Scores of a window's rows (``Job.score_rows``, ``recs predict``): every rank's rows put
back in the window's row order, with each row's position or id, written as CSV or Parquet.

A row's position is its 0-based index in the window: files in the order ``--data`` names
them (``recs_core.data.sources``), lines in file order, every line counted (a bad line
that was skipped keeps its number and has no score), so positions line up with the input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from recs_core.checkpoint.files import atomic_write
from recs_core.data.parse import COL_FLOAT, COL_INT, COL_LABEL, COL_STR, ColumnSchema, RawBatch
from recs_core.data.reader import RowOrigins
from recs_core.errors import RecsError
from recs_core.outfiles import check_output_file

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = (".csv", ".parquet")
PROBABILITY = "probability"  # the output column of the scores


def check_id_column(schema: ColumnSchema, name: str) -> None:
    """RecsError unless ``name`` is a column of the spec's input that ids can come from."""
    if name not in schema.names:
        raise RecsError(f"--id-column {name}: not a column of the spec's [input] (columns: "
                        f"{', '.join(schema.names)})")
    if schema.kinds[schema.names.index(name)] not in (COL_LABEL, COL_INT, COL_FLOAT, COL_STR):
        raise RecsError(f"--id-column {name}: ids come from a label, int, float or str "
                        f"column")


def column_array(raw: RawBatch, schema: ColumnSchema, name: str) -> pa.Array:
    """Column ``name`` of a batch as an Arrow array (missing values as nulls; a float
    column's as float64, NaN being missing), built from the batch's buffers without a
    Python object per value."""
    import pyarrow as pa

    kind = schema.kinds[schema.names.index(name)]
    if kind == COL_LABEL:
        return pa.array(raw.labels.astype(np.int64))
    if kind == COL_INT:
        j = schema.int_names.index(name)
        return pa.array(raw.ints[:, j], mask=raw.int_missing[:, j])
    if kind == COL_FLOAT:
        x = raw.floats[:, schema.float_names.index(name)]
        return pa.array(x, mask=np.isnan(x))
    j = schema.str_names.index(name)
    start, n = raw.str_start[:, j], raw.str_len[:, j].astype(np.int64)
    offsets = np.zeros(len(n) + 1, np.int64)
    np.cumsum(n, out=offsets[1:])
    data = raw.arena[np.repeat(start - offsets[:-1], n) + np.arange(offsets[-1])]
    valid = np.packbits(n > 0, bitorder="little")
    return pa.Array.from_buffers(pa.large_string(), len(n), [
        pa.py_buffer(valid), pa.py_buffer(offsets), pa.py_buffer(data)])


@dataclass
class RankScores:
    """One rank's scored rows (what it sends to rank 0)."""

    part_keys: list[tuple[int, int]]  # per part of the rank's reader, where it starts
    part_lines: list[int]  # per part, its lines
    origins: list[RowOrigins] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    ids: list[pa.Array] = field(default_factory=list)
    bad_rows: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


@dataclass
class Scores:
    """Every scored row of a window, in row order."""

    positions: np.ndarray  # int64: the row's position in the window (module docstring)
    probs: np.ndarray  # float32 click probabilities
    ids: pa.Array | None = None  # the id column's values, when asked for
    id_column: str | None = None
    bad_rows: dict[str, int] = field(default_factory=dict)  # skipped lines by reason
    warnings: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # the rows' labels, in the same order

    def __len__(self) -> int:
        return len(self.probs)

    @classmethod
    def in_row_order(cls, ranks: list[RankScores], id_column: str | None) -> Scores:
        """Every rank's rows in window order: the parts of all ranks sorted by where they
        start give each part's first position; a row's is that plus its line."""
        keys = [(k, r, p, n) for r, rs in enumerate(ranks)
                for p, (k, n) in enumerate(zip(rs.part_keys, rs.part_lines))]
        first: dict[tuple[int, int], int] = {}
        at = 0
        for _, r, p, n in sorted(keys):
            first[(r, p)] = at
            at += n
        pos, probs, ids, labels, bad, warn = [], [], [], [], {}, []
        for r, rs in enumerate(ranks):
            base = np.array([first[(r, p)] for p in range(len(rs.part_keys))], np.int64)
            pos += [base[o.part] + o.line for o in rs.origins]
            probs += rs.probs
            ids += rs.ids
            labels += rs.labels
            for k, v in rs.bad_rows.items():
                bad[k] = bad.get(k, 0) + v
            warn += rs.warnings
        positions = np.concatenate(pos) if pos else np.zeros(0, np.int64)
        order = np.argsort(positions, kind="stable")
        if len(order) > 1 and not np.all(np.diff(positions[order]) > 0):
            raise RuntimeError("two scored rows share a position")
        out = cls(positions[order],
                  (np.concatenate(probs) if probs else np.zeros(0, np.float32))[order],
                  bad_rows=bad, warnings=list(dict.fromkeys(warn)), id_column=id_column,
                  labels=(np.concatenate(labels) if labels else np.zeros(0, np.float32))[order])
        if id_column is not None:
            import pyarrow as pa

            out.ids = (pa.concat_arrays(ids) if ids else pa.array([], pa.large_string())
                       ).take(pa.array(order))
        return out

    def quality(self) -> dict[str, float | None]:
        """AUC and logloss of the scores against the rows' labels (None without rows, or
        AUC with one class only)."""
        from recs_core.metrics.auc import auc, logloss

        y = self.labels
        if y is None or not len(y):
            return {"auc": None, "logloss": None}
        a, ll = auc(y, self.probs), logloss(y, self.probs)
        return {"auc": None if a is None or not np.isfinite(a) else round(float(a), 6),
                "logloss": None if not np.isfinite(ll) else round(float(ll), 6)}

    def table(self) -> pa.Table:
        """The rows as an Arrow table: the id column (or ``position``), then
        ``probability``."""
        import pyarrow as pa

        key = (self.id_column, self.ids) if self.id_column else ("position", self.positions)
        return pa.table({key[0]: key[1], PROBABILITY: self.probs})


def check_output(path: str, inputs: Iterable[str] = (), overwrite: bool = False) -> None:
    """RecsError unless ``path`` can take the scores: a .csv or .parquet name, and
    :func:`~recs_core.outfiles.check_output_file` (not a directory, not one of the
    ``inputs``, no existing file unless ``overwrite``, in a writable directory)."""
    if not path.lower().endswith(FORMATS):
        raise RecsError(f"--out {path}: give a .csv or .parquet file name")
    check_output_file(path, "--out", inputs, overwrite)


def write_scores(scores: Scores, path: str) -> int:
    """Write the scores to ``path`` (CSV with a header, or Parquet, by its name),
    atomically: a reader sees the old file or the whole new one. Returns the bytes."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(scores.table(), sink)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(scores.table(), sink)
    data = memoryview(sink.getvalue())
    try:
        size, _ = atomic_write(path, (data[i:i + (4 << 20)] for i in range(0, len(data), 4 << 20)))
    except OSError as e:
        raise RecsError(f"--out {path}: cannot write: {e.strerror or e}") from None
    return size
