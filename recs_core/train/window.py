"""A window of logs: one pass over its data, and what a checkpoint records of it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recs_core.data.parse import RawBatch
from recs_core.data.units import RankUnits
from recs_core.errors import RecsError
from recs_core.metrics.auc import ProgressiveMetrics
from recs_core.train.compat import as_json, first_difference
from recs_core.train.tally import RowTally


@dataclass
class ResumePoint:
    """Where a resumed window continues (this rank's part of a checkpoint).

    On the checkpoint's world size the pass reads the rank's rows as the checkpoint's job
    did (``units``: its line ranges, None: the default plan) and skips the ``skip`` local
    batches that job trained. On another world size (``others``: every old rank's meta,
    the *elastic* case) the ranks deal the rows no old rank trained among themselves
    (``recs_core.data.units.redistribute``) and skip nothing."""

    path: str
    steps: int  # global steps of the window done
    train_rows: int  # this rank's trained rows in those steps (all of ``labels``)
    labels: np.ndarray
    probs: np.ndarray
    window: dict[str, Any]  # the checkpoint's window meta (its data arguments)
    tally: RowTally = field(default_factory=RowTally)
    units: RankUnits | None = None
    others: list[dict[str, Any]] | None = None  # elastic: every old rank's meta

    @property
    def skip(self) -> int:
        """Local batches to read, not train, before the pass goes on."""
        if self.others is not None:
            return 0
        return self.tally.phase_steps if self.tally.phase_steps or self.units else self.steps

    @property
    def skip_rows(self) -> int:
        """This rank's rows of those batches (the last ones of ``labels``)."""
        if self.others is not None:
            return 0
        return self.tally.phase_rows if self.tally.phase_steps or self.units else \
            self.train_rows


@dataclass
class Window:
    """The window a job is in: its position (global steps before it, steps of it done),
    its data arguments, its progressive metrics and, after a resume, where it continues."""

    base_step: int = 0  # global steps of the windows before this one
    steps: int = 0  # global steps of this window done (the input position)
    data: dict[str, Any] = field(default_factory=dict)  # see data_arguments
    progressive: ProgressiveMetrics = field(default_factory=ProgressiveMetrics)
    resume_point: ResumePoint | None = None  # set by a resume, taken by the next pass
    skipped: int = 0  # steps of this window the pass skipped (done before a resume)
    tally: RowTally = field(default_factory=RowTally)  # this rank's trained rows
    units: RankUnits | None = None  # this rank's line ranges (None: the default plan)

    @property
    def global_step(self) -> int:
        return self.base_step + self.steps

    def next_window(self) -> None:
        """Start a new window after this one."""
        self.base_step = self.global_step
        self.steps = self.skipped = 0
        self.resume_point = None
        self.progressive = ProgressiveMetrics()
        self.tally, self.units = RowTally(), None

    def resumed(self, point: ResumePoint, base_step: int) -> None:
        """Continue a checkpoint's window from ``point`` (the next pass skips its steps)."""
        self.base_step = base_step
        self.steps = self.skipped = point.steps
        self.progressive = ProgressiveMetrics()
        self.progressive.add(point.labels, point.probs)
        self.resume_point = point
        self.tally, self.units = point.tally, point.units

    def check_resume(self, data: dict[str, Any]) -> None:
        """RecsError unless a resumed window's next pass reads the checkpoint's data."""
        point = self.resume_point
        if point is None:
            return
        for key in ("data", "eval_fraction"):
            diff = first_difference(point.window.get(key), as_json(data.get(key)), key)
            if diff:
                raise RecsError(f"{point.path}: --resume needs the same data arguments: "
                                f"{diff}")

    def begin_pass(self, data: dict[str, Any]) -> ResumePoint | None:
        """A pass over ``data`` begins: the resumed window if there is one (checked by
        :meth:`check_resume` when ``data`` is known), else a new window. Returns the
        resume point taken."""
        point, self.resume_point = self.resume_point, None
        if point is None:
            self.next_window()
        self.data = dict(data)
        return point

    def record(self, labels: np.ndarray, probs: np.ndarray) -> None:
        """One global step done; ``probs``: this rank's scores before the update."""
        self.steps += 1
        self.progressive.add(labels, probs)
        self.tally.trained(len(labels))

    def rank_meta(self) -> dict[str, Any]:
        """What a checkpoint keeps per rank: steps, trained rows, the row tally and, when
        not the default plan, the rank's line ranges."""
        return {"steps": self.steps, "train_rows": int(self.progressive.rows),
                "tally": self.tally.state(),
                "units": None if self.units is None else self.units.as_json()}

    def meta(self, done: bool) -> dict[str, Any]:
        """What a checkpoint records of the window."""
        return {"data": self.data.get("data"), "eval_fraction": self.data.get("eval_fraction"),
                "steps": self.steps, "base_step": self.base_step, "done": done}


def data_arguments(paths: list[str], eval_fraction: float) -> dict[str, Any]:
    """The data arguments a resumed window must repeat."""
    return {"data": [[os.path.abspath(p), _size(p)] for p in paths],
            "eval_fraction": eval_fraction}


def _size(p: str) -> int | None:
    try:
        return os.stat(p).st_size
    except OSError:
        return None


def skip_steps(parts: Iterator[RawBatch | None], point: ResumePoint,
               tally: RowTally) -> None:
    """Consume this rank's first ``point.skip`` local batches (their held-out rows are
    collected by the iterator as usual) and check them against the checkpoint: the same
    number of training rows with the same labels (the tally forgets them: the checkpoint's
    tally has them)."""
    got = []
    for _ in range(point.skip):
        part = next(parts)
        if part is None:
            break
        got.append(np.asarray(part.labels, dtype=np.float32))
        tally.skipped(len(part))
    labels = np.concatenate(got) if got else np.zeros(0, np.float32)
    want = point.labels[len(point.labels) - point.skip_rows:]
    if len(labels) != point.skip_rows or not np.array_equal(labels, want):
        raise RecsError(f"{point.path}: the data differs from the checkpoint's: its first "
                        f"{point.skip} steps held {point.skip_rows} training rows on this "
                        f"rank, the data gives {len(labels)}"
                        + ("" if len(labels) != point.skip_rows else " with other labels"))
