"""A window continued on another number of ranks (``--resume`` after a change of capacity).

Every rank of the interrupted job recorded in its checkpoint which line ranges it read
(``units``; none: the default plan of its world size and eval fraction) and the last line
it trained (its tally's ``consumed``). The new ranks compute from all of them the same
plan (``recs_core.data.units.redistribute``): the lines no old rank trained, dealt evenly
in window order, and the old ranks' held-out lines, the ones the window's first job set
aside. The model state is resharded as ``--init-from`` does (touched marks included, so
the window's delta lists every row it changed); the progressive scores are kept, each old
rank's by one new rank. Not bit-identical to an uninterrupted run (other rows meet in a
global batch), but every row of the window is trained exactly once.
"""

from __future__ import annotations

from typing import Any

from recs_core.comm.world import World
from recs_core.data.parse import ColumnSchema
from recs_core.data.sources import DataInput, default_units
from recs_core.data.units import RankUnits, redistribute
from recs_core.errors import RecsError
from recs_core.train.tally import MASK, RowTally, hex64
from recs_core.train.window import ResumePoint, Window


def continued_units(point: ResumePoint, data: DataInput, schema: ColumnSchema,
                    fmt: str | None, frac: float, world: World) -> RankUnits:
    """This rank's line ranges continuing ``point``'s window on ``world`` (collective:
    rank 0 states the old ranks' default plans, when needed, for every rank)."""
    others = point.others
    assert others is not None
    tallies = [rm.get("tally") for rm in others]
    if any(t is None for t in tallies):
        raise RecsError(f"{point.path}: written before checkpoints kept each rank's position "
                        f"in its rows: resume it on {len(others)} rank(s)")
    if any(RowTally.restored(t).untracked for t in tallies):
        raise RecsError(f"{point.path}: its job trained batches given directly (not read "
                        f"from files), whose rows cannot be dealt again: resume it on "
                        f"{len(others)} rank(s)")
    old = recorded_units(others, data, schema, fmt, frac, world)
    consumed = [RowTally.restored(t).consumed for t in tallies]
    return redistribute(old, consumed, world.size)[world.rank]


def recorded_units(rank_meta: list[dict[str, Any]], data: DataInput, schema: ColumnSchema,
                   fmt: str | None, frac: float, world: World) -> list[RankUnits]:
    """What each rank of a checkpoint's job read of ``data``: its recorded ``units``, else
    the default plan of that job's world size and ``frac`` (collective: rank 0 states
    it for every rank)."""
    old = [None if rm.get("units") is None else RankUnits.from_json(rm["units"])
           for rm in rank_meta]
    if any(u is None for u in old):
        plan = world.bcast(default_units(data, schema, fmt, len(rank_meta), frac)
                           if world.rank == 0 else None, "the old ranks' line ranges")
        old = [u if u is not None else p for u, p in zip(old, plan)]
    return old  # type: ignore[return-value]


def trained_checksum(window: Window, world: World) -> str | None:
    """The checksum of every rank's trained rows of the window (hex), None when some rows
    came without origins."""
    parts: list[Any] = world.allgather((window.tally.checksum, window.tally.untracked),
                                       "trained rows checksum")
    if any(u for _, u in parts):
        return None
    return hex64(sum(c for c, _ in parts) & MASK)
