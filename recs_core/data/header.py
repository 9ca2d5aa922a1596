"""Header lines of delimited text files: read, split, checked across files, and turned
into each file's :class:`~recs_core.data.parse.FieldMap`.

With ``header = true`` the first line of every file names its columns. All files must
have the same header (the first difference is named); every column the spec reads must
be in it. A file holding its header only has no rows: said in a warning.
"""

from __future__ import annotations

import csv

from recs_core.data.decompress import READ_ERRORS, Decompressed, as_data_error
from recs_core.data.parse import ColumnSchema, FieldMap
from recs_core.data.shards import check_files
from recs_core.errors import DataError

MAX_HEADER_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


def read_first_line(path: str, codec: str = "") -> tuple[bytes, bool]:
    """(the first line of a plain or compressed (``codec`` "gzip" or "zstd") file without
    its line end, whether more bytes follow it); a DataError when it is longer than
    MAX_HEADER_BYTES or the file cannot be read or decompressed."""
    try:
        with open(path, "rb") as raw:
            f = Decompressed(raw, codec) if codec else raw
            line = f.readline(MAX_HEADER_BYTES + 1)
            more = f.readinto(memoryview(bytearray(1))) > 0
    except READ_ERRORS as e:
        raise as_data_error(e, path) from None
    if not line.endswith(b"\n") and len(line) > MAX_HEADER_BYTES:
        raise DataError(f"{path}:1: the header line is longer than {MAX_HEADER_BYTES} bytes",
                        path=path, line=1, reason="header_mismatch")
    return line.removeprefix(_BOM).rstrip(b"\n").rstrip(b"\r"), more


def split_header(line: bytes, sep: int, quoting: bool, path: str) -> tuple[str, ...]:
    """The column names of a header line (UTF-8; quoted names as in the data lines)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}:1: the header is not UTF-8 text", path=path, line=1,
                        reason="header_mismatch") from None
    if not quoting:
        return tuple(text.split(chr(sep)))
    try:
        rows = list(csv.reader([text], delimiter=chr(sep), quotechar='"', strict=True))
    except csv.Error as e:
        raise DataError(f"{path}:1: cannot read the header ({e})", path=path, line=1,
                        reason="unterminated_quote" if "EOF" in str(e) else "bad_quote"
                        ) from None
    return tuple(rows[0]) if rows else ("",)


def field_maps(schema: ColumnSchema, paths: list[str]) -> tuple[dict[str, FieldMap], list[str]]:
    """(FieldMap per file, warnings). Without a header every file reads the schema's
    columns in order; with one, each file's header is read and checked."""
    files = check_files(paths)
    if not schema.text.header:
        return {p: schema.field_map(None, p) for p, _, _ in files}, []
    maps: dict[str, FieldMap] = {}
    warnings: list[str] = []
    first: tuple[str, tuple[str, ...]] | None = None
    for path, size, codec in files:
        if size == 0:  # nothing to read (the empty file is named elsewhere)
            maps[path] = schema.field_map(None, path)
            continue
        line, more = read_first_line(path, codec)
        sep, quoting = schema.text.resolve(path)
        names = split_header(line, sep, quoting, path)
        if first is None:
            first = (path, names)
        elif names != first[1]:
            raise DataError(f"{path}: its header differs from {first[0]}'s: "
                            f"{_first_difference(names, first[1])}", path=path, line=1,
                            reason="header_mismatch")
        maps[path] = schema.field_map(names, path)
        if not more:
            warnings.append(f"{path}: a header line and no rows (0 rows read)")
    return maps, warnings


def _first_difference(mine: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a != b:
            return f"column {i + 1} is {a!r} here, {b!r} there"
    return f"{len(mine)} columns here, {len(theirs)} there"
