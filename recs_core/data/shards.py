"""Which bytes of which input files each MPI rank reads.

Every file is cut into byte ranges, and a range owns the lines that *start* in it, so
every line is read exactly once. A plain file gets one range per rank. A compressed file
(gzip or zstd, known by its first bytes) is cut by the positions of its decompressed
bytes in the compressed file (:mod:`~recs_core.data.decompress`): into ``world * k``
ranges of about ``block`` compressed bytes, dealt to the ranks in turn (range j to rank
j mod world), so that ranks reading it side by side stay near each other in it; every
rank decompresses the file up to its last range and parses only its own (docs/DESIGN.md,
Input: why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from recs_core.errors import DataError

# compression formats by their first bytes, and the file name ending that names each
CODECS = {"gzip": (b"\x1f\x8b", ".gz"), "zstd": (b"\x28\xb5\x2f\xfd", ".zst")}
# compressed bytes per range of a compressed file (see plan_shards; docs/DESIGN.md, Input)
COMPRESSED_BLOCK = 1 << 20


@dataclass(frozen=True)
class Span:
    """Lines of ``path`` that start in byte range [start, end): of the file, or of the
    compressed file (``codec`` "gzip" or "zstd", else "") by their position in it."""

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


def plan_shards(paths: list[str], world: int, block: int | None = None) -> list[list[Span]]:
    """The spans each of ``world`` ranks reads; together they cover every line once. A
    compressed file's ranges are about ``block`` compressed bytes (default
    :data:`COMPRESSED_BLOCK`; 0: one range per rank)."""
    if world < 1:
        raise ValueError("world size must be >= 1")
    block = COMPRESSED_BLOCK if block is None else block
    plan: list[list[Span]] = [[] for _ in range(world)]
    for path, size, codec in check_files(paths):
        n = world * (max(1, -(-size // (world * block))) if codec and block > 0 else 1)
        for j in range(n):
            a, b = size * j // n, size * (j + 1) // n
            if b <= a:
                continue
            spans = plan[j % world]
            if spans and spans[-1].path == path and spans[-1].end == a:  # one rank: merged
                spans[-1] = Span(path, spans[-1].start, b, codec)
            else:
                spans.append(Span(path, a, b, codec))
    return plan
