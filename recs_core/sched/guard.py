"""The schedule guard: an overlapping policy never runs slower than a blocking one.

Whether overlapping pays depends on the stack: an exchange posted before a long task
progresses during it only if the MPI library moves data without being called (or the
task loop polls often enough for it). So the pass measures: after a warm-up it runs probe
blocks of the overlapping schedule and of the blocking one (every policy computes the
same model, so switching at a step boundary is exact), the ranks agree on the median step
time of each, and the faster one runs until the next probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OVERLAP, BLOCKING = "overlap", "blocking"


@dataclass(frozen=True)
class GuardSettings:
    """``warmup`` steps before the first probe (JIT, first costs, the plans agreed at steps
    2 and 16; a pass too short to gain back a probe's slower steps runs without one);
    ``block`` steps per probe block, the first of which is not measured (it pays the
    switch); ``rounds`` blocks of each schedule per probe, in the order blocking,
    overlap, overlap, blocking, ... (a drift in speed hits both alike); a probe every
    ``every`` steps; blocking wins only if faster by more than ``tolerance``."""

    warmup: int = 16
    block: int = 3
    rounds: int = 2
    every: int = 200
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.block < 2 or self.rounds < 1:
            raise ValueError("guard: warmup >= 0, block >= 2 and rounds >= 1 needed")
        if self.every <= 2 * self.block * self.rounds:
            raise ValueError("guard: probes must be further apart than their length")

    @property
    def probe_steps(self) -> int:
        return 2 * self.block * self.rounds


@dataclass
class Probe:
    """One probe's agreed median step times and the schedule it chose."""

    step: int
    overlap_ms: float | None  # None: not measured
    blocking_ms: float | None
    choice: str


@dataclass
class ScheduleGuard:
    """Which schedule each step runs, from step times (this module's docstring).

    The caller asks :meth:`schedule` before each step, reports each step's wall time (and
    its batch's work done ahead) with :meth:`record`, and at the steps where
    :meth:`decision_due` is true agrees on :meth:`local_medians` over the ranks (their
    mean) and passes it to :meth:`decide`.
    Every rank sees the same steps, so every rank switches at the same step."""

    settings: GuardSettings = field(default_factory=GuardSettings)
    choice: str = OVERLAP
    probes: list[Probe] = field(default_factory=list)
    _start: int = -1  # first step of the current probe (-1: none yet)
    _times: dict[str, list[float]] = field(
        default_factory=lambda: {OVERLAP: [], BLOCKING: []})

    def _probe_start(self, step: int) -> int | None:
        """First step of the probe that ``step`` falls in (None: not in a probe)."""
        s = self.settings
        if step < s.warmup:
            return None
        start = s.warmup + (step - s.warmup) // s.every * s.every
        return start if step - start < s.probe_steps else None

    def schedule(self, step: int) -> str:
        """The schedule of ``step``."""
        start = self._probe_start(step)
        if start is None:
            return self.choice
        k = (step - start) // self.settings.block  # block index in the probe
        first_blocking = (k // 2) % 2 == 0  # pairs: (blocking, overlap), (overlap, blocking)
        return BLOCKING if (k % 2 == 0) == first_blocking else OVERLAP

    def record(self, step: int, seconds: float, ahead: float = 0.0) -> None:
        """``step`` took ``seconds`` (counted if it is a measured step of a probe);
        ``ahead``: seconds of its batch's work done before it began. A blocking step is
        charged with them: after overlapped steps it finds its batch read and partly
        processed by their filler, work a blocking pass does in the step (the probe would
        credit blocking with overlap's prefetch). An overlapped step prepares later
        batches in turn, so it is measured as it ran."""
        start = self._probe_start(step)
        if start is None or (step - start) % self.settings.block == 0:
            return
        if start != self._start:
            self._start = start
            self._times = {OVERLAP: [], BLOCKING: []}
        schedule = self.schedule(step)
        self._times[schedule].append(seconds + ahead if schedule == BLOCKING else seconds)

    def decision_due(self, step: int) -> bool:
        """Whether the ranks agree before ``step`` (a probe has just ended)."""
        s = self.settings
        return step >= s.warmup + s.probe_steps and (
            (step - s.warmup - s.probe_steps) % s.every == 0)

    def local_medians(self) -> np.ndarray:
        """This rank's median step time (s) of each schedule in the last probe
        (overlap, blocking); NaN for one not measured."""
        return np.array([np.median(self._times[k]) if self._times[k] else np.nan
                         for k in (OVERLAP, BLOCKING)])

    def decide(self, step: int, agreed: np.ndarray) -> str:
        """Take the faster schedule by the ranks' ``agreed`` medians (overlap, blocking);
        overlap keeps ties within the tolerance (and wins when either is unmeasured)."""
        overlap, blocking = (float(x) for x in agreed)
        faster = blocking < overlap * (1.0 - self.settings.tolerance)
        self.choice = BLOCKING if faster else OVERLAP
        self.probes.append(Probe(step, _ms(overlap), _ms(blocking), self.choice))
        return self.choice

    def figures(self, steps_run: dict[str, int]) -> dict[str, object]:
        """For the job's JSON: every probe, the schedule in force at the end, and the
        steps each schedule ran."""
        return {"choice": self.choice, "steps": dict(steps_run),
                "probes": [vars(p) for p in self.probes]}


def _ms(seconds: float) -> float | None:
    return None if np.isnan(seconds) else round(seconds * 1e3, 3)
