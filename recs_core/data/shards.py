"""Which bytes of which input files each MPI rank reads.

Plain files are cut into one byte range per rank (each range owns the lines that
*start* inside it, so every line is read exactly once); compressed files (gzip or
zstd, known by their first bytes) cannot be split and go whole to ranks, largest
first, to the least-loaded rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from recs_core.errors import DataError

# compression formats by their first bytes, and the file name ending that names each
CODECS = {"gzip": (b"\x1f\x8b", ".gz"), "zstd": (b"\x28\xb5\x2f\xfd", ".zst")}


@dataclass(frozen=True)
class Span:
    """Lines of ``path`` that start in byte range [start, end); a compressed span
    (``codec`` "gzip" or "zstd", else "") covers the whole file."""

    path: str
    start: int
    end: int
    codec: str


def codec_of(path: str, size: int) -> str:
    """The compression of a file ("gzip", "zstd", or "" for plain text), by its first
    bytes; an empty file by its name. A ``.gz`` / ``.zst`` name on other bytes is an error
    (it would otherwise be parsed as text, every line bad)."""
    with open(path, "rb") as f:
        head = f.read(4)
    for codec, (magic, ending) in CODECS.items():
        if head.startswith(magic) or (size == 0 and path.endswith(ending)):
            return codec
    for codec, (_, ending) in CODECS.items():
        if path.endswith(ending):
            raise DataError(f"{path}: corrupt or truncated {codec} input: not {codec} data "
                            f"(the file name ends in {ending})", path=path,
                            reason=f"bad_{codec}")
    return ""


def check_files(paths: list[str]) -> list[tuple[str, int, str]]:
    """(path, size, codec) per input file; a clear error for a missing or unreadable one."""
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
            codec = codec_of(p, size)
        except OSError as e:
            raise DataError(f"{p}: cannot read: {e.strerror}", path=p, reason="unreadable") from e
        out.append((p, size, codec))
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
    for path, size, codec in files:
        if codec:
            continue
        for r in range(world):
            a, b = size * r // world, size * (r + 1) // world
            if b > a:
                plan[r].append(Span(path, a, b, ""))
                load[r] += b - a
    packed = sorted(((size, i, path, codec) for i, (path, size, codec) in enumerate(files)
                     if codec), key=lambda t: (-t[0], t[1]))
    for size, _, path, codec in packed:
        r = min(range(world), key=lambda k: (load[k], k))
        plan[r].append(Span(path, 0, -1, codec))
        load[r] += size * 4  # roughly the uncompressed size
    order = {path: i for i, (path, _, _) in enumerate(files)}
    for spans in plan:
        spans.sort(key=lambda s: (order[s.path], s.start))
    return plan
