"""Feature chains run on row chunks (the scheduler's way of fitting long operators into
exchange windows) give exactly the outputs of whole-batch runs, for every value type."""

from __future__ import annotations

import numpy as np
import pytest
import tomllib

from recs_core.data.reader import ShardReader
from recs_core.data.synth import generate
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.spec import parse_spec
from tests.conftest import CONFIGS

HEAVY = CONFIGS / "criteo_heavy.toml"
# Beyond the heavy spec's operators: vocab on strings and tokens (lowercased copies: the
# chunks hold different arenas), pad, id_mod, a given standardize.
EXTRA = {"name": "extra", "feature": [
    {"name": "c1v", "inputs": ["C1", "C2"], "embedding": {"dim": 4},
     "ops": [{"op": "lowercase"}, {"op": "vocab", "values": ["05db9164", "68fd1e64"]}]},
    {"name": "tagv", "inputs": ["H2"], "embedding": {"dim": 4, "pooling": "sum"},
     "ops": [{"op": "split", "sep": ",", "max_len": 20}, {"op": "lowercase"},
             {"op": "vocab", "values": ["sports", "news", "music"], "oov_buckets": 3}]},
    {"name": "hpad", "inputs": ["H1"], "embedding": {"dim": 4, "pooling": "sum"},
     "ops": [{"op": "split", "sep": "|", "max_len": 50},
             {"op": "hash_bucket", "buckets": 1000}, {"op": "pad", "max_len": 7}]},
    {"name": "imod", "inputs": ["I1..I3"], "embedding": {"dim": 4},
     "ops": [{"op": "id_mod", "buckets": 97}]},
    {"name": "given", "inputs": ["I4", "I5"], "output": "dense",
     "ops": [{"op": "fill_missing", "value": 1}, {"op": "standardize", "mean": 2.0,
                                                   "std": 3.0}]},
]}


def _spec():  # noqa: ANN202 -- a fresh one each time: operators hold their fitted state
    data = tomllib.loads(HEAVY.read_text())
    data["pipeline"].append(EXTRA)
    return parse_spec(data, str(HEAVY))


@pytest.fixture(scope="module")
def heavy_raw(tmp_path_factory):  # noqa: ANN001, ANN201
    path = tmp_path_factory.mktemp("chunks") / "heavy.txt"
    generate(path, 300, seed=3, heavy=True, max_history=600)
    return next(iter(ShardReader([str(path)], _spec().schema, batch_rows=300)))


def _same(a: FeatureBatch, b: FeatureBatch) -> None:
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.dense, b.dense)
    assert a.sparse.keys() == b.sparse.keys()
    for p in a.sparse:
        for x, y in zip(a.sparse[p], b.sparse[p], strict=True):
            assert x.names == y.names and np.array_equal(x.ids, y.ids), (p, x.names)
            assert (x.offsets is None) == (y.offsets is None)
            if x.offsets is not None:
                assert np.array_equal(x.offsets, y.offsets), (p, x.names)


@pytest.mark.parametrize("size", [1, 7, 64, 299])
def test_chunked_chains_equal_whole_batch_runs(heavy_raw, size: int) -> None:  # noqa: ANN001
    raw = heavy_raw
    graph = FeatureGraph(_spec())
    whole = graph.process(raw)  # also fits dense_std on this batch
    state = graph.start(raw)
    chunked = set()
    for p in graph.pipelines:
        for node, rows in graph.runs(p, len(raw), lambda fi: size):
            graph.run_node(state, node, rows)
            if rows is not None:
                chunked.add(node.feature)
    assert chunked == set(range(len(graph.features)))  # every chain row-wise once fitted
    assert not state.parts  # every chunk joined
    _same(graph.finish(state), whole)


def test_runs_are_chunk_major_and_skip_chains_that_still_fit() -> None:
    graph = FeatureGraph(_spec())
    std = next(i for i, f in enumerate(graph.features) if f.name == "dense_std")
    assert not graph.row_wise(std)  # standardize(fit = true) needs the whole first batch
    runs = graph.runs("dense", 300, lambda fi: 128)
    assert {rows for node, rows in runs if node.feature == std} == {None}
    dense = [(n.step, rows) for n, rows in runs if n.feature != std]
    assert dense == [(s, r) for r in [(0, 128), (128, 256), (256, 300)] for s in range(3)]
    assert [rows for _, rows in graph.runs("dense", 300, lambda fi: None)] == [None] * 7
    hist = graph.runs("history", 300, lambda fi: 300)  # a chunk of the whole batch: no chunk
    assert {rows for _, rows in hist} == {None}
