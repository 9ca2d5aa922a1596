"""The operator graph: a compiled spec as nodes the scheduler can run one by one.

A node is one operator of one feature chain of one pipeline, applied to one
batch. :class:`BatchState` holds a batch's intermediate values; running every
node of a batch in :meth:`FeatureGraph.nodes` order and then
:meth:`FeatureGraph.finish` gives its :class:`FeatureBatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from recs_core.data.parse import RawBatch
from recs_core.features.ops import Operator
from recs_core.features.spec import FeatureSpec, Spec
from recs_core.features.values import IdValues, IntValues, ListIdValues, StrValues, Value


@dataclass(frozen=True)
class OpNode:
    """One operator of one feature chain of one pipeline (per batch)."""

    pipeline: str
    feature: int  # index into FeatureGraph.features
    step: int  # position in the feature's chain
    op: Operator = field(compare=False)
    last: bool = False  # the chain's final operator

    @property
    def name(self) -> str:
        return f"{self.pipeline}/{self.feature}/{self.step}:{self.op.name}"


@dataclass
class BatchState:
    """One batch on its way through the graph."""

    raw: RawBatch
    values: dict[int, Value] = field(default_factory=dict)  # feature index -> current value
    done: set[int] = field(default_factory=set)  # finished feature indices


@dataclass
class SparseOutput:
    """Ids of a feature's sparse fields: ``ids[:, j]`` for field ``names[j]``, or a CSR list."""

    names: tuple[str, ...]
    ids: np.ndarray  # int64 [n, k], or [nnz] for a list
    offsets: np.ndarray | None = None  # int64 [n+1] for a list field
    pooling: str | None = None


@dataclass
class FeatureBatch:
    """What the trainer consumes: labels, dense matrix, sparse ids grouped by pipeline."""

    labels: np.ndarray  # float32 [n]
    dense: np.ndarray  # float32 [n, dense_width]
    sparse: dict[str, list[SparseOutput]]  # pipeline -> outputs in spec order

    def __len__(self) -> int:
        return len(self.labels)


def _columns(indices) -> slice | np.ndarray:  # noqa: ANN001
    """Column selector: a slice (a view, no copy) when the columns are consecutive."""
    idx = np.fromiter(indices, dtype=np.int64)
    if len(idx) and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class FeatureGraph:
    """A spec compiled into per-pipeline operator nodes over raw batches."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.features: tuple[FeatureSpec, ...] = spec.features
        schema = spec.schema
        ints, strs = schema.int_names, schema.str_names
        self._source: list[tuple[str, np.ndarray]] = []
        for f in self.features:
            kind = next(c.type for c in spec.columns if c.name == f.inputs[0])
            names = ints if kind == "int" else strs
            self._source.append((kind, _columns(names.index(c) for c in f.inputs)))
        self._nodes: dict[str, list[OpNode]] = {}
        for fi, f in enumerate(self.features):
            chain = [OpNode(f.pipeline, fi, s, op, s == len(f.ops) - 1)
                     for s, op in enumerate(f.ops)]
            self._nodes.setdefault(f.pipeline, []).extend(chain)

    def set_fit_reduction(self, reduce_sum: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Make operators that fit on the first batch fit on every rank's first batch:
        ``reduce_sum`` sums an array over the ranks (None: fit on this rank's own)."""
        for node in self.nodes():
            node.op.set_reduction(reduce_sum)

    @property
    def pipelines(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.spec.pipelines)

    def nodes(self, pipeline: str | None = None) -> list[OpNode]:
        """The nodes of one pipeline (or all), each after the nodes it depends on."""
        if pipeline is not None:
            return list(self._nodes[pipeline])
        return [n for p in self.pipelines for n in self._nodes[p]]

    def start(self, raw: RawBatch) -> BatchState:
        """A fresh state for one raw batch."""
        return BatchState(raw)

    def _source_value(self, raw: RawBatch, fi: int) -> Value:
        kind, cols = self._source[fi]
        if kind == "int":
            return IntValues(raw.ints[:, cols], raw.int_missing[:, cols])
        return StrValues(raw.arena, raw.str_start[:, cols], raw.str_len[:, cols])

    def run_node(self, state: BatchState, node: OpNode) -> None:
        """Run one node on one batch (its predecessor in the chain must have run)."""
        fi = node.feature
        if node.step == 0:
            v = self._source_value(state.raw, fi)
        else:
            v = state.values[fi]
        state.values[fi] = node.op.apply(v)
        if node.last:
            state.done.add(fi)

    def finish(self, state: BatchState) -> FeatureBatch:
        """Assemble the batch's outputs once all its nodes have run."""
        if len(state.done) != len(self.features):
            missing = [self.features[i].name for i in range(len(self.features))
                       if i not in state.done]
            raise RuntimeError(f"feature chains not finished: {', '.join(missing)}")
        fb = self.start_batch(state)
        for p in self.pipelines:
            self.finish_pipeline(state, fb, p)
        self.finish_dense(state, fb)
        return fb

    def start_batch(self, state: BatchState) -> FeatureBatch:
        """A batch with its labels only; pipelines are filled in as they finish."""
        n = len(state.raw)
        return FeatureBatch(state.raw.labels.astype(np.float32),
                            np.zeros((n, 0), dtype=np.float32), {})

    def pipeline_done(self, state: BatchState, pipeline: str) -> bool:
        """Whether every chain of ``pipeline`` has run on this batch."""
        return all(n.feature in state.done for n in self._nodes[pipeline] if n.last)

    def finish_pipeline(self, state: BatchState, fb: FeatureBatch, pipeline: str) -> None:
        """Put one finished pipeline's sparse outputs into ``fb.sparse[pipeline]``."""
        outs: list[SparseOutput] = []
        for i, f in enumerate(self.features):
            if f.pipeline != pipeline or f.output != "sparse":
                continue
            v = state.values[i]
            if isinstance(v, ListIdValues):
                outs.append(SparseOutput(f.field_names, v.ids, v.offsets, f.table.pooling))
            else:
                assert isinstance(v, IdValues)
                outs.append(SparseOutput(f.field_names, v.ids))
        fb.sparse[pipeline] = outs

    def finish_dense(self, state: BatchState, fb: FeatureBatch) -> None:
        """Put the dense outputs (every chain with output "dense" must have run) into ``fb``."""
        dense = [state.values[i].values for i, f in enumerate(self.features)  # type: ignore
                 if f.output == "dense"]
        if dense:
            fb.dense = np.concatenate(dense, axis=1).astype(np.float32)

    def dense_done(self, state: BatchState) -> bool:
        """Whether every chain with a dense output has run on this batch."""
        return all(i in state.done for i, f in enumerate(self.features) if f.output == "dense")

    def process(self, raw: RawBatch) -> FeatureBatch:
        """Run every node on one batch, in order, and assemble the outputs."""
        state = self.start(raw)
        for node in self.nodes():
            self.run_node(state, node)
        return self.finish(state)
