"""Streaming, rank-sharded reading of delimited text files into fixed-size parsed batches.

A background thread reads line-aligned byte chunks (plain, gzip or zstd) into buffers
and hands them to the parsing thread through two lock-free SPSC rings (full slots
one way, free slots back). A slot is a credit: at most ``_POOL`` chunks are read
ahead, so reading overlaps parsing and memory stays bounded whatever the file size.
Each chunk gets a fresh buffer that its parsed rows keep as their string arena
(no copy); it is freed when the last batch viewing it is dropped. With a header
(``schema.text.header``) every file's first line is read and checked up front
(:mod:`~recs_core.data.header`), and the part that starts at a file's beginning skips
it: the shards hold data lines only, each once.

Hold-out (``ShardReader(..., holdout=h)``): a rank's shard is its spans in order, B bytes
in all (a span counts its byte range: of the file, or of the compressed file), and a
line's position is the shard offset of its first byte. The held-out lines are those
whose position is >= ``cut = floor((1 - h) * B)``; iterating the reader yields the other
(training) lines, :meth:`ShardReader.held_out` reads the held-out ones again from the
files. Nothing is counted or kept beforehand: the cut is found from the spans' sizes.
In a compressed (``.gz``, ``.zst``) span the position of a decompressed byte is where the
decompressor was in the compressed file when it produced that byte
(:mod:`~recs_core.data.decompress`), so there the split is exact in that measure but only
approximate in rows.

A compressed file is read through one decompressed stream per pass, from its start: the
stream passes the lines of other ranks' ranges (counting their line feeds, for line
numbers in messages) and hands over this rank's.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
from recs_core.data.decompress import Decompressed, as_data_error
from recs_core.data.header import field_maps
from recs_core.data.lines import count_line_feeds, line_starts, nth_lf, scan_plain
from recs_core.data.parse import (
    R_LINE_TOO_LONG,
    ChunkParser,
    ColumnSchema,
    ParsedChunk,
    RawBatch,
)
from recs_core.data.shards import Span, check_files, plan_shards
from recs_core.data.units import LineRange, RankUnits, check_ranges, merged
from recs_core.errors import DataError
from recs_core.native import SpscRing

DEFAULT_CHUNK_BYTES = 4 << 20
_POOL = 4
_WAIT_S = 0.5  # poll period of ring waits (the other thread may have died)
# Reader.decompressed of input that is not compressed text (never changed)
NO_DECOMPRESSION: dict[str, float] = {"bytes": 0, "kept_bytes": 0, "seconds": 0.0}


@dataclass
class _Chunk:
    """What the reading thread fills in before handing a buffer over."""

    part: int = 0
    nbytes: int = 0
    at_eof: bool = False
    skipped_long_lines: int = 0  # overlong lines dropped right before this chunk


def count_lines_before(path: str, offset: int) -> int:
    """Number of line feeds in the first ``offset`` bytes of a plain file."""
    return count_line_feeds(path, 0, offset)


@dataclass(frozen=True)
class RowOrigins:
    """Where a batch's rows are: per row, the index of its part among the reader's
    (see :meth:`ShardReader.part_keys`) and its 0-based line in the part (every line
    counts, a skipped bad one too); and the row's identity in the window: the index of
    its file among the reader's ``paths`` (-1: an Arrow source) and its line in that
    file (:mod:`~recs_core.data.units`: its 0-based index among the file's data lines; a
    Parquet file's row; an Arrow source's row)."""

    part: np.ndarray  # int32
    line: np.ndarray  # int64
    file: np.ndarray  # int32
    file_line: np.ndarray  # int64

    @staticmethod
    def concat(parts: list[RowOrigins]) -> RowOrigins:
        return RowOrigins(*(np.concatenate([getattr(p, k) for p in parts])
                            for k in ("part", "line", "file", "file_line")))

    def slice(self, a: int, b: int) -> RowOrigins:
        return RowOrigins(self.part[a:b], self.line[a:b], self.file[a:b],
                          self.file_line[a:b])

    def __len__(self) -> int:
        return len(self.part)


def rebatch(batches: Iterator[RawBatch], rows: int) -> Iterator[RawBatch]:
    """Batches of exactly ``rows`` rows (the last may be shorter) from batches of any size."""
    return (b for b, _ in rebatch_origins(((b, None) for b in batches), rows))


def rebatch_origins(items: Iterator[tuple[RawBatch, RowOrigins | None]], rows: int
                    ) -> Iterator[tuple[RawBatch, RowOrigins | None]]:
    """:func:`rebatch` of batches with their rows' origins (None: not tracked)."""
    pending: list[tuple[RawBatch, RowOrigins | None]] = []
    have = 0

    def joined() -> tuple[RawBatch, RowOrigins | None]:
        o = [p[1] for p in pending]
        return (RawBatch.concat([p[0] for p in pending]),
                None if o[0] is None else RowOrigins.concat(o))

    for batch, origins in items:
        a = 0
        while a < len(batch):
            take = min(rows - have, len(batch) - a)
            whole = take == len(batch)
            pending.append((batch if whole else batch.slice(a, a + take),
                            origins if whole or origins is None else origins.slice(a, a + take)))
            have += take
            a += take
            if have == rows:
                yield joined()
                pending, have = [], 0
    if have:
        yield joined()


@dataclass(frozen=True)
class _Part:
    """What one stream reads of one span: the lines of ``path`` that start in [start, end)
    (of the compressed file, by position, when ``codec`` is not ""); ``by_lines``: its
    data lines [start, end) instead (a :class:`~recs_core.data.units.LineRange`)."""

    path: str
    codec: str
    start: int
    end: int
    by_lines: bool = False


@dataclass
class _LineScans:
    """What scans of plain files found (:func:`~recs_core.data.lines.scan_plain`), kept by
    a reader for its next passes: per (path, byte), the lines that start before it; per
    (path, physical line), the offset of its first byte (-1: the file has no such line)."""

    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def offset_of(self, path: str, line: int, parts: list[_Part], header: int) -> int:
        """The offset of physical line ``line`` of ``path`` (-1: none); the first call for
        a file scans it for the first lines of all its line parts among ``parts``."""
        if (path, line) not in self.offsets:
            want = {p.start + header for p in parts if p.path == path and p.by_lines} | {line}
            found = scan_plain(path, lines=want)[1]
            self.offsets |= {(path, n): found.get(n, -1) for n in want}
        return self.offsets[(path, line)]


class _PrefixCounts(threading.Thread):
    """Counts, beside the reading and parsing, the lines before each plain part of
    ``parts`` that starts mid-file (one scan per file, kept in ``scans``): the lines of
    its rows are known once it is done."""

    def __init__(self, parts: list[_Part], scans: _LineScans) -> None:
        super().__init__(daemon=True, name="recs-line-count")
        self.scans = scans
        self.cuts: dict[str, set[int]] = {}
        for p in parts:
            if not (p.codec or p.by_lines or p.start == 0 or (p.path, p.start) in scans.starts):
                self.cuts.setdefault(p.path, set()).add(p.start)
        self.error: BaseException | None = None
        if self.cuts:
            self.start()

    def run(self) -> None:
        try:
            for path, cuts in self.cuts.items():
                self.scans.starts |= {(path, c): n for c, n in scan_plain(path, cuts)[0].items()}
        except BaseException as e:  # raised by lines_before, in the consumer
            self.error = e

    def lines_before(self, part: _Part) -> int:
        """The lines of the part's file that start before it (waits for the count)."""
        if self.cuts:
            self.join()
        if self.error is not None:
            raise as_data_error(self.error, part.path)
        return self.scans.starts[(part.path, part.start)]


def split_at_holdout(spans: list[Span], holdout: float) -> tuple[list[_Part], list[_Part], int,
                                                                  int]:
    """(training parts, held-out parts, cut, shard bytes) of a rank's spans: the lines
    whose shard position is >= ``cut = floor((1 - holdout) * bytes)`` are held out."""
    if not 0.0 <= holdout <= 1.0:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    total = sum(s.end - s.start for s in spans)
    whole = [_Part(s.path, s.codec, s.start, s.end) for s in spans]
    if holdout == 0.0:
        return whole, [], total, total
    cut = min(total, max(0, math.floor((1.0 - holdout) * total)))
    train: list[_Part] = []
    held: list[_Part] = []
    off = 0
    for part in whole:
        n = part.end - part.start
        if off + n <= cut:  # every position in the span is < off + n
            train.append(part)
        elif off >= cut:
            held.append(part)
        else:
            at = part.start + cut - off
            train.append(_Part(part.path, part.codec, part.start, at))
            held.append(_Part(part.path, part.codec, at, part.end))
        off += n
    return train, held, cut, total


def text_units(paths: list[str], header: bool, world: int, holdout: float) -> list[RankUnits]:
    """What each of ``world`` ranks reads of text files with ``holdout`` (the spans of
    :func:`~recs_core.data.shards.plan_shards`, :func:`split_at_holdout`) as line ranges
    (:mod:`~recs_core.data.units`): one scan of each plain file and one decompression of
    each compressed one, to count the lines before each span's cuts."""
    files = check_files(paths)
    index = {p: i for i, (p, _, _) in enumerate(files)}
    plans = [split_at_holdout(spans, holdout)[:2] for spans in plan_shards(paths, world)]
    cuts: dict[str, set[int]] = {p: set() for p, _, _ in files}
    for parts in (q for plan in plans for q in plan):
        for p in parts:
            cuts[p.path] |= {p.start, p.end}
    starts = {p: line_starts(p, codec, cuts[p]) for p, _, codec in files if cuts[p]}
    h = int(header)

    def ranges(parts: list[_Part]) -> tuple[LineRange, ...]:
        return tuple(merged([LineRange(index[p.path], max(0, starts[p.path][p.start] - h),
                                       max(0, starts[p.path][p.end] - h)) for p in parts]))
    return [RankUnits(ranges(train), ranges(held)) for train, held in plans]


class _ChunkProducer(threading.Thread):
    """Reads the parts into fresh chunk buffers, each ending at a line boundary."""

    def __init__(self, parts: list[_Part], chunk_bytes: int, pool: list[np.ndarray | None],
                 meta: list[_Chunk], full: SpscRing, free: SpscRing, sizes: dict[str, int],
                 header: bool = False, scans: _LineScans | None = None) -> None:
        super().__init__(daemon=True, name="recs-reader")
        self.parts, self.pool, self.meta, self.full, self.free = parts, pool, meta, full, free
        self.chunk_bytes = chunk_bytes
        self.sizes = sizes  # the files' sizes the shards were planned on
        self.header = header
        self.scans = scans or _LineScans()  # where plain files' lines are (reading by lines)
        self.error: BaseException | None = None
        self.current_path = ""
        self.stop = False
        # per part: (the part read before it from the same decompressed stream, or -1; the
        # line feeds from that part's end, or the file's start, to its first line), set
        # before its first chunk is handed over; unset for a plain part that does not
        # start its file (counted by _PrefixCounts, or when a message needs it)
        self.lines_before: dict[int, tuple[int, int]] = {}
        self.streams: list[Decompressed] = []  # the compressed files' streams opened
        self.kept_bytes = 0  # decompressed bytes handed over
        self._z: Decompressed | None = None  # the open compressed file's stream
        self._z_raw = None
        self._z_path = ""
        self._z_last = -1  # the last part read from it
        self._z_line = 0  # the line it is at (reading by lines)

    def run(self) -> None:
        try:
            for i, part in enumerate(self.parts):
                if not self._read_part(i, part):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self.error = e
        finally:
            self._close_stream()
            self.full.close()

    def _take(self) -> int | None:
        while not self.stop:
            slot = self.free.pop(_WAIT_S)
            if slot is not None:
                return slot
        return None

    def _stream(self, part: _Part) -> Decompressed:
        """The decompressed stream of the part's file: opened at its first part here (with
        the cuts of all of them), kept open for the next ones."""
        if self._z is None or self._z_path != part.path:
            self._close_stream()
            size = self.sizes[part.path]
            cuts = [c for p in self.parts if p.path == part.path and not p.by_lines
                    for c in (p.start, p.end) if c < size]
            self._z_raw = open(part.path, "rb")  # noqa: SIM115 (closed with the stream)
            self._z = Decompressed(self._z_raw, part.codec, cuts)
            self._z_path, self._z_last, self._z_line = part.path, -1, 0
            self.streams.append(self._z)
        return self._z

    def _close_stream(self) -> None:
        if self._z_raw is not None:
            self._z_raw.close()
        self._z = self._z_raw = None

    def _read_part(self, index: int, part: _Part) -> bool:
        """Hand over the part's chunks; False when the consumer has gone."""
        self.current_path = part.path
        if part.by_lines:
            return self._read_by_lines(index, part)
        if part.codec:
            f = self._stream(part)
            at = f.skip_to(part.start)
            lines, pos = at if at is not None else (0, -1)
            if part.start == 0:
                header, pos = self._skip_header(f)
                lines += header
            self.lines_before[index] = (self._z_last, lines)
            self._z_last = index
            if pos < 0:  # the file ends before the part's first line
                return True
            end = part.end
            return self._read_lines(index, f, pos, (lambda: None) if end >= self.sizes[
                part.path] else (lambda: f.offset_of(end)))
        with open(part.path, "rb") as f:
            if part.start > 0:
                f.seek(part.start - 1)
                if f.read(1) != b"\n":  # that line belongs to the previous range
                    _skip_line(f)
                pos = f.tell()
            else:
                header, pos = self._skip_header(f)
                self.lines_before[index] = (-1, header)
            end = part.end
            return self._read_lines(index, f, pos, lambda: end)

    def _read_by_lines(self, index: int, part: _Part) -> bool:
        """Hand over the part's data lines: a plain file from the offset of its first
        line (:class:`_LineScans`), a compressed one decompressed and its lines passed up
        to it (from the file's start, unless the stream is before it already)."""
        first, n = part.start + self.header, part.end - part.start  # (physical lines)
        self.lines_before[index] = (-1, first)
        if not part.codec:
            at = self.scans.offset_of(part.path, first, self.parts, int(self.header))
            if at < 0:
                raise self._past_end(part)
            with open(part.path, "rb") as f:
                f.seek(at)
                return self._read_lines(index, f, at, lines=n)
        f = self._stream(part)
        if self._z_line > first:  # the stream is past it: from the start again
            self._close_stream()
            f = self._stream(part)
        if f.skip_lines(first - self._z_line) < first - self._z_line:
            raise self._past_end(part)
        self._z_line = first + n
        return self._read_lines(index, f, f.tell(), lines=n)

    def _past_end(self, part: _Part) -> DataError:
        return DataError(f"{part.path}: the file ends before data line {part.end - 1}, the "
                         f"last of lines [{part.start}, {part.end}) to read: it changed "
                         f"since the line ranges were made", path=part.path,
                         reason="file_changed")

    def _skip_header(self, f) -> tuple[int, int]:  # noqa: ANN001
        """At a file's start: read past its header line, if the files have one (the
        part's lines then start at line 2); returns (lines, bytes) skipped."""
        if not self.header:
            return 0, 0
        n = _skip_line(f)
        return (1 if n else 0), n

    def _read_lines(self, index: int, f, pos: int,  # noqa: ANN001
                    end_of: Callable[[], int | None] = lambda: None,
                    lines: int | None = None) -> bool:
        """Hand over the lines of ``f`` (at offset ``pos``, a line start) that start before
        ``end_of()`` (None: to the end of the file; it may become known during reading,
        always before the bytes at it are read), or its next ``lines`` lines (a DataError
        when the file ends first). A decompressed stream gets back the bytes read past
        the part (the next part, or another rank's, starts there)."""
        stream = f if isinstance(f, Decompressed) else None
        carry = np.empty(0, dtype=np.uint8)
        skipped = 0
        eof = False
        while not eof:
            end = end_of() if lines is None else None
            if lines == 0 or end is not None and pos >= end:  # the line at pos is not ours
                if stream is not None:
                    stream.unread(carry.tobytes())
                break
            slot = self._take()
            if slot is None:
                return False
            cap = self.chunk_bytes
            buf = self.pool[slot] = np.empty(cap, dtype=np.uint8)
            c = len(carry)
            buf[:c] = carry
            mv = memoryview(buf)
            total = c
            while total < cap:  # fill the buffer unless the file ends
                got = f.readinto(mv[total:])
                if not got:
                    eof = True
                    break
                total += got
            cut = -1
            done = eof
            if lines is not None:
                k, n, last = nth_lf(buf, c, total, lines)  # (the carry holds no line feed)
                if k >= 0:
                    cut, done, lines = k + 1, True, 0
                elif eof:
                    if n + (total > last + 1) < lines:
                        raise self._past_end(self.parts[index])
                    lines = 0
                else:
                    cut, lines = last + 1, lines - n
            else:
                end = end_of()
                if end is not None and pos + total >= end:
                    if end <= pos:
                        cut, done = 0, True
                    else:
                        k = find_lf(buf, end - 1 - pos, total)
                        if k >= 0:
                            cut, done = k + 1, True
            if cut < 0:
                cut = total if eof else rfind_lf(buf, 0, total) + 1
            if cut == 0 and total == cap and not done:  # a line longer than the buffer
                pos += total + _skip_line(f)
                carry = carry[:0]
                skipped += 1
                lines = None if lines is None else lines - 1
                self.free.push(slot, None)
                continue
            carry = buf[cut:total].copy() if not done else carry[:0]
            if stream is not None:
                self.kept_bytes += cut
                if done:
                    stream.unread(buf[cut:total].tobytes())
            self.meta[slot] = _Chunk(index, cut, done, skipped)
            skipped = 0
            pos += cut
            if not self.full.push(slot, None):
                return False
            if done:
                return True
        if skipped:  # overlong lines right before the end: an empty chunk counts them
            slot = self._take()
            if slot is None:
                return False
            self.pool[slot] = np.empty(0, dtype=np.uint8)
            self.meta[slot] = _Chunk(index, 0, True, skipped)
            return bool(self.full.push(slot, None))
        return True


def _skip_line(f) -> int:  # noqa: ANN001
    """Read past the next line feed in bounded steps; returns the bytes skipped."""
    n = 0
    while True:
        part = f.readline(1 << 20)
        n += len(part)
        if not part or part.endswith(b"\n"):
            return n


@njit(nogil=True, cache=True)
def find_lf(buf: np.ndarray, a: int, b: int) -> int:
    """Index of the first line feed in buf[a:b], or -1."""
    for i in range(a, b):
        if buf[i] == 10:
            return i
    return -1


@njit(nogil=True, cache=True)
def rfind_lf(buf: np.ndarray, a: int, b: int) -> int:
    """Index of the last line feed in buf[a:b], or -1."""
    for i in range(b - 1, a - 1, -1):
        if buf[i] == 10:
            return i
    return -1


class ShardReader:
    """Iterates this rank's share of the input as :class:`RawBatch` es of ``batch_rows`` rows.

    ``holdout`` (in [0, 1]): iterating yields only the lines before the cut (module
    docstring) and :meth:`held_out` the lines from it, each a line exactly once; both
    re-read the files and give the same rows on every call. Bad lines follow ``policy``;
    ``counter`` holds the line and bad-line counts of both streams (each line is in one).
    ``units``: read those line ranges instead (training ones in their order, held-out
    ones by :meth:`held_out`); ``rank``, ``world`` and ``holdout`` are then not used.
    """

    def __init__(self, paths: list[str], schema: ColumnSchema, *, rank: int = 0, world: int = 1,
                 batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, holdout: float = 0.0,
                 counter: BadRowCounter | None = None, units: RankUnits | None = None) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.paths = [os.fspath(p) for p in paths]
        self.holdout = holdout
        if units is None:
            self.spans = plan_shards(self.paths, world)[rank]
            self._train, self._held, self.cut, self.shard_bytes = split_at_holdout(
                self.spans, holdout)
        else:
            codecs = [codec for _, _, codec in check_files(self.paths)]
            self.spans, self.cut, self.shard_bytes = [], 0, 0
            self._train, self._held = (
                [_Part(self.paths[r.file], codecs[r.file], r.first, r.end, by_lines=True)
                 for r in check_ranges(ranges, len(self.paths)) if len(r)]
                for ranges in (units.train, units.held))
        self._scans = _LineScans()
        self.parser = ChunkParser(schema)
        self.schema = schema
        # each file's fields (read from its header when the files have one)
        # (every rank checks every file's header, so that all fail alike)
        self.fields, self.header_warnings = field_maps(schema, [str(p) for p in paths])
        self.batch_rows = batch_rows
        self.chunk_bytes = chunk_bytes
        self.counter = counter or BadRowCounter(policy or BadRowPolicy())  # may be shared
        self.rows = 0  # training rows yielded
        self.held_rows = 0  # held-out rows yielded
        self.sizes = {p.path: os.path.getsize(p.path) for p in self._train + self._held}
        # files whose size changed while being read: path -> (planned, after a stream)
        self.size_changes: dict[str, tuple[int, int]] = {}
        self.part_lines: list[int] = []  # lines of each training part (with_origins)
        # what reading the compressed files has cost so far (every pass): bytes
        # decompressed, the share of them handed to the parser, seconds decompressing
        self.decompressed = dict(NO_DECOMPRESSION)

    def __iter__(self) -> Iterator[RawBatch]:
        for batch, _ in self._stream(self._train):
            self.rows += len(batch)
            yield batch

    def held_out(self) -> Iterator[RawBatch]:
        """The held-out rows (those from the cut on), read again from the files: a plain
        span from the cut, a compressed span decompressed from its start."""
        for batch, _ in self._stream(self._held):
            self.held_rows += len(batch)
            yield batch

    def with_origins(self) -> Iterator[tuple[RawBatch, RowOrigins]]:
        """The training rows as :meth:`__iter__` gives them, each batch with where its rows
        are in the window (for putting every rank's rows back in window order, and
        their files and lines); once it is exhausted, :attr:`part_lines` holds the lines
        of every part read. The lines before a plain part that does not start its file
        are counted by one scan of the file's prefix per reader, in a thread beside the
        reading and parsing (its rows wait for the count)."""
        self.part_lines = [0] * len(self._train)
        for batch, origins in self._stream(self._train, self.part_lines, origins=True):
            self.rows += len(batch)
            yield batch, origins

    def part_keys(self) -> list[tuple[int, int]]:
        """Where each training part of this rank starts in the window: (index of its file
        among ``paths``, first byte); parts of all ranks sort by it in window order."""
        index = {p: i for i, p in enumerate(self.paths)}
        return [(index[p.path], p.start) for p in self._train]

    def _stream(self, parts: list[_Part], part_lines: list[int] | None = None,
                origins: bool = False) -> Iterator[tuple[RawBatch, RowOrigins | None]]:
        """Batches of ``batch_rows`` of ``parts``' good rows with their origins (None
        unless ``origins``); ``part_lines`` (one per part) gets the lines of each part."""
        return rebatch_origins(self._chunks(parts, part_lines, origins), self.batch_rows)

    def _chunks(self, parts: list[_Part], part_lines: list[int] | None, origins: bool
                ) -> Iterator[tuple[RawBatch, RowOrigins | None]]:
        """The good rows of each chunk read, with their origins (see :meth:`_stream`)."""
        if not parts:
            self.counter.check(final=True)
            return
        pool: list[np.ndarray | None] = [None] * _POOL
        meta = [_Chunk() for _ in range(_POOL)]
        full, free = SpscRing(_POOL), SpscRing(_POOL)
        for i in range(_POOL):
            free.push(i, None)
        producer = _ChunkProducer(parts, self.chunk_bytes, pool, meta, full, free, self.sizes,
                                  self.schema.text.header, self._scans)
        counts = _PrefixCounts(parts, self._scans) if origins else None
        file_of = {p: i for i, p in enumerate(self.paths)}
        header = int(self.schema.text.header)
        producer.start()
        lines_in_part = [0] * len(parts) if part_lines is None else part_lines
        first_lines: list[int | None] = []  # per part so far: line feeds before its first line
        try:
            while True:
                slot = full.pop(_WAIT_S)
                if slot is None:
                    if full.closed and len(full) == 0:
                        break
                    continue
                m = meta[slot]
                part = parts[m.part]
                parsed = self.parser.parse(pool[slot], m.nbytes, m.at_eof, own_buffer=True,
                                           fields=self.fields[part.path])
                pool[slot] = None
                free.push(slot, None)
                while len(first_lines) <= m.part:  # the parts before it are done
                    gap = producer.lines_before.get(len(first_lines))
                    first_lines.append(None if gap is None else gap[1] + (
                        0 if gap[0] < 0 else first_lines[gap[0]] + lines_in_part[gap[0]]))
                first = first_lines[m.part]
                if first is None and counts is not None:
                    first = first_lines[m.part] = counts.lines_before(part)
                base = lines_in_part[m.part]
                for _ in range(m.skipped_long_lines):
                    self.counter.lines += 1
                    self.counter.record(part.path, self._line_of(part, first, base, 0),
                                        R_LINE_TOO_LONG, None)
                    base += 1
                self._record_bad(part, first, base, parsed)
                lines_in_part[m.part] = base + parsed.n_lines
                self.counter.lines += parsed.n_lines
                self.counter.check(final=False)
                batch = parsed.batch
                if not origins:
                    yield batch, None
                    continue
                row_lines = np.delete(np.arange(base, base + parsed.n_lines), parsed.bad_line)
                if len(row_lines) != len(batch) or first is None:
                    raise RuntimeError(f"{part.path}: {len(batch)} rows from "
                                       f"{len(row_lines)} good lines (first: {first})")
                n = len(batch)
                yield batch, RowOrigins(np.full(n, m.part, np.int32), row_lines,
                                        np.full(n, file_of[part.path], np.int32),
                                        row_lines + (first - header))
            if producer.error is not None:
                raise as_data_error(producer.error, producer.current_path)
            self._check_sizes(parts)
            self.counter.check(final=True)
        finally:
            producer.stop = True
            free.close()  # a producer waiting for a free slot sees the stop now, not in 0.5 s
            producer.join(timeout=5)
            for z in producer.streams:
                self.decompressed["bytes"] += z.produced
                self.decompressed["seconds"] += z.seconds
            self.decompressed["kept_bytes"] += producer.kept_bytes

    def _check_sizes(self, parts: list[_Part]) -> None:
        """Record the files of ``parts`` whose size is not the one the shards were planned
        on (-1: the file is gone): their lines were read only in part."""
        for path in dict.fromkeys(p.path for p in parts):
            try:
                now = os.path.getsize(path)
            except OSError:
                now = -1
            if now != self.sizes[path]:
                self.size_changes[path] = (self.sizes[path], now)

    def size_warnings(self) -> list[str]:
        """One line per file that changed size while being read (see ``size_changes``)."""
        out = []
        for path, (before, now) in self.size_changes.items():
            change = ("was removed" if now < 0 else
                      f"shrank from {before} to {now} bytes" if now < before else
                      f"grew from {before} to {now} bytes")
            out.append(f"{path}: {change} while being read: its lines were read only in "
                       f"part (rows of the training or held-out share may be missing)")
        return out

    @staticmethod
    def _line_of(part: _Part, first: int | None, base: int, index: int):  # noqa: ANN205
        """A function giving the 1-based file line of line ``index`` of a chunk (lazy: it
        counts the lines before a plain part only when an error is reported); ``first``:
        the line feeds before the part's first line, where the reading counted them."""
        def line_of() -> int:
            before = first
            if before is None:
                # the line holding byte start-1 belongs to an earlier part, whatever its end
                before = 0 if part.codec or part.start == 0 else count_lines_before(
                    part.path, part.start - 1) + 1
            return before + base + index + 1
        return line_of

    def _record_bad(self, part: _Part, first: int | None, base: int,
                    parsed: ParsedChunk) -> None:
        names = self.fields[part.path].names
        for li, code, col in zip(parsed.bad_line.tolist(), parsed.bad_reason.tolist(),
                                 parsed.bad_col.tolist()):
            self.counter.record(part.path, self._line_of(part, first, base, li), code,
                                names[col] if col >= 0 else None)
