"""Arrow record batches to :class:`RawBatch` es, and the type rules they must meet.

One converter serves the Parquet reader and Arrow sources given to the library (record
batches, tables, pandas data frames). String columns go into an arena straight from
Arrow's buffers (offsets + bytes) by compiled kernels, never as Python objects: per record
batch, each plain column's bytes and each dictionary's bytes are copied once, as blocks,
into one arena that every batch converted from it shares (:meth:`ArrowConverter.convert`
takes row ranges of a record batch). A dictionary column's rows point at their entries,
and carry the entries' recs-hash64 (:class:`~recs_core.data.parse.StrHashes`): each
entry is hashed once, and again only where a later batch's dictionary differs from the
entries hashed before (Parquet hands each batch a fresh copy of a column chunk's
dictionary, growing where the chunk falls back to plain pages), so the hashing operators
do per entry what they would do per row. Nulls are missing values (a null label is a bad
row); an empty string is missing, as in text.

Which Arrow types a spec column takes (anything else is a schema error naming the
column): the label's column integer, boolean or float, turned into 0/1 by the spec's
label rule (:mod:`recs_core.data.labels`, the function the text parser uses); ``int``
integer (a uint64 above 2**63-1 is a bad row); ``float`` float or integer (null: NaN);
``str`` string or binary (also large and dictionary-encoded); ``list_str`` a list of
those. Row-level problems are bad rows under the spec's policy, with the same reasons as
text: ``missing_label``, ``bad_label``, ``int_overflow``, ``field_too_long``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

from recs_core.data.labels import OP_01, OP_LABEL_BYTES, labels_from_numbers
from recs_core.data.parse import (
    COL_FLOAT,
    COL_INT,
    COL_LABEL,
    COL_LIST_STR,
    COL_STR,
    ColumnSchema,
    ListColumn,
    RawBatch,
    StrHashes,
)
from recs_core.data.reasons import R_FIELD_TOO_LONG, R_INT_OVERFLOW
from recs_core.errors import DataError
from recs_core.features.hashing import hash_bytes, hash_str

_KIND_NAMES = {COL_LABEL: "label", COL_INT: "int", COL_STR: "str", COL_LIST_STR: "list_str",
               COL_FLOAT: "float"}
_EMPTY_BITS = np.zeros(0, dtype=np.uint8)


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t))


def type_class(t: pa.DataType) -> str:
    """The class of an Arrow type that decides which spec columns may read it."""
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_floating(t):
        return "float"
    if _is_text(t):
        return "string"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_text(t.value_type):
        return "list of strings"
    return str(t)


_ACCEPTS = {COL_LABEL: ("integer", "boolean", "float"), COL_INT: ("integer", "boolean"),
            COL_FLOAT: ("float", "integer"), COL_STR: ("string",),
            COL_LIST_STR: ("list of strings",)}


def check_schema(schema: ColumnSchema, arrow: pa.Schema, where: str) -> list[int]:
    """The position in ``arrow`` of each spec column (picked by name); a DataError naming
    ``where`` and the column when one is absent or of a type its kind cannot take."""
    names = arrow.names
    out = []
    for name, kind in zip(schema.names, schema.kinds):
        if names.count(name) != 1:
            what = "lacks" if name not in names else "has more than one"
            shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
            raise DataError(f"{where}: {what} column {name!r} (columns: {shown})",
                            path=where, reason="schema_mismatch")
        i = names.index(name)
        t = arrow.field(i).type
        if type_class(t) not in _ACCEPTS[kind]:
            raise DataError(f"{where}: column {name!r} has type {t} ({type_class(t)}); the "
                            f"spec's type {_KIND_NAMES[kind]} reads "
                            f"{' or '.join(_ACCEPTS[kind])} columns",
                            path=where, reason="wrong_type")
        out.append(i)
    return out


@dataclass
class Converted:
    """The good rows of one Arrow batch, and its bad rows (index, reason, column index)."""

    batch: RawBatch
    n_rows: int
    bad_row: np.ndarray
    bad_reason: np.ndarray
    bad_col: np.ndarray


# The row kernels below allocate nothing and are compiled without Numba's runtime: the
# arrays handed to the inlined helpers would otherwise be reference counted per row.
@njit(nogil=True, cache=True, inline="always")
def _valid(bits: np.ndarray, i: int) -> bool:
    return bits.shape[0] == 0 or (bits[i >> 3] >> (i & 7)) & 1 == 1


@njit(nogil=True, cache=True, inline="always")
def _put(start, length, slot, i, at, ln, maxb, col, bad_reason, bad_col) -> None:  # noqa: ANN001
    """Row i of string slot ``slot``: at ``at`` in the arena, ``ln`` bytes (a bad row when
    longer than ``maxb``, unless it is bad already)."""
    start[slot, i] = at
    length[slot, i] = ln
    if ln > maxb and bad_reason[i] == 0:
        bad_reason[i] = R_FIELD_TOO_LONG
        bad_col[i] = col


@njit(nogil=True, cache=True, _nrt=False)
def _plain_strings(offsets, bits, off, n, base, maxb, col, slot, start, length,
                   bad_reason, bad_col):
    """Rows of a plain string column (its bytes copied to ``base`` in the arena)."""
    o0 = offsets[off]
    for i in range(n):
        a = offsets[off + i]
        ln = offsets[off + i + 1] - a
        if not _valid(bits, off + i):
            ln = 0
        _put(start, length, slot, i, a - o0 + base, ln, maxb, col, bad_reason, bad_col)


@njit(nogil=True, cache=True, _nrt=False)
def _entry_hashes(doffsets, ddata, lo, hi, out):  # noqa: ANN001, ANN201
    """recs-hash64 of dictionary entries lo..hi-1 (``doffsets`` from the first entry)."""
    for e in range(lo, hi):
        out[e] = hash_bytes(ddata, doffsets[e], doffsets[e + 1] - doffsets[e])


@njit(nogil=True, cache=True, _nrt=False)
def _dict_strings(indices, bits, off, n, doffsets, base, entry_hash, empty_hash, maxb, col,
                  slot, start, length, hashes, bad_reason, bad_col):
    """Rows of a dictionary column whose dictionary's bytes lie at ``base`` (``doffsets``
    from its first entry), with the entries' hashes."""
    d0 = doffsets[0]
    for i in range(n):
        a, ln, h = d0, 0, empty_hash  # a null's index may hold anything
        if _valid(bits, off + i):
            k = indices[off + i]
            a = doffsets[k]
            ln = doffsets[k + 1] - a
            h = entry_hash[k]
        hashes[slot, i] = h
        _put(start, length, slot, i, a - d0 + base, ln, maxb, col, bad_reason, bad_col)


@njit(nogil=True, cache=True, _nrt=False)
def _list_tokens(loffsets, lbits, loff, n, toffsets, tbits, base, maxb, col, out_off,
                 tstart, tlen, bad_reason, bad_col):
    """A list column's rows: out_off [n+1] and per token (start, length); a null list is
    empty, a null token empty; the tokens' bytes lie at ``base`` from the first one's."""
    t0 = toffsets[loffsets[loff]]
    m = 0
    out_off[0] = 0
    for i in range(n):
        if _valid(lbits, loff + i):
            for t in range(loffsets[loff + i], loffsets[loff + i + 1]):
                a = toffsets[t]
                ln = toffsets[t + 1] - a if _valid(tbits, t) else 0
                tstart[m] = a - t0 + base
                tlen[m] = ln
                m += 1
                if ln > maxb and bad_reason[i] == 0:
                    bad_reason[i] = R_FIELD_TOO_LONG
                    bad_col[i] = col
        out_off[i + 1] = m
    return m


@njit(nogil=True, cache=True)
def _rows_of(cols: np.ndarray) -> np.ndarray:
    """A [k, n] column-major array as [n, k] rows (in cache-sized blocks of rows: 2-3x
    faster than NumPy's copy of the transposed view here)."""
    k, n = cols.shape
    out = np.empty((n, k), cols.dtype)
    for i0 in range(0, n, 64):
        for j in range(k):
            for i in range(i0, min(n, i0 + 64)):
                out[i, j] = cols[j, i]
    return out


def _bits(arr: pa.Array) -> np.ndarray:
    """The validity bitmap's bytes (empty: no nulls)."""
    buf = arr.buffers()[0]
    if buf is None or arr.null_count == 0:
        return _EMPTY_BITS
    return np.frombuffer(buf, dtype=np.uint8)


def _offsets(arr: pa.Array, at: int) -> np.ndarray:
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type) or \
        pa.types.is_large_list(arr.type)
    return np.frombuffer(arr.buffers()[at], dtype=np.int64 if large else np.int32)


def _data(arr: pa.Array, at: int) -> np.ndarray:
    buf = arr.buffers()[at]
    return np.zeros(0, np.uint8) if buf is None else np.frombuffer(buf, dtype=np.uint8)


def _numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, null mask) of an integer, float or boolean column, from its buffers."""
    n, off = len(arr), arr.offset
    bits = _bits(arr)
    if pa.types.is_boolean(arr.type):
        raw = np.unpackbits(_data(arr, 1), bitorder="little")[off:off + n]
    else:
        raw = np.frombuffer(arr.buffers()[1], dtype=arr.type.to_pandas_dtype())[off:off + n]
    null = (np.zeros(n, np.bool_) if not len(bits) else
            ~np.unpackbits(bits, bitorder="little")[off:off + n].astype(np.bool_))
    return raw, null


@dataclass
class _Entries:
    """One string column's dictionary as last hashed: its offsets (from its first entry)
    and bytes, and each entry's hash."""

    offsets: np.ndarray
    data: np.ndarray
    hashes: np.ndarray  # uint64 [entries]

    def shared(self, offsets: np.ndarray, data: np.ndarray) -> int:
        """How many leading entries a dictionary shares with this one: all of this
        one's, or none."""
        k = len(self.hashes)
        if len(offsets) <= k:
            return 0
        if offsets.ctypes.data == self.offsets.ctypes.data and \
                data.ctypes.data == self.data.ctypes.data:  # the same buffers (held here)
            return k
        same = (np.array_equal(offsets[:k + 1] - offsets[0], self.offsets - self.offsets[0])
                and np.array_equal(data[offsets[0]:offsets[k]],
                                   self.data[self.offsets[0]:self.offsets[k]]))
        return k if same else 0


@dataclass
class _Arena:
    """The arena of one record batch: every string column's bytes (a dictionary's
    whole), and where each column's lie."""

    batch: pa.RecordBatch
    arena: np.ndarray
    base: dict[int, int]  # spec column -> its bytes' place in the arena
    entries: dict[int, _Entries]  # dictionary columns' hashed entries
    known: np.ndarray | None  # bool [string slots]: the dictionary columns' (None: none)


_EMPTY_HASH = np.uint64(hash_str(b""))


class ArrowConverter:
    """Converts Arrow record batches (with the spec's columns, any others ignored) to
    :class:`RawBatch` es for one column schema."""

    def __init__(self, schema: ColumnSchema) -> None:
        self.schema = schema
        kinds = schema.kinds
        self._slots = []
        count: dict[int, int] = {}
        for k in kinds:
            self._slots.append(count.get(k, 0))
            count[k] = count.get(k, 0) + 1
        self._n_int = count.get(COL_INT, 0)
        self._n_str = count.get(COL_STR, 0)
        self._n_float = count.get(COL_FLOAT, 0)
        op, self._label_value = schema.label_op
        self._label_op = OP_01 if op == OP_LABEL_BYTES else op  # a typed 0/1 column
        self._arena: _Arena | None = None
        self._hashed: dict[int, _Entries] = {}  # per column, across record batches

    def convert(self, rb: pa.RecordBatch, columns: list[int], lo: int = 0,
                hi: int | None = None) -> Converted:
        """Rows lo..hi-1 (default: all) of ``rb`` (spec column c is
        ``rb.column(columns[c])``, type-checked by :func:`check_schema`) as a RawBatch
        of its good rows; the batches of one record batch share its arena."""
        hi = rb.num_rows if hi is None else hi
        n = hi - lo
        schema = self.schema
        ar = self._arena_of(rb, columns)
        labels = np.zeros(n, np.int8)
        # columns are filled one by one in column-major arrays (sequential writes), then
        # turned into the row-major layout of RawBatch in one pass each
        ints = np.empty((self._n_int, n), np.int64)
        imiss = np.empty((self._n_int, n), np.bool_)
        sstart = np.empty((self._n_str, n), np.int64)
        slen = np.empty((self._n_str, n), np.int32)
        hashes = np.empty((self._n_str, n if ar.entries else 0), np.uint64)
        floats = np.empty((self._n_float, n), np.float64)
        bad_reason = np.zeros(n, np.int8)
        bad_col = np.full(n, -1, np.int16)
        lists = []
        for c, kind in enumerate(schema.kinds):
            arr = rb.column(columns[c])
            slot, maxb = self._slots[c], schema.max_bytes[c]
            if kind == COL_STR:
                off = arr.offset + lo
                if not n:
                    continue
                if c in ar.entries:
                    d = arr.dictionary
                    _dict_strings(_index_array(arr), _bits(arr), off, n, _dict_offsets(d),
                                  ar.base[c], ar.entries[c].hashes, _EMPTY_HASH, maxb, c,
                                  slot, sstart, slen, hashes, bad_reason, bad_col)
                else:
                    of = _offsets(arr, 1)
                    _plain_strings(of, _bits(arr), off, n,
                                   ar.base[c] + int(of[off] - of[arr.offset]), maxb, c, slot,
                                   sstart, slen, bad_reason, bad_col)
            elif kind == COL_LIST_STR:
                lists.append(_list(arr, lo, n, ar.arena, ar.base[c], maxb, c, bad_reason,
                                   bad_col))
            else:
                raw, null = _numbers(arr.slice(lo, n))
                if kind in (COL_LABEL, COL_FLOAT):
                    x = raw.astype(np.float64)
                    x[null] = np.nan
                    if kind == COL_FLOAT:
                        floats[slot] = x
                        continue
                    labels, why = labels_from_numbers(x, self._label_op, self._label_value)
                    for code in np.unique(why[why != 0]).tolist():
                        _mark(bad_reason, bad_col, why == code, code, c)
                else:
                    if raw.dtype == np.uint64:
                        _mark(bad_reason, bad_col, ~null & (raw > np.iinfo(np.int64).max),
                              R_INT_OVERFLOW, c)
                    ints[slot] = raw
                    ints[slot][null] = 0
                    imiss[slot] = null
        batch = RawBatch(labels, _rows_of(ints), _rows_of(imiss), _rows_of(sstart),
                         _rows_of(slen), ar.arena, _rows_of(floats), tuple(lists),
                         ordered=False,
                         hashes=None if ar.known is None else StrHashes(_rows_of(hashes),
                                                                        ar.known))
        bad = np.flatnonzero(bad_reason)
        if len(bad):
            keep = bad_reason == 0
            batch = _take(batch, keep)
        return Converted(batch, n, bad, bad_reason[bad], bad_col[bad])

    def _arena_of(self, rb: pa.RecordBatch, columns: list[int]) -> _Arena:
        """The arena of ``rb`` (built on its first conversion)."""
        if self._arena is not None and self._arena.batch is rb:
            return self._arena
        n = rb.num_rows
        blocks: list[tuple[int, np.ndarray]] = []  # (column, bytes)
        entries = {}
        for c, kind in enumerate(self.schema.kinds):
            arr = rb.column(columns[c])
            if kind == COL_STR and pa.types.is_dictionary(arr.type):
                d = arr.dictionary
                dof, ddata = _dict_offsets(d), _data(d, 2)
                blocks.append((c, ddata[dof[0]:dof[-1]]))
                entries[c] = self._hash_entries(c, dof, ddata)
            elif kind == COL_STR:
                of = _offsets(arr, 1)
                blocks.append((c, _data(arr, 2)[of[arr.offset]:of[arr.offset + n]]))
            elif kind == COL_LIST_STR:
                if pa.types.is_dictionary(arr.values.type):
                    raise DataError("dictionary-encoded list items are not read",
                                    reason="wrong_type")
                t = arr.values
                lof, tof = _offsets(arr, 1), _offsets(t, 1)
                a, b = (tof[t.offset + lof[arr.offset]], tof[t.offset + lof[arr.offset + n]]) \
                    if n else (0, 0)
                blocks.append((c, _data(t, 2)[a:b]))
        arena = np.empty(max(8, sum(len(b) for _, b in blocks)), np.uint8)
        base, at = {}, 0
        for c, b in blocks:
            arena[at:at + len(b)] = b
            base[c] = at
            at += len(b)
        known = None
        if entries:
            known = np.zeros(self._n_str, np.bool_)
            known[[self._slots[c] for c in entries]] = True
        self._arena = _Arena(rb, arena, base, entries, known)
        return self._arena

    def _hash_entries(self, c: int, dof: np.ndarray, ddata: np.ndarray) -> _Entries:
        """Column c's dictionary with its entries hashed (those a former dictionary of
        the column shares are not hashed again)."""
        m = len(dof) - 1
        prev = self._hashed.get(c)
        k = 0 if prev is None else prev.shared(dof, ddata)
        if prev is not None and k == m:
            return prev
        out = np.empty(m, np.uint64)
        if k:
            out[:k] = prev.hashes  # type: ignore[union-attr]
        _entry_hashes(dof, ddata, k, m, out)
        self._hashed[c] = _Entries(dof, ddata, out)
        return self._hashed[c]


def _index_array(arr: pa.Array) -> np.ndarray:
    return np.frombuffer(arr.buffers()[1], dtype=arr.type.index_type.to_pandas_dtype())


def _dict_offsets(d: pa.Array) -> np.ndarray:
    """A dictionary's offsets, entry 0 first."""
    return _offsets(d, 1)[d.offset:d.offset + len(d) + 1]


def _list(arr: pa.Array, lo: int, n: int, arena: np.ndarray, base: int, maxb: int, c: int,
          bad_reason: np.ndarray, bad_col: np.ndarray) -> ListColumn:
    """Rows lo..lo+n-1 of a list column whose record batch's tokens lie at ``base``."""
    t = arr.values
    lof, tof = _offsets(arr, 1), _offsets(t, 1)
    # item offsets relative to the child array's own offset
    first = int(lof[arr.offset]) if len(arr) else 0
    a = int(lof[arr.offset + lo]) if n else first
    nnz = int(lof[arr.offset + lo + n]) - a if n else 0
    out_off = np.zeros(n + 1, np.int64)
    tstart = np.empty(nnz, np.int64)
    tlen = np.empty(nnz, np.int32)
    if n:
        at = base + int(tof[t.offset + a] - tof[t.offset + first])
        m = _list_tokens(lof, _bits(arr), arr.offset + lo, n, tof[t.offset:], _child_bits(t),
                         at, maxb, c, out_off, tstart, tlen, bad_reason, bad_col)
        tstart, tlen = tstart[:m], tlen[:m]
    return ListColumn(out_off, tstart, tlen)


def _child_bits(t: pa.Array) -> np.ndarray:
    """The items' validity bits, shifted so that bit i is item i of ``t`` (a child with an
    offset is rare: a bitmap that is not byte aligned is unpacked and packed again)."""
    bits = _bits(t)
    if not len(bits) or t.offset == 0:
        return bits
    un = np.unpackbits(bits, bitorder="little")[t.offset:t.offset + len(t)]
    return np.packbits(un, bitorder="little")


def _mark(reason: np.ndarray, col: np.ndarray, rows: np.ndarray, code: int, c: int) -> None:
    """Record ``code`` in column ``c`` for ``rows`` that have no earlier reason."""
    new = rows & (reason == 0)
    reason[new] = code
    col[new] = c


def _take(b: RawBatch, keep: np.ndarray) -> RawBatch:
    """The rows of ``b`` where ``keep`` (the arena is shared)."""
    lists = []
    for col in b.lists:
        counts = np.diff(col.offsets)[keep]
        tok = np.repeat(keep, np.diff(col.offsets))
        lists.append(ListColumn(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                                col.start[tok], col.length[tok]))
    return RawBatch(b.labels[keep], b.ints[keep], b.int_missing[keep], b.str_start[keep],
                    b.str_len[keep], b.arena, b.floats[keep], tuple(lists), ordered=False,
                    hashes=None if b.hashes is None else b.hashes.rows(keep))


def sample_batch(schema: ColumnSchema, dictionary: bool = False) -> pa.RecordBatch:
    """Two valid rows of every spec column (for compiling the kernels before a pass);
    ``dictionary``: string columns dictionary encoded."""
    arrays = []
    for kind in schema.kinds:
        if kind in (COL_LABEL, COL_INT, COL_FLOAT):
            arrays.append(pa.array([0, 1], pa.int64() if kind != COL_FLOAT else pa.float64()))
        elif kind == COL_STR:
            a = pa.array(["a", None], pa.string())
            arrays.append(a.dictionary_encode() if dictionary else a)
        else:
            arrays.append(pa.array([["a", "b"], None], pa.list_(pa.string())))
    return pa.RecordBatch.from_arrays(arrays, names=list(schema.names))
