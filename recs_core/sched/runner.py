"""The scheduled training pass (modes ``recs``, ``recs-intra``, ``recs-inter``).

Per step t the loop runs these tasks (see ``DESIGN.md``, scheduling model):

* ``lookup t/p`` per pipeline p with embeddings: the pipeline's feature operators not yet
  run, the exchange plan, the count and id exchanges, then -- once the owners applied
  step t-1's update of p -- the owner gather and the row exchange, and the fill of the
  batch's embedding block;
* ``train t``: the dense features, the MLP forward, the backward as far as the
  embedding gradients, and the post of every pipeline's gradient push;
* ``apply t/p``: the owners' sparse update, once the push completes;
* ``dense t``: the rest of backward (the weight gradients in GEMM pieces, each bucket's
  allreduce posted as soon as it is final). Its pieces run around the critical chain --
  the pushes, the updates and step t+1's row exchanges -- which goes first whenever it
  has work ready;
* ``update t``: per dense gradient bucket, the dense optimizer on that bucket's
  parameters once its allreduce completes.

Exactness: step t+1's rows are served only after step t's update of that pipeline, and
its forward reads each dense bucket's parameters only after step t's update of that
bucket (the forward announces each bucket before it reads it, and multiplies by a
weight's buckets one after another in every mode), so every mode computes the same model:
the last buckets' allreduces overlap the start of the next forward.
Each communicator sees its collectives in one fixed order on every rank: a pipeline's
lookups in step order (lookup t+1 starts after lookup t), its gradient pushes on their
own communicator, the dense allreduces on theirs.

``recs-intra`` fills exchange windows with feature operators of the next batches, chosen
one by one so that their estimated cost fits the window; a feature chain whose operators
take longer than ``chunk_ms`` on a batch runs on row chunks of at most that cost (its
operators are row-wise), so it fits short windows and the loop polls between chunks.
``recs-inter`` orders the pipelines by Johnson's rule on costs agreed across ranks;
``recs`` does both.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recs_core.comm.pending import Pending
from recs_core.comm.progress import ProgressThread, over_network
from recs_core.data.parse import RawBatch
from recs_core.features.graph import BatchState, FeatureBatch, OpNode, RowRange
from recs_core.model.layers import GradPart, NeedBucket
from recs_core.model.presets import EmbGrads
from recs_core.sched.costs import Costs, PipelinePlan
from recs_core.sched.loop import Loop, Task
from recs_core.sched.trace import WORKER, Timeline
from recs_core.sched.workers import OperatorWorkers

REPLAN_EVERY = 16  # steps between cost agreements (a tiny allreduce); also at step 2
# Task priorities, lower first: a dense bucket's update -1 (tens of us; the forward may be
# waiting for it); train 0; apply 1 + i / 100; admit 5; lookups 10 + i of the current
# step, 30 + i of the next; dense 50, last: the pushes, the applies and the row
# exchanges that wait for them are the critical chain to the next forward, and the weight
# gradients (GEMM pieces of about a ms, each bucket's allreduce posted as it is done) fill
# the time around it. Measured on the canonical workload, emulated network, 5 interleaved
# pairs, CPU idle while exchanges were in flight (ms per step): 4.7-9.0 with whole GEMMs
# and dense first (then the applies), 4.5-5.6 with pieces and dense first, 2.0-2.8 now.
APPLY_PRIO = 1.0
UPDATE_PRIO = -1.0
DENSE_PRIO = 50.0
# Default row-chunk cost of long feature chains (recs, recs-intra). Measured on the
# feature-heavy workload, emulated network, 2 ranks x 1 core, interleaved runs: recs median
# 6,356-6,705 samples/s at 20 ms vs 6,069 at 5 (per-chunk dispatch and joins), 6,150 whole
# batches, 6,177 at 40 (consumers start late behind long chunks: p95 76 ms vs 47). A chain
# longer than this runs on as many chunks as keep each within it: the heavy workload's
# history chains (~25 ms) whole vs in two chunks, 5-6 interleaved pairs: consumer lateness
# p95 21 ms vs 12, samples/s medians 12,030 vs 11,840 (within the noise).
CHUNK_MS = 20.0
MIN_CHUNK_ROWS = 16
# Batches admitted ahead of the current step (modes prefetch and recs*). Measured on the
# feature-heavy workload, 2 ranks x 1 core: 4 gave recs 2-3% more than 2.
LOOKAHEAD = 4


@dataclass(frozen=True)
class StepHook:
    """``fn(steps_done)`` after every ``every`` steps, with the model up to date (e.g. a
    periodic checkpoint)."""

    every: int
    fn: Callable[[int], None]


@dataclass
class _Batch:
    """One admitted batch: its feature state, what is left to run, its agreement."""

    raw: RawBatch
    exhausted: bool
    state: BatchState
    fb: FeatureBatch
    remaining: dict[str, deque[tuple[OpNode, RowRange]]]  # node runs left, in order
    agreement: Pending | None
    finished: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # pipelines with an operator on a worker
    blocks: list[np.ndarray] = field(default_factory=list)
    plans: dict[tuple[int, str], Any] = field(default_factory=dict)
    lookups: dict[tuple[int, str], Task] = field(default_factory=dict)


class ScheduledPass:
    """Runs a training pass through the task loop (see module docstring)."""

    def __init__(self, job: Any, mode: str, timeline: Timeline, lookahead: int = LOOKAHEAD,
                 replan_every: int = REPLAN_EVERY, workers: int = 0,
                 progress_thread: str = "auto", chunk_ms: float = CHUNK_MS) -> None:
        self.job, self.model, self.graph = job, job.model, job.graph
        self.world = job.world
        self.intra = mode in ("recs", "recs-intra")
        self.early = mode in ("recs", "recs-inter")  # next step's exchanges start early
        if progress_thread not in ("auto", "on", "off"):
            raise ValueError(f"progress_thread must be auto, on or off, not {progress_thread!r}")
        # auto: only with a spare core. Measured with 1 core per rank under the emulated
        # network, the thread's wake-ups cost more CPU than its progress saved (MPICH and
        # Open MPI alike); polls between tasks move the exchanges instead.
        self.poke = (progress_thread == "on" or progress_thread == "auto" and workers > 0
                     and over_network(self.world.comm))
        self.timeline = timeline
        self.lookahead = max(1, lookahead)
        self.chunk_seconds = chunk_ms / 1e3 if self.intra else 0.0
        self.replan_every = max(1, replan_every)
        self.sets = [self.model.emb] + ([self.model.wide] if self.model.wide is not None else [])
        self.sparse = list(self.model.emb.pipelines)
        feats = self.graph.features
        self.dense_pipes = list(dict.fromkeys(f.pipeline for f in feats if f.output == "dense"))
        self.costs = Costs()
        self.plan = PipelinePlan(self.sparse, use_priority=mode in ("recs", "recs-inter"))
        self._plan_comm = self.world.comm.Dup()
        self._agree_comm = self.world.comm.Dup()  # step agreements, posted at admission
        self.loop = Loop(timeline, self._fill if self.intra else None,
                         self._feed if workers > 0 else None)
        self.workers = OperatorWorkers(workers, self._work) if workers > 0 else None
        self.batches: dict[int, _Batch] = {}
        self._source: Iterator[RawBatch | None] | None = None
        self._empty: RawBatch | None = None
        self._admitted = 0
        self._applied: dict[tuple[int, str], Task] = {}
        self._trains: dict[int, Task] = {}
        self._dense: Task | None = None
        self._updates: list[Task] | None = None  # the last step's dense bucket updates
        self._current = 0
        self.feature_seconds = 0.0
        self.most_held = 0  # most batches held at once (bounded by the look-ahead)
        self.chunk_runs = 0  # operator runs on a row chunk rather than a whole batch

    # ---- admission and features -------------------------------------------------------

    def _admit(self) -> _Batch:
        """Read the next local batch and post the step agreement for it."""
        from mpi4py import MPI

        t0 = time.perf_counter()
        part = next(self._source, None)  # type: ignore[arg-type]
        raw = self._empty if part is None else part
        local = np.array([part is not None, len(raw)], dtype=np.int64)
        total = np.empty_like(local)
        comm = self._agree_comm
        req = comm.Iallreduce([local, MPI.INT64_T], [total, MPI.INT64_T], op=MPI.SUM)
        state = self.graph.start(raw)
        rows = len(raw)
        runs = {p: deque(self.graph.runs(p, rows, lambda fi: self._chunk_rows(fi, rows)))
                for p in self.graph.pipelines}
        b = _Batch(raw, part is None, state, self.graph.start_batch(state), runs,
                   Pending([req], lambda: total, "step agreement", comm, keep=(local,)))
        self.batches[self._admitted] = b
        self._admitted += 1
        self.most_held = max(self.most_held, len(self.batches))
        self.costs.add("admit", time.perf_counter() - t0)
        return b

    def _chunk_rows(self, feature: int, rows: int) -> int | None:
        """Rows per chunk for a feature chain expected to take longer than the chunk
        cost on ``rows`` rows: chunks of at most that cost (None: the whole batch at once,
        also while unmeasured)."""
        if self.chunk_seconds <= 0 or rows < 2 * MIN_CHUNK_ROWS:
            return None
        per_row = [self.costs.get(n.name) for n in self.graph.chain(feature)]
        if any(c is None for c in per_row):
            return None
        chunks = int(np.ceil(sum(per_row) * rows / self.chunk_seconds))  # type: ignore
        return max(MIN_CHUNK_ROWS, -(-rows // chunks)) if chunks > 1 else None

    def _batch(self, t: int) -> _Batch:
        while self._admitted <= t:
            self._admit()
        return self.batches[t]

    def _run_node(self, b: _Batch, p: str) -> None:
        """Run the next operator of pipeline ``p`` on batch ``b`` (or on its next row
        chunk) in this thread."""
        node, rows = b.remaining[p].popleft()
        t0 = time.perf_counter()
        self.graph.run_node(b.state, node, rows)
        self._node_done(b, p, node, rows, time.perf_counter() - t0)

    @staticmethod
    def _rows(b: _Batch, rows: RowRange) -> int:
        return len(b.raw) if rows is None else rows[1] - rows[0]

    def _node_done(self, b: _Batch, p: str, node: OpNode, rows: RowRange,
                   seconds: float) -> None:
        n = self._rows(b, rows)
        self.chunk_runs += rows is not None
        if n:
            self.costs.add(node.name, seconds / n)  # per row: batches and chunks differ
        self.feature_seconds += seconds
        if not b.remaining[p] and p not in b.busy:
            if p in self.sparse:
                self.graph.finish_pipeline(b.state, b.fb, p)
            b.finished.add(p)

    def _features(self, b: _Batch, pipelines: list[str], t: int) -> Iterator[None]:
        """Run the remaining operators of ``pipelines`` on batch ``b``, one per segment
        (or wait for the one a worker runs)."""
        for p in pipelines:
            while b.remaining[p] or p in b.busy:
                if p not in b.busy:
                    self._run_node(b, p)
                yield None

    def _work(self, job: tuple[_Batch, str, tuple[OpNode, RowRange]]) -> None:
        """On a worker thread: one operator on one batch (or row chunk)."""
        b, _, (node, rows) = job
        self.graph.run_node(b.state, node, rows)

    def _feed(self) -> None:
        """Collect the workers' finished operators and give idle workers the next ones:
        this step's batch first, then the next ``lookahead`` batches."""
        assert self.workers is not None
        for (b, p, (node, rows)), start, end in self.workers.completed():
            b.busy.discard(p)
            self.timeline.add(f"worker {node.name}", WORKER, start, end)
            self._node_done(b, p, node, rows, end - start)
        for w in self.workers.idle():
            job = self._next_job()
            if job is None:
                return
            job[0].busy.add(job[1])
            self.workers.submit(w, job)

    def _next_job(self) -> tuple[_Batch, str, tuple[OpNode, RowRange]] | None:
        for t in range(self._current, min(self._admitted, self._current + 1 + self.lookahead)):
            b = self.batches.get(t)
            if b is None:
                continue
            for p in self.plan.order + self.dense_pipes:
                if p in b.busy or not b.remaining.get(p):
                    continue
                node = b.remaining[p][0][0]
                if t == self._current or node.op.order_free():
                    return b, p, b.remaining[p].popleft()
        return None

    def _fill(self, window: float | None) -> bool:
        """Intra-pipeline prefetch: run one operator of an upcoming batch that fits."""
        for t in range(self._current + 1, self._current + 1 + self.lookahead):
            if t >= self._admitted:
                est = self.costs.get("admit")
                if window is not None and est is not None and est > window:
                    return False
                with self.timeline.cpu(f"read b{t}"):
                    self._admit()
                return True
            b = self.batches[t]
            for p in self.plan.order + self.dense_pipes:
                if not b.remaining.get(p) or p in b.busy:
                    continue
                node, rows = b.remaining[p][0]
                if not node.op.order_free():
                    continue  # it fits on the first batch: that batch goes first
                per_row = self.costs.get(node.name)
                if window is None or per_row is None or per_row * self._rows(b, rows) <= window:
                    where = "" if rows is None else f" rows {rows[0]}-{rows[1] - 1}"
                    with self.timeline.cpu(f"prefetch {node.name} b{t}{where}"):
                        self._run_node(b, p)
                    return True
        return False

    # ---- tasks ------------------------------------------------------------------------

    def _expect(self, pending: Pending, key: str) -> Pending:
        """Set the exchange's estimated time in flight (for the filler's window)."""
        pending.expected = self.costs.get(key, pending.nbytes)
        return pending

    def _measured(self, pending: Pending, key: str) -> float:
        """Record a completed exchange's time in flight, by size; returns it."""
        seconds = pending.completed - pending.posted  # type: ignore[operator]
        self.costs.add(key, seconds, pending.nbytes)
        return seconds

    def _lookup(self, t: int, si: int, p: str, before: Task | None) -> Iterator[Any]:
        b = self.batches[t]
        if before is not None and not before.done:
            yield before  # this pipeline's exchanges keep their step order
        yield from self._features(b, [p], t)
        emb = self.sets[si]
        lk = emb.lookups[p]
        t0 = time.perf_counter()
        counted = self._expect(lk.post_counts(emb.pipeline_ids(b.fb, p)), f"comm/{p}/counts")
        t_cpu = time.perf_counter() - t0
        yield counted
        keys = self._expect(lk.post_keys(counted.result()), f"comm/{p}/keys")
        yield keys
        plan = keys.result()
        b.plans[(si, p)] = plan
        trained = self._trains.get(t - 1)
        if trained is not None and not trained.done:
            yield trained  # it spawns step t-1's updates
        prev = self._applied.get((si, p))
        if prev is not None and not prev.done:
            yield prev  # the owners' rows must include step t-1's update
        t0 = time.perf_counter()
        rows = self._expect(lk.serve_rows(plan), f"comm/{p}/rows")
        t_cpu += time.perf_counter() - t0
        yield rows
        emb.fill_block(b.blocks[si], b.fb, p, rows.result())
        comm = sum(self._measured(x, f"comm/{p}/{kind}")
                   for kind, x in (("counts", counted), ("keys", keys), ("rows", rows)))
        if si == 0:
            self.costs.add(f"exchange_cpu/{p}", t_cpu)
            self.costs.add(f"comm/{p}", comm)

    def _pipeline_costs(self) -> tuple[list[float], list[float]]:
        """This rank's (CPU, comm) estimate per sparse pipeline, for the plan."""
        get = self.costs.get
        rows = len(self.batches[self._current].raw)
        cpu = [rows * sum(get(n.name) or 0.0 for n in self.graph.nodes(p))
               + (get(f"exchange_cpu/{p}") or 0.0) for p in self.sparse]
        return cpu, [get(f"comm/{p}") or 0.0 for p in self.sparse]

    def _spawn_lookups(self, t: int, featured_only: bool = False) -> None:
        """Spawn step t's lookup tasks not spawned yet (each after the previous step's
        lookup of the same pipeline and embedding set); ``featured_only``: only those of
        pipelines whose operators have all run."""
        b = self.batches[t]
        if not b.blocks:
            b.blocks = [e.new_block(len(b.raw)) for e in self.sets]
        prev = self.batches.get(t - 1)
        for i, p in enumerate(self.plan.order):
            if featured_only and p not in b.finished:
                continue
            for si in range(len(self.sets)):
                if (si, p) in b.lookups:
                    continue
                before = prev.lookups.get((si, p)) if prev is not None else None
                b.lookups[(si, p)] = self.loop.spawn(self._lookup(t, si, p, before),
                                                     f"lookup {t}/{p}",
                                                     (10 if t == self._current else 30) + i)

    def _early_lookups(self, t: int) -> Iterator[Any]:
        """Start step t's lookups while step t-1 trains: their id exchanges overlap its
        MLP, and each pipeline's rows are served as soon as its update is applied. Only
        pipelines whose operators have run: the others' operators stay with the filler,
        sized to the exchange windows (as lookup tasks they ran whenever nothing else was
        ready, regardless of the window). Ranks may decide at different times; the step
        agreement decides for all."""
        b = self._batch(t)
        yield b.agreement
        if int(b.agreement.result()[0]):
            self._spawn_lookups(t, featured_only=True)

    def _train(self, t: int, global_rows: int, record: Callable) -> Iterator[Any]:
        b = self.batches[t]
        yield from self._features(b, self.dense_pipes, t)
        self.graph.finish_dense(b.state, b.fb)
        for task in b.lookups.values():
            if not task.done:
                yield task
        if self._dense is not None and not self._dense.done:
            yield self._dense  # its weight gradients read the activations the forward writes
        wide = b.blocks[1] if len(b.blocks) > 1 else None
        probs, _, dlogits = yield from self._gated(
            self.model.forward_loss_stages(b.fb, b.blocks[0], wide, global_rows))
        for task in self._updates or ():
            if not task.done:
                yield task  # (the forward asked for every bucket) backward writes the grads
        record(b.fb, probs)
        yield None  # a poll between forward and backward: exchanges progress
        stages, posted = self.model.backward_stages(dlogits), []
        for stage in stages:  # each bucket's allreduce starts while the rest of backward runs
            if isinstance(stage, EmbGrads):
                yield from self._push(t, stage)
                break
            if stage is not None:
                posted.append((self._post_dense(stage), stage))
            yield None
        # The weight gradients are computed by their own task, after this one ends: step
        # t+1's lookups wait for this task, and serve their rows once the pushes above
        # are applied, while the weight gradients and their allreduce fill the window.
        self._dense = self.loop.spawn(self._dense_grads(t, stages, posted), f"dense {t}",
                                      DENSE_PRIO)

    def _gated(self, forward: Iterator[Any]) -> Iterator[Any]:
        """The staged forward, waiting at each :class:`NeedBucket` until the last step's
        update of that bucket is applied. Returns the forward's value."""
        while True:
            try:
                need = next(forward)
            except StopIteration as done:
                return done.value
            if isinstance(need, NeedBucket):
                if self._updates is not None and not self._updates[need.index].done:
                    yield self._updates[need.index]
            else:
                yield need

    def _push(self, t: int, grads: EmbGrads) -> Iterator[None]:
        """Post step t's embedding gradients to their owners (a poll after each pipeline);
        spawn the owners' updates."""
        b = self.batches[t]
        for si, d in enumerate((grads.d_emb, grads.d_wide)[:len(self.sets)]):
            emb = self.sets[si]
            for i, p in enumerate(self.plan.order):
                pushed = self._expect(emb.lookups[p].post_grads(
                    b.plans[(si, p)], emb.pipeline_grads(b.fb, p, d)), f"comm/{p}/grads")
                self._applied[(si, p)] = self.loop.spawn(
                    self._apply(emb, p, pushed), f"apply {t}/{p}", APPLY_PRIO + i / 100,
                    start=True)
                yield None

    def _apply(self, emb: Any, p: str, pushed: Pending) -> Iterator[Any]:
        yield pushed
        self._measured(pushed, f"comm/{p}/grads")
        emb.lookups[p].apply(emb.optimizer)

    def _post_dense(self, which: list[GradPart]) -> Pending:
        """Post one bucket's allreduce, with its estimated time in flight."""
        return self._expect(self.model.post_dense_allreduce(which), "comm/dense")

    def _dense_grads(self, t: int, stages: Iterator[Any],
                     posted: list[tuple[Pending, list[GradPart]]]) -> Iterator[Any]:
        """The rest of backward (the weight gradients, a poll after each bucket, whose
        allreduce starts at once); spawns each bucket's update, to run once it is summed."""
        self.model.start_dense_update()  # every update of step t-1 is applied by now
        updates: list[Task] = []
        self._updates = updates

        def spawn(summed: Pending, which: list[GradPart]) -> None:
            updates.append(self.loop.spawn(self._update_bucket(summed, which), f"update {t}",
                                           UPDATE_PRIO, start=True))

        for summed, which in posted:
            spawn(summed, which)
        for bucket in stages:
            if bucket is not None:
                spawn(self._post_dense(bucket), bucket)
            yield None

    def _update_bucket(self, summed: Pending, which: list[GradPart]) -> Iterator[Any]:
        yield summed
        self._measured(summed, "comm/dense")
        self.model.dense_update_bucket(summed, which)

    # ---- the pass -----------------------------------------------------------------------

    def run(self, source: Iterator[RawBatch | None], empty: RawBatch,
            record: Callable[[FeatureBatch, np.ndarray], None],
            hook: StepHook | None = None) -> int:
        """Train on every global step of ``source`` (this rank's parts, None once exhausted);
        ``record(fb, probs)`` gets each batch's scores; ``hook`` runs after every
        ``hook.every`` steps, with those steps' updates applied. Returns the step count."""
        self._source, self._empty = source, empty
        progress_thread = ProgressThread(self.world.comm).start() if self.poke else None
        try:
            return self._run(record, hook)
        finally:
            if progress_thread is not None:
                progress_thread.stop()
            if self.workers is not None:
                self.workers.close()

    def _run(self, record: Callable[[FeatureBatch, np.ndarray], None],
             hook: StepHook | None) -> int:
        t = 0
        while True:
            self._current = t
            start = time.perf_counter()
            b = self._batch(t)
            self.loop.run_until(b.agreement)
            active, global_rows = (int(x) for x in b.agreement.result())
            if active == 0:
                break
            if t and t % self.replan_every == 0 or t == 2:
                self.plan.agree(*self._pipeline_costs(), self._plan_comm)
            self._spawn_lookups(t)
            train = self.loop.spawn(self._train(t, global_rows, record), f"train {t}", 0)
            self._trains = {t: train}  # step t+1's lookups wait for it (it posts the updates)
            if self.early:
                self.loop.spawn(self._early_lookups(t + 1), f"admit {t + 1}", 5)
            self.loop.run_until(train)
            self.timeline.step(start, time.perf_counter())
            self.batches.pop(t - 1, None)
            t += 1
            if hook is not None and t % hook.every == 0:
                for task in [*self._applied.values(), self._dense]:
                    if task is not None:
                        self.loop.run_until(task)  # step t-1's updates, applied
                for task in self._updates or ():  # (all spawned once its dense task is done)
                    self.loop.run_until(task)
                hook.fn(t)
        self.loop.drain()
        self._close()
        return t

    def _close(self) -> None:
        """Match the step agreements ranks posted ahead (the filler may have admitted
        more batches on one rank than on another), complete them, free the communicators."""
        from mpi4py import MPI

        mine = np.array([self._admitted], dtype=np.int64)
        most = np.empty_like(mine)
        req = self._plan_comm.Iallreduce(mine, most, op=MPI.MAX)
        Pending([req], lambda: None, "admission count", self._plan_comm).wait()
        while self._admitted < int(most[0]):
            self._admit()
        for b in self.batches.values():
            if b.agreement is not None:
                b.agreement.wait()
        self.batches.clear()
        self._plan_comm.Free()
        self._agree_comm.Free()

    def figures(self) -> dict[str, Any]:
        """The scheduler's own figures: consumer lateness, loop overhead, plan."""
        lp = self.loop
        late = np.array(lp.late) if lp.late else np.zeros(1)
        return {
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
                                for p, c, m in zip(self.sparse, *self.plan.agreed)},
            "replans": self.plan.replans,
            "progress_thread": self.poke,
            "most_batches_held": self.most_held,
            "chunk_runs": self.chunk_runs,
        }
