"""Optimizers for the dense parameters, updating them in place.

Each walks every parameter as a flat view in one compiled pass, in the parameter's dtype
and a fixed order (bit-deterministic). The update is elementwise, so a step may also be
applied part by part (:meth:`start_step`, then :meth:`update_part` for every part of every
parameter, e.g. as each gradient bucket's allreduce completes) with the same result.
``state`` holds every array the optimizer keeps (accumulators, moments, the Adam step
count as a 0-d array); a checkpoint restores it by writing into those arrays in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numba import njit

from recs_core.dense.layers import GradPart


@njit(nogil=True, cache=True)
def _sgd(p: np.ndarray, g: np.ndarray, lr: float) -> None:
    lr_t = p.dtype.type(lr)
    for i in range(p.shape[0]):
        p[i] -= lr_t * g[i]


@njit(nogil=True, cache=True)
def _adagrad(p: np.ndarray, acc: np.ndarray, g: np.ndarray, lr: float, eps: float) -> None:
    ft = p.dtype.type
    lr_t, eps_t = ft(lr), ft(eps)
    for i in range(p.shape[0]):
        gi = g[i]
        a = acc[i] + gi * gi
        acc[i] = a
        den = np.sqrt(a) + eps_t
        if den > 0:  # eps = 0 and an all-zero history: no step (not 0 / 0)
            p[i] -= lr_t * gi / den


@njit(nogil=True, cache=True)
def _adam(p: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray, lr: float, b1: float,
          b2: float, eps: float, c1: float, c2: float) -> None:
    """c1 = 1 - b1^t, c2 = 1 - b2^t (bias corrections)."""
    ft = p.dtype.type
    lr_t, b1_t, b2_t, eps_t = ft(lr), ft(b1), ft(b2), ft(eps)
    nb1, nb2, c1_t, c2_t = ft(1.0 - b1), ft(1.0 - b2), ft(c1), ft(c2)
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1_t * m[i] + nb1 * gi
        vi = b2_t * v[i] + nb2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        den = np.sqrt(vi / c2_t) + eps_t
        if den > 0:
            p[i] -= lr_t * (mi / c1_t) / den


def _flat(a: np.ndarray) -> np.ndarray:
    """A flat view (never a copy) of a writeable C-contiguous array."""
    if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable
            and a.dtype.kind == "f"):
        raise ValueError("parameters must be writeable C-contiguous float arrays")
    return a.reshape(-1)


def _check_lr(lr: float) -> float:
    if not 0 <= lr < np.inf:
        raise ValueError(f"lr must be finite and >= 0, got {lr}")
    return float(lr)


class _Dense(ABC):
    """Shared parts: the parameter list, its flat views, the gradient checks and the step
    split into parts."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params = list(params)
        self.lr = _check_lr(lr)
        self._flat = [_flat(p) for p in self.params]
        self.state: dict[str, np.ndarray] = {}

    def step(self, grads: list[np.ndarray]) -> None:
        """One update of every parameter from its gradient."""
        if len(grads) != len(self.params):
            raise ValueError(f"{len(grads)} gradients for {len(self.params)} parameters")
        self.start_step()
        for i in range(len(self.params)):
            self.update_part(grads, i)

    def start_step(self) -> None:
        """Begin one step; :meth:`update_part` then updates each part once."""
        return None  # no per-step state (SGD, Adagrad); Adam advances its step count

    def update_part(self, grads: list[np.ndarray], part: GradPart) -> None:
        """The current step's update of one part (a parameter index, or a row range of one)
        from its gradient in ``grads``."""
        i, r0, r1 = (part, None, None) if isinstance(part, int) else part
        p, g = self.params[i], grads[i]
        if g.shape != p.shape:
            raise ValueError(f"gradient {i} has shape {g.shape}, parameter {p.shape}")
        per_row = p.size // p.shape[0] if p.ndim and p.shape[0] else 1
        lo, hi = (0, p.size) if r0 is None else (r0 * per_row, r1 * per_row)
        g = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)[lo:hi]
        self._update(i, lo, hi, g)

    @abstractmethod
    def _update(self, i: int, lo: int, hi: int, g: np.ndarray) -> None:
        """Update the flat elements [lo, hi) of parameter i (and its state) from ``g``."""

    def _zeros(self, prefix: str, fill: float = 0.0) -> list[np.ndarray]:
        views = []
        for i, p in enumerate(self.params):
            a = np.full(p.shape, fill, dtype=p.dtype)
            self.state[f"{prefix}/{i}"] = a
            views.append(a.reshape(-1))
        return views


class SGD(_Dense):
    """p -= lr * g."""

    def _update(self, i: int, lo: int, hi: int, g: np.ndarray) -> None:
        _sgd(self._flat[i][lo:hi], g, self.lr)


class Adagrad(_Dense):
    """Elementwise Adagrad: acc += g^2; p -= lr * g / (sqrt(acc) + eps).
    ``state["acc/i"]`` is parameter i's accumulator."""

    def __init__(self, params: list[np.ndarray], lr: float, eps: float = 1e-8,
                 initial_accumulator: float = 0.0) -> None:
        super().__init__(params, lr)
        if not (0 <= eps < np.inf and 0 <= initial_accumulator < np.inf):
            raise ValueError(f"eps and initial_accumulator must be finite and >= 0, got {eps}, "
                             f"{initial_accumulator}")
        self.eps = float(eps)
        self._acc = self._zeros("acc", initial_accumulator)

    def _update(self, i: int, lo: int, hi: int, g: np.ndarray) -> None:
        _adagrad(self._flat[i][lo:hi], self._acc[i][lo:hi], g, self.lr, self.eps)


class Adam(_Dense):
    """Adam with bias correction (Kingma & Ba, Algorithm 1): m, v moving averages of g and
    g^2; p -= lr * m_hat / (sqrt(v_hat) + eps). ``state``: "m/i", "v/i" and "step"."""

    def __init__(self, params: list[np.ndarray], lr: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and 0 <= eps < np.inf):
            raise ValueError(f"need 0 <= beta1, beta2 < 1 and finite eps >= 0; got {beta1}, "
                             f"{beta2}, {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._m = self._zeros("m")
        self._v = self._zeros("v")
        self.state["step"] = np.zeros((), dtype=np.int64)
        self._corrections = (1.0, 1.0)

    def start_step(self) -> None:
        """Advance the step count (and so the bias corrections of this step's parts)."""
        self.state["step"] += 1
        t = int(self.state["step"])
        self._corrections = (1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t)

    def _update(self, i: int, lo: int, hi: int, g: np.ndarray) -> None:
        c1, c2 = self._corrections
        _adam(self._flat[i][lo:hi], self._m[i][lo:hi], self._v[i][lo:hi], g, self.lr,
              self.beta1, self.beta2, self.eps, c1, c2)


DENSE_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def make_dense_optimizer(name: str, params: list[np.ndarray], lr: float,
                         **kw) -> SGD | Adagrad | Adam:
    """"sgd" | "adagrad" | "adam" over params; ``kw`` goes to the constructor."""
    cls = DENSE_OPTIMIZERS.get(name)
    if cls is None:
        raise ValueError(f"unknown dense optimizer {name!r}; choices: "
                         f"{', '.join(DENSE_OPTIMIZERS)}")
    return cls(params, lr, **kw)
