"""Where a job's rows come from: what ``--data`` names, and the one place that picks
this rank's reader for it.

``--data`` takes files, directories and globs. A directory is walked recursively; a glob
(``*``, ``?``, ``[...]``; ``**`` for any depth, entering each directory once, so a
symbolic link loop is not followed round) is matched, and a directory it matches is
walked. Below the named directory or the glob's fixed part, names that are not data are
skipped: starting with ``.`` or ``_`` (``_SUCCESS``, ``_temporary/``) or checksums
(``*.crc``); and so are names of files still being written (``*.tmp``, ``*.inprogress``,
``*._COPYING_``), with a warning. The files of
one argument are read in path order, compared one path component at a time: a Hive
partition ``key=value`` by key, then by value (integers numerically, before other
values, which compare as strings: ``hour=2`` before ``hour=10``), other names as
strings; so a partitioned window is read in partition order, then file name. Arguments
keep their order. The list is sorted, not listed, so every rank gets the same one; a
file named twice is read once (:func:`~recs_core.data.shards.screen_files`).

Files: Parquet (``[input] format = "parquet"``, or a ``.parquet`` name) through
:class:`~recs_core.data.parquet.ParquetReader`, text through
:class:`~recs_core.data.reader.ShardReader`; a mix is read in window order, a reader per
run of consecutive files of one format (:class:`MixedReader`), with one bad-row count.
Anything else given as the data is an Arrow source: a ``pyarrow.RecordBatch``,
``pyarrow.Table`` or pandas ``DataFrame``, or an iterable of them (batches from a queue
consumer or a database cursor), read by :class:`ArrowSource` with the same column and
type checks as Parquet files.
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias

import numpy as np
import pyarrow as pa

from recs_core.data.arrow import ArrowConverter, check_schema
from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
from recs_core.data.header import field_maps
from recs_core.data.parquet import ParquetInput, ParquetReader, is_parquet
from recs_core.data.parse import ColumnSchema, RawBatch
from recs_core.data.reader import (
    NO_DECOMPRESSION,
    RowOrigins,
    ShardReader,
    rebatch,
    rebatch_origins,
    text_units,
)
from recs_core.data.shards import screen_files
from recs_core.data.units import LineRange, RankUnits, check_ranges
from recs_core.errors import DataError, RecsError

if TYPE_CHECKING:
    import pandas

FilePath: TypeAlias = "str | os.PathLike[str]"
ArrowData: TypeAlias = "pa.Table | pa.RecordBatch | pandas.DataFrame"
# what a job reads: files, directories and globs, or an Arrow source (one table, batch or
# data frame, or an iterable of them)
DataInput: TypeAlias = "FilePath | Sequence[FilePath] | ArrowData | Iterable[ArrowData]"


class Reader(Protocol):
    """This rank's rows of a window: what every reader here offers the job."""

    paths: list[str]  # the window's files, in window order ([] for an Arrow source)
    counter: BadRowCounter
    rows: int  # training rows yielded
    held_rows: int  # held-out rows yielded
    header_warnings: list[str]
    part_lines: list[int]  # lines of each training part (complete after with_origins)
    # what reading compressed text has cost so far: bytes decompressed, the share of them
    # parsed ("kept_bytes"), seconds decompressing (zero for other input)
    decompressed: dict[str, float]

    def __iter__(self) -> Iterator[RawBatch]: ...

    def held_out(self) -> Iterator[RawBatch]: ...

    def with_origins(self) -> Iterator[tuple[RawBatch, RowOrigins]]: ...

    def part_keys(self) -> list[tuple[int, int]]: ...

    def size_warnings(self) -> list[str]: ...


_GLOB = re.compile(r"[*?[]")
_INT = re.compile(r"-?[0-9]+")


def _component_key(name: str) -> tuple[str, int, int, str]:
    key, eq, value = name.partition("=")
    if not eq or not key:
        return name, 0, 0, ""
    if _INT.fullmatch(value):
        return key, 0, int(value), value
    return key, 1, 0, value


def order_key(rel: str) -> tuple[tuple[str, int, int, str], ...]:
    """The sort key of a path below a walked directory or a glob's fixed part."""
    return tuple(_component_key(c) for c in rel.split(os.sep))


# names of files still being written: an upload, a copy, a writer's temporary file
IN_PROGRESS = (".tmp", ".inprogress", "._COPYING_")


def _kept(rel: str, path: str, skipped: list[str]) -> bool:
    """Whether ``rel`` (below a walked directory or a glob's fixed part) names data (module
    docstring); an in-progress name is added to ``skipped`` (``path``)."""
    for c in rel.split(os.sep):
        if c in ("", "."):
            continue
        if c.startswith((".", "_")) or c.endswith(".crc"):
            return False
        if c.endswith(IN_PROGRESS):
            skipped.append(path)
            return False
    return True


def _walk(top: str, skipped: list[str]) -> list[str]:
    """The data files below directory ``top`` (module docstring), in partition order."""
    found = []
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if _kept(x, os.path.join(d, x), skipped)]
        found += [os.path.join(d, f) for f in files if _kept(f, os.path.join(d, f), skipped)]
    return sorted(found, key=lambda p: order_key(os.path.relpath(p, top)))


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d or os.curdir))
    except OSError:
        return []


def _dirs_below(top: str) -> list[str]:
    """``top`` and the directories below it (names starting with ``.`` skipped, as glob
    does), symbolic links followed, each directory once (by device and inode)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    todo = [top]
    while todo:
        d = todo.pop()
        try:
            st = os.stat(d or os.curdir)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(d)
        todo += [os.path.join(d, n) for n in reversed(_listdir(d)) if not n.startswith(".")]
    return out


def _match(pattern: str) -> list[str]:
    """The paths ``pattern`` matches, one component at a time (``fnmatch``; a name starting
    with ``.`` only by a component starting with ``.``); ``**`` matches zero or more
    directories, each entered once (glob.glob follows a symbolic link loop until the
    path is too long)."""
    absolute = pattern.startswith(os.sep)
    paths = [os.sep if absolute else ""]
    for part in pattern.split(os.sep)[1 if absolute else 0:]:
        if not part:  # a doubled or trailing separator
            continue
        found: list[str] = []
        for p in paths:
            if part == "**":
                found += _dirs_below(p)
            elif _GLOB.search(part):
                found += [os.path.join(p, n) for n in _listdir(p) if fnmatch.fnmatchcase(n, part)
                          and (part.startswith(".") or not n.startswith("."))]
            elif os.path.lexists(os.path.join(p, part)):
                found.append(os.path.join(p, part))
        paths = found
    return [p or os.curdir for p in paths]


def _glob(pattern: str, skipped: list[str]) -> list[str]:
    """The data files ``pattern`` matches (directories walked), in partition order."""
    parts = pattern.split(os.sep)
    fixed = os.sep.join(parts[:next(i for i, c in enumerate(parts) if _GLOB.search(c))])
    root = fixed or ("/" if pattern.startswith(os.sep) else ".")
    found = []
    for m in _match(pattern):
        rel = os.path.relpath(m, root)
        if not _kept(rel, m, skipped):
            continue
        found += [(rel, m)] if not os.path.isdir(m) else [
            (os.path.relpath(f, root), f) for f in _walk(m, skipped)]
    return [m for _, m in sorted(set(found), key=lambda t: order_key(t[0]))]


def expand_sources(args: Sequence[str | os.PathLike]) -> list[str]:
    """The files ``args`` name (module docstring); a directory or glob that names no file
    is a DataError. A path that does not exist and is no glob is kept (reported when
    read)."""
    return _expand(args)[0]


def _expand(args: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """:func:`expand_sources`, and the warning about in-progress files skipped."""
    out: list[str] = []
    skipped: list[str] = []
    for arg in args:
        a = os.fspath(arg)
        if os.path.isdir(a):
            found = _walk(a, skipped)
            what = ("no data file in this directory (names starting with . or _, and "
                    "checksum and in-progress files, are skipped)")
        elif not os.path.exists(a) and _GLOB.search(a):
            found = _glob(a, skipped)
            what = "no data file matches this pattern"
        else:
            found, what = [a], ""
        if not found:
            raise DataError(f"{a}: {what}", path=a, reason="no_match")
        out += found
    skipped = sorted(set(skipped))
    warn = [] if not skipped else [
        f"{skipped[0]}{f' and {len(skipped) - 1} more' if len(skipped) > 1 else ''}: "
        f"skipped: still being written (a {', '.join(IN_PROGRESS)} name)"]
    return out, warn


def decompression_figures(per_rank: list[dict[str, float]]) -> dict[str, list[float]] | None:
    """What reading compressed text cost each rank (``Reader.decompressed`` of every rank;
    None when no rank read any): MB decompressed (a rank decompresses a compressed file
    up to its last range of it, so each rank about the whole file), MB of them parsed (its
    own lines) and seconds decompressing (in the reader thread, beside the parsing)."""
    if not any(d["bytes"] for d in per_rank):
        return None
    return {"decompressed_mb": [round(d["bytes"] / 1e6, 2) for d in per_rank],
            "parsed_mb": [round(d["kept_bytes"] / 1e6, 2) for d in per_rank],
            "seconds": [round(d["seconds"], 3) for d in per_rank]}


def is_file_list(data: DataInput) -> bool:
    """Whether ``data`` names files (a path, or a list or tuple of paths)."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return isinstance(data, (list, tuple)) and all(isinstance(p, (str, os.PathLike))
                                                   for p in data)


def open_input(data: DataInput, schema: ColumnSchema, fmt: str | None = None, *, rank: int = 0,
               world: int = 1, batch_rows: int = 2048, policy: BadRowPolicy | None = None,
               holdout: float = 0.0, units: RankUnits | None = None
               ) -> tuple[Reader, list[str]]:
    """This rank's reader of ``data`` and the warnings about it (a file given twice, an
    empty file, a file with a header and no rows). ``data``: files, directories and globs
    (the window they name, module docstring; each rank reads its shard), or an Arrow
    source (each rank reads the source it is given; no hold-out). ``units``: read these
    line ranges of the window's files instead of the rank's shard (``rank``, ``world``
    and ``holdout`` are then not used; a mixed window's ranges run by run, as
    :func:`default_units` and :func:`~recs_core.data.units.redistribute` give them).
    Every entry point reads through here."""
    if not is_file_list(data):
        if holdout or units is not None:
            raise RecsError("a hold-out (eval fraction) or line ranges need files; for "
                            "Arrow batches score held-out rows with a second source")
        return ArrowSource(data, schema, batch_rows=batch_rows, policy=policy, rank=rank), []
    warnings, runs = _window(data, schema, fmt)
    kw = dict(rank=rank, world=world, batch_rows=batch_rows, policy=policy, holdout=holdout)
    parts = _run_units(units, runs) if units is not None else [None] * len(runs)
    readers: list[Reader] = []
    counter = None
    for (parquet, run), mine in zip(runs, parts):
        one: Reader = (ParquetReader(run, schema, counter=counter, units=mine, **kw) if parquet
                       else ShardReader(run, schema, counter=counter, units=mine, **kw))
        counter = one.counter
        readers.append(one)
    reader = readers[0] if len(readers) == 1 else MixedReader(readers)
    return reader, warnings + reader.header_warnings


def default_units(data: DataInput, schema: ColumnSchema, fmt: str | None, world: int,
                  holdout: float) -> list[RankUnits]:
    """What each of ``world`` ranks reads of the window ``data`` names with ``holdout``
    (what :func:`open_input` without ``units`` reads), as line ranges of the window's
    files: reading rank r's with ``units`` gives the same rows in the same batches. Text
    files are scanned once each (compressed ones decompressed), Parquet files' footers
    read."""
    if not is_file_list(data):
        raise RecsError("line ranges need files (an Arrow source has none)")
    _, runs = _window(data, schema, fmt)
    out = [RankUnits() for _ in range(world)]
    first = 0
    for parquet, run in runs:
        got = (ParquetInput.scan(run, schema).units(world, holdout) if parquet
               else text_units(run, schema.text.header, world, holdout))
        out = [RankUnits(u.train + _shifted(g.train, first), u.held + _shifted(g.held, first))
               for u, g in zip(out, got)]
        first += len(run)
    return out


def _shifted(ranges: Iterable[LineRange], by: int) -> tuple[LineRange, ...]:
    return tuple(LineRange(r.file + by, r.first, r.end) for r in ranges)


def _window(data: DataInput, schema: ColumnSchema, fmt: str | None
            ) -> tuple[list[str], list[tuple[bool, list[str]]]]:
    """(warnings, the window's files in runs: (Parquet?, files) per run of consecutive
    files of one format); a mixed window's files are checked against one schema."""
    args = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    found, skipped = _expand(args)
    paths, warnings = screen_files(found)
    if len({is_parquet(p, fmt) for p in paths}) > 1:  # mixed: one schema over the runs too
        field_maps(schema, [p for p in paths if not is_parquet(p, fmt)])
        ParquetInput.scan([p for p in paths if is_parquet(p, fmt)], schema)
    runs = [(parquet, list(group))
            for parquet, group in itertools.groupby(paths, key=lambda p: is_parquet(p, fmt))]
    return skipped + warnings, runs


def _run_units(units: RankUnits, runs: list[tuple[bool, list[str]]]) -> list[RankUnits]:
    """``units`` of a window split by run, each with its run's file numbers; a RecsError
    when a range names no file of the window or the ranges go back to an earlier run."""
    bounds = list(itertools.accumulate(len(run) for _, run in runs))
    out = [RankUnits() for _ in runs]
    for kind, ranges in (("train", units.train), ("held", units.held)):
        at = 0
        for r in check_ranges(ranges, bounds[-1] if bounds else 0):
            k = bisect.bisect_right(bounds, r.file)
            if k < at:
                raise RecsError(f"line ranges of a window of text and Parquet files must "
                                f"come run by run: {r.as_json()} ({kind}) comes after a "
                                f"range of a later run")
            at = k
            base = bounds[k - 1] if k else 0
            one = LineRange(r.file - base, r.first, r.end)
            out[k] = (RankUnits(out[k].train + (one,), out[k].held) if kind == "train"
                      else RankUnits(out[k].train, out[k].held + (one,)))
    return out


class MixedReader:
    """A window of text and Parquet files: each run of consecutive files of one format
    read by its reader, in window order, with one bad-row counter. Each run is sharded
    over the ranks on its own (every row still read once)."""

    def __init__(self, readers: list[Reader]) -> None:
        self.readers = readers
        self.counter = readers[0].counter
        self.batch_rows = getattr(readers[0], "batch_rows", 2048)
        self.paths = [p for r in readers for p in r.paths]

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.readers)

    @property
    def held_rows(self) -> int:
        return sum(r.held_rows for r in self.readers)

    @property
    def part_lines(self) -> list[int]:
        return [n for r in self.readers for n in r.part_lines]

    @property
    def decompressed(self) -> dict[str, float]:
        return {k: sum(r.decompressed[k] for r in self.readers) for k in NO_DECOMPRESSION}

    def __iter__(self) -> Iterator[RawBatch]:
        return rebatch((b for r in self.readers for b in r), self.batch_rows)

    def held_out(self) -> Iterator[RawBatch]:
        return rebatch((b for r in self.readers for b in r.held_out()), self.batch_rows)

    def with_origins(self) -> Iterator[tuple[RawBatch, RowOrigins]]:
        """Every run's rows with their origins, part and file numbers counted over the
        runs."""
        def each() -> Iterator[tuple[RawBatch, RowOrigins]]:
            first = 0  # the run's first file
            for r, base in zip(self.readers, self._part_bases()):
                for batch, o in r.with_origins():
                    yield batch, RowOrigins(o.part + np.int32(base), o.line,
                                            o.file + np.int32(first), o.file_line)
                first += len(r.paths)
        return rebatch_origins(each(), self.batch_rows)  # type: ignore[return-value]

    def part_keys(self) -> list[tuple[int, int]]:
        """Each run's part keys with file indices among the window's ``paths``."""
        out, first = [], 0
        for r in self.readers:
            out += [(first + f, at) for f, at in r.part_keys()]
            first += len(r.paths)
        return out

    def _part_bases(self) -> list[int]:
        bases, n = [], 0
        for r in self.readers:
            bases.append(n)
            n += len(r.part_keys())
        return bases

    @property
    def header_warnings(self) -> list[str]:
        return [w for r in self.readers for w in r.header_warnings]

    def size_warnings(self) -> list[str]:
        return [w for r in self.readers for w in r.size_warnings()]


def _record_batches(item: ArrowData, index: int) -> list[pa.RecordBatch]:
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

    def __init__(self, source: ArrowData | Iterable[ArrowData], schema: ColumnSchema, *,
                 batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                 rank: int = 0) -> None:
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
        self.rank = rank
        self.paths: list[str] = []
        self.part_lines = [0]  # one part: the rank's rows (bad ones too), in order

    def __iter__(self) -> Iterator[RawBatch]:
        for batch, _ in self.with_origins():
            yield batch

    def with_origins(self) -> Iterator[tuple[RawBatch, RowOrigins]]:
        """The rows with their origins: part 0, the row's 0-based number in the source;
        file -1, the same number."""
        for batch, origins in rebatch_origins(self._converted(), self.batch_rows):
            self.rows += len(batch)
            yield batch, origins  # type: ignore[misc]

    def part_keys(self) -> list[tuple[int, int]]:
        """One part per rank, keyed by the rank: rank 0's rows first, then rank 1's..."""
        return [(self.rank, 0)]

    header_warnings: list[str] = []
    decompressed = NO_DECOMPRESSION

    def held_out(self) -> Iterator[RawBatch]:
        return iter(())

    def size_warnings(self) -> list[str]:
        return []

    def _converted(self) -> Iterator[tuple[RawBatch, RowOrigins]]:
        names = self.schema.names
        row = 0
        self.part_lines = [0]
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
                good = np.ones(out.n_rows, bool)
                good[out.bad_row] = False
                lines = np.flatnonzero(good).astype(np.int64) + row
                row += out.n_rows
                self.part_lines = [row]
                if len(out.batch):
                    n = len(lines)
                    yield out.batch, RowOrigins(np.zeros(n, np.int32), lines,
                                                np.full(n, -1, np.int32), lines)
        self.counter.check(final=True)
