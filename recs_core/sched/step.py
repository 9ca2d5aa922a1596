"""A training step as tasks of the loop (``sched.loop``), and the rules that keep every
schedule exact.

Per step t:

* ``lookup t/p`` per sparse pipeline p and embedding set: the pipeline's operators not
  yet run, then the set's lookup stage (``embedding.layer``): the count and id exchanges,
  then the rows, into the set's block;
* ``train t``: the dense features, the forward, the backward as far as the embedding
  gradients, and the start of every pipeline's push stage per set (``push t/p``: the
  gradient exchange, then the owners' sparse update);
* ``dense t``: the rest of backward (the weight gradients in GEMM pieces, each bucket's
  allreduce posted as soon as it is final);
* ``update t``: per dense gradient bucket, the dense optimizer once its allreduce is summed.

The rules, which hold whatever may run meanwhile (the schedule) and make every schedule
compute the blocking trainer's model bit for bit:

1. lookup t/p of a set starts after lookup t-1/p of that set: each communicator sees its
   collectives in one order on every rank (a pipeline's pushes and the dense allreduces
   have their own, posted in step and bucket order);
2. step t's rows of p are read only after train t-1 started step t-1's pushes and the
   push of p (the owners' update) is applied;
3. train t's forward waits for every lookup of step t and for dense t-1 (whose weight
   gradients read the activations the forward writes), reads each dense bucket only
   after step t-1's update of it, and its backward writes the gradients only after
   every update of step t-1 is applied;
4. :meth:`Steps.settle` runs until the last step's pushes, weight gradients and updates
   are applied: a blocking step ends with it, and so does the step before a switch to
   the blocking schedule or a step hook;
5. a step is started (its lookups too, early ones included) only when its agreement says
   it trains (:attr:`~recs_core.sched.batches.StepAgreement.trains`): after a stop every
   rank's model is the one after the step before, exactly what a periodic checkpoint
   there holds, so a pass resumed from it trains the same steps an uninterrupted one
   would.

With one rank the stages move nothing; the same tasks run them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recs_core.comm.pending import Pending
from recs_core.dense.layers import GradPart, NeedBucket
from recs_core.embedding.layer import Embeddings
from recs_core.embedding.sharded import ExchangePlan
from recs_core.features.graph import FeatureBatch
from recs_core.sched.batches import Batches
from recs_core.sched.costs import Costs, PipelinePlan
from recs_core.sched.feature_work import FeatureWork
from recs_core.sched.loop import Loop, Task
from recs_core.stages import NeedRows, SetGrads, Stage, relay

# Task priorities, lower first: a dense bucket's update -1 (tens of us; the forward may be
# waiting for it); train 0; push 1 + i / 100; admit 5; lookups 10 + i of the current step,
# 30 + i of the next; dense 50, last: the pushes, the updates and the row exchanges that
# wait for them are the critical chain to the next forward; the weight gradients fill the
# time around it (measured: docs/BENCHMARKS.md, scheduler defaults).
PUSH_PRIO = 1.0
UPDATE_PRIO = -1.0
DENSE_PRIO = 50.0

Record = Callable[[FeatureBatch, np.ndarray], None]  # a batch's scores, before its update


class StagedModel(Protocol):
    """The model as the steps run it (``recs_core.train.model.Model``): its embedding
    sets, its staged forward and backward over their blocks, its dense bucket updates."""

    sets: list[Embeddings]

    def forward_loss_stages(self, fb: FeatureBatch, blocks: list[np.ndarray],
                            global_rows: int | None) -> Stage[
                                tuple[np.ndarray, float, np.ndarray]]: ...

    def backward_stages(self, dlogits: np.ndarray) -> Iterator[
        list[GradPart] | SetGrads | None]: ...

    def post_dense_allreduce(self, which: list[GradPart]) -> Pending[None]: ...

    def start_dense_update(self) -> None: ...

    def dense_update_bucket(self, summed: Pending[None], which: list[GradPart]) -> None: ...


@dataclass
class _StepLookups:
    """One step's lookups: each set's block, and per (set, pipeline) its task and what its
    push needs."""

    blocks: list[np.ndarray]
    lookups: dict[tuple[int, str], Task] = field(default_factory=dict)
    looked: dict[tuple[int, str], ExchangePlan | None] = field(default_factory=dict)


def _no_rows() -> Iterator[Task]:
    return iter(())


class Steps:
    """Spawns each step's tasks on ``loop`` (module docstring). ``overlap``: tasks run
    while exchanges are in flight (each push is a scheduling point); ``early``: step t+1's
    lookups start while step t trains; both set by :meth:`use` at a step boundary."""

    def __init__(self, model: StagedModel, loop: Loop, batches: Batches, features: FeatureWork,
                 plan: PipelinePlan, costs: Costs, multi: bool) -> None:
        self.model, self.loop, self.batches, self.features = model, loop, batches, features
        self.plan, self.costs, self._multi = plan, costs, multi
        self.sets = model.sets
        self.traffic: dict[str, int] = {}  # bytes this rank sent to the others, by exchange
        self._steps: dict[int, _StepLookups] = {}
        self._pushed: dict[tuple[int, str], Task] = {}
        self._trains: dict[int, Task] = {}
        self._dense: Task | None = None
        self._updates: list[Task] | None = None  # the last step's dense bucket updates
        self.use(overlap=False, early=False)

    def use(self, overlap: bool, early: bool) -> None:
        """Put a schedule's settings in force (at a step boundary)."""
        self.overlap, self.early = overlap, early
        # the gradient pushes go on the wire before the weight gradients only where they
        # can overlap them
        self._pushes_first = overlap and self._multi

    def start(self, t: int, global_rows: int, record: Record) -> Task:
        """Spawn step t's tasks (its batch agreed); its train task."""
        self._spawn_lookups(t)
        train = self.loop.spawn(self._train(t, global_rows, record), f"train {t}", 0,
                                phase=f"train {t}")
        self._trains = {t: train}  # step t+1's lookups wait for it (it posts the pushes)
        if self.early:
            self.loop.spawn(self._early_lookups(t + 1), f"admit {t + 1}", 5)
        return train

    def drop(self, t: int) -> None:
        """Forget step t's lookups (after step t+1 trained)."""
        self._steps.pop(t, None)

    def settle(self) -> None:
        """Run until the last step's pushes, dense gradients and updates are applied."""
        for task in [*self._pushed.values(), self._dense]:
            if task is not None:
                self.loop.run_until(task)
        for task in self._updates or ():  # (all spawned once its dense task is done)
            self.loop.run_until(task)

    def plan_costs(self) -> tuple[list[float], list[float]]:
        """This rank's (CPU, comm) estimate per sparse pipeline, for the plan."""
        get, graph = self.costs.get, self.features.graph
        rows = len(self.batches.held[self.batches.current].raw)
        pipes = self.plan.pipelines
        cpu = [rows * sum(get(n.name) or 0.0 for n in graph.nodes(p))
               + (get(f"exchange_cpu/{p}") or 0.0) for p in pipes]
        return cpu, [get(f"comm/{p}") or 0.0 for p in pipes]

    # ---- exchanges ----------------------------------------------------------------------

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

    def _exchanges(self, stage: Stage[ExchangePlan | None], p: str,
                   on_rows: Callable[[], Iterator[Task]]
                   ) -> Stage[tuple[ExchangePlan | None, float, float]]:
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

    # ---- lookups ------------------------------------------------------------------------

    def _spawn_lookups(self, t: int, featured_only: bool = False) -> None:
        """Spawn step t's lookup tasks not spawned yet (rule 1); ``featured_only``: only
        those of pipelines whose operators have all run."""
        b = self.batches.held[t]
        step = self._steps.get(t)
        if step is None:
            step = self._steps[t] = _StepLookups([e.new_block(len(b.raw)) for e in self.sets])
        prev = self._steps.get(t - 1)
        prio = 10 if t == self.batches.current else 30
        for i, p in enumerate(self.plan.order):
            if featured_only and not b.featured(p):
                continue
            for si in range(len(self.sets)):
                if (si, p) in step.lookups:
                    continue
                before = prev.lookups.get((si, p)) if prev is not None else None
                step.lookups[(si, p)] = self.loop.spawn(
                    self._lookup(t, si, p, before), f"lookup {t}/{p}", prio + i, group=p,
                    phase=f"lookup {t}")

    def _lookup(self, t: int, si: int, p: str, before: Task | None) -> Iterator[object]:
        b, step = self.batches.held[t], self._steps[t]
        if before is not None and not before.done:
            yield before  # rule 1
        yield from self.features.run(b, [p])

        def previous_update() -> Iterator[Task]:  # rule 2
            trained = self._trains.get(t - 1)
            if trained is not None and not trained.done:
                yield trained  # it starts step t-1's pushes
            prev = self._pushed.get((si, p))
            if prev is not None and not prev.done:
                yield prev

        step.looked[(si, p)], cpu, comm = yield from self._exchanges(
            self.sets[si].lookup(b.fb, p, step.blocks[si]), p, previous_update)
        if si == 0:  # the plan's estimate of p: its first set's lookup
            self.costs.add(f"exchange_cpu/{p}", cpu)
            self.costs.add(f"comm/{p}", comm)

    def _early_lookups(self, t: int) -> Iterator[object]:
        """Start step t's lookups while step t-1 trains: their id exchanges overlap its
        MLP, and each pipeline's rows are served as soon as its update is applied. Only
        pipelines whose operators have run: the others' operators stay with the filler,
        sized to the exchange windows. Ranks may decide at different times; the step
        agreement decides for all."""
        b = self.batches.get(t)
        yield b.agreement
        if b.agreed().trains:  # rule 5
            self._spawn_lookups(t, featured_only=True)

    # ---- train, dense, update -----------------------------------------------------------

    def _train(self, t: int, global_rows: int, record: Record) -> Iterator[object]:
        b, step = self.batches.held[t], self._steps[t]
        yield from self.features.run(b, self.features.dense_pipes)
        self.features.finish_dense(b)
        for task in step.lookups.values():  # rule 3
            if not task.done:
                yield task
        if self._dense is not None and not self._dense.done:
            yield self._dense
        probs, _, dlogits = yield from self._gated(
            self.model.forward_loss_stages(b.fb, step.blocks, global_rows))
        for task in self._updates or ():
            if not task.done:
                yield task  # (the forward asked for every bucket) backward writes the grads
        record(b.fb, probs)
        yield None  # a poll between forward and backward: exchanges progress
        stages, posted = self.model.backward_stages(dlogits), []
        grads = None
        for stage in stages:  # each bucket's allreduce starts while the rest of backward runs
            if isinstance(stage, SetGrads):
                grads = stage
                break
            if stage is not None:
                posted.append((self._post_dense(stage), stage))
            yield None
        assert grads is not None
        if not self._pushes_first:
            # nothing to overlap: the weight gradients while the activations are still in
            # cache, then the pushes (the sparse updates sweep the tables)
            yield from self._dense_grads(t, stages, posted)
            yield from self._push(t, grads)
            return
        yield from self._push(t, grads)
        # The weight gradients are computed by their own task, after this one ends: step
        # t+1's lookups wait for this task, and serve their rows once the pushes above
        # are applied, while the weight gradients and their allreduce fill the window.
        self._dense = self.loop.spawn(self._dense_grads(t, stages, posted), f"dense {t}",
                                      DENSE_PRIO, group="dense")

    def _gated(self, forward: Stage[tuple[np.ndarray, float, np.ndarray]]) -> Stage[
            tuple[np.ndarray, float, np.ndarray]]:
        """The staged forward, waiting at each :class:`NeedBucket` until the last step's
        update of that bucket is applied (rule 3). Returns the forward's value."""
        def wait(need: object) -> Iterator[object]:
            if not isinstance(need, NeedBucket):
                yield need
            elif self._updates is not None and not self._updates[need.index].done:
                yield self._updates[need.index]

        return (yield from relay(forward, wait))

    def _push(self, t: int, grads: SetGrads) -> Iterator[None]:
        """Start step t's push stage of every pipeline of every set (its gradient exchange
        is posted at once; the owners' update runs when it completes), a poll after each
        when tasks overlap exchanges."""
        b, step = self.batches.held[t], self._steps[t]
        for si, (emb, d) in enumerate(zip(self.sets, grads.grads)):
            for i, p in enumerate(self.plan.order):
                stage = self._exchanges(emb.push(b.fb, p, step.looked[(si, p)], d), p,
                                        _no_rows)
                self._pushed[(si, p)] = self.loop.spawn(
                    stage, f"push {t}/{p}", PUSH_PRIO + i / 100, start=True, group=p)
                if self.overlap:  # (a blocking step posts every push, then waits)
                    yield None

    def _post_dense(self, which: list[GradPart]) -> Pending:
        """Post one bucket's allreduce, with its estimated time in flight."""
        return self._expect(self.model.post_dense_allreduce(which), "comm/dense")

    def _dense_grads(self, t: int, stages: Iterator[list[GradPart] | SetGrads | None],
                     posted: list[tuple[Pending, list[GradPart]]]) -> Iterator[None]:
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
                spawn(self._post_dense(bucket), bucket)  # type: ignore[arg-type]
            yield None

    def _update_bucket(self, summed: Pending, which: list[GradPart]) -> Iterator[Pending]:
        yield summed
        self._measured(summed, "comm/dense")
        self.model.dense_update_bucket(summed, which)
