"""The training pass: every mode runs its steps as tasks of one loop (``sched.loop``).

The pass admits each step's batch (``sched.batches``) and waits for its step agreement,
spawns the step's tasks (``sched.step``, where the rules that keep every schedule exact
live), and runs the loop until the step's train task is done; feature work of staged
batches (``sched.feature_work``) runs inside those tasks, on workers, and as the loop's
filler. A :class:`~recs_core.sched.policy.Policy` is turned into the components'
settings once; the schedule guard (``sched.guard``) switches between the policy's
:class:`~recs_core.sched.policy.Schedule` and the blocking one at step boundaries, after
settling. At the end the pass closes its admissions and returns its figures.

A pass stops early, at a step boundary, when a rank is asked to (``stop_requested``, e.g.
on SIGTERM): the request rides on the next step agreement that rank posts, and the first
agreed step that carries one is trained by no rank (``sched.step``, rule 5). A step hook
with ``seconds`` runs at the boundary whose agreement carries rank 0's "checkpoint due".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recs_core.comm.objects import dup
from recs_core.comm.pending import SPIN_S as BLOCKING_SPIN_S
from recs_core.comm.pending import post_allreduce
from recs_core.comm.progress_thread import ProgressThread, over_network
from recs_core.comm.world import World
from recs_core.data.parse import RawBatch
from recs_core.features.graph import FeatureGraph
from recs_core.sched.batches import Batches, BatchSource, PrefetchThread, ReadSource
from recs_core.sched.costs import Costs, PipelinePlan
from recs_core.sched.feature_work import FeatureWork, RowChunks, pipelines_with
from recs_core.sched.guard import BLOCKING, OVERLAP, ScheduleGuard
from recs_core.sched.loop import SPIN_S, Loop
from recs_core.sched.policy import BLOCKING_SCHEDULE, Policy
from recs_core.sched.step import Record, StagedModel, Steps
from recs_core.sched.trace import CPU, Timeline


@dataclass(frozen=True)
class StepHook:
    """``fn(steps_done)`` at step boundaries, with the model up to date (e.g. a periodic
    checkpoint): after every ``every`` steps, or, with ``seconds`` instead, at the first
    boundary after ``seconds`` have passed on rank 0's clock since the pass began or the
    hook last ran (the ranks agree on that step in its step agreement)."""

    every: int | None
    fn: Callable[[int], None]
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.seconds is None):
            raise ValueError("a step hook needs either every (steps) or seconds")
        if self.every is not None and self.every < 1 or (self.seconds is not None
                                                         and not self.seconds > 0):
            raise ValueError(f"a step hook needs every >= 1 or seconds > 0, got "
                             f"{self.every}, {self.seconds}")


class CheckpointClock:
    """Rank 0's vote for a time-based step hook: due once ``seconds`` have passed since
    the clock started or the hook last ran; asked at each admission, it says so once and
    then waits for :meth:`ran` (the agreed step may be a few admissions later)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._since = time.monotonic()
        self._voted = False

    def due(self) -> bool:
        if self._voted or time.monotonic() - self._since < self.seconds:
            return False
        self._voted = True
        return True

    def ran(self) -> None:
        """The hook ran at the agreed step: the next interval starts now."""
        self._since, self._voted = time.monotonic(), False


@dataclass(frozen=True)
class PassFigures:
    """What a pass did and measured on this rank."""

    mode: str
    steps: int
    feature_seconds: float  # features computed by the loop's thread and its workers
    thread_feature_seconds: float  # by the prefetch thread
    traffic: dict[str, int]  # bytes sent to the other ranks, by exchange
    comm_waits: dict[str, float]  # seconds idle on each pipeline's exchanges, and "dense"
    scheduler: dict[str, object]  # the loop's, the plan's and the guard's, for the JSON
    preempted: bool = False  # the ranks stopped at a step boundary before the data's end
    guard_state: dict[str, object] | None = None  # what the next pass's guard starts from


class TrainingPass:
    """Runs a training pass through the task loop under a policy (module docstring)."""

    def __init__(self, model: StagedModel, graph: FeatureGraph, world: World, policy: Policy,
                 timeline: Timeline, guard_state: dict[str, object] | None = None) -> None:
        """``guard_state``: the schedule guard's state an earlier pass left
        (:meth:`ScheduleGuard.state`); this pass starts with its choice."""
        self.graph, self.world, self.policy, self.timeline = graph, world, policy, timeline
        multi = world.size > 1
        # a progress thread only with a spare core: with 1 core per rank under the emulated
        # network its wake-ups cost more CPU than its progress saved (MPICH and Open MPI)
        self.poke = multi and (policy.progress_thread == "on" or policy.progress_thread
                               == "auto" and policy.workers > 0 and over_network(world.comm))
        self._prefetch = policy.lookahead if policy.prefetch_thread else 0
        self._replan_every = policy.replan_every
        self.costs = costs = Costs()
        self.plan = PipelinePlan(pipelines_with(graph, "sparse"), use_priority=policy.priority)
        self._plan_comm = dup(world.comm, "communicator duplication") if multi else None
        self.batches = Batches(graph, dup(world.comm, "communicator duplication")  # agreements
                               if multi else None, costs, timeline,
                               RowChunks(graph, costs, policy.chunk_seconds).rows)
        self.features = FeatureWork(graph, self.batches, costs, self.plan, timeline,
                                    policy.lookahead, policy.workers)
        self.loop = Loop(timeline, background=self.features.feed if policy.workers > 0 else None)
        self.steps = Steps(model, self.loop, self.batches, self.features, self.plan, costs,
                           multi)
        self._schedules = {OVERLAP: policy.schedule(), BLOCKING: BLOCKING_SCHEDULE}
        self.guard = (ScheduleGuard(policy.guard) if policy.guard is not None
                      and policy.overlap else None)
        if self.guard is not None and guard_state is not None:
            self.guard.restore(guard_state)
        self.guard_steps = {OVERLAP: 0, BLOCKING: 0}  # steps each schedule ran
        self._use(OVERLAP)  # (the policy's own schedule, also for a blocking policy)

    def run(self, parts: Iterator[RawBatch | None], empty: RawBatch, record: Record,
            hook: StepHook | None = None,
            stop_requested: Callable[[], bool] | None = None) -> PassFigures:
        """Train on every global step of ``parts`` (this rank's parts, None once
        exhausted); ``record(fb, probs)`` gets each batch's scores; ``hook`` runs at step
        boundaries (:class:`StepHook`), with the steps' updates applied. When
        ``stop_requested()`` turns true on any rank, every rank stops at the same step
        boundary, with the steps before it applied (the figures say ``preempted``)."""
        source: BatchSource = (PrefetchThread(parts, self.graph, self.timeline, self._prefetch)
                               if self._prefetch else ReadSource(parts))
        clock = (CheckpointClock(hook.seconds) if hook is not None and hook.seconds is not None
                 else None)
        self.batches.open(source, empty, stop_requested or (lambda: False),
                          clock.due if clock is not None and self.world.rank == 0
                          else lambda: False)
        progress_thread = ProgressThread(self.world.comm).start() if self.poke else None
        try:
            steps, preempted = self._run(record, hook, clock)
        finally:
            if progress_thread is not None:
                progress_thread.stop()
            self.features.close()
            source.close()
        return self._figures(steps, source.seconds, preempted)

    def _run(self, record: Record, hook: StepHook | None,
             clock: CheckpointClock | None) -> tuple[int, bool]:
        """The pass's steps; returns (steps trained, whether it stopped on a request)."""
        t, hook_s, ahead = 0, 0.0, 0.0
        # at the start of a probe's measured step: CPU, idle and idle CPU so far
        last: tuple[float, float, float] | None = None
        batches, loop, steps, guard = self.batches, self.loop, self.steps, self.guard
        while True:
            batches.current = t
            start = time.perf_counter()
            if guard is not None:
                if last is not None and not hook_s:  # (a step with a hook is not measured)
                    guard.record(t - 1, time.thread_time() - last[0]
                                 - (loop.idle_cpu_seconds - last[2]),
                                 loop.idle_seconds - last[1], ahead)
                self._guarded(t)
                # the CPU of a probe's measured step is the thread's, less its waits'
                measured = guard.measures(t)
                loop.cpu_clock = time.thread_time if measured else None
                last = ((time.thread_time(), loop.idle_seconds, loop.idle_cpu_seconds)
                        if measured else None)
            hook_s = 0.0
            admitted = batches.admitted > t
            b = batches.get(t)
            # its reading and operators run before its step (by overlapped steps)
            ahead = b.prepared_seconds if admitted else 0.0
            loop.run_until(b.agreement)
            agreed = b.agreed()
            if not agreed.trains:
                break
            if agreed.checkpoint_due and clock is not None and hook is not None:
                if t > 0:
                    hook_s = self._hook(hook, t)
                clock.ran()
            if self.guard is not None:
                self.guard_steps[self._active] += 1
            if t and t % self._replan_every == 0 or t == 2:
                self.plan.agree(*steps.plan_costs(), self._plan_comm)
            loop.run_until(steps.start(t, agreed.rows, record))
            if not self._schedules[self._active].overlap:
                steps.settle()  # a blocking step ends with its updates applied
            self.timeline.step(start, time.perf_counter())
            batches.drop(t - 1)
            steps.drop(t - 1)
            t += 1
            if hook is not None and hook.every is not None and t % hook.every == 0:
                hook_s = self._hook(hook, t)
        loop.drain()  # (after a stop: the last trained step's updates applied)
        self._close()
        return t, bool(agreed.stop)

    def _hook(self, hook: StepHook, steps_done: int) -> float:
        """Run ``hook`` with the steps' updates applied; returns its seconds."""
        self.steps.settle()
        t0 = time.perf_counter()
        hook.fn(steps_done)
        return time.perf_counter() - t0

    def _guarded(self, t: int) -> None:
        """Before step t: agree on the guard's decision if a probe just ended, then run
        the schedule the guard gives step t (settling the overlapped steps first)."""
        guard = self.guard
        assert guard is not None
        if guard.decision_due(t):
            t0 = time.perf_counter()
            agreed = post_allreduce(self._plan_comm, guard.local_medians(),
                                    "guard agreement").wait() / self.world.size
            choice = guard.decide(t, agreed)
            p = guard.probes[-1]
            self.timeline.add(f"guard: {choice} (hides {p.hidden_ms} ms idle, adds "
                              f"{p.extra_cpu_ms} ms CPU a step, {p.pooled} probes)", CPU, t0,
                              time.perf_counter())
        wanted = guard.schedule(t)
        if wanted == self._active:
            return
        if not self._schedules[wanted].overlap:
            self.steps.settle()
        self._use(wanted)

    def _use(self, name: str) -> None:
        """Put schedule ``name`` (OVERLAP: the policy's; BLOCKING) in force in every
        component: how batches are admitted, the steps' overlap rules, the loop's filler
        and waits."""
        s = self._schedules[name]
        self._active = name
        self.batches.staged = s.staged
        self.steps.use(s.overlap, s.early)
        self.loop.configure(self.features.fill if s.fill else None, s.overlap,
                            SPIN_S if s.overlap else BLOCKING_SPIN_S)

    def _close(self) -> None:
        """Complete the step agreements ranks posted ahead, free the communicators."""
        most = post_allreduce(self._plan_comm, np.array([self.batches.admitted]),
                              "admission count", op="max").wait()
        self.batches.close(int(most[0]))
        if self._plan_comm is not None:
            self._plan_comm.Free()

    def _figures(self, steps: int, thread_feature_seconds: float,
                 preempted: bool) -> PassFigures:
        """The pass's figures: its feature time and traffic, the loop's own figures
        (consumer lateness, loop overhead, idle time by exchange), the plan, the guard."""
        lp = self.loop
        late = np.array(lp.late) if lp.late else np.zeros(1)
        scheduler = {
            "policy": {k: (vars(v) if k == "guard" and v else v)
                       for k, v in vars(self.policy).items() if k != "name"},
            "guard": (self.guard.figures(self.guard_steps) if self.guard is not None
                      else None),
            "consumer_late_ms": {"median": round(float(np.median(late)) * 1e3, 3),
                                 "p95": round(float(np.percentile(late, 95)) * 1e3, 3)},
            "tasks": lp.tasks_run,
            "overhead_us_per_task": round(lp.overhead_seconds / max(1, lp.tasks_run) * 1e6, 2),
            "overhead_mpi_us_per_task": round(lp.overhead_mpi_seconds / max(1, lp.tasks_run)
                                              * 1e6, 2),
            "idle_seconds": round(lp.idle_seconds, 4),
            "prefetch_seconds": round(lp.fill_seconds, 4),
            "pipeline_order": list(self.plan.order),
            "plans": self.plan.history,
            "agreed_costs_ms": {p: [round(float(c) * 1e3, 3), round(float(m) * 1e3, 3)]
                                for p, c, m in zip(self.plan.pipelines, *self.plan.agreed)},
            "replans": self.plan.replans,
            "progress_thread": self.poke,
            "most_batches_held": self.batches.most_held,
            "chunk_runs": self.features.chunk_runs,
        }
        return PassFigures(
            mode=self.policy.name, steps=steps,
            feature_seconds=self.batches.feature_seconds + self.features.feature_seconds,
            thread_feature_seconds=thread_feature_seconds, traffic=dict(self.steps.traffic),
            comm_waits={g: lp.waits.get(g, 0.0) for g in [*self.plan.pipelines, "dense"]},
            scheduler=scheduler, preempted=preempted,
            guard_state=self.guard.state() if self.guard is not None else None)
