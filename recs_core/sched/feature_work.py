"""Feature work of staged batches: their operators, run one at a time.

An operator runs as a segment of the task that needs its pipeline (a step's lookup of
that pipeline, or its train task for the dense ones), on a worker thread, or, while
exchanges are in flight and no task is ready, by the filler: intra-pipeline prefetch of
the next ``lookahead`` batches, one operator whose estimated cost fits the estimated
window (the time until the first exchange in flight completes), admitting the next batch
first where it is not read yet. A chain expected to take longer than the chunk cost on a
batch runs on row chunks of at most that cost (:class:`RowChunks`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from recs_core.features.graph import FeatureGraph, OpNode, RowRange
from recs_core.sched.batches import Batch, Batches, Run, StagedBatch
from recs_core.sched.costs import Costs, PipelinePlan
from recs_core.sched.trace import WORKER, Timeline
from recs_core.sched.workers import OperatorWorkers

MIN_CHUNK_ROWS = 16  # smaller row chunks cost more in dispatch than they save


def pipelines_with(graph: FeatureGraph, output: str) -> list[str]:
    """The pipelines with a feature of ``output`` ("sparse", "dense"), in spec order."""
    return list(dict.fromkeys(f.pipeline for f in graph.features if f.output == output))


class RowChunks:
    """Rows per chunk for a feature chain expected to take longer than ``seconds`` on a
    batch: chunks of at most that cost (None: the whole batch at once, also while
    unmeasured; ``seconds`` 0: never chunked)."""

    def __init__(self, graph: FeatureGraph, costs: Costs, seconds: float) -> None:
        self.graph, self.costs, self.seconds = graph, costs, seconds

    def rows(self, feature: int, rows: int) -> int | None:
        if self.seconds <= 0 or rows < 2 * MIN_CHUNK_ROWS:
            return None
        per_row = [self.costs.get(n.name) for n in self.graph.chain(feature)]
        if any(c is None for c in per_row):
            return None
        chunks = int(np.ceil(sum(per_row) * rows / self.seconds))  # type: ignore[arg-type]
        return max(MIN_CHUNK_ROWS, -(-rows // chunks)) if chunks > 1 else None


class FeatureWork:
    """Runs the operators of the staged batches in ``batches`` (module docstring), with
    ``workers`` threads (0: none) fed by :meth:`feed`."""

    def __init__(self, graph: FeatureGraph, batches: Batches, costs: Costs, plan: PipelinePlan,
                 timeline: Timeline, lookahead: int, workers: int) -> None:
        self.graph, self.batches, self.costs, self.plan = graph, batches, costs, plan
        self.timeline, self.lookahead = timeline, lookahead
        self.sparse = pipelines_with(graph, "sparse")
        self.dense_pipes = pipelines_with(graph, "dense")
        self.workers = OperatorWorkers(workers, self._work) if workers > 0 else None
        self.feature_seconds = 0.0  # operators run by the loop's thread and its workers
        self.chunk_runs = 0  # operator runs on a row chunk rather than a whole batch

    def run(self, b: Batch, pipelines: list[str]) -> Iterator[None]:
        """Run the remaining operators of ``pipelines`` on batch ``b``, one per segment
        (or wait for the one a worker runs)."""
        if not isinstance(b, StagedBatch):
            return
        for p in pipelines:
            while b.remaining[p] or p in b.busy:
                if p not in b.busy:
                    self._run_node(b, p)
                yield None

    def finish_dense(self, b: Batch) -> None:
        """Put batch ``b``'s dense values into ``b.fb`` once :meth:`run` ran its dense
        pipelines (a prepared batch has them)."""
        if isinstance(b, StagedBatch):
            self.graph.finish_dense(b.state, b.fb)

    def _run_node(self, b: StagedBatch, p: str) -> None:
        """Run the next operator of pipeline ``p`` on batch ``b`` (or on its next row
        chunk) in this thread."""
        node, rows = b.remaining[p].popleft()
        t0 = time.perf_counter()
        self.graph.run_node(b.state, node, rows)
        self._node_done(b, p, node, rows, time.perf_counter() - t0)

    @staticmethod
    def _rows(b: Batch, rows: RowRange) -> int:
        return len(b.raw) if rows is None else rows[1] - rows[0]

    def _node_done(self, b: StagedBatch, p: str, node: OpNode, rows: RowRange,
                   seconds: float) -> None:
        n = self._rows(b, rows)
        self.chunk_runs += rows is not None
        if n:
            self.costs.add(node.name, seconds / n)  # per row: batches and chunks differ
        self.feature_seconds += seconds
        b.prepared_seconds += seconds
        if not b.remaining[p] and p not in b.busy:
            if p in self.sparse:
                self.graph.finish_pipeline(b.state, b.fb, p)
            b.finished.add(p)

    def _work(self, job: tuple[StagedBatch, str, Run]) -> None:
        """On a worker thread: one operator on one batch (or row chunk)."""
        b, _, (node, rows) = job
        self.graph.run_node(b.state, node, rows)

    def feed(self) -> None:
        """Collect the workers' finished operators and give idle workers the next ones:
        the current step's batch first, then the next ``lookahead`` batches."""
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

    def _next_job(self) -> tuple[StagedBatch, str, Run] | None:
        batches = self.batches
        current = batches.current
        for t in range(current, min(batches.admitted, current + 1 + self.lookahead)):
            b = batches.held.get(t)
            if not isinstance(b, StagedBatch):
                continue
            for p in self.plan.order + self.dense_pipes:
                if p in b.busy or not b.remaining[p]:
                    continue
                node = b.remaining[p][0][0]
                if t == current or node.op.order_free():
                    return b, p, b.remaining[p].popleft()
        return None

    def fill(self, window: float | None) -> bool:
        """Intra-pipeline prefetch: run one operator of an upcoming batch that fits the
        ``window`` (or admit that batch); whether it ran something."""
        batches = self.batches
        current = batches.current
        for t in range(current + 1, current + 1 + self.lookahead):
            if t >= batches.admitted:
                est = self.costs.get("admit")
                if window is not None and est is not None and est > window:
                    return False
                with self.timeline.cpu(f"read b{t}"):
                    batches.admit()
                return True
            b = batches.held[t]
            if not isinstance(b, StagedBatch):
                continue
            for p in self.plan.order + self.dense_pipes:
                if not b.remaining[p] or p in b.busy:
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

    def close(self) -> None:
        """Stop the worker threads."""
        if self.workers is not None:
            self.workers.close()
