"""Sigmoid and binary cross-entropy on logits, both numerically stable for any logit."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow (exp only ever sees -|x|); keeps float dtypes."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def bce_with_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of labels in {0, 1} (or soft labels in [0, 1]) given logits.

    Returns (mean loss as a Python float, d loss / d logits = (sigmoid(logits) - labels) / n in
    the logits' dtype). The loss is max(x, 0) - x*y + log1p(exp(-|x|)), summed in float64.
    """
    x = np.asarray(logits)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    y = np.asarray(labels).astype(x.dtype, copy=False).reshape(x.shape)
    n = x.size
    if n == 0:
        return 0.0, np.zeros_like(x)
    x64, y64 = x.astype(np.float64, copy=False), y.astype(np.float64, copy=False)
    loss = float(np.sum(np.maximum(x64, 0.0) - x64 * y64 + np.log1p(np.exp(-np.abs(x64)))) / n)
    e = np.exp(-np.abs(x))
    p = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
    return loss, ((p - y) * x.dtype.type(1.0 / n)).astype(x.dtype, copy=False)
