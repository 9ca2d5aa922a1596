"""Streaming, rank-sharded reading of Parquet files into fixed-size :class:`RawBatch` es.

Sharding: the row groups of all files, in file order, form one sequence of rows; rank r
of W takes rows ``[T*r/W, T*(r+1)/W)`` of the T, with each cut moved to the nearest row
group boundary when one lies within an eighth of a share (so ranks mostly read whole
row groups and stay balanced by rows; a file with fewer row groups than ranks is split
by row ranges). Every row is read by exactly one rank.

Reading: per row group only the spec's columns (by name), in record batches of a few
thousand rows (``ParquetFile.iter_batches``), so memory is bounded by a row group's
column chunks, whatever the file size. String chunks that are dictionary-encoded
throughout are read as dictionary arrays, others as plain string arrays
(:func:`dictionary_columns`); their buffers go to the compiled conversion
(:mod:`recs_core.data.arrow`), each record batch's once, and rows a few thousand at a
time.

Hold-out (``holdout=h``): a rank's shard is its rows in order; the rows from
``floor((1 - h) * rows)`` on are held out (exact in rows), read by :meth:`held_out`.

Given line ranges (``units``: rows of files, :mod:`~recs_core.data.units`) a reader reads
those instead, each range as the stretches of row groups it covers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recs_core.data.arrow import ArrowConverter, check_schema, type_class
from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
from recs_core.data.parse import COL_STR, ColumnSchema, RawBatch
from recs_core.data.reader import NO_DECOMPRESSION, RowOrigins, rebatch_origins
from recs_core.data.shards import check_files
from recs_core.data.units import LineRange, RankUnits, check_ranges, merged
from recs_core.errors import DataError

READ_ROWS = 65536  # rows per record batch decoded by pyarrow (fewer calls: faster)
CONVERT_ROWS = 8192  # rows converted at a time (its arrays stay in cache; a batch multiple)


def is_parquet(path: str, fmt: str | None = None) -> bool:
    """Whether ``path`` is read as Parquet: ``format = "parquet"`` or a .parquet name."""
    return fmt == "parquet" or os.fspath(path).lower().endswith((".parquet", ".parq"))


@dataclass(frozen=True)
class RowPart:
    """Rows [lo, hi) of row group ``group`` of ``path``; ``first``: the file row of the
    group's first row."""

    path: str
    group: int
    lo: int
    hi: int
    first: int


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a Parquet file, or truncated: {msg}", path=path,
                        reason="bad_parquet") from None


@dataclass
class ParquetInput:
    """The files' metadata, checked against the spec: rows per row group."""

    paths: list[str]
    groups: list[list[int]]  # rows per row group, per file
    dictionary: list[list[list[str]]]  # per file and row group: dictionary_columns

    @property
    def warnings(self) -> list[str]:
        """A file without rows is named (as an empty text file is)."""
        return [f"{p}: a Parquet file with no rows (0 rows read)"
                for p, g in zip(self.paths, self.groups) if not sum(g)]

    @staticmethod
    def scan(paths: list[str], schema: ColumnSchema) -> ParquetInput:
        """Open every file's footer; a DataError for a file that is no Parquet file, lacks
        a spec column, has one of a wrong type, or differs in a column's type from the
        first file."""
        check_files(paths)
        groups, dictionary = [], []
        first: tuple[str, list[str]] | None = None
        for path in paths:
            pf = _open(path)
            arrow = pf.schema_arrow
            cols = check_schema(schema, arrow, path)
            classes = [type_class(arrow.field(i).type) for i in cols]
            if first is None:
                first = (path, classes)
            else:
                for name, a, b in zip(schema.names, first[1], classes):
                    if a != b:
                        raise DataError(f"{path}: column {name!r} is {b} here but {a} in "
                                        f"{first[0]}: the files of one input need one schema",
                                        path=path, reason="schema_mismatch")
            md = pf.metadata
            groups.append([md.row_group(g).num_rows for g in range(md.num_row_groups)])
            dictionary.append([dictionary_columns(md.row_group(g), schema)
                               for g in range(md.num_row_groups)])
        return ParquetInput(list(paths), groups, dictionary)

    @property
    def rows(self) -> int:
        return sum(sum(g) for g in self.groups)

    def plan(self, world: int) -> list[list[RowPart]]:
        """The row parts of each of ``world`` ranks (module docstring)."""
        bounds = [0]  # global row at each row group's end
        where = []  # (file index, group, first global row, first file row)
        for fi, groups in enumerate(self.groups):
            file_row = 0
            for g, n in enumerate(groups):
                if n:
                    where.append((fi, g, bounds[-1], file_row))
                    bounds.append(bounds[-1] + n)
                file_row += n
        total = bounds[-1]
        cuts = [0]
        slack = total / world / 8
        barr = np.asarray(bounds)
        for r in range(1, world):
            ideal = total * r // world
            k = int(np.argmin(np.abs(barr - ideal)))
            cut = int(barr[k]) if abs(int(barr[k]) - ideal) <= slack else ideal
            cuts.append(max(cut, cuts[-1]))
        cuts.append(total)
        plan: list[list[RowPart]] = [[] for _ in range(world)]
        for (fi, g, g0, f0), g1 in zip(where, bounds[1:]):
            for r in range(world):
                a, b = max(g0, cuts[r]), min(g1, cuts[r + 1])
                if b > a:
                    plan[r].append(RowPart(self.paths[fi], g, a - g0, b - g0, f0))
        return plan

    def units(self, world: int, holdout: float) -> list[RankUnits]:
        """What each of ``world`` ranks reads with ``holdout`` (:meth:`plan`,
        :func:`split_rows`) as line ranges (:mod:`~recs_core.data.units`: rows)."""
        index = {p: i for i, p in enumerate(self.paths)}

        def ranges(parts: list[RowPart]) -> tuple[LineRange, ...]:
            return tuple(merged([LineRange(index[p.path], p.first + p.lo, p.first + p.hi)
                                 for p in parts]))
        return [RankUnits(*map(ranges, split_rows(parts, holdout)))
                for parts in self.plan(world)]

    def row_parts(self, ranges: Sequence[LineRange]) -> list[RowPart]:
        """The row parts of ``ranges`` (rows of one file each), in their order; a
        DataError for rows past a file's end."""
        out = []
        for r in check_ranges(ranges, len(self.paths)):
            first = 0
            for g, n in enumerate(self.groups[r.file]):
                a, b = max(r.first, first), min(r.end, first + n)
                if a < b:
                    out.append(RowPart(self.paths[r.file], g, a - first, b - first, first))
                first += n
            if len(r) and r.end > first:
                raise DataError(f"{self.paths[r.file]}: rows [{r.first}, {r.end}) to read, "
                                f"but the file has {first}: it changed since the ranges "
                                f"were made", path=self.paths[r.file], reason="file_changed")
        return out


def split_rows(parts: list[RowPart], holdout: float) -> tuple[list[RowPart], list[RowPart]]:
    """(training parts, held-out parts): the rows from ``floor((1 - holdout) * rows)`` of
    the parts' rows on are held out."""
    if not 0.0 <= holdout <= 1.0:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    total = sum(p.hi - p.lo for p in parts)
    cut = min(total, max(0, math.floor((1.0 - holdout) * total)))
    train, held, off = [], [], 0
    for p in parts:
        n = p.hi - p.lo
        if off + n <= cut:
            train.append(p)
        elif off >= cut:
            held.append(p)
        else:
            at = p.lo + cut - off
            train.append(RowPart(p.path, p.group, p.lo, at, p.first))
            held.append(RowPart(p.path, p.group, at, p.hi, p.first))
        off += n
    return train, held


class ParquetReader:
    """Iterates this rank's share of Parquet files as :class:`RawBatch` es of
    ``batch_rows`` rows, with the interface of :class:`~recs_core.data.reader.ShardReader`
    (``paths``, ``counter``, ``rows``, ``held_rows``, :meth:`held_out`,
    :meth:`with_origins`, :meth:`part_keys`, ``part_lines``, :meth:`size_warnings`); a
    part is rows of one row group (``RowPart``), its lines are its rows. ``units``: read
    those rows instead (``rank``, ``world`` and ``holdout`` are then not used)."""

    def __init__(self, paths: list[str], schema: ColumnSchema, *, rank: int = 0,
                 world: int = 1, batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                 holdout: float = 0.0, counter: BadRowCounter | None = None,
                 units: RankUnits | None = None) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.schema = schema
        self.paths = [os.fspath(p) for p in paths]
        self.input = ParquetInput.scan(self.paths, schema)
        self.file_index = {p: i for i, p in enumerate(self.paths)}
        self.holdout = holdout
        if units is None:
            self.parts = self.input.plan(world)[rank]
            self._train, self._held = split_rows(self.parts, holdout)
        else:
            self._train = self.input.row_parts(units.train)
            self._held = self.input.row_parts(units.held)
            self.parts = self._train + self._held
        self.batch_rows = batch_rows
        self.converter = ArrowConverter(schema)
        self.counter = counter or BadRowCounter(policy or BadRowPolicy())
        self.rows = 0
        self.held_rows = 0
        self.part_lines = [p.hi - p.lo for p in self._train]  # rows of each training part

    def __iter__(self) -> Iterator[RawBatch]:
        for batch, _ in self.with_origins():
            yield batch

    def held_out(self) -> Iterator[RawBatch]:
        """The held-out rows (the last ``holdout`` of this rank's rows)."""
        for batch, _ in rebatch_origins(self._converted(self._held), self.batch_rows):
            self.held_rows += len(batch)
            yield batch

    def with_origins(self) -> Iterator[tuple[RawBatch, RowOrigins]]:
        """The training rows with their origins: per row, its part (see
        :meth:`part_keys`) and its row in the part (a skipped bad row keeps its number),
        its file and its row in the file."""
        for batch, origins in rebatch_origins(self._converted(self._train), self.batch_rows):
            self.rows += len(batch)
            yield batch, origins  # type: ignore[misc]

    def part_keys(self) -> list[tuple[int, int]]:
        """Where each training part starts in the window: (index of its file among
        ``paths``, its first row in the file); parts of all ranks sort by it in row
        order."""
        index = {p: i for i, p in enumerate(self.paths)}
        return [(index[p.path], p.first + p.lo) for p in self._train]

    decompressed = NO_DECOMPRESSION  # (compressed text only)

    @property
    def header_warnings(self) -> list[str]:
        """The files without rows (what a header-only text file is warned as)."""
        return self.input.warnings

    def size_warnings(self) -> list[str]:
        return []

    def _record_batches(self, part: RowPart, files: dict[tuple[str, tuple[str, ...]],
                                                     pq.ParquetFile]
                        ) -> Iterator[tuple[int, pa.RecordBatch, int, int]]:
        """(row within the group, record batch, first and end row in it) of the part's
        rows, a few thousand at a time. ``files``: the files opened in this pass, by path
        and dictionary columns (each is opened once: opening parses the whole footer)."""
        names = list(self.schema.names)
        dictionary = self.input.dictionary[self.file_index[part.path]][part.group]
        key = (part.path, tuple(dictionary))
        pf = files.get(key)
        if pf is None:
            pf = files[key] = pq.ParquetFile(part.path, read_dictionary=dictionary)
        unit = max(self.batch_rows, CONVERT_ROWS // self.batch_rows * self.batch_rows)
        at = 0
        for rb in pf.iter_batches(batch_size=max(unit, READ_ROWS // unit * unit),
                                  row_groups=[part.group], columns=names, use_threads=False):
            n = rb.num_rows
            a, b = max(part.lo, at), min(part.hi, at + n)
            for lo in range(a, b, unit):
                yield lo, rb, lo - at, min(lo + unit, b) - at
            at += n
            if at >= part.hi:
                break

    def _converted(self, parts: list[RowPart]) -> Iterator[tuple[RawBatch, RowOrigins]]:
        names = self.schema.names
        files: dict[tuple[str, tuple[str, ...]], pq.ParquetFile] = {}
        try:
            yield from self._parts_converted(parts, names, files)
        finally:
            for pf in files.values():
                pf.close()

    def _parts_converted(self, parts: list[RowPart], names: tuple[str, ...],
                         files: dict[tuple[str, tuple[str, ...]], pq.ParquetFile]
                         ) -> Iterator[tuple[RawBatch, RowOrigins]]:
        for k, part in enumerate(parts):
            where = f"{part.path}: row group {part.group}"
            columns: list[int] | None = None
            try:
                for row, rb, lo, hi in self._record_batches(part, files):
                    if columns is None:
                        columns = check_schema(self.schema, rb.schema, where)
                    out = self.converter.convert(rb, columns, lo, hi)
                    self.counter.lines += out.n_rows
                    for i, code, col in zip(out.bad_row.tolist(), out.bad_reason.tolist(),
                                            out.bad_col.tolist()):
                        at = part.first + row + i + 1
                        self.counter.record(part.path, _row_of(part.group, at), code,
                                            names[col] if col >= 0 else None)
                    self.counter.check(final=False)
                    if len(out.batch):
                        good = np.ones(out.n_rows, bool)
                        good[out.bad_row] = False
                        lines = np.flatnonzero(good).astype(np.int64) + (row - part.lo)
                        n = len(lines)
                        yield out.batch, RowOrigins(
                            np.full(n, k, np.int32), lines,
                            np.full(n, self.file_index[part.path], np.int32),
                            lines + (part.first + part.lo))
            except (pa.ArrowException, OSError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataError(f"{where}: cannot read: {msg}", path=part.path,
                                reason="bad_parquet") from None
        self.counter.check(final=True)


def dictionary_columns(group: pq.RowGroupMetaData, schema: ColumnSchema) -> list[str]:
    """The spec's string columns whose chunk in ``group`` looks dictionary-encoded
    throughout, read as dictionaries (decoding them is cheaper, and their entries are
    hashed once). A chunk whose dictionary filled up falls back to plain pages, and
    pyarrow would rebuild a dictionary from those row by row: it is read plain. Plain
    pages hold at least 4 bytes a value (the length), dictionary indices about 1 to 3, so
    the chunk's bytes a value beyond its dictionary page tell them apart."""
    want = {n for n, k in zip(schema.names, schema.kinds) if k == COL_STR}
    out = []
    for i in range(group.num_columns):
        col = group.column(i)
        name = col.path_in_schema
        if name not in want or not col.has_dictionary_page or col.num_values == 0:
            continue
        page = col.data_page_offset - col.dictionary_page_offset
        if 0 < page and (col.total_uncompressed_size - page) / col.num_values < 3.5:
            out.append(name)
    return out


def _row_of(group: int, row: int):  # noqa: ANN202
    """A bad row's place, for BadRowCounter: its 1-based file row and its row group."""
    return lambda: f"row {row} (row group {group})"
