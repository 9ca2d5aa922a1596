"""Where a job's rows come from: the one place that picks a reader for its input.

Files: Parquet (``[input] format = "parquet"``, or a ``.parquet`` name) through
:class:`~recs_core.data.parquet.ParquetReader`, text through
:class:`~recs_core.data.reader.ShardReader`; a mix reads the text files, then the Parquet
files, with one bad-row count. Anything else given as the data is an Arrow source: a
``pyarrow.RecordBatch``, ``pyarrow.Table`` or pandas ``DataFrame``, or an iterable of
them (batches from a queue consumer or a database cursor), read by :class:`ArrowSource`
with the same column and type checks as Parquet files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from recs_core.data.arrow import ArrowConverter, check_schema
from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
from recs_core.data.parquet import ParquetReader, is_parquet, rebatch
from recs_core.data.parse import ColumnSchema, RawBatch
from recs_core.data.reader import ShardReader
from recs_core.errors import DataError, RecsError

Reader = Any  # ShardReader | ParquetReader | ArrowSource | MixedReader: the same interface


def is_file_list(data: Any) -> bool:
    """Whether ``data`` names files (a path, or a list or tuple of paths)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and all(isinstance(p, (str, os.PathLike))
                                                   for p in data)


def open_reader(data: Any, schema: ColumnSchema, fmt: str | None = None, *, rank: int = 0,
                world: int = 1, batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                holdout: float = 0.0) -> Reader:
    """This rank's reader of ``data``: files (each rank reads its shard) or an Arrow
    source (each rank reads the source it is given; no hold-out)."""
    if not is_file_list(data):
        if holdout:
            raise RecsError("a hold-out (eval fraction) needs files; for Arrow batches "
                            "score held-out rows with a second source")
        return ArrowSource(data, schema, batch_rows=batch_rows, policy=policy)
    paths = [os.fspath(data)] if isinstance(data, (str, os.PathLike)) else [
        os.fspath(p) for p in data]
    parquet = [p for p in paths if is_parquet(p, fmt)]
    text = [p for p in paths if not is_parquet(p, fmt)]
    kw = dict(rank=rank, world=world, batch_rows=batch_rows, policy=policy, holdout=holdout)
    if not parquet:
        return ShardReader(text, schema, **kw)
    if not text:
        return ParquetReader(parquet, schema, **kw)
    first = ShardReader(text, schema, **kw)
    return MixedReader(first, ParquetReader(parquet, schema, counter=first.counter, **kw))


class MixedReader:
    """Text files' rows, then Parquet files' rows (one bad-row counter)."""

    def __init__(self, text: ShardReader, parquet: ParquetReader) -> None:
        self.readers = (text, parquet)
        self.counter = text.counter
        self.batch_rows = text.batch_rows

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.readers)

    @property
    def held_rows(self) -> int:
        return sum(r.held_rows for r in self.readers)

    def __iter__(self) -> Iterator[RawBatch]:
        return rebatch((b for r in self.readers for b in r), self.batch_rows)

    def held_out(self) -> Iterator[RawBatch]:
        return rebatch((b for r in self.readers for b in r.held_out()), self.batch_rows)

    @property
    def header_warnings(self) -> list[str]:
        return self.readers[0].header_warnings

    def size_warnings(self) -> list[str]:
        return [w for r in self.readers for w in r.size_warnings()]


def _record_batches(item: Any, index: int) -> list[pa.RecordBatch]:
    if isinstance(item, pa.RecordBatch):
        return [item]
    if isinstance(item, pa.Table):
        return item.to_batches()
    if type(item).__module__.startswith("pandas") and hasattr(item, "columns"):
        return pa.Table.from_pandas(item, preserve_index=False).to_batches()
    raise DataError(f"arrow source item {index}: expected a pyarrow.RecordBatch, "
                    f"pyarrow.Table or pandas.DataFrame, got {type(item).__name__}",
                    reason="wrong_type")


class ArrowSource:
    """Rows from Arrow record batches / tables / pandas data frames, as :class:`RawBatch`
    es of ``batch_rows`` rows; the spec's columns are picked by name and type-checked as
    for Parquet. Bad rows are counted under ``policy`` (place: item and row)."""

    def __init__(self, source: Any, schema: ColumnSchema, *, batch_rows: int = 2048,
                 policy: BadRowPolicy | None = None) -> None:
        if isinstance(source, (pa.RecordBatch, pa.Table)) or (
                type(source).__module__.startswith("pandas") and hasattr(source, "columns")):
            source = [source]
        if not isinstance(source, Iterable):
            raise RecsError(f"data: expected files, or Arrow batches / tables / data frames, "
                            f"got {type(source).__name__}")
        self.source = source
        self.schema = schema
        self.batch_rows = batch_rows
        self.converter = ArrowConverter(schema)
        self.counter = BadRowCounter(policy or BadRowPolicy())
        self.rows = 0
        self.held_rows = 0

    def __iter__(self) -> Iterator[RawBatch]:
        for batch in rebatch(self._converted(), self.batch_rows):
            self.rows += len(batch)
            yield batch

    header_warnings: list[str] = []

    def held_out(self) -> Iterator[RawBatch]:
        return iter(())

    def size_warnings(self) -> list[str]:
        return []

    def _converted(self) -> Iterator[RawBatch]:
        names = self.schema.names
        row = 0
        for index, item in enumerate(self.source):
            where = f"arrow source item {index}"
            for rb in _record_batches(item, index):
                out = self.converter.convert(rb, check_schema(self.schema, rb.schema, where))
                self.counter.lines += out.n_rows
                for i, code, col in zip(out.bad_row.tolist(), out.bad_reason.tolist(),
                                        out.bad_col.tolist()):
                    at = row + i + 1
                    self.counter.record("arrow source", lambda at=at: f"row {at}", code,
                                        names[col] if col >= 0 else None)
                self.counter.check(final=False)
                row += out.n_rows
                if len(out.batch):
                    yield out.batch
        self.counter.check(final=True)
