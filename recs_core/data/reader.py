"""Streaming, rank-sharded reading of TSV files into fixed-size parsed batches.

A background thread reads line-aligned byte chunks (plain or gzip) into buffers
and hands them to the parsing thread through two lock-free SPSC rings (full slots
one way, free slots back). A slot is a credit: at most ``_POOL`` chunks are read
ahead, so reading overlaps parsing and memory stays bounded whatever the file size.
Each chunk gets a fresh buffer that its parsed rows keep as their string arena
(no copy); it is freed when the last batch viewing it is dropped.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from recs_core.data.bad_rows import BadRowCounter, BadRowPolicy
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


@dataclass
class _Chunk:
    """What the reading thread fills in before handing a buffer over."""

    span: int = 0
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


def count_lines_in_spans(spans: list[Span]) -> int:
    """Lines that start inside the spans (a final line without newline included)."""
    total = 0
    for span in spans:
        if span.gz:
            last = b"\n"
            with gzip.open(span.path, "rb") as f:
                while block := f.read(1 << 22):
                    total += block.count(b"\n")
                    last = block[-1:]
            total += last != b"\n"
            continue
        size = os.path.getsize(span.path)
        # a line starts at p when p == 0 or byte p-1 is a line feed (and p < size)
        total += span.start == 0 and size > 0
        total += count_line_feeds(span.path, max(span.start - 1, 0),
                                  min(span.end - 1, size - 1))
    return total


class _ChunkProducer(threading.Thread):
    """Reads the spans into fresh chunk buffers, each ending at a line boundary."""

    def __init__(self, spans: list[Span], chunk_bytes: int, pool: list[np.ndarray | None],
                 meta: list[_Chunk], full: SpscRing, free: SpscRing) -> None:
        super().__init__(daemon=True, name="recs-reader")
        self.spans, self.pool, self.meta, self.full, self.free = spans, pool, meta, full, free
        self.chunk_bytes = chunk_bytes
        self.error: BaseException | None = None
        self.current_path = ""
        self.stop = False

    def run(self) -> None:
        try:
            for i, span in enumerate(self.spans):
                self._read_span(i, span)
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

    def _read_span(self, span_index: int, span: Span) -> None:
        self.current_path = span.path
        opener = gzip.open if span.gz else open
        with opener(span.path, "rb") as f:
            pos = 0
            if not span.gz and span.start > 0:
                f.seek(span.start - 1)
                if f.read(1) != b"\n":  # that line belongs to the previous range
                    _skip_line(f)
                pos = f.tell()
            end = None if span.gz else span.end
            if end is not None and pos >= end:
                return
            carry = np.empty(0, dtype=np.uint8)
            skipped = 0
            eof = False
            while not eof:
                slot = self._take()
                if slot is None:
                    return
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
                if end is not None and pos + total >= end:
                    k = find_lf(buf, max(0, end - 1 - pos), total)
                    if k >= 0:
                        cut, done = k + 1, True
                if cut < 0:
                    cut = total if eof else rfind_lf(buf, 0, total) + 1
                if cut == 0 and total == cap:  # one line longer than the whole buffer
                    pos += total + _skip_line(f)
                    carry = carry[:0]
                    skipped += 1
                    self.free.push(slot, None)
                    continue
                carry = buf[cut:total].copy() if not done else carry[:0]
                self.meta[slot] = _Chunk(span_index, cut, done, skipped)
                skipped = 0
                pos += cut
                if not self.full.push(slot, None):
                    return
                if done:
                    break


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

    Bad lines follow ``policy``; ``counter`` holds the line and bad-line counts.
    """

    def __init__(self, paths: list[str], schema: ColumnSchema, *, rank: int = 0, world: int = 1,
                 batch_rows: int = 2048, policy: BadRowPolicy | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.spans = plan_shards([str(p) for p in paths], world)[rank]
        self.parser = ChunkParser(schema)
        self.schema = schema
        self.batch_rows = batch_rows
        self.chunk_bytes = chunk_bytes
        self.counter = BadRowCounter(policy or BadRowPolicy())
        self.rows = 0

    def __iter__(self) -> Iterator[RawBatch]:
        pool: list[np.ndarray | None] = [None] * _POOL
        meta = [_Chunk() for _ in range(_POOL)]
        full, free = SpscRing(_POOL), SpscRing(_POOL)
        for i in range(_POOL):
            free.push(i, None)
        producer = _ChunkProducer(self.spans, self.chunk_bytes, pool, meta, full, free)
        producer.start()
        pending: list[RawBatch] = []
        pending_rows = 0
        lines_in_span: dict[int, int] = {}
        try:
            while True:
                slot = full.pop(_WAIT_S)
                if slot is None:
                    if full.closed and len(full) == 0:
                        break
                    continue
                m = meta[slot]
                parsed = self.parser.parse(pool[slot], m.nbytes, m.at_eof, own_buffer=True)
                pool[slot] = None
                free.push(slot, None)
                span = self.spans[m.span]
                base = lines_in_span.get(m.span, 0)
                for _ in range(m.skipped_long_lines):
                    self.counter.lines += 1
                    self.counter.record(span.path, self._line_of(span, base, 0),
                                        R_LINE_TOO_LONG, None)
                    base += 1
                self._record_bad(span, base, parsed)
                lines_in_span[m.span] = base + parsed.n_lines
                self.counter.lines += parsed.n_lines
                self.counter.check(final=False)
                batch = parsed.batch
                a = 0
                while a < len(batch):
                    take = min(self.batch_rows - pending_rows, len(batch) - a)
                    pending.append(batch.slice(a, a + take))
                    pending_rows += take
                    a += take
                    if pending_rows == self.batch_rows:
                        out = RawBatch.concat(pending)
                        pending, pending_rows = [], 0
                        self.rows += len(out)
                        yield out
            if producer.error is not None:
                raise _as_data_error(producer.error, producer.current_path)
            self.counter.check(final=True)
            if pending_rows:
                out = RawBatch.concat(pending)
                self.rows += len(out)
                yield out
        finally:
            producer.stop = True
            producer.join(timeout=5)

    def _line_of(self, span: Span, base: int, index: int):  # noqa: ANN202
        """A function giving the 1-based file line of line ``index`` of a chunk (lazy: it
        counts the lines before the span only when an error is reported)."""
        def line_of() -> int:
            # the line holding byte start-1 belongs to an earlier range, whatever its end
            first = 0 if span.gz or span.start == 0 else count_lines_before(
                span.path, span.start - 1) + 1
            return first + base + index + 1
        return line_of

    def _record_bad(self, span: Span, base: int, parsed: ParsedChunk) -> None:
        names = self.schema.names
        for li, code, col in zip(parsed.bad_line.tolist(), parsed.bad_reason.tolist(),
                                 parsed.bad_col.tolist()):
            self.counter.record(span.path, self._line_of(span, base, li), code,
                                names[col] if col >= 0 else None)


def _as_data_error(err: BaseException, path: str) -> BaseException:
    if isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error)):
        return DataError(f"{path}: corrupt or truncated gzip input: {err}", path=path,
                         reason="bad_gzip")
    if isinstance(err, OSError):
        return DataError(f"{err.filename or ''}: read error: {err.strerror or err}",
                         path=err.filename, reason="read_error")
    return err
