"""Line numbers of text files without parsing them: how many lines start before a byte (or a
compressed file's position), and where a numbered line starts.

A file's *physical* lines are counted by line feeds from its first byte (a last line
without a line feed counts; a header is line 0). Plain files are scanned in blocks of
``SCAN_BYTES`` by compiled kernels that release the GIL (the reader thread scans beside
the parsing); a compressed file is decompressed from its start
(:meth:`~recs_core.data.decompress.Decompressed.line_starts`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
from numba import njit

from recs_core.data.decompress import READ_ERRORS, Decompressed, as_data_error
from recs_core.jitutil import load_u64_le

SCAN_BYTES = 4 << 20


_LFS = np.uint64(0x0A0A0A0A0A0A0A0A)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)


@njit(nogil=True, cache=True, inline="always")
def _lfs_in(w: np.uint64) -> int:
    """Line feeds among the 8 bytes of ``w`` (exact: no carry crosses a byte; any order)."""
    y = w ^ _LFS
    t = ((y & _LOW7) + _LOW7) | y  # a byte's high bit is clear iff the byte was a line feed
    return int((((~t & _HIGH) >> np.uint64(7)) * _ONES) >> np.uint64(56))


@njit(nogil=True, cache=True)
def count_lf(buf: np.ndarray, a: int, b: int) -> int:
    """Number of line feeds in buf[a:b] (8 bytes at a time: ~5x a byte loop)."""
    n = 0
    i = a
    while i + 8 <= b:
        n += _lfs_in(load_u64_le(buf, i))
        i += 8
    for j in range(i, b):
        n += buf[j] == 10
    return n


@njit(nogil=True, cache=True)
def nth_lf(buf: np.ndarray, a: int, b: int, k: int) -> tuple[int, int, int]:
    """(index of the k-th (k >= 1) line feed in buf[a:b] or -1, line feeds up to it or in
    all of buf[a:b] when there are fewer than k, index of the last of those or -1)."""
    n = 0
    last_word = -1  # the last 8 bytes holding a line feed, before i
    i = a
    while i + 8 <= b:
        c = _lfs_in(load_u64_le(buf, i))
        if n + c >= k:
            break
        if c:
            last_word = i
        n += c
        i += 8
    last = -1
    for j in range(i, b):  # the word holding the k-th, or the last few bytes
        if buf[j] == 10:
            n += 1
            if n == k:
                return j, n, j
            last = j
    if last < 0 and last_word >= 0:
        for j in range(last_word, last_word + 8):
            if buf[j] == 10:
                last = j
    return -1, n, last


def _blocks(path: str, lo: int, hi: int | None) -> Iterator[tuple[int, np.ndarray, int]]:
    """(offset, block, length) of bytes [lo, hi) of a plain file (None: to its end), in
    blocks of SCAN_BYTES read into one reused buffer."""
    buf = np.empty(SCAN_BYTES, np.uint8)
    with open(path, "rb") as f:
        f.seek(lo)
        at = lo
        while hi is None or at < hi:
            n = f.readinto(memoryview(buf)[:SCAN_BYTES if hi is None else min(SCAN_BYTES,
                                                                                 hi - at)])
            if not n:
                return
            yield at, buf, n
            at += n


def count_line_feeds(path: str, lo: int, hi: int) -> int:
    """Number of line feeds in bytes [lo, hi) of a plain file."""
    return sum(count_lf(buf, 0, n) for _, buf, n in _blocks(path, lo, hi))


def scan_plain(path: str, cuts: Iterable[int] = (), lines: Iterable[int] = ()
               ) -> tuple[dict[int, int], dict[int, int]]:
    """One scan of a plain file, from its start to the last byte needed: (per byte offset
    in ``cuts``, the physical lines that start before it (all lines at or past the
    end); per physical line in ``lines``, the offset of its first byte (absent: the file
    has no such line))."""
    cut_list = sorted(set(cuts))
    line_list = sorted(set(lines))
    starts: dict[int, int] = {c: 0 for c in cut_list if c <= 0}
    offsets: dict[int, int] = {p: 0 for p in line_list if p <= 0}
    ci, li = len(starts), len(offsets)
    size = os.path.getsize(path)
    lfs, last = 0, 10  # line feeds before the block, the last byte read
    for at, buf, n in _blocks(path, 0, None):
        while ci < len(cut_list) and cut_list[ci] - 1 < at + n:  # byte c-1 is in the block
            c = cut_list[ci]
            starts[c] = 1 + lfs + count_lf(buf, 0, c - 1 - at)
            ci += 1
        got = count_lf(buf, 0, n)
        while li < len(line_list) and line_list[li] <= lfs + got:
            i, _, _ = nth_lf(buf, 0, n, line_list[li] - lfs)
            offsets[line_list[li]] = at + i + 1
            li += 1
        lfs += got
        last = int(buf[n - 1])
        if ci == len(cut_list) and li == len(line_list):
            break
    total = lfs + (last != 10)  # a last line without a line feed counts
    for c in cut_list[ci:]:
        starts[c] = total
    return starts, {p: o for p, o in offsets.items() if o < size}


def line_starts(path: str, codec: str, cuts: Iterable[int]) -> dict[int, int]:
    """Per cut, the physical lines of the file that start before it: a byte offset of a
    plain file (``codec`` ""), a position in a compressed one (module docstring of
    :mod:`~recs_core.data.decompress`: the lines before the first byte at or past it).
    A cut at or past the file's size gets all its lines, as a reader reads a span that
    ends there to the end (a zstd stream's last bytes may all have its size as their
    position: Arrow has read the whole file by then)."""
    if not codec:
        return scan_plain(path, cuts)[0]
    size = os.path.getsize(path)
    cuts = list(cuts)
    try:
        with open(path, "rb") as raw:
            out, total = Decompressed(raw, codec, [c for c in cuts if c < size]).line_starts()
    except READ_ERRORS as e:
        raise as_data_error(e, path) from None
    return out | {c: 0 for c in cuts if c <= 0} | {c: total for c in cuts if c >= size}
