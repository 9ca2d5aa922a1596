"""What ``--data`` names, as the files of a window, and this rank's reader of them.

``--data`` takes files, directories and globs. A directory is walked recursively; a glob
(``*``, ``?``, ``[...]``; ``**`` for any depth) is matched, and a directory it matches
is walked. Names starting with ``.`` or ``_`` below the named directory or the glob's
fixed part are skipped (``_SUCCESS``, ``.part-0.crc``, ``_temporary/``). The files of
one argument are read in path order, compared one path component at a time: a Hive
partition ``key=value`` by key, then by value (integers numerically, before other
values, which compare as strings: ``hour=2`` before ``hour=10``), other names as
strings; so a partitioned window is read in partition order, then file name. Arguments
keep their order. The list is sorted, not listed, so every rank gets the same one; a
file named twice is read once (:func:`~recs_core.data.shards.screen_files`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import ColumnSchema
from recs_core.data.reader import ShardReader
from recs_core.data.shards import screen_files
from recs_core.errors import DataError

_GLOB = re.compile(r"[*?[]")
_INT = re.compile(r"-?[0-9]+")


def _component_key(name: str) -> tuple[str, int, int, str]:
    key, eq, value = name.partition("=")
    if not eq or not key:
        return name, 0, 0, ""
    if _INT.fullmatch(value):
        return key, 0, int(value), value
    return key, 1, 0, value


def order_key(rel: str) -> tuple[tuple[str, int, int, str], ...]:
    """The sort key of a path below a walked directory or a glob's fixed part."""
    return tuple(_component_key(c) for c in rel.split(os.sep))


def _hidden(rel: str) -> bool:
    return any(c.startswith((".", "_")) for c in rel.split(os.sep) if c not in ("", "."))


def _walk(top: str) -> list[str]:
    """The files below directory ``top`` (hidden names skipped), in partition order."""
    found = []
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if not _hidden(x)]
        found += [os.path.join(d, f) for f in files if not _hidden(f)]
    return sorted(found, key=lambda p: order_key(os.path.relpath(p, top)))


def _glob(pattern: str) -> list[str]:
    """The files ``pattern`` matches (directories walked), in partition order."""
    parts = pattern.split(os.sep)
    fixed = os.sep.join(parts[:next(i for i, c in enumerate(parts) if _GLOB.search(c))])
    root = fixed or ("/" if pattern.startswith(os.sep) else ".")
    found = []
    for m in glob.glob(pattern, recursive=True):
        rel = os.path.relpath(m, root)
        if _hidden(rel):
            continue
        found += [(rel, m)] if not os.path.isdir(m) else [
            (os.path.relpath(f, root), f) for f in _walk(m)]
    return [m for _, m in sorted(set(found), key=lambda t: order_key(t[0]))]


def expand_sources(args: Sequence[str | os.PathLike]) -> list[str]:
    """The files ``args`` name (module docstring); a directory or glob that names no file
    is a DataError. A path that does not exist and is no glob is kept (reported when
    read)."""
    out: list[str] = []
    for arg in args:
        a = os.fspath(arg)
        if os.path.isdir(a):
            found = _walk(a)
            what = "no data file in this directory (names starting with . or _ are skipped)"
        elif not os.path.exists(a) and _GLOB.search(a):
            found = _glob(a)
            what = "no data file matches this pattern"
        else:
            found, what = [a], ""
        if not found:
            raise DataError(f"{a}: {what}", path=a, reason="no_match")
        out += found
    return out


def open_input(args: Sequence[str | os.PathLike], schema: ColumnSchema, *, rank: int = 0,
               world: int = 1, batch_rows: int = 2048, policy: BadRowPolicy | None = None,
               holdout: float = 0.0) -> tuple[ShardReader, list[str]]:
    """This rank's reader of the window ``args`` names (expanded, a file named twice read
    once; its ``paths`` are the window's files in order) and the warnings about the names
    (a file given twice, an empty file). Every entry point reads through here."""
    paths, warnings = screen_files(expand_sources(args))
    return ShardReader(paths, schema, rank=rank, world=world, batch_rows=batch_rows,
                       policy=policy, holdout=holdout), warnings
