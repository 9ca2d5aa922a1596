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
from recs_core.features.values import (
    FloatValues,
    IdValues,
    IntValues,
    ListIdValues,
    ListStrValues,
    StrValues,
    Value,
    concat_rows,
)

RowRange = tuple[int, int] | None  # rows lo..hi-1 of a batch; None: the whole batch


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
    # feature index -> first row of a chunk -> the chunk's value after the chain's last
    # run operator (chains run chunk by chunk; joined after the last chunk's last node)
    parts: dict[int, dict[int, Value]] = field(default_factory=dict)


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
        by_kind = {"int": schema.int_names, "str": schema.str_names,
                   "float": schema.float_names, "list_str": schema.list_names}
        self._source: list[tuple[str, np.ndarray]] = []
        for f in self.features:
            kind = next(c.type for c in spec.columns if c.name == f.inputs[0])
            self._source.append((kind, _columns(by_kind[kind].index(c) for c in f.inputs)))
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

    def chain(self, feature: int) -> list[OpNode]:
        """The nodes of one feature's chain, in order."""
        return [n for n in self._nodes[self.features[feature].pipeline] if n.feature == feature]

    def row_wise(self, feature: int) -> bool:
        """Whether every operator of the feature's chain maps each row on its own (now:
        an operator that still has to fit on the first batch does not), so that the chain
        may run on row chunks."""
        return all(op.order_free() for op in self.features[feature].ops)

    def runs(self, pipeline: str, rows: int,
             chunk_rows: Callable[[int], int | None]) -> list[tuple[OpNode, RowRange]]:
        """The node runs of ``pipeline`` on a batch of ``rows`` rows, in an order that
        respects the chains: a feature's chain runs on the whole batch, or, where
        ``chunk_rows(feature)`` gives a size (row-wise chains only), chunk by chunk
        (every node on rows 0..c-1, then on c..2c-1, ...)."""
        out: list[tuple[OpNode, RowRange]] = []
        nodes = self._nodes[pipeline]
        for fi in dict.fromkeys(n.feature for n in nodes):
            chain = self.chain(fi)
            size = chunk_rows(fi) if self.row_wise(fi) else None
            if not size or size >= rows:
                out += [(n, None) for n in chain]
                continue
            for lo in range(0, rows, size):
                out += [(n, (lo, min(rows, lo + size))) for n in chain]
        return out

    def start(self, raw: RawBatch) -> BatchState:
        """A fresh state for one raw batch."""
        return BatchState(raw)

    def _source_value(self, raw: RawBatch, fi: int, rows: slice = slice(None)) -> Value:
        kind, cols = self._source[fi]
        if kind == "int":
            return IntValues(raw.ints[rows, cols], raw.int_missing[rows, cols])
        if kind == "float":
            return FloatValues(raw.floats[rows, cols])
        if kind == "list_str":  # one column (the spec checks it)
            col = raw.lists[cols.start if isinstance(cols, slice) else int(cols[0])]
            if rows != slice(None):
                col = col.slice(rows.start, rows.stop)
            return ListStrValues(raw.arena, col.start, col.length, col.offsets)
        h, hashes, known = raw.hashes, None, None
        if h is not None and h.known[cols].any():
            hashes, known = h.values[rows, cols], h.known[cols]
        return StrValues(raw.arena, raw.str_start[rows, cols], raw.str_len[rows, cols],
                         hashes, known)

    def run_node(self, state: BatchState, node: OpNode, rows: RowRange = None) -> None:
        """Run one node on one batch, or on its rows ``rows`` (its predecessor in the
        chain must have run on the same rows; see :meth:`runs`)."""
        fi = node.feature
        if rows is None:
            v = self._source_value(state.raw, fi) if node.step == 0 else state.values[fi]
            state.values[fi] = node.op.apply(v)
            if node.last:
                state.done.add(fi)
            return
        lo, hi = rows
        parts = state.parts.setdefault(fi, {})
        v = self._source_value(state.raw, fi, slice(lo, hi)) if node.step == 0 else parts[lo]
        parts[lo] = node.op.apply(v)
        if node.last and hi == len(state.raw):  # the last chunk's last node: join them
            state.values[fi] = concat_rows([parts[k] for k in sorted(parts)])
            del state.parts[fi]
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
