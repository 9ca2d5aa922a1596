"""Batch admission: a pass's batches, read from a source, each with its step agreement.

A batch is admitted *prepared* (its features whole: by the prefetch thread, or by a
blocking step before its lookups) or *staged* (its operators still to run, as tasks and
by the filler, on the whole batch or on row chunks). Admission reads the next local
batch (this rank's part of the next global step, or an empty batch once the shard is
done) and posts the step agreement: every rank learns whether any rank still has data,
the global batch's rows, whether any rank was asked to stop (preemption) and whether a
periodic checkpoint is due (rank 0's clock). One allreduce decides each of them for
every rank at once, so every rank stops, or saves, at the same step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from recs_core.comm.pending import Pending, post_allreduce
from recs_core.data.parse import RawBatch
from recs_core.features.graph import BatchState, FeatureBatch, FeatureGraph, OpNode, RowRange
from recs_core.sched.costs import Costs
from recs_core.sched.trace import WORKER, Timeline

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

Run = tuple[OpNode, RowRange]  # one operator on a batch (None) or on a row chunk of it


class StepAgreement(NamedTuple):
    """What every rank agreed on for a step: the sums over the ranks of [has data, rows,
    asked to stop, checkpoint due]."""

    active: int  # ranks with data left
    rows: int  # the global batch's rows
    stop: int  # ranks asked to stop: no rank trains this step or any after it
    checkpoint_due: int  # 1 when rank 0's clock wants a periodic checkpoint before it

    @property
    def trains(self) -> bool:
        """Whether the step is trained: some rank has data and none was asked to stop."""
        return self.active > 0 and not self.stop


def _never() -> bool:
    return False


@dataclass
class Batch:
    """One admitted batch and its step agreement."""

    raw: RawBatch  # an empty batch once this rank's shard is done
    agreement: Pending[StepAgreement]
    fb: FeatureBatch
    prepared_seconds: float = 0.0  # its admission and operators run by the loop, workers

    def agreed(self) -> StepAgreement:
        """The step agreement (once complete)."""
        return self.agreement.result()

    def featured(self, pipeline: str) -> bool:
        """Whether every operator of ``pipeline`` has run on this batch."""
        return True


@dataclass
class PreparedBatch(Batch):
    """A batch admitted with its features whole."""


@dataclass
class StagedBatch(Batch):
    """A batch admitted with its operators still to run; ``fb`` gets each pipeline's
    outputs as it finishes."""

    state: BatchState = field(kw_only=True)
    remaining: dict[str, deque[Run]] = field(kw_only=True)  # node runs left, in order
    finished: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)  # pipelines with an operator on a worker

    def featured(self, pipeline: str) -> bool:
        return pipeline in self.finished


class BatchSource(Protocol):
    """Where a pass's local batches come from."""

    seconds: float  # feature processing off the loop's thread

    def next(self) -> tuple[RawBatch | None, FeatureBatch | None]:
        """The next (part, its features if prepared), (None, None) once the shard is done."""

    def close(self) -> None: ...


class ReadSource:
    """Parts read by the loop's thread, their features left to the pass."""

    seconds = 0.0

    def __init__(self, parts: Iterator[RawBatch | None]) -> None:
        self._parts = parts

    def next(self) -> tuple[RawBatch | None, FeatureBatch | None]:
        return next(self._parts, None), None

    def close(self) -> None:
        pass


class PrefetchThread:
    """A thread that reads and processes whole batches ``depth`` ahead (tf.data's
    prefetch)."""

    def __init__(self, parts: Iterator[RawBatch | None], graph: FeatureGraph,
                 timeline: Timeline, depth: int) -> None:
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.seconds = 0.0
        self._exhausted = False
        self._parts, self._graph, self._timeline = parts, graph, timeline
        self._thread = threading.Thread(target=self._produce, name="recs-prefetch",
                                        daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                part = next(self._parts)
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
        if self._exhausted:
            return None, None
        got = self._ready.get()
        if isinstance(got, BaseException):
            raise got
        self._exhausted = got[0] is None
        return got

    def close(self) -> None:
        self._stop.set()


class Batches:
    """The batches a pass holds, by step: admitted in step order, dropped once trained.

    ``staged``: admit batches staged (set at a step boundary by the pass's schedule);
    ``chunk_rows(feature, rows)``: rows per chunk of a staged batch's feature chain
    (None: the whole batch); ``current``: the step being trained. Each agreement carries
    this rank's ``stop_requested()`` and ``checkpoint_due()`` at its admission (set by
    :meth:`open`)."""

    def __init__(self, graph: FeatureGraph, comm: Comm | None, costs: Costs, timeline: Timeline,
                 chunk_rows: Callable[[int, int], int | None]) -> None:
        self.graph, self._comm, self.costs, self.timeline = graph, comm, costs, timeline
        self._chunk_rows = chunk_rows
        self.held: dict[int, Batch] = {}
        self.admitted = 0
        self.current = 0
        self.staged = False
        self.most_held = 0  # most batches held at once (bounded by the look-ahead)
        self.feature_seconds = 0.0  # whole batches processed by the loop's thread
        self._source: BatchSource | None = None
        self._empty: RawBatch | None = None
        self._stop_requested: Callable[[], bool] = _never
        self._checkpoint_due: Callable[[], bool] = _never

    def open(self, source: BatchSource, empty: RawBatch,
             stop_requested: Callable[[], bool] = _never,
             checkpoint_due: Callable[[], bool] = _never) -> None:
        """Read from ``source``; ``empty``: the batch a rank with no data left trains;
        ``stop_requested``, ``checkpoint_due``: this rank's votes in each agreement."""
        self._source, self._empty = source, empty
        self._stop_requested, self._checkpoint_due = stop_requested, checkpoint_due

    def admit(self) -> Batch:
        """Read the next local batch and post the step agreement for it."""
        assert self._source is not None and self._empty is not None
        t0 = time.perf_counter()
        part, fb = self._source.next()
        raw = self._empty if part is None else part
        votes = [part is not None, len(raw), self._stop_requested(), self._checkpoint_due()]
        agreement = post_allreduce(self._comm, np.array(votes, np.int64), "step agreement",
                                   traced=False,
                                   finish=lambda a: StepAgreement(*(int(x) for x in a)))
        b: Batch
        if self.staged:
            state = self.graph.start(raw)
            rows = len(raw)
            runs = {p: deque(self.graph.runs(p, rows, lambda fi: self._chunk_rows(fi, rows)))
                    for p in self.graph.pipelines}
            b = StagedBatch(raw, agreement, self.graph.start_batch(state), state=state,
                            remaining=runs)
        else:
            if fb is None:
                t1 = time.perf_counter()  # a blocking step processes its batch whole, first
                fb = self.graph.process(raw)
                if part is not None:
                    self.feature_seconds += time.perf_counter() - t1
            b = PreparedBatch(raw, agreement, fb)
        self.held[self.admitted] = b
        self.admitted += 1
        self.most_held = max(self.most_held, len(self.held))
        b.prepared_seconds = time.perf_counter() - t0
        self.costs.add("admit", b.prepared_seconds)
        return b

    def get(self, t: int) -> Batch:
        """Step t's batch, admitting up to it."""
        while self.admitted <= t:
            with self.timeline.cpu(f"read b{self.admitted}"):
                self.admit()
        return self.held[t]

    def drop(self, t: int) -> None:
        """Let go of step t's batch."""
        self.held.pop(t, None)

    def close(self, most: int) -> None:
        """Admit up to ``most`` batches (the ranks' largest count: the filler may have
        admitted more on one rank than on another), complete every step agreement, free
        the communicator."""
        while self.admitted < most:
            self.admit()
        for b in self.held.values():
            b.agreement.wait()
        self.held.clear()
        if self._comm is not None:
            self._comm.Free()
