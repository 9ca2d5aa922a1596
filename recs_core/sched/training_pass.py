"""The training pass: every mode runs its steps as tasks of one loop (``sched.loop``).

The pass admits each step's batch (``sched.batches``) and waits for its step agreement,
spawns the step's tasks (``sched.step``, where the rules that keep every schedule exact
live), and runs the loop until the step's train task is done; feature work of staged
batches (``sched.feature_work``) runs inside those tasks, on workers, and as the loop's
filler. A :class:`~recs_core.sched.policy.Policy` is turned into the components'
settings once; the schedule guard (``sched.guard``) switches between the policy's
:class:`~recs_core.sched.policy.Schedule` and the blocking one at step boundaries, after
settling. At the end the pass closes its admissions and returns its figures.
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
    """``fn(steps_done)`` after every ``every`` steps, with the model up to date (e.g. a
    periodic checkpoint)."""

    every: int
    fn: Callable[[int], None]


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


class TrainingPass:
    """Runs a training pass through the task loop under a policy (module docstring)."""

    def __init__(self, model: StagedModel, graph: FeatureGraph, world: World, policy: Policy,
                 timeline: Timeline) -> None:
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
        self.guard_steps = {OVERLAP: 0, BLOCKING: 0}  # steps each schedule ran
        self._use(OVERLAP)  # (the policy's own schedule, also for a blocking policy)

    def run(self, parts: Iterator[RawBatch | None], empty: RawBatch, record: Record,
            hook: StepHook | None = None) -> PassFigures:
        """Train on every global step of ``parts`` (this rank's parts, None once
        exhausted); ``record(fb, probs)`` gets each batch's scores; ``hook`` runs after
        every ``hook.every`` steps, with those steps' updates applied."""
        source: BatchSource = (PrefetchThread(parts, self.graph, self.timeline, self._prefetch)
                               if self._prefetch else ReadSource(parts))
        self.batches.open(source, empty)
        progress_thread = ProgressThread(self.world.comm).start() if self.poke else None
        try:
            steps = self._run(record, hook)
        finally:
            if progress_thread is not None:
                progress_thread.stop()
            self.features.close()
            source.close()
        return self._figures(steps, source.seconds)

    def _run(self, record: Record, hook: StepHook | None) -> int:
        t, last_start, hook_s, ahead = 0, None, 0.0, 0.0
        batches, loop, steps = self.batches, self.loop, self.steps
        while True:
            batches.current = t
            start = time.perf_counter()
            if self.guard is not None:
                if last_start is not None:
                    self.guard.record(t - 1, start - last_start - hook_s, ahead)
                self._guarded(t)
            last_start, hook_s = start, 0.0
            admitted = batches.admitted > t
            b = batches.get(t)
            # its reading and operators run before its step (by overlapped steps)
            ahead = b.prepared_seconds if admitted else 0.0
            loop.run_until(b.agreement)
            active, global_rows = (int(x) for x in b.agreement.result())
            if active == 0:
                break
            if self.guard is not None:
                self.guard_steps[self._active] += 1
            if t and t % self._replan_every == 0 or t == 2:
                self.plan.agree(*steps.plan_costs(), self._plan_comm)
            loop.run_until(steps.start(t, global_rows, record))
            if not self._schedules[self._active].overlap:
                steps.settle()  # a blocking step ends with its updates applied
            self.timeline.step(start, time.perf_counter())
            batches.drop(t - 1)
            steps.drop(t - 1)
            t += 1
            if hook is not None and t % hook.every == 0:
                steps.settle()
                t_hook = time.perf_counter()
                hook.fn(t)
                hook_s = time.perf_counter() - t_hook
        loop.drain()
        self._close()
        return t

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
            self.timeline.add(f"guard: {choice} (step ms overlap {agreed[0] * 1e3:.1f}, "
                              f"blocking {agreed[1] * 1e3:.1f})", CPU, t0, time.perf_counter())
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

    def _figures(self, steps: int, thread_feature_seconds: float) -> PassFigures:
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
            scheduler=scheduler)
