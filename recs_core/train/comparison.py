"""A pass's held-out rows scored by the trained model and by a baseline (the last published
model), for a quality gate (``recs train --compare-with``, ``recs follow``).

Two row sets: the window's own held-out rows, and optionally *guard* rows, the held-out
rows of other data (the last good window's: labels a gate already trusted). A window whose
labels are broken (shuffled, an upstream bug) can look no worse on its own held-out rows,
whose labels are broken alike, but a model trained on it does worse on the guard rows.

Both models score at most :data:`COMPARED_ROWS` rows of each set, the first of each rank's
share (the trained model's figures on them are reported beside the baseline's; its
``eval_*`` figures cover all held-out rows). Enough to see a loss the gate cares about:
its margins are ten times the standard error of 50,000 rows' logloss, and the two models
are compared on the same rows. Scoring every held-out row with the baseline cost a chain
3 s a window (200,000 rows, before the pass) for figures no better for the gate.

When the baseline is the model the job started from, its scores are computed before the
pass with the job's own model (no second copy is loaded).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recs_core.comm.world import World
from recs_core.data.parse import ColumnSchema, RawBatch
from recs_core.data.sources import DataInput
from recs_core.data.units import RankUnits, split
from recs_core.metrics.auc import auc, logloss

if TYPE_CHECKING:
    from recs_core.train.model import Model

Scored = tuple[np.ndarray, np.ndarray]  # labels, probabilities (every rank's rows)
COMPARED_ROWS = 50_000  # rows of each set both models score, at most (over all ranks)


def compared_share(world_size: int) -> int:
    """Each rank's share of :data:`COMPARED_ROWS`: the first rows of its held-out rows."""
    return -(-COMPARED_ROWS // world_size)


def capped(batches: Iterable[RawBatch], rows: int) -> Iterator[RawBatch]:
    """``batches`` until ``rows`` rows were given (the last batch cut)."""
    left = rows
    for b in batches:
        if left <= 0:
            return
        if len(b) > left:
            b = b.slice(0, left)
        left -= len(b)
        yield b


def same_checkpoint(a: str | os.PathLike, b: str | os.PathLike, world: World) -> bool:
    """Whether ``a`` (a checkpoint, or a directory of them: its newest) is checkpoint
    ``b`` (rank 0 looks, every rank gets the answer)."""
    def look() -> bool:
        from recs_core.checkpoint.store import newest_checkpoint

        try:
            found = newest_checkpoint(a)
            return found is not None and os.path.samefile(found, b)
        except Exception:  # damaged or missing: not the same (loading it will say why)
            return False
    return bool(world.bcast(look() if world.rank == 0 else None, "checkpoint comparison"))


def guard_units(manifest_ranks: list[dict[str, Any]], guard: DataInput, schema: ColumnSchema,
                fmt: str | None, frac: float, world: World) -> RankUnits | None:
    """This rank's share of the held-out rows of ``guard`` as the job that trained it set
    them aside (``manifest_ranks``: its checkpoint's rank_meta, one per rank; a rank's
    recorded ``units``, else the default plan of that job's world size), dealt over
    ``world``; None when that plan is this job's own (the reader's cut gives them)."""
    recorded = [rm.get("units") for rm in manifest_ranks]
    if len(manifest_ranks) == world.size and all(u is None for u in recorded):
        return None

    from recs_core.train.elastic import recorded_units

    old = recorded_units(manifest_ranks, guard, schema, fmt, frac, world)
    return RankUnits((), tuple(split([r for u in old for r in u.held],
                                     world.size)[world.rank]))


def figures(scored: Scored) -> dict[str, Any]:
    """Rows, AUC and logloss of scored rows."""
    y, p = scored
    if not len(y):
        return {"rows": 0, "auc": None, "logloss": None}
    return {"rows": int(len(y)), "auc": _round(auc(y, p)), "logloss": _round(logloss(y, p))}


def _round(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


@dataclass
class Comparison:
    """What ``Job.compare_with`` set up for the next pass, and the baseline's scores."""

    model: str  # the baseline's path
    baseline: Model | None  # None: the job's own model before the pass
    guard: DataInput | None = None  # data whose held-out rows both models score
    # the rank_meta of the checkpoint compared with (the guard's held-out rows are those
    # its job set aside), None for a published version (the rows at this job's cut)
    trained_by: list[dict[str, Any]] | None = None
    guard_units: RankUnits | None = None  # this rank's share of them, once computed
    guard_planned: bool = False
    scores: dict[str, Scored] = field(default_factory=dict)  # the baseline's: held, guard
    trained_held: Scored | None = None  # the trained model's on the compared held-out rows
    trained_guard: Scored | None = None  # the trained model's guard rows

    def report(self) -> dict[str, Any]:
        """``{"model", "rows", "eval_auc", "eval_logloss", "trained_auc",
        "trained_logloss", "guard": {rows, auc, logloss, baseline_auc,
        baseline_logloss}}``: the baseline and the trained model on the compared held-out
        rows, and both models on the guard rows."""
        f = figures(self.scores["held"])
        out: dict[str, Any] = {"model": self.model, "rows": f["rows"], "eval_auc": f["auc"],
                               "eval_logloss": f["logloss"]}
        if self.trained_held is not None:
            t = figures(self.trained_held)
            out["trained_auc"], out["trained_logloss"] = t["auc"], t["logloss"]
        if self.guard is not None and self.trained_guard is not None:
            t, b = figures(self.trained_guard), figures(self.scores["guard"])
            out["guard"] = {"rows": t["rows"], "auc": t["auc"], "logloss": t["logloss"],
                            "baseline_auc": b["auc"], "baseline_logloss": b["logloss"]}
        return out
