"""Compressed text (gzip, zstd) as one stream of decompressed bytes, each with a position in
the compressed file: what shards compressed files over ranks and places the hold-out cut.

Both codecs go through :class:`Decompressed` over the codec's pieces: zlib for gzip
(every member, zero padding between them) and pyarrow's ``CompressedInputStream`` for
zstd (every frame). A piece reads ``Z_READ`` (zstd: ``ZSTD_READ``) compressed bytes at a
time and holds at most ``Z_OUT`` decompressed bytes; a piece made while the compressed
bytes [c0, c1) were taken, holding decompressed bytes [d0, d1), gives byte d the position
``c0 + (d - d0) * (c1 - c0) // (d1 - d0)`` (< c1 when c1 > c0). Positions depend on the
file alone (not on how the stream is read) and never decrease, so the lines whose first
byte's position lies in [a, b) are consecutive, and every reader of the file (every
rank) finds the same ones.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from recs_core.errors import DataError

# how compressed files are decompressed (this fixes the positions of their bytes)
Z_READ = 64 << 10  # compressed bytes read from a gzip file at a time
# from a zstd file: Arrow decodes whole zstd blocks (up to 128 KiB of text) and reads ahead
# what it is given, so a position is only as fine as a block plus one read (a 90 KB file of
# 1,200 rows: with 64 KiB reads the first 262 KB of text spread over the whole file, and 2
# ranks read 546 and 654 rows; with 16 KiB reads 597 and 603)
ZSTD_READ = 16 << 10
Z_OUT = 256 << 10  # most decompressed bytes one piece holds


class Corrupt(Exception):
    """A compressed file that does not decompress (reported as a DataError naming it)."""

    def __init__(self, codec: str, message: str) -> None:
        super().__init__(message)
        self.codec = codec


# what reading or decompressing a file raises (as_data_error words each)
READ_ERRORS = (OSError, EOFError, zlib.error, Corrupt)


def as_data_error(err: BaseException, path: str) -> BaseException:
    """The one-line DataError for a decompression or read failure of ``path`` (other
    errors unchanged)."""
    if isinstance(err, (EOFError, zlib.error)):
        err = Corrupt("gzip", str(err))
    if isinstance(err, Corrupt):
        return DataError(f"{path}: corrupt or truncated {err.codec} input: {err}", path=path,
                         reason=f"bad_{err.codec}")
    if isinstance(err, OSError):
        return DataError(f"{err.filename or path}: read error: {err.strerror or err}",
                         path=err.filename or path, reason="read_error")
    return err


def _gzip_pieces(f: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """A gzip file decompressed by zlib on a fixed schedule (module docstring)."""
    z = None  # the current member's decompressor
    pending = b""  # compressed bytes read, not yet taken by zlib
    taken = 0  # compressed bytes zlib has taken
    file_eof = False
    while True:
        if not pending and not file_eof:
            pending = f.read(Z_READ)
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
        out = z.decompress(data, Z_OUT)
        if not data and not out and not z.eof:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        rest = z.unused_data if z.eof else z.unconsumed_tail
        c0 = taken
        taken += len(data) - len(rest)
        pending = rest
        if out:
            yield out, c0, taken


class _Metered:
    """A file's reads, at most ``ZSTD_READ`` bytes each, counted (Arrow's decompressor
    reads ahead through it: the count is how far into the file it was)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.taken, self.closed = f, 0, False

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(ZSTD_READ if n is None or n < 0 else min(n, ZSTD_READ))
        self.taken += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _zstd_pieces(f: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """A zstd file (every frame) decompressed by pyarrow, ``Z_OUT`` bytes at a time."""
    import pyarrow as pa

    raw = _Metered(f)
    stream = pa.CompressedInputStream(raw, "zstd")
    while True:
        c0 = raw.taken
        try:
            out = stream.read(Z_OUT)
        except (OSError, pa.ArrowException) as e:
            raise Corrupt("zstd", str(e)) from None
        if not out:
            return
        yield out, c0, raw.taken


PIECES = {"gzip": _gzip_pieces, "zstd": _zstd_pieces}


class Decompressed:
    """A compressed file as a stream of bytes read forward (``readinto``, ``readline``,
    ``unread``), with the decompressed offset of each of ``cuts`` (compressed positions):
    :meth:`offset_of` gives the first byte whose position is >= the cut, known as soon as
    a byte at or past it has been decompressed (and before it is read). ``seconds`` and
    ``produced``: time spent decompressing and bytes decompressed so far."""

    def __init__(self, f: BinaryIO, codec: str, cuts: Iterable[int] = ()) -> None:
        self.codec = codec
        self.pieces = PIECES[codec](f)
        self.raw = b""  # the bytes being read (the last piece, or what was given back)
        self.at = 0  # how far self.raw has been read
        self.produced = 0  # decompressed bytes so far
        self.seconds = 0.0
        self._cuts = sorted(c for c in set(cuts) if c > 0)
        self._next_cut = 0
        self._offsets: dict[int, int] = {}

    def tell(self) -> int:
        """The offset of the next byte to be read."""
        return self.produced - len(self.raw) + self.at

    def offset_of(self, cut: int) -> int | None:
        """The offset of the first byte whose position is >= ``cut`` (one of ``cuts``, or
        <= 0); None while no byte at or past it has been decompressed (for ever at the
        end of the file: no such byte)."""
        return 0 if cut <= 0 else self._offsets.get(cut)

    def _next_piece(self) -> bool:
        """Decompress the next non-empty piece; False at the end of the file."""
        t0 = time.perf_counter()
        piece = next(self.pieces, None)
        self.seconds += time.perf_counter() - t0
        if piece is None:
            return False
        out, c0, c1 = piece
        d0, n = self.produced, len(out)
        while self._next_cut < len(self._cuts):
            r = self._cuts[self._next_cut] - c0
            if r <= 0:
                at = d0
            elif c1 > c0 and (k := -(-r * n // (c1 - c0))) < n:
                at = d0 + k  # the first k with c0 + k * (c1 - c0) // n >= cut
            else:
                break
            self._offsets[self._cuts[self._next_cut]] = at
            self._next_cut += 1
        self.raw, self.at = out, 0
        self.produced = d0 + n
        return True

    def readinto(self, mv: memoryview) -> int:
        if self.at == len(self.raw) and not self._next_piece():
            return 0
        n = min(len(mv), len(self.raw) - self.at)
        mv[:n] = memoryview(self.raw)[self.at:self.at + n]
        self.at += n
        return n

    def readline(self, limit: int = -1) -> bytes:
        """The bytes up to and with the next line feed, at most ``limit`` (< 0: no limit);
        b"" at the end of the file."""
        parts: list[bytes] = []
        n = 0
        while limit < 0 or n < limit:
            if self.at == len(self.raw) and not self._next_piece():
                break
            stop = len(self.raw) if limit < 0 else min(len(self.raw), self.at + limit - n)
            k = self.raw.find(b"\n", self.at, stop)
            if k >= 0:
                stop = k + 1
            parts.append(self.raw[self.at:stop])
            n += stop - self.at
            self.at = stop
            if k >= 0:
                break
        return b"".join(parts)

    def unread(self, data: bytes) -> None:
        """Give back the last ``len(data)`` bytes read (``data``): they are read again."""
        if data:
            self.raw, self.at = bytes(data) + self.raw[self.at:], 0

    def skip_lines(self, n: int) -> int:
        """From a line start, pass ``n`` lines (a last one without a line feed counts):
        the lines passed, fewer when the file ends first."""
        passed, mid = 0, False  # mid: bytes of a line passed, not its line feed
        while passed < n:
            if self.at == len(self.raw) and not self._next_piece():
                return passed + mid
            c = self.raw.count(b"\n", self.at)
            if c < n - passed:
                passed += c
                mid = self.raw[-1] != 10
                self.at = len(self.raw)
                continue
            for _ in range(n - passed):  # at most a piece's lines
                self.at = self.raw.index(b"\n", self.at) + 1
            passed = n
        return passed

    def line_starts(self) -> tuple[dict[int, int], int]:
        """Decompress the file from its start to its end: (per cut, the lines that start
        before :meth:`offset_of` it (all when no byte is at or past it), the lines)."""
        out: dict[int, int] = {}
        lfs, last = 0, 10  # line feeds before the piece, the byte before it
        done = 0  # cuts handled
        while self._next_piece():
            d0 = self.produced - len(self.raw)
            for cut in self._cuts[done:self._next_cut]:  # their offsets are in this piece
                k = self._offsets[cut] - d0
                before = self.raw[k - 1] if k > 0 else last
                out[cut] = lfs + self.raw.count(b"\n", 0, k) + (before != 10)
            done = self._next_cut
            lfs += self.raw.count(b"\n")
            last = self.raw[-1]
            self.at = len(self.raw)
        total = lfs + (last != 10)
        return out | {cut: total for cut in self._cuts[done:]}, total

    def skip_to(self, cut: int) -> tuple[int, int] | None:
        """From a line start, pass the lines that start before :meth:`offset_of` ``cut``:
        (line feeds passed, the offset of the first line at or after it), or None when
        the file ends first."""
        lfs, last = 0, 10
        while True:
            target = self.offset_of(cut)
            base = self.produced - len(self.raw)
            stop = len(self.raw) if target is None else min(len(self.raw),
                                                            max(self.at, target - base))
            if stop > self.at:
                lfs += self.raw.count(b"\n", self.at, stop)
                last = self.raw[stop - 1]
                self.at = stop
            if target is not None and target <= base + self.at:
                break
            if not self._next_piece():
                return None
        if last != 10:  # the line holding the byte before the target started before it
            while not (part := self.readline(1 << 20)).endswith(b"\n"):
                if not part:
                    return None
            lfs += 1
        return lfs, self.tell()
