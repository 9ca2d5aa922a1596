"""The shipped canonical spec (docs/WORKLOAD.md) run end to end on the real Criteo sample,
against a line-by-line pure-Python reference implementation of the same features."""

from __future__ import annotations

import math

import numpy as np

from recs_core.data.reader import ShardReader
from recs_core.features.graph import FeatureGraph
from recs_core.features.spec import load_spec
from tests.conftest import CONFIGS
from tests.test_hashing import ref_bucket, ref_cross, ref_hash

BOUNDS = [0] + [2**i for i in range(21)]
B18 = 2**18


def ref_features(line: str):
    f = line.rstrip("\n").split("\t")
    ints = [int(x) if x else None for x in f[1:14]]
    cats = f[14:40]
    dense = [math.log1p(max(v if v is not None else 0, 0)) for v in ints]
    cat = [0 if not c else ref_bucket(ref_hash(c.encode()), B18) for c in cats]
    buck = [0 if v is None else 1 + int(np.searchsorted(BOUNDS, v, side="right"))
            for v in ints]
    cross = []
    for a, b in zip(cats[0:16:2], cats[1:16:2]):
        h = ref_cross(ref_hash(a.encode()), ref_hash(b.encode()))
        cross.append(0 if not a and not b else ref_bucket(h, B18))
    return int(f[0]), dense, cat, buck, cross


def test_canonical_spec_matches_workload() -> None:
    spec = load_spec(CONFIGS / "criteo_dlrm.toml")
    assert [p.name for p in spec.pipelines] == ["dense", "categorical", "bucketized", "crosses"]
    assert spec.dense_width == 13
    fields = spec.sparse_fields
    assert len(fields) == 47
    assert all(t.dim == 16 for _, t in fields)
    rows = [t.rows for _, t in fields]
    assert rows[:26] == [B18] * 26 and rows[26:39] == [len(BOUNDS) + 2] * 13
    assert rows[39:] == [B18] * 8
    assert fields[39][0] == "cross:C1xC2" and fields[46][0] == "cross:C15xC16"
    assert spec.batch_size == 2048 and spec.policy.on_error == "skip"


def test_canonical_features_on_real_sample_match_reference(criteo_sample) -> None:
    spec = load_spec(CONFIGS / "criteo_dlrm.toml")
    graph = FeatureGraph(spec)
    lines = criteo_sample.read_text().splitlines()
    i = 0
    for raw in ShardReader([str(criteo_sample)], spec.schema, batch_rows=1000):
        fb = graph.process(raw)
        cat, buck, cross = (fb.sparse[p][0].ids for p in ("categorical", "bucketized", "crosses"))
        for r in range(len(fb)):
            if (i + r) % 7 == 0 or i + r < 50:  # a spread of rows keeps the test quick
                label, dense, c, b, x = ref_features(lines[i + r])
                assert fb.labels[r] == label
                np.testing.assert_allclose(fb.dense[r], dense, rtol=1e-6)
                assert cat[r].tolist() == c and buck[r].tolist() == b
                assert cross[r].tolist() == x
        i += len(fb)
    assert i == len(lines) == 5760


def test_heavy_spec_compiles_with_six_pipelines() -> None:
    spec = load_spec(CONFIGS / "criteo_heavy.toml")
    assert [p.name for p in spec.pipelines] == ["dense", "categorical", "bucketized",
                                                "crosses", "history", "tags"]
    names = [n for n, _ in spec.sparse_fields]
    assert sum(n.startswith("cross:") for n in names) == 28
    assert "hist100" in names and "hist5" in names and "tags" in names
    assert spec.dense_width == 26
    pools = {n: t.pooling for n, t in spec.sparse_fields}
    assert pools["hist100"] == "mean" and pools["tags"] == "sum"
    assert dict(spec.sparse_fields)["hist100"].rows == 2**20
