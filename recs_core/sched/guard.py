"""The schedule guard: an overlapping policy overlaps only where that hides more idle time
than it costs.

Overlap pays where a blocking step idles while its exchanges are in flight, and costs CPU
of its own (more task segments, polls, the filler's bookkeeping). So the pass measures
those two causes: after a warm-up it runs probe blocks of the blocking schedule and of
the overlapping one (every policy computes the same model, so switching at a step
boundary is exact), and splits each measured step into *busy* time (the CPU time of
tasks, the filler and the loop's own work: CPU time, not wall time, since on a shared
machine a thread's wall time swings with what else runs) and *idle* time (nothing to run
while exchanges are in flight). The
ranks agree on the medians. Overlap runs while the idle time it hides (blocking's idle
minus its own) exceeds the CPU it adds (its busy time minus blocking's) by a margin,
pooled over the last few probes -- of this pass and, through the checkpoint
(:meth:`ScheduleGuard.state`), of the windows before; otherwise blocking runs. A pass
starts with the schedule the last probe chose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OVERLAP, BLOCKING = "overlap", "blocking"
_CAUSES = ("overlap_busy_ms", "overlap_idle_ms", "blocking_busy_ms", "blocking_idle_ms")


@dataclass(frozen=True)
class GuardSettings:
    """``warmup`` steps before the first probe (JIT, first costs, the plans agreed at steps
    2 and 16); ``block`` steps per probe block, the first of which is not measured (it
    pays the switch); ``rounds`` blocks of each schedule per probe, in the order blocking,
    overlap, overlap, blocking, ... (a drift in speed hits both alike); a probe every
    ``every`` steps; overlap runs only if the idle time it hides exceeds the CPU it adds
    by more than ``margin`` of a blocking step, pooled over the last ``memory`` probes."""

    warmup: int = 16
    block: int = 3
    rounds: int = 2
    every: int = 200
    margin: float = 0.01
    memory: int = 4

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.block < 2 or self.rounds < 1 or self.memory < 1:
            raise ValueError("guard: warmup >= 0, block >= 2, rounds >= 1 and memory >= 1 "
                             "needed")
        if self.every <= 2 * self.block * self.rounds:
            raise ValueError("guard: probes must be further apart than their length")

    @property
    def probe_steps(self) -> int:
        return 2 * self.block * self.rounds


@dataclass(frozen=True)
class Probe:
    """One probe: the ranks' agreed median busy and idle ms per step of each schedule
    (None: not measured), the pooled estimate it decided on (``hidden_ms``: idle time
    overlap hides, ``extra_cpu_ms``: CPU it adds, over ``pooled`` probes) and the choice."""

    step: int
    overlap_busy_ms: float | None
    overlap_idle_ms: float | None
    blocking_busy_ms: float | None
    blocking_idle_ms: float | None
    hidden_ms: float | None
    extra_cpu_ms: float | None
    pooled: int
    choice: str

    @property
    def causes(self) -> list[float | None]:
        return [getattr(self, k) for k in _CAUSES]

    @property
    def measured(self) -> bool:
        return None not in self.causes


@dataclass
class ScheduleGuard:
    """Which schedule each step runs, from the causes measured (module docstring).

    The caller asks :meth:`schedule` before each step, reports each measured step's CPU
    time, its idle time and its batch's work done ahead with :meth:`record`, and at the
    steps where :meth:`decision_due` is true agrees on :meth:`local_medians` over the
    ranks (their mean) and passes it to :meth:`decide`. Every rank sees the same steps and the same
    agreed figures, so every rank switches at the same step."""

    settings: GuardSettings = field(default_factory=GuardSettings)
    choice: str = OVERLAP
    probes: list[Probe] = field(default_factory=list)  # this pass's
    remembered: list[Probe] = field(default_factory=list)  # pooled (measured ones)
    started_with: str = OVERLAP
    _start: int = -1  # first step of the current probe (-1: none yet)
    _times: dict[str, list[tuple[float, float]]] = field(
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

    def measures(self, step: int) -> bool:
        """Whether ``step`` is a measured step of a probe (the caller times its CPU)."""
        start = self._probe_start(step)
        return start is not None and (step - start) % self.settings.block != 0

    def record(self, step: int, busy: float, idle: float = 0.0, ahead: float = 0.0) -> None:
        """``step`` spent ``busy`` seconds of CPU (not counting its waits) and ``idle``
        seconds with nothing to run while exchanges were in flight (counted if it is a
        measured step of a probe); ``ahead``: seconds of its batch's work done before it
        began. A blocking step is charged with them as busy time: after overlapped steps
        it finds its batch read and partly processed by their filler, work a blocking pass
        does in the step (the probe would credit blocking with overlap's prefetch). An
        overlapped step prepares later batches in turn, so it is measured as it ran."""
        if not self.measures(step):
            return
        start = self._probe_start(step)
        if start != self._start:
            self._start = start
            self._times = {OVERLAP: [], BLOCKING: []}
        schedule = self.schedule(step)
        self._times[schedule].append((busy + (ahead if schedule == BLOCKING else 0.0), idle))

    def decision_due(self, step: int) -> bool:
        """Whether the ranks agree before ``step`` (a probe has just ended)."""
        s = self.settings
        return step >= s.warmup + s.probe_steps and (
            (step - s.warmup - s.probe_steps) % s.every == 0)

    def local_medians(self) -> np.ndarray:
        """This rank's median busy and idle seconds per step of each schedule in the last
        probe (overlap busy, overlap idle, blocking busy, blocking idle); NaN where not
        measured."""
        out = []
        for k in (OVERLAP, BLOCKING):
            got = np.array(self._times[k]).reshape(-1, 2)
            out += list(np.median(got, axis=0)) if len(got) else [np.nan, np.nan]
        return np.array(out)

    def decide(self, step: int, agreed: np.ndarray) -> str:
        """Pool the ranks' ``agreed`` medians (:meth:`local_medians`' order) with the
        remembered probes and choose: overlap if the idle time it hides exceeds the CPU it
        adds by the margin, else blocking; with nothing measured the choice stands."""
        causes = [_ms(float(x)) for x in agreed]
        measured = None not in causes
        keep = self.settings.memory - 1 if measured else self.settings.memory
        pooled = ([p.causes for p in self.remembered[-keep:]] if keep else []) + (
            [causes] if measured else [])
        hidden, extra, step_ms = _pooled(pooled)
        if hidden is not None:
            self.choice = (OVERLAP if hidden - extra > self.settings.margin * step_ms
                           else BLOCKING)
        probe = Probe(step, *causes, hidden_ms=_round(hidden), extra_cpu_ms=_round(extra),
                      pooled=len(pooled), choice=self.choice)
        self.probes.append(probe)
        if measured:
            self.remembered = [*self.remembered, probe][-self.settings.memory:]
        return self.choice

    def figures(self, steps_run: dict[str, int]) -> dict[str, object]:
        """For the job's JSON: the schedule the pass started with, every probe, the
        schedule in force at the end, and the steps each schedule ran."""
        return {"started_with": self.started_with, "choice": self.choice,
                "steps": dict(steps_run), "probes": [asdict(p) for p in self.probes]}

    def state(self) -> dict[str, Any]:
        """What the next pass starts from (a checkpoint's ``schedule_guard``): the
        choice and the probes pooled."""
        return {"choice": self.choice, "probes": [asdict(p) for p in self.remembered]}

    def restore(self, state: dict[str, Any]) -> None:
        """Start from :meth:`state` of an earlier pass (ValueError if it is not one)."""
        try:
            choice = state["choice"]
            probes = [Probe(**p) for p in state["probes"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a schedule guard state ({e})") from None
        if choice not in (OVERLAP, BLOCKING) or not all(p.measured for p in probes):
            raise ValueError(f"not a schedule guard state (choice {choice!r})")
        self.choice = self.started_with = choice
        self.remembered = probes[-self.settings.memory:]


def _pooled(causes: list[list[float | None]]) -> tuple[float | None, float | None, float]:
    """Mean idle ms hidden, CPU ms added and blocking step ms over measured probes'
    ``causes`` (:attr:`Probe.causes`)."""
    if not causes:
        return None, None, 0.0
    a = np.array(causes, dtype=float)
    o_busy, o_idle, b_busy, b_idle = a.mean(axis=0)
    return float(b_idle - o_idle), float(o_busy - b_busy), float(b_busy + b_idle)


def _ms(seconds: float) -> float | None:
    return None if np.isnan(seconds) else round(seconds * 1e3, 3)


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)
