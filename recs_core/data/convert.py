"""``recs convert``: text logs (any layout a spec describes) to one Parquet file.

The text is read by the engine's own reader (bad lines per the spec's policy), and the
spec's columns are written with their types: a ``label`` column as int8, ``int`` as int64
(missing: null), ``float`` as float64 (missing: NaN), ``str`` as string (missing, the
empty string: null), snappy-compressed, in row groups of ``row_group_rows`` rows. A
label rule's column (``label = "rating >= 4"``) is written as its values (float64), so
the rule applies when the file is read. Reading the result with the same spec gives the
same rows and the same feature values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numba import njit

from recs_core.checkpoint.files import written_aside
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.labels import OP_LABEL_BYTES
from recs_core.data.parse import COL_FLOAT, COL_INT, COL_LABEL, COL_STR, ColumnSchema, RawBatch
from recs_core.data.reader import ShardReader
from recs_core.errors import RecsError
from recs_core.outfiles import check_output_file

DEFAULT_ROW_GROUP_ROWS = 1 << 20  # pyarrow's default


@njit(nogil=True, cache=True)
def _gather(arena: np.ndarray, start: np.ndarray, length: np.ndarray, offsets: np.ndarray,
            out: np.ndarray) -> None:
    """Strings (start, length) of ``arena`` packed into ``out`` at ``offsets``."""
    for i in range(start.shape[0]):
        a, o = start[i], offsets[i]
        for b in range(length[i]):
            out[o + b] = arena[a + b]


def _strings(batch: RawBatch, j: int) -> pa.Array:
    """String column j of ``batch`` as an Arrow string array (empty: null)."""
    lens = batch.str_len[:, j].astype(np.int64)
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    data = np.empty(int(offsets[-1]), np.uint8)
    _gather(batch.arena, np.ascontiguousarray(batch.str_start[:, j]), lens, offsets, data)
    valid = pa.py_buffer(np.packbits(lens > 0, bitorder="little"))
    return pa.LargeStringArray.from_buffers(len(lens), pa.py_buffer(offsets),
                                            pa.py_buffer(data), valid).cast(pa.string())


def arrow_schema(schema: ColumnSchema) -> pa.Schema:
    """The Parquet schema a spec's text columns are written with."""
    types = {COL_LABEL: pa.int8(), COL_INT: pa.int64(), COL_STR: pa.string(),
             COL_FLOAT: pa.float64()}
    for name, kind in zip(schema.names, schema.kinds):
        if kind not in types:
            raise RecsError(f"column {name!r}: recs convert writes label, int, float and str "
                            "columns")
    return pa.schema([pa.field(n, types[k]) for n, k in zip(schema.names, schema.kinds)])


def to_record_batch(batch: RawBatch, schema: ColumnSchema) -> pa.RecordBatch:
    """A raw batch as an Arrow record batch with :func:`arrow_schema`."""
    arrays, i_int, i_str, i_float = [], 0, 0, 0
    for kind in schema.kinds:
        if kind == COL_LABEL:
            arrays.append(pa.array(batch.labels, pa.int8()))
        elif kind == COL_FLOAT:
            arrays.append(pa.array(batch.floats[:, i_float], pa.float64()))
            i_float += 1
        elif kind == COL_INT:
            arrays.append(pa.array(batch.ints[:, i_int], pa.int64(),
                                   mask=batch.int_missing[:, i_int]))
            i_int += 1
        else:
            arrays.append(_strings(batch, i_str))
            i_str += 1
    return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema(schema))


@dataclass
class ConvertStats:
    rows: int
    lines: int
    bad_rows: dict[str, int]
    row_groups: int
    bytes: int
    seconds: float


def raw_values_schema(schema: ColumnSchema) -> ColumnSchema:
    """``schema`` with a label rule's column read as its values (a float column)."""
    rule = schema.label_rule
    if rule is None or rule.op == OP_LABEL_BYTES:
        return schema
    kinds = tuple(COL_FLOAT if n == rule.column else k
                  for n, k in zip(schema.names, schema.kinds))
    return replace(schema, kinds=kinds, label_rule=None)


def convert_to_parquet(paths: list[str], schema: ColumnSchema, out: str, *,
                       policy: BadRowPolicy | None = None,
                       row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
                       batch_rows: int = 65536, overwrite: bool = False) -> ConvertStats:
    """Write the good rows of the text files ``paths`` to the Parquet file ``out``. ``out``
    is checked first (as ``recs convert -o``: not a directory, not one of ``paths``, no
    existing file unless ``overwrite``), then written aside and renamed when complete."""
    if row_group_rows < 1:
        raise RecsError(f"--row-group-rows must be >= 1, got {row_group_rows}")
    check_output_file(out, "-o", paths, overwrite)
    t0 = time.perf_counter()
    schema = raw_values_schema(schema)
    reader = ShardReader(paths, schema, batch_rows=min(batch_rows, row_group_rows),
                         policy=policy)
    arrow = arrow_schema(schema)
    pending: list[pa.RecordBatch] = []
    have = 0
    with written_aside(out) as tmp, pq.ParquetWriter(tmp, arrow, compression="snappy") as writer:
        for batch in reader:
            pending.append(to_record_batch(batch, schema))
            have += len(batch)
            if have >= row_group_rows:
                table = pa.Table.from_batches(pending, arrow)
                writer.write_table(table.slice(0, row_group_rows), row_group_size=row_group_rows)
                rest = table.slice(row_group_rows)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            writer.write_table(pa.Table.from_batches(pending, arrow), row_group_size=row_group_rows)
    groups = pq.ParquetFile(out).metadata.num_row_groups
    return ConvertStats(reader.rows, reader.counter.lines, dict(reader.counter.by_reason),
                        groups, os.path.getsize(out), time.perf_counter() - t0)
