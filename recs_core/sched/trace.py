"""The per-rank timeline: CPU tasks and in-flight exchanges, as a Chrome trace and as
per-step figures (CPU busy, comm in flight, CPU idle while comm was in flight)."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from recs_core.comm.objects import barrier

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

CPU, COMM, WORKER, WAIT = 0, 1, 2, 3  # tracks (Chrome "tid")


class Timeline:
    """Spans recorded on one rank (by the task loop that runs the pass)."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.t0 = time.perf_counter()
        self.spans: list[tuple[str, int, float, float]] = []  # name, track, start, end
        self.steps: list[tuple[float, float]] = []  # wall interval of each step
        self._lock = threading.Lock()  # the prefetch thread records too

    def sync(self, comm: Comm) -> None:
        """Align the ranks' time origins: every rank leaves a barrier, then takes its
        origin (good to the barrier's skew, also across machines)."""
        if comm is not None and comm.Get_size() > 1:
            barrier(comm, "trace clock barrier")
        self.t0 = time.perf_counter()

    def add(self, name: str, track: int, start: float, end: float) -> None:
        with self._lock:
            self.spans.append((name, track, start, end))

    @contextmanager
    def cpu(self, name: str, track: int = CPU):
        """Record the enclosed code as one CPU span."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, track, t, time.perf_counter())

    def step(self, start: float, end: float) -> None:
        self.steps.append((start, end))

    def step_figures(self) -> list[dict[str, float]]:
        """Per step: wall, CPU busy, comm in flight, CPU idle while comm in flight (s)."""
        # a blocking wait inside a CPU span (modes sequential, prefetch) is idle time
        waits = _union([(a, b) for _, k, a, b in self.spans if k == WAIT])
        cpu = _difference(_union([(a, b) for _, k, a, b in self.spans if k in (CPU, WORKER)]),
                          waits)
        comm = _union([(a, b) for _, k, a, b in self.spans if k == COMM])
        if not self.steps:
            return []
        a, b = np.array(self.steps).T
        wall = b - a
        busy, in_flight = _Measure(cpu).within(a, b), _Measure(comm).within(a, b)
        idle = in_flight - _Measure(_intersect(cpu, comm)).within(a, b)
        return [{"wall": float(w), "cpu_busy": float(c), "comm": float(m),
                 "idle_in_comm": float(i)} for w, c, m, i in zip(wall, busy, in_flight, idle)]

    def events(self) -> list[dict[str, Any]]:
        """Chrome trace events of this rank (pid = rank, one track each for CPU work,
        exchanges in flight and the prefetch thread)."""
        ev: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": self.rank,
             "args": {"name": f"rank {self.rank}"}}]
        for tid, name in ((CPU, "cpu tasks"), (COMM, "exchanges in flight"),
                          (WORKER, "prefetch thread"), (WAIT, "blocked on an exchange")):
            ev.append({"ph": "M", "name": "thread_name", "pid": self.rank, "tid": tid,
                       "args": {"name": name}})
        for name, track, a, b in self.spans:
            ev.append({"name": name, "cat": "comm" if track == COMM else "cpu", "ph": "X",
                       "pid": self.rank, "tid": track, "ts": round((a - self.t0) * 1e6, 1),
                       "dur": round((b - a) * 1e6, 1)})
        return ev


def write_trace(path: str, timelines_events: list[list[dict[str, Any]]]) -> None:
    """Write every rank's events as one Chrome trace JSON file (atomically)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"traceEvents": [e for ev in timelines_events for e in ev],
                   "displayTimeUnit": "ms"}, f)
    os.replace(tmp, path)


def summarize(figures: list[dict[str, float]]) -> dict[str, float]:
    """Medians over steps (ms) of the per-step figures."""
    if not figures:
        return {}
    return {f"{k}_ms": round(float(np.median([f[k] for f in figures])) * 1e3, 3)
            for k in figures[0]}


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class _Measure:
    """Sorted disjoint spans, measured inside many intervals at once: the length covered
    up to time t is a running sum (a pass has thousands of steps: clipping the spans per
    step in Python cost 13 s after a 1,758-step pass when it scanned, 0.25 s bisecting)."""

    def __init__(self, spans: list[tuple[float, float]]) -> None:
        arr = np.array(spans, dtype=np.float64).reshape(-1, 2)
        # a first empty span at -inf: every time has a span starting at or before it
        self.starts = np.concatenate([[-np.inf], arr[:, 0]])
        self.lengths = np.concatenate([[0.0], arr[:, 1] - arr[:, 0]])
        self.before = np.concatenate([[0.0], np.cumsum(self.lengths)])  # covered before span i

    def covered(self, t: np.ndarray) -> np.ndarray:
        """Length of the spans before each time in ``t``."""
        i = np.searchsorted(self.starts, t, side="right") - 1
        return self.before[i] + np.clip(t - self.starts[i], 0.0, self.lengths[i])

    def within(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Length of the spans inside each [a, b]."""
        return self.covered(b) - self.covered(a)


def _clip(spans: list[tuple[float, float]], a: float, b: float) -> list[tuple[float, float]]:
    """The parts of ``spans`` inside [a, b] (the reference :class:`_Spans` is checked
    against)."""
    return [(max(x, a), min(y, b)) for x, y in spans if y > a and x < b]


def _intersect(p: list[tuple[float, float]], q: list[tuple[float, float]]) -> list[
        tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(p) and j < len(q):
        a, b = max(p[i][0], q[j][0]), min(p[i][1], q[j][1])
        if a < b:
            out.append((a, b))
        if p[i][1] < q[j][1]:
            i += 1
        else:
            j += 1
    return out


def _difference(p: list[tuple[float, float]], q: list[tuple[float, float]]) -> list[
        tuple[float, float]]:
    """The parts of sorted disjoint spans ``p`` outside sorted disjoint spans ``q``."""
    out, j = [], 0
    for a, b in p:
        while j < len(q) and q[j][1] <= a:
            j += 1
        k = j
        while k < len(q) and q[k][0] < b:
            if q[k][0] > a:
                out.append((a, q[k][0]))
            a = max(a, q[k][1])
            k += 1
        if a < b:
            out.append((a, b))
    return out


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in spans)
