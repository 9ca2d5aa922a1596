"""Which rows of a window a rank trained: a checksum of their origins and where it stopped.

A row's origin is its window file and line (``recs_core.data.units``), world-size free; its
key is ``file << 40 | line`` and the checksum of a set of rows is the sum, modulo 2**64, of
``fmix64(key)`` over them: independent of order and of how rows were split over ranks,
steps or jobs, so the sum over every rank and every job of a window says from outside
whether each row was trained exactly once (``trained_rows_checksum`` in the job's JSON).

A rank's reader runs ahead of its training (look-ahead, prefetch): the tally takes each
batch's origins when it is read and counts them when its step is trained.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recs_core.data.reader import RowOrigins

_C1, _C2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S33, _S40 = np.uint64(33), np.uint64(40)
MASK = (1 << 64) - 1


def row_keys(origins: RowOrigins) -> np.ndarray:
    """``file << 40 | line`` of every row (uint64)."""
    return (origins.file.astype(np.uint64) << _S40) | origins.file_line.astype(np.uint64)


def checksum(keys: np.ndarray) -> int:
    """The sum of ``fmix64(key)`` modulo 2**64 (MurmurHash3's finalizer, vectorized)."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64)
        x ^= x >> _S33
        x *= _C1
        x ^= x >> _S33
        x *= _C2
        x ^= x >> _S33
        return int(np.sum(x, dtype=np.uint64))


def hex64(value: int) -> str:
    return f"{value & MASK:016x}"


@dataclass
class RowTally:
    """This rank's trained rows of the window (see the module docstring)."""

    checksum: int = 0
    consumed: tuple[int, int] | None = None  # (file, line) of the last row trained
    phase_steps: int = 0  # steps trained (or skipped on resume) by this phase's reader
    phase_rows: int = 0  # rows of those steps on this rank
    untracked: int = 0  # rows trained whose origins were not known (batches given directly)
    _read: deque[RowOrigins] = field(default_factory=deque)

    def read(self, origins: RowOrigins) -> None:
        """A batch was read (in order) and will be trained in a later step."""
        self._read.append(origins)

    def trained(self, rows: int) -> None:
        """The oldest read batch was trained (``rows``: its rows; 0 for a step this rank had
        no batch in)."""
        self.phase_steps += 1
        if rows == 0:
            return
        self.phase_rows += rows
        if not self._read:  # batches without origins (Job.run_batches given raw batches)
            self.untracked += rows
            return
        o = self._read.popleft()
        if len(o) != rows:
            raise RuntimeError(f"a step trained {rows} rows of a {len(o)}-row batch")
        self.checksum = (self.checksum + checksum(row_keys(o))) & MASK
        self.consumed = (int(o.file[-1]), int(o.file_line[-1]))

    def skipped(self, rows: int) -> None:
        """The oldest read batch was a step done before a resume (its rows are in the
        restored tally already)."""
        if rows:
            self._read.popleft()

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (rank meta)."""
        return {"checksum": hex64(self.checksum),
                "consumed": None if self.consumed is None else list(self.consumed),
                "phase_steps": self.phase_steps, "phase_rows": self.phase_rows,
                "untracked": self.untracked}

    @classmethod
    def restored(cls, state: dict[str, Any] | None) -> RowTally:
        """The tally a checkpoint kept (an empty one for checkpoints without)."""
        if not state:
            return cls()
        c = state.get("consumed")
        return cls(int(state.get("checksum", "0"), 16), None if c is None else (int(c[0]),
                                                                               int(c[1])),
                   int(state.get("phase_steps", 0)), int(state.get("phase_rows", 0)),
                   int(state.get("untracked", 0)))
