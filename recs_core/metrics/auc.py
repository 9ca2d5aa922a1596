"""Exact ROC AUC (ties count one half) and logloss, vectorized (no Python loop over rows)."""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC via the Mann–Whitney statistic with mid-ranks for tied scores.

    Returns NaN when only one class is present.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last element of each tie group (1-based)
    mid = upper - (counts - 1) / 2.0  # average rank within each tie group
    rank_sum = mid[inverse][y].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1-eps])."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


class ProgressiveMetrics:
    """Scores of every batch, recorded before the model trains on it (test-then-train)."""

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self.rows = 0
        self._loss_sum = 0.0

    def add(self, labels: np.ndarray, probs: np.ndarray) -> None:
        if len(labels) == 0:
            return
        self._labels.append(np.asarray(labels, dtype=np.float32))
        self._probs.append(np.asarray(probs, dtype=np.float32))
        self._loss_sum += logloss(labels, probs) * len(labels)
        self.rows += len(labels)

    @property
    def running_logloss(self) -> float:
        return self._loss_sum / self.rows if self.rows else float("nan")

    def labels(self) -> np.ndarray:
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.float32)

    def probs(self) -> np.ndarray:
        return np.concatenate(self._probs) if self._probs else np.zeros(0, np.float32)

    def auc(self) -> float:
        return auc(self.labels(), self.probs())

    def logloss(self) -> float:
        return logloss(self.labels(), self.probs())
