"""One rank's task loop: runs ready CPU tasks, polls posted exchanges between them and,
while exchanges are in flight and nothing is ready, lets a filler run small jobs.

A task is a generator. Each ``next()`` runs one CPU segment (one task on the timeline)
and yields what it needs before it can go on: a :class:`Pending` exchange, another
:class:`Task` to finish, or ``None`` (just a scheduling point). Ready tasks run in
priority order (lower first, then first come); nothing blocks while work is ready.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Generator
from typing import Any

from recs_core.comm.pending import Pending, poll_until
from recs_core.sched.trace import COMM, CPU, Timeline

POLL_SLEEP_S = 50e-6  # pause between polls once idle for SPIN_S (not a busy wait)
SPIN_S = 200e-6  # poll without pausing this long: MPI progresses only inside Test

TaskGen = Generator[Any, None, None]


class Task:
    """A generator run by the loop, with a priority and the thing it waits on."""

    __slots__ = ("gen", "name", "prio", "group", "phase", "done", "waiting", "result")

    def __init__(self, gen: TaskGen, name: str, prio: float, group: str | None = None,
                 phase: str | None = None) -> None:
        self.gen, self.name, self.prio, self.group = gen, name, prio, group
        self.phase = phase
        self.done = False
        self.waiting: Pending | Task | None = None


class Loop:
    """The per-rank scheduler loop (see module docstring).

    ``filler(window)`` is called when exchanges are in flight and no task is ready;
    ``window`` is the estimated seconds until the first of them completes (None when
    unknown). It returns True if it ran something. ``background()`` is called on every
    turn of the loop (it feeds worker threads). ``overlap=False``: while an exchange is in
    flight only tasks of its task's ``phase`` run (a blocking trainer's call that posts
    several exchanges at once: every pipeline's lookup, a step's bucket allreduces);
    otherwise the loop waits, polling without pause for ``spin_s`` first, as a blocking
    wait does.
    """

    def __init__(self, timeline: Timeline,
                 filler: Callable[[float | None], bool] | None = None,
                 background: Callable[[], None] | None = None, overlap: bool = True,
                 spin_s: float = SPIN_S) -> None:
        self.timeline, self.filler, self.background = timeline, filler, background
        self.overlap, self.spin_s = overlap, spin_s
        self._ready: list[tuple[float, int, Task]] = []
        self._seq = 0
        self._comm: list[Task] = []  # waiting on an exchange
        self._joins: list[Task] = []  # waiting on another task
        self.late: list[float] = []  # consumer start - last poll that saw it in flight
        self._last_poll: dict[int, float] = {}
        self.tasks_run = 0
        self.task_seconds = 0.0  # time inside task segments
        self.fill_seconds = 0.0  # time inside the filler
        self.idle_seconds = 0.0  # time in polls and pauses with nothing to run
        self.overhead_seconds = 0.0  # the loop's own time (poll, queue) before each task
        self.overhead_mpi_seconds = 0.0  # the part of it inside MPI (moving the exchanges)
        # idle seconds by the group of the first task waiting on an exchange meanwhile
        self.waits: dict[str, float] = {}
        # with a clock set (thread CPU time), the CPU seconds spent while idle (spinning
        # on MPI), so that a caller can tell the CPU its work took from the CPU its waits took
        self.cpu_clock: Callable[[], float] | None = None
        self.idle_cpu_seconds = 0.0
        self._wait_group: str | None = None  # of the first task still waiting, at the last poll

    def configure(self, filler: Callable[[float | None], bool] | None, overlap: bool,
                  spin_s: float) -> None:
        """Change the filler and the overlap rule (at a step boundary: the schedule guard)."""
        self.filler, self.overlap, self.spin_s = filler, overlap, spin_s

    def spawn(self, gen: TaskGen, name: str, prio: float = 0.0, start: bool = False,
              group: str | None = None, phase: str | None = None) -> Task:
        """Add a task; it first runs when it is the ready task of lowest priority.
        ``start``: run its first segment now, in the caller's -- for a task that first
        just yields what it waits on (saves a turn of the loop). ``group``: what idle time
        spent waiting on its exchanges is counted under (:attr:`waits`); ``phase``: see
        the class docstring."""
        task = Task(gen, name, prio, group, phase)
        if start:
            self._file(task, self._next(task))
        else:
            self._push(task)
        return task

    def _push(self, task: Task) -> None:
        self._seq += 1
        heapq.heappush(self._ready, (task.prio, self._seq, task))

    def _run(self, task: Task) -> None:
        t = time.perf_counter()
        waited = task.waiting
        if isinstance(waited, Pending):
            # the exchange completed after the last poll that saw it in flight (or, if the
            # first poll saw it done, before that poll): an upper bound on the delay
            last = self._last_poll.pop(id(waited), waited.completed)
            self.late.append(t - last)
        task.waiting = None
        need = self._next(task)
        end = time.perf_counter()
        self.timeline.add(task.name, CPU, t, end)
        self.tasks_run += 1
        self.task_seconds += end - t
        self._file(task, need)

    @staticmethod
    def _next(task: Task) -> Any:
        """Run one segment of ``task``; what it waits on next."""
        try:
            return next(task.gen)
        except StopIteration:
            task.done = True
            return None

    def _file(self, task: Task, need: object) -> None:
        """Queue a task after a segment: ready, waiting on an exchange or on a task."""
        if task.done:
            return
        task.waiting = need
        if need is None or (isinstance(need, Task) and need.done):
            task.waiting = None
            self._push(task)
        elif isinstance(need, Pending):
            self._comm.append(task)
        else:
            self._joins.append(task)

    def _poll(self) -> float:
        """Progress every exchange in flight, queue the tasks now ready; returns the
        seconds spent inside MPI (where it copies, reduces and sends: the exchanges' own
        CPU work, which a blocking wait would do while the CPU is otherwise idle)."""
        inside = 0.0
        if self._comm:
            # one progress pass for every exchange in flight (a Testall each costs ~1 us
            # per exchange more); completed requests come back null
            live = [r for task in self._comm for r in task.waiting.requests if r]
            if live:
                from mpi4py import MPI

                t = time.perf_counter()
                MPI.Request.Testsome(live)
                inside = time.perf_counter() - t
        now = time.perf_counter()
        still = []
        self._wait_group = None
        for task in self._comm:
            p = task.waiting
            assert isinstance(p, Pending)
            if p.settled():
                self._push(task)
                if p.requests and p.traced:  # its time in flight
                    self.timeline.add(p.what, COMM, p.posted, p.completed)
            else:
                self._last_poll[id(p)] = now
                p.check_deadline(now)
                still.append(task)
                if self._wait_group is None:
                    self._wait_group = task.group
        self._comm = still
        if self._joins:
            joins = []
            for task in self._joins:
                if task.waiting.done:  # type: ignore[union-attr]
                    self._push(task)
                else:
                    joins.append(task)
            self._joins = joins
        return inside

    def window(self) -> float | None:
        """Estimated seconds until the first exchange in flight completes."""
        now, best = time.perf_counter(), None
        for task in self._comm:
            p = task.waiting
            expected = p.expected  # type: ignore[union-attr]
            if expected is None:
                return None
            left = p.posted + expected - now  # type: ignore[union-attr]
            best = left if best is None else min(best, left)
        return best

    def run_until(self, target: Task | Pending) -> None:
        """Run tasks (and the filler) until ``target`` is done."""
        def finished() -> bool:
            return target.done if isinstance(target, Task) else target.test()

        idle_since = time.perf_counter()
        clock = self.cpu_clock
        c_idle = None  # the CPU clock at the start of the last turn, if it idled
        while not finished():
            t_iter = time.perf_counter()
            if clock is not None:  # (one read a turn: the turns' CPU adds up without gaps)
                c_iter = clock()
                if c_idle is not None:
                    self.idle_cpu_seconds += c_iter - c_idle
                c_idle = None
            if self.background is not None:
                self.background()
            inside_mpi = self._poll()
            task = self._next_ready()
            if task is not None:
                self.overhead_seconds += time.perf_counter() - t_iter
                self.overhead_mpi_seconds += inside_mpi
                self._run(task)
                idle_since = time.perf_counter()
                continue
            if not self._comm:
                if not isinstance(target, Pending):
                    raise RuntimeError("scheduler deadlock: tasks wait on each other "
                                       f"({', '.join(t.name for t in self._joins)})")
                target.check_deadline(time.perf_counter())
            if self._fill(None if not self._comm else self.window()):
                idle_since = time.perf_counter()
                continue
            if not self.overlap and self._comm:
                self._wait_some()
            elif time.perf_counter() - idle_since > self.spin_s:
                time.sleep(POLL_SLEEP_S)
            idle = time.perf_counter() - t_iter
            self.idle_seconds += idle
            if self._wait_group is not None:
                self.waits[self._wait_group] = self.waits.get(self._wait_group, 0.0) + idle
            if clock is not None:
                c_idle = c_iter
        if c_idle is not None:
            self.idle_cpu_seconds += clock() - c_idle  # type: ignore[misc]

    def _wait_some(self) -> None:
        """Wait until an exchange in flight completes, as a blocking wait does (a turn of
        the loop per poll would poll MPI less often)."""
        live = [r for task in self._comm for r in task.waiting.requests if r]
        if not live:
            return
        from mpi4py import MPI

        poll_until(lambda: bool(MPI.Request.Testsome(live)),
                   [task.waiting for task in self._comm])  # type: ignore[misc]

    def _next_ready(self) -> Task | None:
        """The ready task to run now, taken off the queue (None: none may run)."""
        if not self._ready:
            return None
        if self.overlap or not self._comm:
            return heapq.heappop(self._ready)[2]
        phases = {t.phase for t in self._comm}
        phase = phases.pop() if len(phases) == 1 else None
        if phase is None:
            return None
        i = min((i for i, e in enumerate(self._ready) if e[2].phase == phase),
                key=lambda i: self._ready[i][:2], default=None)
        if i is None:
            return None
        entry = self._ready[i]
        self._ready[i] = self._ready[-1]
        self._ready.pop()
        heapq.heapify(self._ready)
        return entry[2]

    def _fill(self, window: float | None) -> bool:
        if self.filler is None:
            return False
        t = time.perf_counter()
        ran = self.filler(window)
        self.fill_seconds += time.perf_counter() - t
        return ran

    def drain(self) -> None:
        """Run until every task has finished."""
        while self._ready or self._comm or self._joins:
            last = (self._comm or self._joins or [t for _, _, t in self._ready])[-1]
            self.run_until(last)
