"""Parsing TSV lines from raw bytes into typed columns, in one compiled pass.

The kernel validates every line (field count, integers, labels, field length,
UTF-8, control bytes) and reports bad lines by index and reason instead of
raising, so that the caller applies the skip/fail policy with file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from recs_core.errors import RecsError
from recs_core.jitutil import LITTLE_ENDIAN, load_u64_le

# Column type codes understood by the kernel.
COL_LABEL = 0
COL_INT = 1
COL_STR = 2
COL_LIST_STR = 5  # a list of strings per row (Parquet/Arrow input only)

# Bad-line reason codes; index into REASONS.
REASONS = (
    "ok",
    "field_count",
    "bad_int",
    "int_overflow",
    "bad_label",
    "field_too_long",
    "invalid_utf8",
    "binary",
    "truncated_last_line",
    "empty_line",
    "line_too_long",
)
R_FIELD_COUNT = 1
R_BAD_INT = 2
R_INT_OVERFLOW = 3
R_BAD_LABEL = 4
R_FIELD_TOO_LONG = 5
R_INVALID_UTF8 = 6
R_BINARY = 7
R_TRUNCATED = 8
R_EMPTY_LINE = 9
R_LINE_TOO_LONG = 10

_TAB = 9
_LF = 10
_CR = 13
_INT64_MAX = np.uint64(9223372036854775807)
_INT64_MAX_DIV10 = np.uint64(922337203685477580)
_ONES_X20 = np.uint64(0x2020202020202020)
_HIGHS = np.uint64(0x8080808080808080)


@dataclass(frozen=True)
class ColumnSchema:
    """The raw columns of a TSV file in order: names, kinds and byte limits."""

    names: tuple[str, ...]
    kinds: tuple[int, ...]  # COL_LABEL / COL_INT / COL_STR / COL_LIST_STR
    max_bytes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.kinds) == len(self.max_bytes)):
            raise ValueError("ColumnSchema: names, kinds and max_bytes differ in length")

    @property
    def int_names(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kinds) if k == COL_INT)

    @property
    def str_names(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kinds) if k == COL_STR)

    @property
    def list_names(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kinds) if k == COL_LIST_STR)

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kinds, slot within its kind, max bytes) as arrays for the parse kernel."""
        kinds = np.asarray(self.kinds, dtype=np.int8)
        slots = np.zeros(len(kinds), dtype=np.int32)
        counters = [0] * 8
        for i, k in enumerate(self.kinds):
            slots[i] = counters[k]
            counters[k] += 1
        return kinds, slots, np.asarray(self.max_bytes, dtype=np.int32)


@dataclass(frozen=True)
class ListColumn:
    """One list-of-strings column: row i holds tokens offsets[i]..offsets[i+1]-1, each
    (start, length) into the batch's arena; ``offsets[0]`` is 0."""

    offsets: np.ndarray  # int64 [n + 1]
    start: np.ndarray  # int64 [nnz]
    length: np.ndarray  # int32 [nnz]

    def slice(self, a: int, b: int) -> ListColumn:
        lo, hi = int(self.offsets[a]), int(self.offsets[b])
        return ListColumn(self.offsets[a:b + 1] - lo, self.start[lo:hi], self.length[lo:hi])


@dataclass
class RawBatch:
    """Parsed rows: labels, integer columns with a missing mask, string columns
    as (start, length) into a byte arena (empty string = missing), and list-of-string
    columns (:class:`ListColumn`, same arena)."""

    labels: np.ndarray  # int8 [n]
    ints: np.ndarray  # int64 [n, n_int]
    int_missing: np.ndarray  # bool [n, n_int]
    str_start: np.ndarray  # int64 [n, n_str]
    str_len: np.ndarray  # int32 [n, n_str]
    arena: np.ndarray  # uint8
    lists: tuple[ListColumn, ...] = ()
    ordered: bool = True  # strings lie in the arena in row order (text input)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def empty(n_int: int, n_str: int, n_list: int = 0) -> RawBatch:
        """A batch of zero rows (a rank whose shard ran out still joins the step)."""
        empty_list = ListColumn(np.zeros(1, np.int64), np.zeros(0, np.int64),
                                np.zeros(0, np.int32))
        return RawBatch(np.zeros(0, np.int8), np.zeros((0, n_int), np.int64),
                        np.zeros((0, n_int), np.bool_), np.zeros((0, n_str), np.int64),
                        np.zeros((0, n_str), np.int32), np.zeros(8, np.uint8),
                        (empty_list,) * n_list)

    def slice(self, a: int, b: int) -> RawBatch:
        """Rows a..b-1 as views (the arena is shared)."""
        return RawBatch(self.labels[a:b], self.ints[a:b], self.int_missing[a:b],
                        self.str_start[a:b], self.str_len[a:b], self.arena,
                        tuple(c.slice(a, b) for c in self.lists), self.ordered)

    def arena_range(self) -> tuple[int, int]:
        """The arena bytes the rows' strings lie in (of ordered rows: from the first row's
        strings to the last row's; else over every string)."""
        if len(self) == 0 or (self.str_start.shape[1] == 0 and not self.lists):
            return 0, 0
        if self.ordered and not self.lists:
            return (int(self.str_start[0].min()),
                    int((self.str_start[-1] + self.str_len[-1]).max()))
        los = [int(self.str_start.min())] if self.str_start.size else []
        his = [int((self.str_start + self.str_len).max())] if self.str_start.size else []
        for c in self.lists:
            if c.start.size:
                los.append(int(c.start.min()))
                his.append(int((c.start + c.length).max()))
        return (min(los), max(his)) if los else (0, 0)

    @staticmethod
    def concat(parts: list[RawBatch]) -> RawBatch:
        """Rows of several batches in order, with one compact arena."""
        if len(parts) == 1:
            return parts[0]
        starts, arenas, shifts, shift = [], [], [], 0
        for p in parts:
            lo, hi = p.arena_range()
            starts.append(p.str_start + (shift - lo))
            shifts.append(shift - lo)
            arenas.append(p.arena[lo:hi])
            shift += hi - lo
        lists = []
        for j in range(len(parts[0].lists)):
            cols = [p.lists[j] for p in parts]
            ends = np.cumsum([0] + [int(c.offsets[-1]) for c in cols])
            lists.append(ListColumn(
                np.concatenate([c.offsets[:-1] + e for c, e in zip(cols, ends[:-1])]
                               + [ends[-1:]]).astype(np.int64),
                np.concatenate([c.start + d for c, d in zip(cols, shifts)]),
                np.concatenate([c.length for c in cols])))
        return RawBatch(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.ints for p in parts]),
            np.concatenate([p.int_missing for p in parts]),
            np.concatenate(starts),
            np.concatenate([p.str_len for p in parts]),
            np.concatenate(arenas),
            tuple(lists),
            all(p.ordered for p in parts),
        )

    def str_values(self, j: int) -> list[str]:
        """String column j as Python strings (for tests and debugging, not hot paths)."""
        return [bytes(self.arena[s:s + n]).decode("utf-8")
                for s, n in zip(self.str_start[:, j], self.str_len[:, j])]


@njit(nogil=True, cache=True)
def count_lines(buf: np.ndarray, nbytes: int) -> int:
    """Number of lines in buf[:nbytes] (a final line without newline counts)."""
    n = 0
    for i in range(nbytes):
        if buf[i] == _LF:
            n += 1
    if nbytes > 0 and buf[nbytes - 1] != _LF:
        n += 1
    return n


@njit(nogil=True, cache=True, inline="always")
def _utf8_ok(buf: np.ndarray, a: int, b: int) -> int:
    """0 if buf[a:b] is valid UTF-8 without control bytes, else a reason code."""
    i = a
    while i < b:
        c = buf[i]
        if c < 0x80:
            if c < 0x20 or c == 0x7F:
                return R_BINARY
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need = 1
            lo, hi = 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            need = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            need = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            return R_INVALID_UTF8
        if i + need >= b:
            return R_INVALID_UTF8
        d = buf[i + 1]
        if d < lo or d > hi:
            return R_INVALID_UTF8
        for k in range(2, need + 1):
            d = buf[i + k]
            if d < 0x80 or d > 0xBF:
                return R_INVALID_UTF8
        i += need + 1
    return 0


@njit(nogil=True, cache=True, inline="always")
def _field_end(buf: np.ndarray, q: int, nbytes: int) -> bool:
    """True if byte q ends a field: a tab, a line feed, or a CR right before LF/end."""
    c = buf[q]
    if c == _TAB or c == _LF:
        return True
    return c == _CR and (q + 1 == nbytes or buf[q + 1] == _LF)


@njit(nogil=True, cache=True)
def parse_lines(buf, nbytes, at_eof, kinds, slots, max_bytes,
                labels, ints, imiss, sstart, slen,
                bad_line, bad_reason, bad_col):
    """Parse the complete lines of buf[:nbytes] into the output arrays, in one pass.

    Good rows are written compactly; bad lines are recorded as (line index within
    this chunk, reason, column). ``at_eof`` marks a chunk whose last line may lack
    its newline (a wrong field count there is reported as a truncated last line).
    CRLF line ends are accepted. String fields are (start, length) into ``buf``.
    Returns (good rows, lines, bad lines).
    """
    ncols = kinds.shape[0]
    n_good = 0
    n_bad = 0
    line = 0
    pos = 0
    while pos < nbytes:
        c0 = buf[pos]
        if c0 == _LF or (c0 == _CR and (pos + 1 == nbytes or buf[pos + 1] == _LF)):
            bad_line[n_bad] = line
            bad_reason[n_bad] = R_EMPTY_LINE
            bad_col[n_bad] = -1
            n_bad += 1
            line += 1
            pos += 1 if c0 == _LF else 2
            continue
        reason = 0
        rcol = -1
        field = 0
        q = pos
        while True:  # one field per iteration; q ends on its terminator (or nbytes)
            p = q
            if field >= ncols:
                while q < nbytes and not _field_end(buf, q, nbytes):
                    q += 1
            else:
                kind = kinds[field]
                slot = slots[field]
                if kind == COL_STR:
                    special = False
                    # 8 bytes at a time while none is a control byte or non-ASCII
                    while LITTLE_ENDIAN and q + 8 <= nbytes:
                        w = load_u64_le(buf, q)
                        if ((w - _ONES_X20) & ~w & _HIGHS) | (w & _HIGHS):
                            break
                        q += 8
                    while q < nbytes:
                        c = buf[q]
                        if c < 0x20 or c >= 0x80:
                            if _field_end(buf, q, nbytes):
                                break
                            special = True
                        q += 1
                    flen = q - p
                    if flen > max_bytes[field]:
                        reason = R_FIELD_TOO_LONG
                    elif special:
                        reason = _utf8_ok(buf, p, q)
                    sstart[n_good, slot] = p
                    slen[n_good, slot] = flen
                elif kind == COL_INT:
                    neg = False
                    if q < nbytes and (buf[q] == 45 or buf[q] == 43):  # '-' or '+'
                        neg = buf[q] == 45
                        q += 1
                    last_digit = np.uint64(8) if neg else np.uint64(7)  # of 2**63 (-1)
                    acc = np.uint64(0)
                    while q < nbytes:
                        c = buf[q]
                        if c >= 48 and c <= 57:
                            d = np.uint64(c - 48)
                            if acc >= _INT64_MAX_DIV10 and (
                                    acc > _INT64_MAX_DIV10 or d > last_digit):
                                reason = R_INT_OVERFLOW
                            acc = acc * np.uint64(10) + d
                        elif _field_end(buf, q, nbytes):
                            break
                        elif reason == 0:
                            reason = R_BINARY if (c < 0x20 or c == 0x7F) else R_BAD_INT
                        q += 1
                    flen = q - p
                    if flen > max_bytes[field]:
                        reason = R_FIELD_TOO_LONG
                    elif flen == 0:
                        ints[n_good, slot] = 0
                        imiss[n_good, slot] = True
                    elif reason == 0 and flen == 1 and neg is False and buf[p] == 43:
                        reason = R_BAD_INT
                    elif reason == 0 and (buf[q - 1] < 48 or buf[q - 1] > 57):
                        reason = R_BAD_INT  # a lone sign
                    elif reason == 0:
                        if neg:
                            ints[n_good, slot] = -np.int64(acc - np.uint64(1)) - 1 if acc > 0 else 0
                        else:
                            ints[n_good, slot] = np.int64(acc)
                        imiss[n_good, slot] = False
                else:  # COL_LABEL
                    while q < nbytes and not _field_end(buf, q, nbytes):
                        q += 1
                    flen = q - p
                    if flen == 1 and (buf[p] == 48 or buf[p] == 49):
                        labels[n_good] = buf[p] - 48
                    elif flen > 0 and _utf8_ok(buf, p, q) == R_BINARY:
                        reason = R_BINARY
                    else:
                        reason = R_BAD_LABEL
                if reason != 0 and rcol < 0:
                    rcol = field
            field += 1
            if q >= nbytes or buf[q] != _TAB:
                break
            q += 1
            if reason != 0:  # the line is bad already: only count its fields
                while q < nbytes and buf[q] != _LF:
                    if buf[q] == _TAB:
                        field += 1
                    q += 1
                field += 1
                break
        # q is at CR, LF or nbytes: find the line feed.
        has_lf = False
        while q < nbytes:
            if buf[q] == _LF:
                has_lf = True
                break
            q += 1
        if field != ncols:  # a wrong field count explains any other error on the line
            reason = R_TRUNCATED if (at_eof and not has_lf) else R_FIELD_COUNT
        if reason == 0:
            n_good += 1
        else:
            bad_line[n_bad] = line
            bad_reason[n_bad] = reason
            bad_col[n_bad] = rcol if reason < R_TRUNCATED else -1
            n_bad += 1
        line += 1
        pos = q + 1
    return n_good, line, n_bad


@dataclass
class ParsedChunk:
    """The good rows of one chunk and its bad lines (index within the chunk, reason, column)."""

    batch: RawBatch
    n_lines: int
    bad_line: np.ndarray
    bad_reason: np.ndarray
    bad_col: np.ndarray


class ChunkParser:
    """Parses line-aligned byte chunks for one column schema."""

    def __init__(self, schema: ColumnSchema) -> None:
        if sum(1 for k in schema.kinds if k == COL_LABEL) > 1:
            raise ValueError("at most one label column")
        if schema.list_names:
            raise RecsError(f"column {schema.list_names[0]}: list_str columns are read from "
                            "Parquet or Arrow input only; for text, read a str column and "
                            "add a split operator")
        self.schema = schema
        self._kinds, self._slots, self._max = schema.kernel_arrays()
        self._n_int = len(schema.int_names)
        self._n_str = len(schema.str_names)

    def parse(self, buf: np.ndarray, nbytes: int, at_eof: bool,
              own_buffer: bool = False) -> ParsedChunk:
        """Parse buf[:nbytes] (complete lines; the last may lack '\\n' when at_eof).

        String columns point into ``buf`` itself when ``own_buffer`` (the caller hands
        the buffer over and must not reuse it), else into a copy."""
        cap = count_lines(buf, nbytes)
        labels = np.empty(cap, dtype=np.int8)
        ints = np.empty((cap, self._n_int), dtype=np.int64)
        imiss = np.empty((cap, self._n_int), dtype=np.bool_)
        sstart = np.empty((cap, self._n_str), dtype=np.int64)
        slen = np.empty((cap, self._n_str), dtype=np.int32)
        bad_line = np.empty(cap, dtype=np.int64)
        bad_reason = np.empty(cap, dtype=np.int8)
        bad_col = np.empty(cap, dtype=np.int16)
        n_good, n_lines, n_bad = parse_lines(
            buf, nbytes, at_eof, self._kinds, self._slots, self._max,
            labels, ints, imiss, sstart, slen, bad_line, bad_reason, bad_col)
        arena = buf if own_buffer else buf[:nbytes].copy()
        if not self.schema.kinds.count(COL_LABEL):
            labels[:n_good] = 0
        batch = RawBatch(labels[:n_good], ints[:n_good], imiss[:n_good],
                         sstart[:n_good], slen[:n_good], arena)
        return ParsedChunk(batch, n_lines, bad_line[:n_bad], bad_reason[:n_bad], bad_col[:n_bad])
