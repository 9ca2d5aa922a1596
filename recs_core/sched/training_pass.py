"""The training pass: every mode runs its steps as tasks of one loop (``sched.loop``).

Per step t the loop runs these tasks:

* ``lookup t/p`` per pipeline p and embedding set: the pipeline's feature operators not
  yet run, then the set's lookup stage (``embedding.layer``): the count and id exchanges,
  then -- once step t-1's update of p is applied -- the rows, into the batch's block;
* ``train t``: the dense features, the MLP forward (each dense bucket read once step t-1's
  update of it is applied), the backward as far as the embedding gradients, and the start
  of every pipeline's push stage (``push t/p``: the gradient exchange, then the owners'
  update);
* ``dense t``: the rest of backward (the weight gradients in GEMM pieces, each bucket's
  allreduce posted as soon as it is final);
* ``update t``: per dense gradient bucket, the dense optimizer once its allreduce is summed.

A :class:`~recs_core.sched.policy.Policy` says what may run while an exchange is in
flight (sequential and prefetch: nothing; the recs modes: any ready task, and the filler
with operators of upcoming batches), whether step t+1's lookups start early, the pipeline
order and what is prepared ahead. Exactness does not depend on it: step t+1's rows are
read only after step t's update of that pipeline, and its forward reads each dense
bucket only after step t's update of that bucket, in every policy. Each communicator sees
its collectives in one fixed order on every rank: a pipeline's lookups in step order
(lookup t+1 starts after lookup t), its pushes on their own communicator, the dense
allreduces on theirs. With one rank the stages move nothing; the same loop runs them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recs_core.comm.objects import dup
from recs_core.comm.pending import SPIN_S as BLOCKING_SPIN_S
from recs_core.comm.pending import Pending, post_allreduce
from recs_core.comm.progress_thread import ProgressThread, over_network
from recs_core.comm.world import World
from recs_core.data.parse import RawBatch
from recs_core.dense.layers import GradPart, NeedBucket
from recs_core.dense.presets import BackwardItem, EmbGrads
from recs_core.embedding.layer import Embeddings
from recs_core.features.graph import BatchState, FeatureBatch, FeatureGraph, OpNode, RowRange
from recs_core.sched.costs import Costs, PipelinePlan
from recs_core.sched.guard import BLOCKING, OVERLAP, ScheduleGuard
from recs_core.sched.loop import SPIN_S, Loop, Task
from recs_core.sched.policy import Policy
from recs_core.sched.trace import CPU, WORKER, Timeline
from recs_core.sched.workers import OperatorWorkers
from recs_core.stages import NeedRows, Stage, relay


class StagedModel(Protocol):
    """The model as the pass runs it (``recs_core.train.model.Model``): its embedding
    sets' stages, its staged forward and backward, and its dense bucket updates."""

    sets: list[Embeddings]
    emb: Embeddings

    def forward_loss_stages(self, fb: FeatureBatch, z: np.ndarray, wide_z: np.ndarray | None,
                            global_rows: int | None) -> Stage[
                                tuple[np.ndarray, float, np.ndarray]]: ...

    def backward_stages(self, dlogits: np.ndarray) -> Iterator[BackwardItem]: ...

    def post_dense_allreduce(self, which: list[GradPart]) -> Pending[None]: ...

    def start_dense_update(self) -> None: ...

    def dense_update_bucket(self, summed: Pending[None], which: list[GradPart]) -> None: ...

# Task priorities, lower first: a dense bucket's update -1 (tens of us; the forward may be
# waiting for it); train 0; push 1 + i / 100; admit 5; lookups 10 + i of the current step,
# 30 + i of the next; dense 50, last: the pushes, the updates and the row exchanges that
# wait for them are the critical chain to the next forward; the weight gradients fill the
# time around it (measured: docs/BENCHMARKS.md, scheduler defaults).
PUSH_PRIO = 1.0
UPDATE_PRIO = -1.0
DENSE_PRIO = 50.0
MIN_CHUNK_ROWS = 16  # smaller row chunks cost more in dispatch than they save


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
    state: BatchState | None  # None: prepared whole (prefetch thread, blocking steps)
    fb: FeatureBatch
    remaining: dict[str, deque[tuple[OpNode, RowRange]]]  # node runs left, in order
    agreement: Pending
    finished: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # pipelines with an operator on a worker
    blocks: list[np.ndarray] = field(default_factory=list)
    looked: dict[tuple[int, str], Any] = field(default_factory=dict)  # for the pushes
    lookups: dict[tuple[int, str], Task] = field(default_factory=dict)
    prepared_seconds: float = 0.0  # its admission and operators run by the loop, workers


class _Prefetcher:
    """A thread that reads and processes whole batches ahead (mode prefetch)."""

    def __init__(self, source: Iterator[RawBatch | None], graph: FeatureGraph,
                 timeline: Timeline, depth: int) -> None:
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.seconds = 0.0  # feature processing on the thread
        self._exhausted = False
        self._source, self._graph, self._timeline = source, graph, timeline
        self._thread = threading.Thread(target=self._produce, name="recs-prefetch",
                                        daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                part = next(self._source)
                t0 = time.perf_counter()
                fb = None if part is None else self._graph.process(part)
                t1 = time.perf_counter()
                self._timeline.add("features", WORKER, t0, t1)
                self.seconds += t1 - t0
                self._ready.put((part, fb))
                if part is None:
                    return
        except BaseException as e:  # handed to the trainer, which raises it
            self._ready.put(e)

    def next(self) -> tuple[RawBatch | None, FeatureBatch | None]:
        """The next (part, its features), (None, None) for ever once the shard is done."""
        if self._exhausted:
            return None, None
        got = self._ready.get()
        if isinstance(got, BaseException):
            raise got
        self._exhausted = got[0] is None
        return got

    def close(self) -> None:
        self._stop.set()


class TrainingPass:
    """Runs a training pass through the task loop under a policy (module docstring)."""

    def __init__(self, model: StagedModel, graph: FeatureGraph, world: World, policy: Policy,
                 timeline: Timeline) -> None:
        self.model, self.graph, self.world, self.policy = model, graph, world, policy
        multi = world.size > 1
        # a progress thread only with a spare core: with 1 core per rank under the emulated
        # network its wake-ups cost more CPU than its progress saved (MPICH and Open MPI)
        self.poke = multi and (policy.progress_thread == "on" or policy.progress_thread
                               == "auto" and policy.workers > 0 and over_network(world.comm))
        self.timeline = timeline
        self.lookahead = policy.lookahead
        self.sets: list[Embeddings] = model.sets
        self.sparse = list(model.emb.pipelines)
        feats = graph.features
        self.dense_pipes = list(dict.fromkeys(f.pipeline for f in feats if f.output == "dense"))
        self.costs = Costs()
        self.plan = PipelinePlan(self.sparse, use_priority=policy.priority)
        self._plan_comm = dup(world.comm, "communicator duplication") if multi else None
        self._agree_comm = (dup(world.comm, "communicator duplication")  # step agreements
                            if multi else None)
        workers = policy.workers
        self.loop = Loop(timeline, background=self._feed if workers > 0 else None)
        self._use(policy)
        self.workers = OperatorWorkers(workers, self._work) if workers > 0 else None
        self.batches: dict[int, _Batch] = {}
        self._source: Iterator[RawBatch | None] | None = None
        self._prefetcher: _Prefetcher | None = None
        self._empty: RawBatch | None = None
        self._empty_fb: FeatureBatch | None = None
        self._admitted = 0
        self._pushed: dict[tuple[int, str], Task] = {}
        self._trains: dict[int, Task] = {}
        self._dense: Task | None = None
        self._updates: list[Task] | None = None  # the last step's dense bucket updates
        self._current = 0
        self.feature_seconds = 0.0  # operators run by the loop's thread and its workers
        self.thread_feature_seconds = 0.0  # batches processed by the prefetch thread
        self.most_held = 0  # most batches held at once (bounded by the look-ahead)
        self.chunk_runs = 0  # operator runs on a row chunk rather than a whole batch
        self.traffic: dict[str, int] = {}  # bytes this rank sent to the others, by exchange
        self.guard = (ScheduleGuard(policy.guard) if policy.guard is not None
                      and policy.overlap else None)
        self.guard_steps = {OVERLAP: 0, BLOCKING: 0}  # steps each schedule ran

    # ---- admission and features -------------------------------------------------------

    def _agreement(self, part: RawBatch | None, rows: int) -> Pending:
        """Post the step agreement: (ranks with data, global rows) of this step."""
        return post_allreduce(self._agree_comm, np.array([part is not None, rows], np.int64),
                              "step agreement", traced=False)

    def _admit(self) -> _Batch:
        """Read the next local batch and post the step agreement for it."""
        t0 = time.perf_counter()
        if self._prefetcher is not None:
            part, fb = self._prefetcher.next()
        else:
            part, fb = next(self._source, None), None  # type: ignore[arg-type]
        raw = self._empty if part is None else part
        assert raw is not None
        agreement = self._agreement(part, len(raw))
        if self._prefetcher is None and not self.active.overlap and part is not None:
            t1 = time.perf_counter()  # a blocking step processes its batch whole, first
            fb = self.graph.process(raw)
            self.feature_seconds += time.perf_counter() - t1
        if self._prefetcher is not None or not self.active.overlap:  # prepared whole
            if fb is None:
                self._empty_fb = self._empty_fb or self.graph.process(raw)
                fb = self._empty_fb
            b = _Batch(raw, part is None, None, fb, {p: deque() for p in self.graph.pipelines},
                       agreement, finished=set(self.graph.pipelines))
        else:
            state = self.graph.start(raw)
            rows = len(raw)
            runs = {p: deque(self.graph.runs(p, rows, lambda fi: self._chunk_rows(fi, rows)))
                    for p in self.graph.pipelines}
            b = _Batch(raw, part is None, state, self.graph.start_batch(state), runs,
                       agreement)
        self.batches[self._admitted] = b
        self._admitted += 1
        self.most_held = max(self.most_held, len(self.batches))
        b.prepared_seconds = time.perf_counter() - t0
        self.costs.add("admit", b.prepared_seconds)
        return b

    def _chunk_rows(self, feature: int, rows: int) -> int | None:
        """Rows per chunk for a feature chain expected to take longer than the chunk
        cost on ``rows`` rows: chunks of at most that cost (None: the whole batch at once,
        also while unmeasured)."""
        chunk_seconds = self.active.chunk_seconds
        if chunk_seconds <= 0 or rows < 2 * MIN_CHUNK_ROWS:
            return None
        per_row = [self.costs.get(n.name) for n in self.graph.chain(feature)]
        if any(c is None for c in per_row):
            return None
        chunks = int(np.ceil(sum(per_row) * rows / chunk_seconds))  # type: ignore
        return max(MIN_CHUNK_ROWS, -(-rows // chunks)) if chunks > 1 else None

    def _batch(self, t: int) -> _Batch:
        while self._admitted <= t:
            with self.timeline.cpu(f"read b{self._admitted}"):
                self._admit()
        return self.batches[t]

    def _run_node(self, b: _Batch, p: str) -> None:
        """Run the next operator of pipeline ``p`` on batch ``b`` (or on its next row
        chunk) in this thread."""
        node, rows = b.remaining[p].popleft()
        t0 = time.perf_counter()
        self.graph.run_node(b.state, node, rows)  # type: ignore[arg-type]
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
        b.prepared_seconds += seconds
        if not b.remaining[p] and p not in b.busy:
            if p in self.sparse:
                self.graph.finish_pipeline(b.state, b.fb, p)  # type: ignore[arg-type]
            b.finished.add(p)

    def _features(self, b: _Batch, pipelines: list[str]) -> Iterator[None]:
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
        self.graph.run_node(b.state, node, rows)  # type: ignore[arg-type]

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
        """Set the exchange's estimated time in flight (for the filler's window); count
        the bytes it sends."""
        pending.expected = self.costs.get(key, pending.nbytes)
        if pending.sent:
            self.traffic[pending.what] = self.traffic.get(pending.what, 0) + pending.sent
        return pending

    def _measured(self, pending: Pending, key: str) -> float:
        """Record a completed exchange's time in flight, by size; returns it."""
        seconds = pending.completed - pending.posted  # type: ignore[operator]
        self.costs.add(key, seconds, pending.nbytes)
        return seconds

    def _exchanges(self, stage: Stage[Any], p: str, on_rows: Callable[[], Iterator[Any]]
                   ) -> Stage[tuple[Any, float, float]]:
        """Run an embedding stage of pipeline ``p``: each exchange it posts gets its
        estimate and is measured; at :class:`NeedRows`, ``on_rows()``'s waits. Returns
        (the stage's value, its CPU seconds, its exchanges' seconds in flight)."""
        cpu = comm = 0.0
        while True:
            t0 = time.perf_counter()
            try:
                need = next(stage)
            except StopIteration as done:
                return done.value, cpu + time.perf_counter() - t0, comm
            cpu += time.perf_counter() - t0
            if isinstance(need, Pending):
                key = f"comm/{p}/{need.what}"
                yield self._expect(need, key)
                comm += self._measured(need, key)
            elif isinstance(need, NeedRows):
                yield from on_rows()
            else:
                yield need

    def _lookup(self, t: int, si: int, p: str, before: Task | None) -> Iterator[Any]:
        b = self.batches[t]
        if before is not None and not before.done:
            yield before  # this pipeline's exchanges keep their step order
        yield from self._features(b, [p])

        def previous_update() -> Iterator[Task]:
            trained = self._trains.get(t - 1)
            if trained is not None and not trained.done:
                yield trained  # it starts step t-1's pushes
            prev = self._pushed.get((si, p))
            if prev is not None and not prev.done:
                yield prev  # the rows must include step t-1's update

        emb = self.sets[si]
        b.looked[(si, p)], cpu, comm = yield from self._exchanges(
            emb.lookup(b.fb, p, b.blocks[si]), p, previous_update)
        if si == 0:
            self.costs.add(f"exchange_cpu/{p}", cpu)
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
                b.lookups[(si, p)] = self.loop.spawn(
                    self._lookup(t, si, p, before), f"lookup {t}/{p}",
                    (10 if t == self._current else 30) + i, group=p, phase=f"lookup {t}")

    def _early_lookups(self, t: int) -> Iterator[Any]:
        """Start step t's lookups while step t-1 trains: their id exchanges overlap its
        MLP, and each pipeline's rows are served as soon as its update is applied. Only
        pipelines whose operators have run: the others' operators stay with the filler,
        sized to the exchange windows. Ranks may decide at different times; the step
        agreement decides for all."""
        b = self._batch(t)
        yield b.agreement
        if int(b.agreement.result()[0]):
            self._spawn_lookups(t, featured_only=True)

    def _train(self, t: int, global_rows: int, record: Callable) -> Iterator[Any]:
        b = self.batches[t]
        yield from self._features(b, self.dense_pipes)
        if b.state is not None:
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
        emb_grads = None
        for stage in stages:  # each bucket's allreduce starts while the rest of backward runs
            if isinstance(stage, EmbGrads):
                emb_grads = stage
                break
            if stage is not None:
                posted.append((self._post_dense(stage), stage))
            yield None
        assert emb_grads is not None
        if not self._pushes_first:
            # nothing to overlap: the weight gradients while the activations are still in
            # cache, then the pushes (the sparse updates sweep the tables)
            yield from self._dense_grads(t, stages, posted)
            yield from self._push(t, emb_grads)
            return
        yield from self._push(t, emb_grads)
        # The weight gradients are computed by their own task, after this one ends: step
        # t+1's lookups wait for this task, and serve their rows once the pushes above
        # are applied, while the weight gradients and their allreduce fill the window.
        self._dense = self.loop.spawn(self._dense_grads(t, stages, posted), f"dense {t}",
                                      DENSE_PRIO, group="dense")

    def _gated(self, forward: Stage[Any]) -> Stage[Any]:
        """The staged forward, waiting at each :class:`NeedBucket` until the last step's
        update of that bucket is applied. Returns the forward's value."""
        def wait(need: object) -> Iterator[object]:
            if not isinstance(need, NeedBucket):
                yield need
            elif self._updates is not None and not self._updates[need.index].done:
                yield self._updates[need.index]

        return (yield from relay(forward, wait))

    def _push(self, t: int, grads: EmbGrads) -> Iterator[None]:
        """Start step t's push stage of every pipeline (its gradient exchange is posted at
        once; the owners' update runs when it completes), a poll after each when tasks
        overlap exchanges."""
        b = self.batches[t]
        for si, d in enumerate((grads.d_emb, grads.d_wide)[:len(self.sets)]):
            emb = self.sets[si]
            for i, p in enumerate(self.plan.order):
                stage = self._exchanges(emb.push(b.fb, p, b.looked[(si, p)], d), p,
                                        lambda: iter(()))
                self._pushed[(si, p)] = self.loop.spawn(
                    stage, f"push {t}/{p}", PUSH_PRIO + i / 100, start=True, group=p)
                if self.active.overlap:  # (a blocking step posts every push, then waits)
                    yield None

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
                                           UPDATE_PRIO, start=True, group="dense",
                                           phase=f"train {t}"))

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
        if self.policy.prefetch_thread:
            self._prefetcher = _Prefetcher(source, self.graph, self.timeline, self.lookahead)
        progress_thread = ProgressThread(self.world.comm).start() if self.poke else None
        try:
            return self._run(record, hook)
        finally:
            if progress_thread is not None:
                progress_thread.stop()
            if self.workers is not None:
                self.workers.close()
            if self._prefetcher is not None:
                self._prefetcher.close()
                self.thread_feature_seconds = self._prefetcher.seconds

    def _settle(self) -> None:
        """Run until the last step's pushes, dense gradients and updates are applied."""
        for task in [*self._pushed.values(), self._dense]:
            if task is not None:
                self.loop.run_until(task)
        for task in self._updates or ():  # (all spawned once its dense task is done)
            self.loop.run_until(task)

    def _run(self, record: Callable[[FeatureBatch, np.ndarray], None],
             hook: StepHook | None) -> int:
        t, last_start, hook_s, ahead = 0, None, 0.0, 0.0
        while True:
            self._current = t
            start = time.perf_counter()
            if self.guard is not None:
                if last_start is not None:
                    self.guard.record(t - 1, start - last_start - hook_s, ahead)
                self._guarded(t)
            last_start, hook_s = start, 0.0
            admitted = self._admitted > t
            b = self._batch(t)
            # its reading and operators run before its step (by overlapped steps)
            ahead = b.prepared_seconds if admitted else 0.0
            self.loop.run_until(b.agreement)
            active, global_rows = (int(x) for x in b.agreement.result())
            if active == 0:
                break
            if self.guard is not None:
                self.guard_steps[OVERLAP if self.active.overlap else BLOCKING] += 1
            if t and t % self.policy.replan_every == 0 or t == 2:
                self.plan.agree(*self._pipeline_costs(), self._plan_comm)
            self._spawn_lookups(t)
            # phase: a blocking step keeps computing weight gradients while their
            # allreduces are in flight, and applies each bucket's update once summed
            train = self.loop.spawn(self._train(t, global_rows, record), f"train {t}", 0,
                                    phase=f"train {t}")
            self._trains = {t: train}  # step t+1's lookups wait for it (it posts the updates)
            if self.active.early:
                self.loop.spawn(self._early_lookups(t + 1), f"admit {t + 1}", 5)
            self.loop.run_until(train)
            if not self.active.overlap:
                self._settle()  # a blocking step ends with its updates applied
            self.timeline.step(start, time.perf_counter())
            self.batches.pop(t - 1, None)
            t += 1
            if hook is not None and t % hook.every == 0:
                self._settle()
                t_hook = time.perf_counter()
                hook.fn(t)
                hook_s = time.perf_counter() - t_hook
        self.loop.drain()
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
        schedule = guard.schedule(t)
        wanted = self.policy if schedule == OVERLAP else self.policy.blocking()
        if wanted == self.active:
            return
        if not wanted.overlap:
            self._settle()
        self._use(wanted)

    def _use(self, policy: Policy) -> None:
        """Put ``policy`` in force (``self.active``: the guard may fall back to blocking):
        its filler and overlap rule in the loop."""
        self.active = policy
        # the gradient pushes go on the wire before the weight gradients only where they
        # can overlap them
        self._pushes_first = policy.overlap and self.world.size > 1
        self.loop.configure(self._fill if policy.fill else None, policy.overlap,
                            SPIN_S if policy.overlap else BLOCKING_SPIN_S)

    def _close(self) -> None:
        """Match the step agreements ranks posted ahead (the filler may have admitted
        more batches on one rank than on another), complete them, free the communicators."""
        most = post_allreduce(self._plan_comm, np.array([self._admitted]), "admission count",
                              op="max").wait()
        while self._admitted < int(most[0]):
            self._admit()
        for b in self.batches.values():
            b.agreement.wait()
        self.batches.clear()
        for comm in (self._plan_comm, self._agree_comm):
            if comm is not None:
                comm.Free()

    def figures(self) -> dict[str, Any]:
        """The loop's own figures: consumer lateness, loop overhead, plan."""
        lp = self.loop
        late = np.array(lp.late) if lp.late else np.zeros(1)
        return {
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
                                for p, c, m in zip(self.sparse, *self.plan.agreed)},
            "replans": self.plan.replans,
            "progress_thread": self.poke,
            "most_batches_held": self.most_held,
            "chunk_runs": self.chunk_runs,
        }

    def comm_waits(self) -> dict[str, float]:
        """Seconds the loop idled waiting on each pipeline's exchanges and the dense
        allreduces (this rank)."""
        return {g: self.loop.waits.get(g, 0.0) for g in [*self.sparse, "dense"]}
