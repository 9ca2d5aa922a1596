"""AUC and logloss against brute-force references (all pairs; the direct formula)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recs_core.metrics.auc import ProgressiveMetrics, auc, logloss


def brute_auc(y, s) -> float:
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("levels", [3, 20, 10_000])  # few levels = many ties
def test_auc_matches_all_pairs(levels: int) -> None:
    rng = np.random.default_rng(levels)
    y = rng.random(400) < 0.3
    s = rng.integers(0, levels, 400) / levels + 0.2 * y
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([1, 0], [0.1, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError):
        auc([1, 0], [0.5])


def test_logloss_matches_formula() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    ref = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.5)])
    assert logloss(y, p) == pytest.approx(ref)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))


def test_progressive_metrics_accumulate_batches() -> None:
    rng = np.random.default_rng(0)
    m = ProgressiveMetrics()
    ys, ps = [], []
    for _ in range(5):
        y = (rng.random(50) < 0.4).astype(np.float32)
        p = rng.random(50).astype(np.float32)
        m.add(y, p)
        ys.append(y)
        ps.append(p)
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert m.rows == 250
    assert m.auc() == pytest.approx(auc(y, p))
    assert m.running_logloss == pytest.approx(logloss(y, p), rel=1e-6)
