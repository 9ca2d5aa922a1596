"""Arrow record batches to :class:`RawBatch` es, and the type rules they must meet.

One converter serves the Parquet reader and Arrow sources given to the library (record
batches, tables, pandas data frames). String columns go into the batch's arena straight
from Arrow's buffers (offsets + bytes) by compiled kernels, never as Python objects: a
plain column's bytes are copied as one block, a dictionary column's rows are taken by
their indices from the dictionary (its strings converted once per batch: copied whole
when it is no larger than what the rows use, else gathered row by row). Nulls are
missing values (a null label is a bad row); an empty string is missing, as in text.

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
)
from recs_core.data.reasons import R_FIELD_TOO_LONG, R_INT_OVERFLOW
from recs_core.errors import DataError

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


@njit(nogil=True, cache=True)
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


@njit(nogil=True, cache=True)
def _dict_strings(indices, bits, off, n, doffsets, doff, base, maxb, col, slot, start,
                  length, bad_reason, bad_col):
    """Rows of a dictionary column whose dictionary's bytes lie at ``base``."""
    d0 = doffsets[doff]
    for i in range(n):
        a, ln = d0, 0  # a null's index may hold anything
        if _valid(bits, off + i):
            k = indices[off + i]
            a = doffsets[doff + k]
            ln = doffsets[doff + k + 1] - a
        _put(start, length, slot, i, a - d0 + base, ln, maxb, col, bad_reason, bad_col)


@njit(nogil=True, cache=True)
def _dict_used_bytes(indices, bits, off, n, doffsets, doff):
    total = 0
    for i in range(n):
        if _valid(bits, off + i):
            k = indices[off + i]
            total += doffsets[doff + k + 1] - doffsets[doff + k]
    return total


@njit(nogil=True, cache=True)
def _dict_gather(indices, bits, off, n, doffsets, doff, ddata, arena, base, maxb, col, slot,
                 start, length, bad_reason, bad_col):
    """Rows of a dictionary column, their strings copied one by one to ``base`` on."""
    at = base
    for i in range(n):
        ln = 0
        if _valid(bits, off + i):
            k = indices[off + i]
            a = doffsets[doff + k]
            ln = doffsets[doff + k + 1] - a
            for b in range(ln):
                arena[at + b] = ddata[a + b]
        _put(start, length, slot, i, at, ln, maxb, col, bad_reason, bad_col)
        at += ln


@njit(nogil=True, cache=True)
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

    def convert(self, rb: pa.RecordBatch, columns: list[int]) -> Converted:
        """Rows of ``rb`` (spec column c is ``rb.column(columns[c])``, type-checked by
        :func:`check_schema`) as a RawBatch of its good rows."""
        n = rb.num_rows
        schema = self.schema
        labels = np.zeros(n, np.int8)
        # columns are filled one by one in column-major arrays (sequential writes), then
        # turned into the row-major layout of RawBatch in one pass each
        ints = np.empty((self._n_int, n), np.int64)
        imiss = np.empty((self._n_int, n), np.bool_)
        sstart = np.empty((self._n_str, n), np.int64)
        slen = np.empty((self._n_str, n), np.int32)
        floats = np.empty((self._n_float, n), np.float64)
        bad_reason = np.zeros(n, np.int8)
        bad_col = np.full(n, -1, np.int16)
        # the arena: each string column's bytes in turn
        plan: list[tuple[int, pa.Array, int, bool]] = []  # (column, array, bytes, gather)
        total = 0
        for c, kind in enumerate(schema.kinds):
            arr = rb.column(columns[c])
            if kind == COL_STR:
                nbytes, gather = self._str_bytes(arr)
                plan.append((c, arr, nbytes, gather))
                total += nbytes
            elif kind == COL_LIST_STR:
                t = arr.values
                if pa.types.is_dictionary(t.type):
                    raise DataError("dictionary-encoded list items are not read",
                                    reason="wrong_type")
                lo = _offsets(arr, 1)[arr.offset]
                hi = _offsets(arr, 1)[arr.offset + n]
                tof = _offsets(t, 1)
                nbytes = int(tof[t.offset + hi] - tof[t.offset + lo]) if n else 0
                plan.append((c, arr, nbytes, False))
                total += nbytes
        arena = np.empty(max(total, 8), np.uint8)
        base = 0
        lists = []
        for c, arr, nbytes, gather in plan:
            kind, slot, maxb = schema.kinds[c], self._slots[c], schema.max_bytes[c]
            if kind == COL_STR:
                self._strings(arr, arena, base, nbytes, gather, maxb, c, slot, sstart, slen,
                              bad_reason, bad_col)
            else:
                lists.append(self._list(arr, arena, base, nbytes, maxb, c, bad_reason,
                                        bad_col))
            base += nbytes
        for c, kind in enumerate(schema.kinds):
            if kind not in (COL_INT, COL_LABEL, COL_FLOAT):
                continue
            raw, null = _numbers(rb.column(columns[c]))
            if kind in (COL_LABEL, COL_FLOAT):
                x = raw.astype(np.float64)
                x[null] = np.nan
                if kind == COL_FLOAT:
                    floats[self._slots[c]] = x
                    continue
                labels, why = labels_from_numbers(x, self._label_op, self._label_value)
                for code in np.unique(why[why != 0]).tolist():
                    _mark(bad_reason, bad_col, why == code, code, c)
            else:
                slot = self._slots[c]
                if raw.dtype == np.uint64:
                    _mark(bad_reason, bad_col, ~null & (raw > np.iinfo(np.int64).max),
                          R_INT_OVERFLOW, c)
                ints[slot] = raw
                ints[slot][null] = 0
                imiss[slot] = null
        batch = RawBatch(labels, ints.T.copy(), imiss.T.copy(), sstart.T.copy(), slen.T.copy(),
                         arena, floats.T.copy(), tuple(lists), ordered=False)
        bad = np.flatnonzero(bad_reason)
        if len(bad):
            keep = bad_reason == 0
            batch = _take(batch, keep)
        return Converted(batch, n, bad, bad_reason[bad], bad_col[bad])

    @staticmethod
    def _str_bytes(arr: pa.Array) -> tuple[int, bool]:
        """Arena bytes of a string column, and whether a dictionary's are gathered."""
        n = len(arr)
        if n == 0:
            return 0, False
        if pa.types.is_dictionary(arr.type):
            d = arr.dictionary
            dof = _offsets(d, 1)
            whole = int(dof[d.offset + len(d)] - dof[d.offset])
            idx = np.frombuffer(arr.buffers()[1], dtype=arr.type.index_type.to_pandas_dtype())
            used = _dict_used_bytes(idx, _bits(arr), arr.offset, n, dof, d.offset)
            return (whole, False) if whole <= used else (int(used), True)
        of = _offsets(arr, 1)
        return int(of[arr.offset + n] - of[arr.offset]), False

    @staticmethod
    def _strings(arr, arena, base, nbytes, gather, maxb, c, slot, sstart, slen,  # noqa: ANN001
                 bad_reason, bad_col) -> None:
        n = len(arr)
        if n == 0:
            return
        if pa.types.is_dictionary(arr.type):
            d = arr.dictionary
            dof, ddata = _offsets(d, 1), _data(d, 2)
            idx = np.frombuffer(arr.buffers()[1], dtype=arr.type.index_type.to_pandas_dtype())
            if gather:
                _dict_gather(idx, _bits(arr), arr.offset, n, dof, d.offset, ddata, arena, base,
                             maxb, c, slot, sstart, slen, bad_reason, bad_col)
                return
            a = int(dof[d.offset])
            arena[base:base + nbytes] = ddata[a:a + nbytes]
            _dict_strings(idx, _bits(arr), arr.offset, n, dof, d.offset, base, maxb, c, slot,
                          sstart, slen, bad_reason, bad_col)
            return
        of, data = _offsets(arr, 1), _data(arr, 2)
        a = int(of[arr.offset])
        arena[base:base + nbytes] = data[a:a + nbytes]
        _plain_strings(of, _bits(arr), arr.offset, n, base, maxb, c, slot, sstart, slen,
                       bad_reason, bad_col)

    @staticmethod
    def _list(arr, arena, base, nbytes, maxb, c, bad_reason, bad_col) -> ListColumn:  # noqa: ANN001
        n = len(arr)
        t = arr.values
        lof, tof = _offsets(arr, 1), _offsets(t, 1)
        # item offsets relative to the child array's own offset
        lo = int(lof[arr.offset]) if n else 0
        nnz = int(lof[arr.offset + n]) - lo if n else 0
        out_off = np.empty(n + 1, np.int64)
        tstart = np.empty(nnz, np.int64)
        tlen = np.empty(nnz, np.int32)
        if n:
            a = int(tof[t.offset + lo])
            arena[base:base + nbytes] = _data(t, 2)[a:a + nbytes]
            m = _list_tokens(lof, _bits(arr), arr.offset, n, tof[t.offset:], _child_bits(t),
                             base, maxb, c, out_off, tstart, tlen, bad_reason, bad_col)
            tstart, tlen = tstart[:m], tlen[:m]
        else:
            out_off[0] = 0
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
                    b.str_len[keep], b.arena, b.floats[keep], tuple(lists), ordered=False)


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
