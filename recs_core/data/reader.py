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
in all (a plain span counts its byte range, a compressed span its file size), and
a line's position is the shard offset of its first byte. The held-out lines are those
whose position is >= ``cut = floor((1 - h) * B)``; iterating the reader yields the other
(training) lines, :meth:`ShardReader.held_out` reads the held-out ones again from the
files. Nothing is counted or kept beforehand: the cut is found from the spans' sizes.
In a compressed (``.gz``, ``.zst``) span the position of a decompressed byte is where the
decompressor was in the compressed file when it produced that byte (see
:class:`_Decompressed`), so there the
split is exact in that measure but only approximate in rows.
"""

from __future__ import annotations

import math
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
from recs_core.data.header import field_maps
from recs_core.data.parse import (
    R_LINE_TOO_LONG,
    ChunkParser,
    ColumnSchema,
    ParsedChunk,
    RawBatch,
)
from recs_core.data.shards import Span, plan_shards
from recs_core.errors import DataError
from recs_core.native import SpscRing

DEFAULT_CHUNK_BYTES = 4 << 20
_POOL = 4
_WAIT_S = 0.5  # poll period of ring waits (the other thread may have died)
# how compressed files are decompressed (this fixes the byte positions of the hold-out cut)
_Z_READ = 64 << 10  # compressed bytes read from the file at a time
_Z_OUT = 256 << 10  # most decompressed bytes one piece holds


@dataclass
class _Chunk:
    """What the reading thread fills in before handing a buffer over."""

    part: int = 0
    nbytes: int = 0
    at_eof: bool = False
    skipped_long_lines: int = 0  # overlong lines dropped right before this chunk


def count_line_feeds(path: str, lo: int, hi: int) -> int:
    """Number of line feeds in bytes [lo, hi) of a plain file, read in bounded blocks."""
    n = 0
    with open(path, "rb") as f:
        f.seek(lo)
        left = hi - lo
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def count_lines_before(path: str, offset: int) -> int:
    """Number of line feeds in the first ``offset`` bytes of a plain file."""
    return count_line_feeds(path, 0, offset)


@dataclass(frozen=True)
class RowOrigins:
    """Where a batch's rows are: per row, the index of its part among the reader's
    (see :meth:`ShardReader.part_keys`) and its 0-based line in the part (every line
    counts, a skipped bad one too)."""

    part: np.ndarray  # int32
    line: np.ndarray  # int64

    @staticmethod
    def concat(parts: list[RowOrigins]) -> RowOrigins:
        return RowOrigins(np.concatenate([p.part for p in parts]),
                          np.concatenate([p.line for p in parts]))

    def slice(self, a: int, b: int) -> RowOrigins:
        return RowOrigins(self.part[a:b], self.line[a:b])

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
    """What one stream reads of one span. Plain: the lines that start in [start, end).
    Compressed (``codec`` not ""), ``cut`` < 0: the whole file; else the lines whose
    compressed position is < ``cut`` (``held`` False) or >= it (``held`` True)."""

    path: str
    codec: str
    start: int = 0
    end: int = -1
    cut: int = -1
    held: bool = False


def split_at_holdout(spans: list[Span], holdout: float) -> tuple[list[_Part], list[_Part], int,
                                                                  int]:
    """(training parts, held-out parts, cut, shard bytes) of a rank's spans: the lines
    whose shard position is >= ``cut = floor((1 - holdout) * bytes)`` are held out."""
    if not 0.0 <= holdout <= 1.0:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    sizes = [os.path.getsize(s.path) if s.codec else s.end - s.start for s in spans]
    total = sum(sizes)
    whole = [_Part(s.path, s.codec, s.start, s.end) for s in spans]
    if holdout == 0.0:
        return whole, [], total, total
    cut = min(total, max(0, math.floor((1.0 - holdout) * total)))
    train: list[_Part] = []
    held: list[_Part] = []
    off = 0
    for span, part, n in zip(spans, whole, sizes):
        if off + n <= cut:  # every position in the span is < off + n
            train.append(part)
        elif off >= cut:
            held.append(part)
        elif span.codec:
            train.append(_Part(span.path, span.codec, cut=cut - off, held=False))
            held.append(_Part(span.path, span.codec, cut=cut - off, held=True))
        else:
            at = span.start + cut - off
            train.append(_Part(span.path, "", span.start, at))
            held.append(_Part(span.path, "", at, span.end))
        off += n
    return train, held, cut, total


def _gzip_pieces(f) -> Iterator[tuple[bytes, int, int]]:  # noqa: ANN001
    """A gzip file (every member, zero padding between them) decompressed by zlib on a
    fixed schedule; see :class:`_Decompressed`."""
    z = None  # the current member's decompressor
    pending = b""  # compressed bytes read, not yet taken by zlib
    taken = 0  # compressed bytes zlib has taken
    file_eof = False
    while True:
        if not pending and not file_eof:
            pending = f.read(_Z_READ)
            file_eof = not pending
        if z is not None and z.eof:  # zero padding, then maybe another member
            rest = pending.lstrip(b"\0")
            taken += len(pending) - len(rest)
            pending = rest
            if not rest:
                if file_eof:
                    return
                continue
            z = None
        if z is None:
            if not pending:  # an empty file
                return
            z = zlib.decompressobj(31)
        data = pending
        out = z.decompress(data, _Z_OUT)
        if not data and not out and not z.eof:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        rest = z.unused_data if z.eof else z.unconsumed_tail
        c0 = taken
        taken += len(data) - len(rest)
        pending = rest
        if out:
            yield out, c0, taken


class _Metered:
    """A file's reads, at most ``_Z_READ`` bytes each, counted (Arrow's decompressor reads
    ahead through it: the count is how far into the file it was)."""

    def __init__(self, f) -> None:  # noqa: ANN001
        self.f, self.taken, self.closed = f, 0, False

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(_Z_READ if n is None or n < 0 else min(n, _Z_READ))
        self.taken += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _zstd_pieces(f) -> Iterator[tuple[bytes, int, int]]:  # noqa: ANN001
    """A zstd file (every frame) decompressed by pyarrow, ``_Z_OUT`` bytes at a time; see
    :class:`_Decompressed`."""
    import pyarrow as pa

    raw = _Metered(f)
    stream = pa.CompressedInputStream(raw, "zstd")
    while True:
        c0 = raw.taken
        try:
            out = stream.read(_Z_OUT)
        except (OSError, pa.ArrowException) as e:
            raise _Corrupt("zstd", str(e)) from None
        if not out:
            return
        yield out, c0, raw.taken


_PIECES = {"gzip": _gzip_pieces, "zstd": _zstd_pieces}


class _Corrupt(Exception):
    """A compressed file that does not decompress (reported as a DataError naming it)."""

    def __init__(self, codec: str, message: str) -> None:
        super().__init__(message)
        self.codec = codec


class _Decompressed:
    """A compressed file as a stream of lines, with a position in the compressed file for
    every decompressed byte. Its codec's pieces (:data:`_PIECES`) read ``_Z_READ``
    compressed bytes at a time and return at most ``_Z_OUT`` bytes per piece; a piece
    made while the compressed bytes [c0, c1) were taken, holding decompressed bytes
    [d0, d1), gives byte d the position ``c0 + (d - d0) * (c1 - c0) // (d1 - d0)`` (< c1
    when c1 > c0), so positions depend on the file alone (not on how the stream is read)
    and never decrease. ``cut_at``: the offset of the first byte whose position is >=
    ``cut``; it is known (not None) as soon as a byte at or past it has been decompressed."""

    def __init__(self, f, codec: str, cut: int = -1) -> None:  # noqa: ANN001
        self.codec, self.cut = codec, cut
        self.pieces = _PIECES[codec](f)
        self.raw = b""  # the last piece, and how far it has been read
        self.view = memoryview(self.raw)
        self.at = 0
        self.produced = 0  # decompressed bytes so far
        self.cut_at: int | None = None

    def _next_piece(self) -> bool:
        """Decompress the next non-empty piece; False at the end of the file."""
        piece = next(self.pieces, None)
        if piece is None:
            return False
        self._piece(*piece)
        return True

    def _piece(self, out: bytes, c0: int, c1: int) -> None:
        d0, n = self.produced, len(out)
        if self.cut_at is None:
            r = self.cut - c0
            if r <= 0:
                self.cut_at = d0
            elif c1 > c0:
                k = -(-r * n // (c1 - c0))  # the first k with c0 + k*(c1-c0)//n >= cut
                if k < n:
                    self.cut_at = d0 + k
        self.raw, self.view, self.at = out, memoryview(out), 0
        self.produced = d0 + n

    def readinto(self, mv: memoryview) -> int:
        if self.at == len(self.raw) and not self._next_piece():
            return 0
        n = min(len(mv), len(self.raw) - self.at)
        mv[:n] = self.view[self.at:self.at + n]
        self.at += n
        return n

    def readline(self, limit: int) -> bytes:
        if self.at == len(self.raw) and not self._next_piece():
            return b""
        stop = min(len(self.raw), self.at + limit)
        k = self.raw.find(b"\n", self.at, stop)
        if k >= 0:
            stop = k + 1
        part = self.raw[self.at:stop]
        self.at = stop
        return part

    def skip_to_cut(self) -> tuple[int, int] | None:
        """Pass the lines that start before ``cut_at``: (line feeds passed, offset of the
        first line at or after it), or None when no line starts there."""
        lfs, last = 0, 10
        while self.cut_at is None or self.cut_at >= self.produced:
            if not self._next_piece():
                return None
            stop = len(self.raw) if self.cut_at is None else self.cut_at - (
                self.produced - len(self.raw))
            if stop > 0:
                lfs += self.raw.count(b"\n", 0, stop)
                last = self.raw[stop - 1]
            self.at = stop
        pos = self.cut_at
        if last != 10:  # the line holding byte cut_at - 1 started before the cut
            while True:
                part = self.readline(1 << 20)
                pos += len(part)
                if not part:
                    return None
                if part.endswith(b"\n"):
                    lfs += 1
                    break
        return lfs, pos


class _ChunkProducer(threading.Thread):
    """Reads the parts into fresh chunk buffers, each ending at a line boundary."""

    def __init__(self, parts: list[_Part], chunk_bytes: int, pool: list[np.ndarray | None],
                 meta: list[_Chunk], full: SpscRing, free: SpscRing,
                 header: bool = False) -> None:
        super().__init__(daemon=True, name="recs-reader")
        self.parts, self.pool, self.meta, self.full, self.free = parts, pool, meta, full, free
        self.chunk_bytes = chunk_bytes
        self.header = header
        self.error: BaseException | None = None
        self.current_path = ""
        self.stop = False
        # line feeds before a part's first line, where the reading finds them (a compressed
        # part from the cut); set before the part's first chunk is handed over
        self.lines_before: dict[int, int] = {}

    def run(self) -> None:
        try:
            for i, part in enumerate(self.parts):
                if not self._read_part(i, part):
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self.error = e
        finally:
            self.full.close()

    def _take(self) -> int | None:
        while not self.stop:
            slot = self.free.pop(_WAIT_S)
            if slot is not None:
                return slot
        return None

    def _read_part(self, index: int, part: _Part) -> bool:
        """Hand over the part's chunks; False when the consumer has gone."""
        self.current_path = part.path
        if part.codec:
            with open(part.path, "rb") as raw:
                f = _Decompressed(raw, part.codec, part.cut)
                if part.cut < 0:
                    return self._read_lines(index, f, self._skip_header(index, f),
                                            lambda: None)
                if not part.held:  # the lines before the cut
                    return self._read_lines(index, f, self._skip_header(index, f),
                                            lambda: f.cut_at)
                at = f.skip_to_cut()
                if at is None:
                    return True
                self.lines_before[index] = at[0]
                return self._read_lines(index, f, at[1], lambda: None)
        with open(part.path, "rb") as f:
            if part.start > 0:
                f.seek(part.start - 1)
                if f.read(1) != b"\n":  # that line belongs to the previous range
                    _skip_line(f)
                pos = f.tell()
            else:
                pos = self._skip_header(index, f)
            end = part.end
            return self._read_lines(index, f, pos, lambda: end)

    def _skip_header(self, index: int, f) -> int:  # noqa: ANN001
        """At a file's start: read past its header line, if the files have one (the
        part's lines then start at line 2); returns the bytes skipped."""
        if not self.header:
            return 0
        n = _skip_line(f)
        self.lines_before[index] = 1 if n else 0
        return n

    def _read_lines(self, index: int, f, pos: int, end_of) -> bool:  # noqa: ANN001
        """Hand over the lines of ``f`` (at offset ``pos``, a line start) that start before
        ``end_of()`` (None: to the end of the file; it may become known during reading,
        always before the bytes at it are read)."""
        carry = np.empty(0, dtype=np.uint8)
        skipped = 0
        eof = False
        while not eof:
            end = end_of()
            if end is not None and pos >= end:  # the line at pos is not this part's
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
            end = end_of()
            cut = -1
            done = eof
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
                self.free.push(slot, None)
                continue
            carry = buf[cut:total].copy() if not done else carry[:0]
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
    """

    def __init__(self, paths: list[str], schema: ColumnSchema, *, rank: int = 0, world: int = 1,
                 batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, holdout: float = 0.0,
                 counter: BadRowCounter | None = None) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.paths = [os.fspath(p) for p in paths]
        self.spans = plan_shards(self.paths, world)[rank]
        self.holdout = holdout
        self._train, self._held, self.cut, self.shard_bytes = split_at_holdout(self.spans,
                                                                               holdout)
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
        self.sizes = {s.path: os.path.getsize(s.path) for s in self.spans}
        # files whose size changed while being read: path -> (planned, after a stream)
        self.size_changes: dict[str, tuple[int, int]] = {}
        self.part_lines: list[int] = []  # lines of each training part (with_origins)

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
        are in the window (for putting every rank's rows back in window order); once it
        is exhausted, :attr:`part_lines` holds the lines of every part read."""
        self.part_lines = [0] * len(self._train)
        for batch, origins in self._stream(self._train, self.part_lines):
            self.rows += len(batch)
            yield batch, origins

    def part_keys(self) -> list[tuple[int, int]]:
        """Where each training part of this rank starts in the window: (index of its file
        among ``paths``, first byte); parts of all ranks sort by it in window order."""
        index = {p: i for i, p in enumerate(self.paths)}
        return [(index[p.path], p.start) for p in self._train]

    def _stream(self, parts: list[_Part], part_lines: list[int] | None = None) -> Iterator[
            tuple[RawBatch, RowOrigins]]:
        """Batches of ``batch_rows`` of ``parts``' good rows with their origins;
        ``part_lines`` (one per part) gets the lines of each part."""
        return rebatch_origins(self._chunks(parts, part_lines),  # type: ignore[return-value]
                               self.batch_rows)

    def _chunks(self, parts: list[_Part], part_lines: list[int] | None) -> Iterator[
            tuple[RawBatch, RowOrigins]]:
        """The good rows of each chunk read, with their origins (see :meth:`_stream`)."""
        if not parts:
            self.counter.check(final=True)
            return
        pool: list[np.ndarray | None] = [None] * _POOL
        meta = [_Chunk() for _ in range(_POOL)]
        full, free = SpscRing(_POOL), SpscRing(_POOL)
        for i in range(_POOL):
            free.push(i, None)
        producer = _ChunkProducer(parts, self.chunk_bytes, pool, meta, full, free,
                                  self.schema.text.header)
        producer.start()
        lines_in_part = [0] * len(parts) if part_lines is None else part_lines
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
                first = producer.lines_before.get(m.part)
                base = lines_in_part[m.part]
                for _ in range(m.skipped_long_lines):
                    self.counter.lines += 1
                    self.counter.record(part.path, self._line_of(part, first, base, 0),
                                        R_LINE_TOO_LONG, None)
                    base += 1
                self._record_bad(part, first, base, parsed)
                row_lines = np.delete(np.arange(base, base + parsed.n_lines), parsed.bad_line)
                lines_in_part[m.part] = base + parsed.n_lines
                self.counter.lines += parsed.n_lines
                self.counter.check(final=False)
                batch = parsed.batch
                if len(row_lines) != len(batch):
                    raise RuntimeError(f"{part.path}: {len(batch)} rows from "
                                       f"{len(row_lines)} good lines")
                yield batch, RowOrigins(np.full(len(batch), m.part, np.int32), row_lines)
            if producer.error is not None:
                raise _as_data_error(producer.error, producer.current_path)
            self._check_sizes(parts)
            self.counter.check(final=True)
        finally:
            producer.stop = True
            producer.join(timeout=5)

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


def _as_data_error(err: BaseException, path: str) -> BaseException:
    if isinstance(err, (EOFError, zlib.error)):
        err = _Corrupt("gzip", str(err))
    if isinstance(err, _Corrupt):
        return DataError(f"{path}: corrupt or truncated {err.codec} input: {err}", path=path,
                         reason=f"bad_{err.codec}")
    if isinstance(err, OSError):
        return DataError(f"{err.filename or ''}: read error: {err.strerror or err}",
                         path=err.filename, reason="read_error")
    return err
