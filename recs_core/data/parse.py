"""Parsing delimited text lines from raw bytes into typed columns, in one compiled pass.

The kernel validates every line (field count, numbers, labels, field length, quoting,
UTF-8, control bytes) and reports bad lines by index and reason instead of raising,
so that the caller applies the skip/fail policy with file and line.

Layout: fields split on a one-byte separator; with quoting (RFC 4180) a field that
starts with ``"`` runs to the closing quote, may hold separators, and ``""`` inside it
is one quote (unescaped in place in the buffer). A record is one line: a quoted field
may not hold a line break (its line is an ``unterminated_quote`` bad line), so that
byte-range shards stay exact. A :class:`FieldMap` says which column each field of a
file is (a file with a header may hold more columns, in any order; the rest are
read past).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from recs_core.data.labels import (
    LABEL_BAD,
    LABEL_MISSING,
    OP_LABEL_BYTES,
    LabelRule,
    rule_label,
)
from recs_core.data.reasons import (  # noqa: F401  (re-exported: the parser's reasons)
    LINE_REASONS,
    R_BAD_FLOAT,
    R_BAD_INT,
    R_BAD_LABEL,
    R_BAD_QUOTE,
    R_BINARY,
    R_EMPTY_LINE,
    R_FIELD_COUNT,
    R_FIELD_TOO_LONG,
    R_INT_OVERFLOW,
    R_INVALID_UTF8,
    R_LINE_TOO_LONG,
    R_MISSING_LABEL,
    R_TRUNCATED,
    R_UNTERMINATED_QUOTE,
    REASONS,
)
from recs_core.errors import DataError, RecsError
from recs_core.jitutil import LITTLE_ENDIAN, load_u64_le

# Column type codes understood by the kernel.
COL_LABEL = 0
COL_INT = 1
COL_STR = 2
COL_FLOAT = 3
COL_SKIP = 4  # a field of the file that no column reads (FieldMap only)
COL_LIST_STR = 5  # a list of strings per row (Parquet/Arrow input only)
N_KINDS = 6

_TAB = 9
_LF = 10
_CR = 13
_QUOTE = 34
_INT64_MAX = np.uint64(9223372036854775807)
_INT64_MAX_DIV10 = np.uint64(922337203685477580)
_ONES_X20 = np.uint64(0x2020202020202020)
_ONES_X01 = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)
# 10**k for k <= 22 is exact in float64: mantissa * or / it rounds once (Clinger)
_POW10 = np.array([10.0 ** k for k in range(23)])


@dataclass(frozen=True)
class TextFormat:
    """How a text file splits into fields: the separator (one byte; None: by the file's
    extension, ``.csv`` a comma, else a tab; a ``.gz``/``.zst`` suffix is ignored),
    RFC 4180 quoting (None: on unless the separator is a tab) and whether the first
    line of every file is a header naming the columns."""

    sep: str | None = None
    quoting: bool | None = None
    header: bool = False

    def resolve(self, path: str = "") -> tuple[int, bool]:
        """(separator byte, quoting) for the file ``path``."""
        sep = self.sep
        if sep is None:
            base = path.lower()
            for suffix in (".gz", ".zst"):
                base = base.removesuffix(suffix)
            sep = "," if base.endswith(".csv") else "\t"
        quoting = self.quoting if self.quoting is not None else sep != "\t"
        return ord(sep), quoting


@dataclass(frozen=True)
class FieldMap:
    """How the fields of one file's lines map to a schema's columns: per field its
    kind (COL_SKIP: no column), slot within its kind and byte limit, and its name (for
    messages); with the file's separator and quoting."""

    names: tuple[str, ...]
    kinds: np.ndarray  # int8 [fields]
    slots: np.ndarray  # int32 [fields]
    max_bytes: np.ndarray  # int32 [fields]
    sep: int = _TAB
    quoting: bool = False


@dataclass(frozen=True)
class ColumnSchema:
    """The raw columns a spec reads: names, kinds and byte limits (in file order when
    the files have no header); the label rule (None: the COL_LABEL column's bytes are
    ``0`` or ``1``); the text format; and, with a header, the header name each column
    is read from (``sources``, default: its name)."""

    names: tuple[str, ...]
    kinds: tuple[int, ...]  # COL_LABEL / COL_INT / COL_STR / COL_FLOAT / COL_LIST_STR
    max_bytes: tuple[int, ...]
    label_rule: LabelRule | None = None
    text: TextFormat = field(default_factory=TextFormat)
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.kinds) == len(self.max_bytes)):
            raise ValueError("ColumnSchema: names, kinds and max_bytes differ in length")
        if self.sources and len(self.sources) != len(self.names):
            raise ValueError("ColumnSchema: sources and names differ in length")

    def _names_of(self, kind: int) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kinds) if k == kind)

    @property
    def int_names(self) -> tuple[str, ...]:
        return self._names_of(COL_INT)

    @property
    def str_names(self) -> tuple[str, ...]:
        return self._names_of(COL_STR)

    @property
    def float_names(self) -> tuple[str, ...]:
        return self._names_of(COL_FLOAT)

    @property
    def label_op(self) -> tuple[int, float]:
        """(rule code, value) for the kernel."""
        r = self.label_rule
        return (OP_LABEL_BYTES, 0.0) if r is None else (r.op, r.value)

    @property
    def list_names(self) -> tuple[str, ...]:
        return tuple(n for n, k in zip(self.names, self.kinds) if k == COL_LIST_STR)

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kinds, slot within its kind, max bytes) as arrays, columns in schema order."""
        kinds = np.asarray(self.kinds, dtype=np.int8)
        slots = np.zeros(len(kinds), dtype=np.int32)
        counters = [0] * N_KINDS
        for i, k in enumerate(self.kinds):
            slots[i] = counters[k]
            counters[k] += 1
        return kinds, slots, np.asarray(self.max_bytes, dtype=np.int32)

    def field_map(self, header: Sequence[str] | None = None, path: str = "") -> FieldMap:
        """The fields of ``path``: the columns in schema order (no header), or, given its
        header's names, each column at the position its source name has there (a
        DataError names the file and the column the header lacks)."""
        sep, quoting = self.text.resolve(path)
        kinds, slots, maxb = self.kernel_arrays()
        if header is None:
            return FieldMap(self.names, kinds, slots, maxb, sep, quoting)
        header = tuple(header)
        at: dict[str, int] = {}
        for i, h in enumerate(header):
            at.setdefault(h, i)
        fk = np.full(len(header), COL_SKIP, dtype=np.int8)
        fs = np.zeros(len(header), dtype=np.int32)
        fm = np.zeros(len(header), dtype=np.int32)
        for c, src in enumerate(self.sources or self.names):
            if src not in at:
                shown = ", ".join(header[:40]) + (", ..." if len(header) > 40 else "")
                raise DataError(f"{path}: the header lacks column {src!r} (header: {shown})",
                                path=path, line=1, reason="header_mismatch")
            i = at[src]
            if header.count(src) > 1:
                raise DataError(f"{path}: the header names column {src!r} more than once",
                                path=path, line=1, reason="header_mismatch")
            fk[i], fs[i], fm[i] = kinds[c], slots[c], maxb[c]
        return FieldMap(header, fk, fs, fm, sep, quoting)


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


@dataclass(frozen=True)
class StrHashes:
    """The recs-hash64 of each row's string in the columns marked ``known`` (the Arrow
    path knows them for dictionary-encoded columns, hashed once per dictionary entry);
    the other columns' entries are unused."""

    values: np.ndarray  # uint64 [n, n_str]
    known: np.ndarray  # bool [n_str]

    def rows(self, rows: np.ndarray | slice) -> StrHashes:
        return StrHashes(self.values[rows], self.known)

    @staticmethod
    def concat(parts: list[StrHashes | None]) -> StrHashes | None:
        """The rows of all parts; None unless every part knows the same columns."""
        first = parts[0]
        if first is None or any(p is None or not np.array_equal(p.known, first.known)
                                for p in parts):
            return None
        return StrHashes(np.concatenate([p.values for p in parts]), first.known)  # type: ignore


@dataclass
class RawBatch:
    """Parsed rows: labels, integer columns with a missing mask, string columns
    as (start, length) into a byte arena (empty string = missing), float columns
    (NaN = missing), and list-of-string columns (:class:`ListColumn`, same arena)."""

    labels: np.ndarray  # int8 [n]
    ints: np.ndarray  # int64 [n, n_int]
    int_missing: np.ndarray  # bool [n, n_int]
    str_start: np.ndarray  # int64 [n, n_str]
    str_len: np.ndarray  # int32 [n, n_str]
    arena: np.ndarray  # uint8
    floats: np.ndarray | None = None  # float64 [n, n_float]; None: no float columns
    lists: tuple[ListColumn, ...] = ()
    ordered: bool = True  # strings lie in the arena in row order (text input)
    hashes: StrHashes | None = None  # recs-hash64 of some string columns, if known

    def __post_init__(self) -> None:
        if self.floats is None:
            self.floats = np.zeros((len(self.labels), 0), dtype=np.float64)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def empty(n_int: int, n_str: int, n_float: int = 0, n_list: int = 0) -> RawBatch:
        """A batch of zero rows (a rank whose shard ran out still joins the step)."""
        empty_list = ListColumn(np.zeros(1, np.int64), np.zeros(0, np.int64),
                                np.zeros(0, np.int32))
        return RawBatch(np.zeros(0, np.int8), np.zeros((0, n_int), np.int64),
                        np.zeros((0, n_int), np.bool_), np.zeros((0, n_str), np.int64),
                        np.zeros((0, n_str), np.int32), np.zeros(8, np.uint8),
                        np.zeros((0, n_float), np.float64), (empty_list,) * n_list)

    def slice(self, a: int, b: int) -> RawBatch:
        """Rows a..b-1 as views (the arena is shared)."""
        return RawBatch(self.labels[a:b], self.ints[a:b], self.int_missing[a:b],
                        self.str_start[a:b], self.str_len[a:b], self.arena, self.floats[a:b],
                        tuple(c.slice(a, b) for c in self.lists), self.ordered,
                        None if self.hashes is None else self.hashes.rows(slice(a, b)))

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
            np.concatenate([p.floats for p in parts]),
            tuple(lists),
            all(p.ordered for p in parts),
            StrHashes.concat([p.hashes for p in parts]),
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
def _field_end(buf: np.ndarray, q: int, nbytes: int, sep: int) -> bool:
    """True if byte q ends a field: the separator, a line feed, or a CR right before
    LF/end."""
    c = buf[q]
    if c == sep or c == _LF:
        return True
    return c == _CR and (q + 1 == nbytes or buf[q + 1] == _LF)


@njit(nogil=True, cache=True, inline="always")
def _to_field_end(buf: np.ndarray, q: int, end: int, nbytes: int, sep: int) -> int:
    while q < end and not _field_end(buf, q, nbytes, sep):
        q += 1
    return q


@njit(nogil=True, cache=True, inline="always")
def _scan_str(buf: np.ndarray, q: int, nbytes: int, sep: int, sep8: np.uint64):
    """Read past an unquoted string field from q: (its end, whether it holds control or
    non-ASCII bytes)."""
    special = False
    # 8 bytes at a time while none is the separator, a control byte or non-ASCII (a
    # control-byte separator, the tab, needs no test of its own: with it a constant,
    # as in parse_tsv_lines, the loops are those of a tab-only parser)
    while LITTLE_ENDIAN and q + 8 <= nbytes:
        w = load_u64_le(buf, q)
        stop = ((w - _ONES_X20) & ~w & _HIGHS) | (w & _HIGHS)
        if sep >= 0x20:
            x = w ^ sep8
            stop |= (x - _ONES_X01) & ~x & _HIGHS
        if stop:
            break
        q += 8
    while q < nbytes:
        c = buf[q]
        if c < 0x20 or c >= 0x80:
            if _field_end(buf, q, nbytes, sep):
                break
            special = True
        elif c == sep:
            break
        q += 1
    return q, special


@njit(nogil=True, cache=True)
def _scan_quoted(buf: np.ndarray, q: int, nbytes: int, sep: int):
    """Read a quoted field whose opening quote is at q, unescaping ``""`` in place:
    (where the field ends, end of its content, which starts at q + 1; whether the content
    holds control or non-ASCII bytes; a reason: unterminated_quote when the line ends
    first, bad_quote for text after the closing quote)."""
    r = q + 1
    w = r
    special = False
    while True:
        if r >= nbytes or buf[r] == _LF:
            return r, w, special, R_UNTERMINATED_QUOTE
        c = buf[r]
        if c == _QUOTE:
            if r + 1 < nbytes and buf[r + 1] == _QUOTE:
                buf[w] = _QUOTE
                w += 1
                r += 2
                continue
            r += 1
            break
        if c < 0x20 or c >= 0x80:
            special = True
        if w != r:
            buf[w] = c
        w += 1
        r += 1
    if r < nbytes and not _field_end(buf, r, nbytes, sep):
        return _to_field_end(buf, r, nbytes, nbytes, sep), w, special, R_BAD_QUOTE
    return r, w, special, 0


@njit(nogil=True, cache=True, inline="always")
def _scan_int(buf: np.ndarray, q: int, end: int, nbytes: int, sep: int):
    """Parse an integer from q up to the field end or ``end``: (where it stopped, reason,
    value, missing)."""
    p = q
    reason = 0
    neg = False
    if q < end and (buf[q] == 45 or buf[q] == 43):  # '-' or '+'
        neg = buf[q] == 45
        q += 1
    last_digit = np.uint64(8) if neg else np.uint64(7)  # of 2**63 (-1)
    acc = np.uint64(0)
    while q < end:
        c = buf[q]
        if c >= 48 and c <= 57:
            d = np.uint64(c - 48)
            if acc >= _INT64_MAX_DIV10 and (acc > _INT64_MAX_DIV10 or d > last_digit):
                reason = R_INT_OVERFLOW
            acc = acc * np.uint64(10) + d
        elif _field_end(buf, q, nbytes, sep):
            break
        elif reason == 0:
            reason = R_BINARY if (c < 0x20 or c == 0x7F) else R_BAD_INT
        q += 1
    value = np.int64(0)
    if q == p:
        return q, 0, value, True
    if reason == 0 and (buf[q - 1] < 48 or buf[q - 1] > 57):
        reason = R_BAD_INT  # a lone sign
    if reason == 0:
        if neg:
            value = -np.int64(acc - np.uint64(1)) - 1 if acc > 0 else np.int64(0)
        else:
            value = np.int64(acc)
    return q, reason, value, False


@njit(nogil=True, cache=True, inline="always")
def _lower(c: int) -> int:
    return c + 32 if 65 <= c <= 90 else c


@njit(nogil=True, cache=True, inline="always")
def _word_at(buf: np.ndarray, q: int, end: int, word: bytes) -> bool:
    """Whether buf[q:] starts with ``word`` (lowercase ASCII), any case, before ``end``."""
    if q + len(word) > end:
        return False
    for k in range(len(word)):
        if _lower(buf[q + k]) != word[k]:
            return False
    return True


@njit(nogil=True, cache=True)
def _scan_float(buf: np.ndarray, q: int, end: int, nbytes: int, sep: int):
    """Parse a decimal float (``1``, ``-2.5``, ``.5``, ``3e-4``, ``nan``, ``inf``) from q up
    to the field end or ``end``: (where it stopped, reason, value; NaN when empty).

    Correctly rounded up to 15 significant digits with |exponent| <= 22 (mantissa * or /
    an exact power of ten), else within about one unit in the last place."""
    p = q
    neg = False
    if q < end and (buf[q] == 45 or buf[q] == 43):
        neg = buf[q] == 45
        q += 1
    mant = np.uint64(0)
    ndig = 0  # significant digits kept in mant (at most 19)
    exp10 = 0
    digits = 0
    while q < end and 48 <= buf[q] <= 57:
        digits += 1
        if ndig < 19:
            mant = mant * np.uint64(10) + np.uint64(buf[q] - 48)
            if mant != 0:
                ndig += 1
        else:
            exp10 += 1
        q += 1
    if q < end and buf[q] == 46:  # '.'
        q += 1
        while q < end and 48 <= buf[q] <= 57:
            digits += 1
            if ndig < 19:
                mant = mant * np.uint64(10) + np.uint64(buf[q] - 48)
                exp10 -= 1
                if mant != 0:
                    ndig += 1
            q += 1
    value = np.nan
    if digits == 0:
        if q == p and (q == end or _field_end(buf, q, nbytes, sep)):
            return q, 0, value  # empty: missing
        if _word_at(buf, q, end, b"nan"):
            q += 3
        elif _word_at(buf, q, end, b"infinity"):
            q += 8
            value = -np.inf if neg else np.inf
        elif _word_at(buf, q, end, b"inf"):
            q += 3
            value = -np.inf if neg else np.inf
        else:
            return _to_field_end(buf, q, end, nbytes, sep), R_BAD_FLOAT, value
    else:
        if q < end and (buf[q] == 101 or buf[q] == 69):  # 'e' / 'E'
            q += 1
            eneg = False
            if q < end and (buf[q] == 45 or buf[q] == 43):
                eneg = buf[q] == 45
                q += 1
            e = 0
            edigits = 0
            while q < end and 48 <= buf[q] <= 57:
                if e < 100000:
                    e = e * 10 + (buf[q] - 48)
                edigits += 1
                q += 1
            if edigits == 0:
                return _to_field_end(buf, q, end, nbytes, sep), R_BAD_FLOAT, value
            exp10 += -e if eneg else e
        if mant == 0:
            value = 0.0
        elif ndig + exp10 > 310:
            value = np.inf
        elif ndig + exp10 < -330:
            value = 0.0
        elif mant <= np.uint64(1 << 53) and -22 <= exp10 <= 22:
            m = float(mant)
            value = m * _POW10[exp10] if exp10 >= 0 else m / _POW10[-exp10]
        elif exp10 < -300:
            value = float(mant) * 10.0 ** (exp10 + 30) * 1e-30
        else:
            value = float(mant) * 10.0 ** exp10
        if neg:
            value = -value
    if q < end and not _field_end(buf, q, nbytes, sep):
        return _to_field_end(buf, q, end, nbytes, sep), R_BAD_FLOAT, np.nan
    return q, 0, value


@njit(nogil=True, cache=True, inline="always")
def _parse_lines(buf, nbytes, at_eof, sep, quoting, kinds, slots, max_bytes, label_op,
                 label_value, labels, ints, imiss, floats, sstart, slen,
                 bad_line, bad_reason, bad_col):
    """Parse the complete lines of buf[:nbytes] into the output arrays, in one pass.

    ``kinds``/``slots``/``max_bytes``: per field of a line (a FieldMap). Good rows are
    written compactly; bad lines are recorded as (line index within this chunk, reason,
    field). ``at_eof`` marks a chunk whose last line may lack its newline (a wrong field
    count there is reported as a truncated last line). CRLF line ends are accepted.
    String fields are (start, length) into ``buf`` (quoted ones unescaped in place).
    Returns (good rows, lines, bad lines).
    """
    ncols = kinds.shape[0]
    sep8 = np.uint64(sep) * _ONES_X01
    quote8 = np.uint64(_QUOTE) * _ONES_X01
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
            kind = kinds[field] if field < ncols else COL_SKIP
            fr = 0
            if quoting and q < nbytes and buf[q] == _QUOTE:
                # fast: read the content up to the next quote as the field's kind and
                # accept it if that quote closes the field; else (a doubled quote, an
                # unterminated or bad quote) the general scan below
                a = q + 1
                special = False
                v = np.int64(0)
                miss = False
                x = np.nan
                if kind == COL_STR or kind == COL_SKIP:
                    z, special = _scan_str(buf, a, nbytes, _QUOTE, quote8)
                elif kind == COL_INT:
                    z, fr, v, miss = _scan_int(buf, a, nbytes, nbytes, _QUOTE)
                elif kind == COL_FLOAT:
                    z, fr, x = _scan_float(buf, a, nbytes, nbytes, _QUOTE)
                else:
                    z = _to_field_end(buf, a, nbytes, nbytes, _QUOTE)
                if z < nbytes and buf[z] == _QUOTE and (
                        z + 1 == nbytes or _field_end(buf, z + 1, nbytes, sep)):
                    q = z + 1
                    e = z
                else:
                    q, e, special, fr = _scan_quoted(buf, p, nbytes, sep)
                    if fr == 0 and kind == COL_INT:
                        z, fr, v, miss = _scan_int(buf, a, e, nbytes, sep)
                        if fr == 0 and z != e:
                            fr = R_BAD_INT
                    elif fr == 0 and kind == COL_FLOAT:
                        z, fr, x = _scan_float(buf, a, e, nbytes, sep)
                        if fr == 0 and z != e:
                            fr = R_BAD_FLOAT
                if kind != COL_SKIP and fr != R_UNTERMINATED_QUOTE and fr != R_BAD_QUOTE:
                    if e - a > max_bytes[field]:
                        fr = R_FIELD_TOO_LONG
                    elif kind == COL_STR:
                        if special:
                            fr = _utf8_ok(buf, a, e)
                        sstart[n_good, slots[field]] = a
                        slen[n_good, slots[field]] = e - a
                    elif kind == COL_INT:
                        ints[n_good, slots[field]] = v
                        imiss[n_good, slots[field]] = miss
                    elif kind == COL_FLOAT:
                        floats[n_good, slots[field]] = x
                    elif fr == 0:
                        fr = _label(buf, a, e, nbytes, sep, label_op, label_value, labels, n_good)
            elif kind == COL_STR:
                q, special = _scan_str(buf, q, nbytes, sep, sep8)
                flen = q - p
                if flen > max_bytes[field]:
                    fr = R_FIELD_TOO_LONG
                elif special:
                    fr = _utf8_ok(buf, p, q)
                sstart[n_good, slots[field]] = p
                slen[n_good, slots[field]] = flen
            elif kind == COL_INT:
                q, fr, v, miss = _scan_int(buf, q, nbytes, nbytes, sep)
                if q - p > max_bytes[field]:
                    fr = R_FIELD_TOO_LONG
                ints[n_good, slots[field]] = v
                imiss[n_good, slots[field]] = miss
            elif kind == COL_FLOAT:
                q, fr, x = _scan_float(buf, q, nbytes, nbytes, sep)
                if q - p > max_bytes[field]:
                    fr = R_FIELD_TOO_LONG
                floats[n_good, slots[field]] = x
            elif kind == COL_LABEL:
                q = _to_field_end(buf, q, nbytes, nbytes, sep)
                if label_op == OP_LABEL_BYTES and q - p == 1 and (buf[p] == 48 or buf[p] == 49):
                    labels[n_good] = buf[p] - 48
                else:
                    fr = _label(buf, p, q, nbytes, sep, label_op, label_value, labels, n_good)
            else:  # COL_SKIP
                q = _to_field_end(buf, q, nbytes, nbytes, sep)
            if fr != 0 and reason == 0:
                reason = fr
                rcol = field
            field += 1
            if reason == R_UNTERMINATED_QUOTE:
                break
            if q >= nbytes or buf[q] != sep:
                break
            q += 1
            if reason != 0:  # the line is bad already: only count its fields
                inq = False
                while q < nbytes and buf[q] != _LF:
                    c = buf[q]
                    if quoting and c == _QUOTE:
                        inq = not inq
                    elif c == sep and not inq:
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
        if field != ncols and reason != R_UNTERMINATED_QUOTE:
            # a wrong field count explains any other error on the line
            reason = R_TRUNCATED if (at_eof and not has_lf) else R_FIELD_COUNT
        if reason == 0:
            n_good += 1
        else:
            bad_line[n_bad] = line
            bad_reason[n_bad] = reason
            bad_col[n_bad] = rcol if reason < R_TRUNCATED or reason > R_LINE_TOO_LONG else -1
            n_bad += 1
        line += 1
        pos = q + 1
    return n_good, line, n_bad


# _nrt=False: the kernel allocates nothing, and without the runtime the helpers
# inlined into its field loop carry no refcount calls on ``buf`` (Numba cannot prune
# them across their loops' exits: they cost a quarter of the TSV parse time)
@njit(nogil=True, cache=True, _nrt=False)
def parse_lines(buf, nbytes, at_eof, sep, quoting, kinds, slots, max_bytes, label_op,
                label_value, labels, ints, imiss, floats, sstart, slen,
                bad_line, bad_reason, bad_col):
    """:func:`_parse_lines` for any separator and quoting."""
    return _parse_lines(buf, nbytes, at_eof, sep, quoting, kinds, slots, max_bytes,
                        label_op, label_value, labels, ints, imiss, floats, sstart, slen,
                        bad_line, bad_reason, bad_col)


@njit(nogil=True, cache=True, _nrt=False)
def parse_tsv_lines(buf, nbytes, at_eof, kinds, slots, max_bytes, label_op, label_value,
                    labels, ints, imiss, floats, sstart, slen, bad_line, bad_reason,
                    bad_col):
    """:func:`_parse_lines` compiled for tabs without quoting (the separator a constant:
    the common layout reads ~1.4x faster than through :func:`parse_lines`)."""
    return _parse_lines(buf, nbytes, at_eof, _TAB, False, kinds, slots, max_bytes,
                        label_op, label_value, labels, ints, imiss, floats, sstart, slen,
                        bad_line, bad_reason, bad_col)


@njit(nogil=True, cache=True)
def _label(buf, a, b, nbytes, sep, op, value, labels, row):  # noqa: ANN001, ANN202
    """Write the label of field buf[a:b] under rule (op, value); returns a reason (0: ok)."""
    flen = b - a
    if op == OP_LABEL_BYTES:
        if flen == 1 and (buf[a] == 48 or buf[a] == 49):
            labels[row] = buf[a] - 48
            return 0
        if flen > 0 and _utf8_ok(buf, a, b) == R_BINARY:
            return R_BINARY
        return R_BAD_LABEL
    z, fr, x = _scan_float(buf, a, b, nbytes, sep)
    if fr != 0 or z != b:
        return R_BAD_LABEL
    lab = rule_label(x, op, value)
    if lab == LABEL_MISSING:
        return R_MISSING_LABEL
    if lab == LABEL_BAD:
        return R_BAD_LABEL
    labels[row] = lab
    return 0


@dataclass
class ParsedChunk:
    """The good rows of one chunk and its bad lines (index within the chunk, reason,
    field index of the file's FieldMap)."""

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
        self.positional = FieldMap(schema.names, *schema.kernel_arrays())
        self._label_op, self._label_value = schema.label_op
        self._n_int = len(schema.int_names)
        self._n_str = len(schema.str_names)
        self._n_float = len(schema.float_names)

    def parse(self, buf: np.ndarray, nbytes: int, at_eof: bool, own_buffer: bool = False,
              fields: FieldMap | None = None) -> ParsedChunk:
        """Parse buf[:nbytes] (complete lines; the last may lack '\\n' when at_eof), split
        as ``fields`` says (default: the schema's columns in order, tab-separated, no
        quoting).

        String columns point into ``buf`` itself when ``own_buffer`` (the caller hands
        the buffer over and must not reuse it; quoted fields are unescaped in it), else
        into a copy."""
        fm = fields or self.positional
        if not own_buffer:
            buf = buf[:nbytes].copy()
        cap = count_lines(buf, nbytes)
        labels = np.empty(cap, dtype=np.int8)
        ints = np.empty((cap, self._n_int), dtype=np.int64)
        imiss = np.empty((cap, self._n_int), dtype=np.bool_)
        floats = np.empty((cap, self._n_float), dtype=np.float64)
        sstart = np.empty((cap, self._n_str), dtype=np.int64)
        slen = np.empty((cap, self._n_str), dtype=np.int32)
        bad_line = np.empty(cap, dtype=np.int64)
        bad_reason = np.empty(cap, dtype=np.int8)
        bad_col = np.empty(cap, dtype=np.int16)
        out = (labels, ints, imiss, floats, sstart, slen, bad_line, bad_reason, bad_col)
        if fm.sep == _TAB and not fm.quoting:
            n_good, n_lines, n_bad = parse_tsv_lines(
                buf, nbytes, at_eof, fm.kinds, fm.slots, fm.max_bytes, self._label_op,
                self._label_value, *out)
        else:
            n_good, n_lines, n_bad = parse_lines(
                buf, nbytes, at_eof, fm.sep, fm.quoting, fm.kinds, fm.slots, fm.max_bytes,
                self._label_op, self._label_value, *out)
        if not self.schema.kinds.count(COL_LABEL):
            labels[:n_good] = 0
        batch = RawBatch(labels[:n_good], ints[:n_good], imiss[:n_good],
                         sstart[:n_good], slen[:n_good], buf, floats[:n_good])
        return ParsedChunk(batch, n_lines, bad_line[:n_bad], bad_reason[:n_bad], bad_col[:n_bad])
