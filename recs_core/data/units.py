"""A window's rows as line ranges: what each rank reads, stated so that it can be written in
a checkpoint and redistributed over another number of ranks (an elastic resume).

A row's *line* is its 0-based index among its file's data lines (text: every physical line
after the header, bad lines counted too; Parquet: the row's index in the file). A
:class:`LineRange` is a run of consecutive lines of one file (its index in the window's
file list); a rank's :class:`RankUnits` are the ranges it trains on, in the order it reads
them, and the ranges it holds out. Every line of the window is in exactly one range of one
rank.

:func:`remaining` is what a rank has not trained yet; :func:`split` deals ranges over ranks
by line count, cutting a range where a share ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recs_core.errors import RecsError


@dataclass(frozen=True, order=True)
class LineRange:
    """Lines ``[first, end)`` of the window's file ``file``."""

    file: int
    first: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.end or self.file < 0:
            raise ValueError(f"bad line range {self}")

    def __len__(self) -> int:
        return self.end - self.first

    def as_json(self) -> list[int]:
        return [self.file, self.first, self.end]

    @classmethod
    def from_json(cls, v: Any) -> LineRange:
        file, first, end = (int(x) for x in v)
        return cls(file, first, end)


@dataclass(frozen=True)
class RankUnits:
    """What one rank reads of a window: training ranges in reading order, held-out ranges."""

    train: tuple[LineRange, ...] = field(default_factory=tuple)
    held: tuple[LineRange, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, list[list[int]]]:
        return {"train": [r.as_json() for r in self.train],
                "held": [r.as_json() for r in self.held]}

    @classmethod
    def from_json(cls, v: Any) -> RankUnits:
        return cls(tuple(LineRange.from_json(r) for r in v.get("train", [])),
                   tuple(LineRange.from_json(r) for r in v.get("held", [])))


def merged(ranges: Sequence[LineRange]) -> list[LineRange]:
    """``ranges`` in their order without empty ones, a range that continues the one before
    it (same file, next line) joined to it."""
    out: list[LineRange] = []
    for r in ranges:
        if not len(r):
            continue
        if out and out[-1].file == r.file and out[-1].end == r.first:
            out[-1] = LineRange(r.file, out[-1].first, r.end)
        else:
            out.append(r)
    return out


def check_ranges(ranges: Sequence[LineRange], files: int) -> Sequence[LineRange]:
    """``ranges``, unless one names a file beyond the window's ``files`` (a RecsError)."""
    for r in ranges:
        if r.file >= files:
            raise RecsError(f"line range {r.as_json()} is of file {r.file}, but the window "
                            f"has {files} file{'s' if files != 1 else ''}: the ranges were "
                            f"made for another window")
    return ranges


def remaining(units: RankUnits, consumed: tuple[int, int] | None) -> list[LineRange]:
    """The training ranges of ``units`` after the line ``consumed`` (file, line): the rank
    trained every line of its ranges up to it, in reading order (None: nothing yet)."""
    if consumed is None:
        return [r for r in units.train if len(r)]
    out: list[LineRange] = []
    passed = False  # the range holding the consumed line was met
    for r in units.train:
        if passed:
            if len(r):
                out.append(r)
            continue
        if r.file == consumed[0] and r.first <= consumed[1] < r.end:
            passed = True
            if consumed[1] + 1 < r.end:
                out.append(LineRange(r.file, consumed[1] + 1, r.end))
    if not passed:
        raise ValueError(f"line {consumed} is in none of the rank's ranges")
    return out


def split(ranges: Sequence[LineRange], parts: int) -> list[list[LineRange]]:
    """``ranges`` (window order is kept) dealt into ``parts`` consecutive shares of as
    equal a number of lines as possible, a range cut where a share ends."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    ordered = sorted(r for r in ranges if len(r))
    total = sum(len(r) for r in ordered)
    bounds = [total * k // parts for k in range(parts + 1)]
    out: list[list[LineRange]] = [[] for _ in range(parts)]
    at = 0  # lines before the current range
    for r in ordered:
        lo, hi = at, at + len(r)
        for k in range(parts):
            a, b = max(lo, bounds[k]), min(hi, bounds[k + 1])
            if a < b:
                out[k].append(LineRange(r.file, r.first + a - lo, r.first + b - lo))
        at = hi
    return out


def redistribute(old: Sequence[RankUnits], consumed: Sequence[tuple[int, int] | None],
                 world: int) -> list[RankUnits]:
    """The units of ``world`` ranks that continue a window: the lines no old rank trained
    yet, and the old ranks' held-out lines, each dealt evenly."""
    if len(old) != len(consumed):
        raise ValueError("one consumed position per old rank")
    rest = [r for u, c in zip(old, consumed) for r in remaining(u, c)]
    held = [r for u in old for r in u.held]
    return [RankUnits(tuple(t), tuple(h)) for t, h in zip(split(rest, world),
                                                           split(held, world))]
