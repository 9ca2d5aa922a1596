"""The windows of a landing location, in partition order, and when each is complete.

A landing location is a directory of Hive partitions (``dt=2026-12-01/hour=13/part-*``) or
a glob. Its *windows* are the deepest directories that hold data files or a ``_SUCCESS``
marker (a glob: each directory it matches; a file it matches is a window of its own), in
partition order (``recs_core.data.sources.order_key``: ``hour=2`` before ``hour=10``).
Names that are never data (hidden ``.``/``_`` names, ``_temporary/``, ``*.tmp``,
``*.inprogress``, ``*.crc``) are not files of a window.

A window is complete when its ``_SUCCESS`` marker exists (Hadoop, Spark), or, for sources
without markers (``settle`` seconds given), when its files (names, sizes, modification
times) have not changed for that long. :class:`Window.signature` is what a ledger records,
so files that change after the window was trained are noticed.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from recs_core.data.sources import order_key
from recs_core.errors import RecsError

MARKER = "_SUCCESS"
_NOT_DATA_SUFFIXES = (".tmp", ".inprogress", ".crc")


def is_data_name(name: str) -> bool:
    """False for names that are never data files (hidden, markers, in-progress uploads)."""
    return not (name.startswith((".", "_")) or name.endswith(_NOT_DATA_SUFFIXES))


@dataclass(frozen=True)
class Window:
    """One window: its id (the path below the landing location, ``/`` kept), where it
    is, and its data files (sorted) with their sizes and modification times."""

    id: str
    path: str
    files: tuple[tuple[str, int, float], ...]
    marker: bool

    @property
    def signature(self) -> list[list[str | int]]:
        """[relative name, size] of every file: what the ledger compares."""
        return [[os.path.relpath(f, self.path) if os.path.isdir(self.path) else
                 os.path.basename(f), size] for f, size, _ in self.files]

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.files)


def _data_files(d: str) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of the data files below directory ``d`` (recursive)."""
    out = []
    for top, dirs, files in os.walk(d):
        dirs[:] = sorted(x for x in dirs if is_data_name(x))
        for f in files:
            if not is_data_name(f):
                continue
            p = os.path.join(top, f)
            try:
                st = os.stat(p)
            except FileNotFoundError:  # removed while listed
                continue
            out.append((p, st.st_size, st.st_mtime))
    return sorted(out, key=lambda t: order_key(os.path.relpath(t[0], d)))


def _leaf_dirs(root: str) -> list[str]:
    """Directories below ``root`` (itself included) holding a data file or a marker and
    no subdirectory that is a window itself."""
    out = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if is_data_name(x)]
        if dirs:
            continue
        if MARKER in files or any(is_data_name(f) for f in files):
            out.append(top)
    return out


@dataclass
class Landing:
    """A landing location (a directory or a glob) and how completeness is judged."""

    location: str
    settle: float | None = None  # seconds without change, for sources without markers
    _seen: dict[str, tuple[tuple, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.location = os.path.abspath(self.location)

    def windows(self) -> list[Window]:
        """Every window found now, in partition order (complete or not)."""
        loc = self.location
        if os.path.isdir(loc):
            root = loc
            paths = _leaf_dirs(loc)
        elif any(c in loc for c in "*?["):
            parts = loc.split(os.sep)
            fixed = os.sep.join(parts[:next(i for i, c in enumerate(parts)
                                            if any(x in c for x in "*?["))])
            root = fixed or ("/" if loc.startswith(os.sep) else ".")
            paths = sorted(glob.glob(loc))
        elif not os.path.exists(loc):
            raise RecsError(f"--watch {loc}: no such directory (the landing location is "
                            f"gone or not mounted)")
        else:
            raise RecsError(f"--watch {loc}: not a directory or a glob")
        out = []
        for p in paths:
            rel = os.path.relpath(p, root)
            if any(not is_data_name(c) for c in Path(rel).parts if c not in ("", ".")):
                continue
            if os.path.isdir(p):
                files = _data_files(p)
                marker = os.path.exists(os.path.join(p, MARKER))
            else:
                st = os.stat(p)
                files, marker = [(p, st.st_size, st.st_mtime)], False
            out.append(Window(rel if rel != "." else os.path.basename(os.path.abspath(p)),
                              p, tuple(files), marker))
        return sorted(out, key=lambda w: order_key(w.id))

    def complete(self, w: Window, now: float | None = None) -> bool:
        """True when ``w`` may be trained: its marker exists, or (``settle`` given) its
        files have not changed for ``settle`` seconds (first seen counts as a change)."""
        if w.marker:
            return True
        if self.settle is None:
            return False
        now = time.time() if now is None else now
        state = tuple(w.files)
        seen = self._seen.get(w.id)
        if seen is None or seen[0] != state:
            self._seen[w.id] = (state, now)
            return self.settle <= 0 and bool(w.files)
        return bool(w.files) and now - seen[1] >= self.settle
