"""Which bytes of which input files each MPI rank reads.

Plain files are cut into one byte range per rank (each range owns the lines that
*start* inside it, so every line is read exactly once); ``.gz`` files cannot be
split and go whole to ranks, largest first, to the least-loaded rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from recs_core.errors import DataError


@dataclass(frozen=True)
class Span:
    """Lines of ``path`` that start in byte range [start, end); gz spans cover the whole file."""

    path: str
    start: int
    end: int
    gz: bool


def _is_gz(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def check_files(paths: list[str]) -> list[tuple[str, int, bool]]:
    """(path, size, is_gz) per input file; a clear error for a missing or unreadable one."""
    if not paths:
        raise DataError("no input files given")
    out = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise DataError(f"{p}: data file not found", path=p, reason="missing_file")
        if os.path.isdir(p):
            raise DataError(f"{p}: is a directory, expected a data file", path=p,
                            reason="missing_file")
        try:
            size = os.path.getsize(p)
            gz = size >= 2 and _is_gz(p)
        except OSError as e:
            raise DataError(f"{p}: cannot read: {e.strerror}", path=p, reason="unreadable") from e
        out.append((p, size, gz or (size == 0 and p.endswith(".gz"))))
    return out


def screen_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """(the paths to read, warnings): a file given more than once (the same file, by
    device and inode, under any name) is read once; an empty file is named."""
    kept: list[str] = []
    warnings: list[str] = []
    seen: dict[tuple[int, int], str] = {}
    for p in paths:
        p = os.fspath(p)
        try:
            st = os.stat(p)
        except OSError:  # check_files reports it
            kept.append(p)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            same = "" if seen[key] == p else f" (as {seen[key]})"
            warnings.append(f"{p}: given more than once{same}: read once")
            continue
        seen[key] = p
        kept.append(p)
        if st.st_size == 0 and not os.path.isdir(p):
            warnings.append(f"{p}: empty file (0 bytes)")
    return kept, warnings


def plan_shards(paths: list[str], world: int) -> list[list[Span]]:
    """The spans each of ``world`` ranks reads; together they cover every line once."""
    if world < 1:
        raise ValueError("world size must be >= 1")
    files = check_files(paths)
    plan: list[list[Span]] = [[] for _ in range(world)]
    load = [0] * world
    for path, size, gz in files:
        if gz:
            continue
        for r in range(world):
            a, b = size * r // world, size * (r + 1) // world
            if b > a:
                plan[r].append(Span(path, a, b, False))
                load[r] += b - a
    gz_files = sorted(((size, i, path) for i, (path, size, gz) in enumerate(files) if gz),
                      key=lambda t: (-t[0], t[1]))
    for size, _, path in gz_files:
        r = min(range(world), key=lambda k: (load[k], k))
        plan[r].append(Span(path, 0, -1, True))
        load[r] += size * 4  # roughly the uncompressed size
    order = {path: i for i, (path, _, _) in enumerate(files)}
    for spans in plan:
        spans.sort(key=lambda s: (order[s.path], s.start))
    return plan
