"""A multilayer perceptron with hand-written backward: GEMMs through NumPy (BLAS), bias, ReLU
and their gradients in fused Numba kernels, activations kept in reused per-layer buffers."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from numba import njit

from recs_core.stages import drive

# Most floating-point operations one GEMM runs between two yields (about 1.5 ms at 70
# GFLOP/s): a scheduler polls its exchanges there, and MPI over TCP moves data only inside
# MPI calls. Pieces are row ranges of the output, so every element's sum is unchanged.
GEMM_PIECE_FLOPS = 1e8
# Most elements of a weight gradient in one allreduce bucket. Buckets are row ranges of
# the weight, fixed by its shape alone: every rank must post the same buckets, whatever
# its batch size.
GRAD_PIECE_ELEMS = 1 << 16

# A part of an MLP's gradients: index into ``grads``, or (index, first row, end row).
GradPart = int | tuple[int, int, int]


class NeedBucket:
    """Yielded by a staged forward just before it first reads the parameters of gradient
    bucket ``index`` (numbered in the order backward yields the buckets): a scheduler that
    applies the previous step's update bucket by bucket makes sure that one is applied.
    Plain drivers ignore it."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"NeedBucket({self.index})"


def shift_parts(parts: list[GradPart], by: int) -> list[GradPart]:
    """``parts`` of one MLP's grads as parts of a list where that MLP's start at ``by``."""
    return [i + by if isinstance(i, int) else (i[0] + by, i[1], i[2]) for i in parts]


def grad_part(grads: list[np.ndarray], part: GradPart) -> np.ndarray:
    """The array ``part`` names in ``grads`` (a view for a row range)."""
    return grads[part] if isinstance(part, int) else grads[part[0]][part[1]:part[2]]


def row_pieces(rows: int, per_row: float, most: float) -> list[tuple[int, int]]:
    """Split ``rows`` rows into about equal ranges of at most ``most`` (counted at
    ``per_row`` a row; one range if all of them fit)."""
    pieces = max(1, min(rows, int(np.ceil(rows * per_row / most))))
    bounds = np.linspace(0, rows, pieces + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def matmul_pieces(a: np.ndarray, b: np.ndarray, out: np.ndarray,
                  pieces: list[tuple[int, int]] | None = None) -> Generator[
                      tuple[int, int], None, None]:
    """``out = a @ b`` by row ranges ``pieces`` (default: of at most
    :data:`GEMM_PIECE_FLOPS`), yielding each one once it is done."""
    if pieces is None:
        pieces = row_pieces(a.shape[0], 2.0 * a.shape[1] * b.shape[1], GEMM_PIECE_FLOPS)
    for r0, r1 in pieces:
        np.matmul(a[r0:r1], b, out=out[r0:r1])
        yield r0, r1


@njit(nogil=True, cache=True)
def _bias_act(y: np.ndarray, b: np.ndarray, relu: bool) -> None:
    """In place: y = y + b (broadcast over rows), then max(y, 0) if relu."""
    n, m = y.shape
    zero = np.zeros(1, dtype=y.dtype)[0]
    for i in range(n):
        yi = y[i]
        for j in range(m):
            v = yi[j] + b[j]
            yi[j] = v if (not relu or v > 0) else zero
    return


@njit(nogil=True, cache=True)
def _relu_grad_colsum(g: np.ndarray, a: np.ndarray, db: np.ndarray) -> None:
    """In place: g = g where a > 0 else 0; db = column sums of the result.

    In place on purpose: with a separate output that may alias g, LLVM's runtime alias
    check sends the loop to its scalar, branchy version (~25x slower on random masks)."""
    n, m = g.shape
    zero = np.zeros(1, dtype=g.dtype)[0]
    for j in range(m):
        db[j] = zero
    for i in range(n):
        gi = g[i]
        ai = a[i]
        for j in range(m):
            v = gi[j] if ai[j] > zero else zero
            gi[j] = v
            db[j] += v
    return


@njit(nogil=True, cache=True)
def _colsum(g: np.ndarray, db: np.ndarray) -> None:
    """db = column sums of g."""
    n, m = g.shape
    zero = np.zeros(1, dtype=g.dtype)[0]
    for j in range(m):
        db[j] = zero
    for i in range(n):
        gi = g[i]
        for j in range(m):
            db[j] += gi[j]
    return


class MLP:
    """Stack of Linear layers with ReLU between them (and after the last one iff relu_last).

    ``params`` is [W0, b0, W1, b1, ...] with W of shape [in, out]; ``grads`` has the same
    shapes and is overwritten (not accumulated) by each ``backward``. Both lists keep the
    same array objects for the MLP's whole life, so optimizers may hold on to them.
    """

    def __init__(self, sizes: list[int], rng: np.random.Generator, dtype=np.float32,
                 relu_last: bool = False) -> None:
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP sizes need at least two positive entries, got {sizes}")
        self.sizes = [int(s) for s in sizes]
        self.dtype = np.dtype(dtype)
        self.relu_last = bool(relu_last)
        self.params: list[np.ndarray] = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            w = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), (fan_in, fan_out))
            b = rng.normal(0.0, np.sqrt(1.0 / fan_out), fan_out)
            self.params += [w.astype(self.dtype), b.astype(self.dtype)]
        self.grads: list[np.ndarray] = [np.zeros_like(p) for p in self.params]
        self._cap = 0
        self._acts: list[np.ndarray] = []  # per layer: its output (after bias / ReLU)
        self._dxs: list[np.ndarray] = []   # per layer: d loss / d its input
        self._dz_last: np.ndarray | None = None
        self._dzs: list[np.ndarray] = []
        self._x: np.ndarray | None = None
        self._n = 0

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    def _relu(self, layer: int) -> bool:
        return layer < self.num_layers - 1 or self.relu_last

    def _reserve(self, n: int) -> None:
        if n <= self._cap and self._acts:
            return
        cap = max(n, 2 * self._cap)
        self._acts = [np.empty((cap, m), self.dtype) for m in self.sizes[1:]]
        self._partial = np.empty(cap * max(self.sizes[1:]), self.dtype)  # split products
        self._dxs = [np.empty((cap, m), self.dtype) for m in self.sizes[:-1]]
        self._dz_last = np.empty((cap, self.sizes[-1]), self.dtype)
        self._cap = cap

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """forward into the internal buffer (valid until the next forward)."""
        return drive(self._forward_stages(x))

    def _forward_stages(self, x: np.ndarray, bucket: int | None = None) -> Generator[
            NeedBucket | None, None, np.ndarray]:
        """:meth:`_forward`, yielding after each GEMM piece. A layer whose weight gradient
        comes in several buckets (row ranges, :meth:`weight_rows`) multiplies by those row
        ranges of its weight one after the other, summing (every caller, so every mode,
        sums in this order). ``bucket``: the index of this MLP's first gradient bucket; a
        :class:`NeedBucket` is yielded before each bucket's parameters are read."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"MLP input must be [n, {self.sizes[0]}], got {x.shape}")
        n = x.shape[0]
        self._reserve(n)
        self._x, self._n = x, n
        a = x
        for layer in range(self.num_layers):
            w, b = self.params[2 * layer], self.params[2 * layer + 1]
            y = self._acts[layer][:n]
            ranges = self.weight_rows(layer)
            for k, (k0, k1) in enumerate(ranges):
                if bucket is not None:
                    yield NeedBucket(bucket)
                    bucket += 1
                last = k == len(ranges) - 1
                out = y if k == 0 else self._partial[:n * y.shape[1]].reshape(y.shape)
                for r0, r1 in matmul_pieces(a[:, k0:k1], w[k0:k1], out):
                    if k:
                        y[r0:r1] += out[r0:r1]
                    if last:
                        _bias_act(y[r0:r1], b, self._relu(layer))
                    yield None
            a = y
        return a

    def weight_rows(self, layer: int) -> list[tuple[int, int]]:
        """The row ranges of a layer's weight that its gradient buckets cover (fixed by the
        weight's shape, see :data:`GRAD_PIECE_ELEMS`)."""
        rows, cols = self.sizes[layer], self.sizes[layer + 1]
        return row_pieces(rows, cols, GRAD_PIECE_ELEMS)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """[n, sizes[0]] -> [n, sizes[-1]] (a new array); keeps what backward needs."""
        return self._forward(x).copy()

    def _backward(self, dy: np.ndarray, dx: str = "new") -> np.ndarray | None:
        """backward of the last forward. dx: "new" returns d input as a new array, "buffer"
        in an internal buffer (valid until the next backward), "none" skips it."""
        d_in = self._backward_dx(dy, dx)
        for layer in range(self.num_layers):
            self._backward_dw(layer)
        return d_in

    def _backward_dx(self, dy: np.ndarray, dx: str = "new") -> np.ndarray | None:
        """First part of backward: bias gradients and d input through every layer. The
        weight gradients follow with :meth:`_backward_dw` (per layer, in any order), so a
        caller can send what depends on d input before it computes them."""
        return drive(self._backward_dx_stages(dy, dx))

    def _backward_dx_stages(self, dy: np.ndarray, dx: str = "new") -> Generator[
            None, None, np.ndarray | None]:
        """:meth:`_backward_dx`, yielding after each GEMM piece."""
        if self._x is None:
            raise RuntimeError("MLP.backward called before forward")
        n = self._n
        dy = np.ascontiguousarray(dy, dtype=self.dtype)
        if dy.shape != (n, self.sizes[-1]):
            raise ValueError(f"MLP dy must be [{n}, {self.sizes[-1]}], got {dy.shape}")
        self._dzs = [dy] * self.num_layers  # per layer: d loss / d pre-activation
        g = dy
        for layer in range(self.num_layers - 1, -1, -1):
            gb = self.grads[2 * layer + 1]
            if self._relu(layer):
                # g is our own dx buffer (masked in place), except the caller's dy on top
                if layer == self.num_layers - 1:
                    self._dz_last[:n] = g
                    g = self._dz_last[:n]
                _relu_grad_colsum(g, self._acts[layer][:n], gb)
            else:
                _colsum(g, gb)
            self._dzs[layer] = g
            if layer > 0 or dx != "none":
                out = (self._dxs[layer][:n] if layer > 0 or dx == "buffer"
                       else np.empty((n, self.sizes[0]), self.dtype))
                for _ in matmul_pieces(g, self.params[2 * layer].T, out):
                    yield None
                g = out
        return None if dx == "none" else g

    def _backward_dw(self, layer: int) -> None:
        """The weight gradient of one layer, after :meth:`_backward_dx`."""
        drive(self._backward_dw_stages(layer))

    def _backward_dw_stages(self, layer: int) -> Generator[list[GradPart], None, None]:
        """:meth:`_backward_dw` by GEMM pieces, yielding the parts of ``grads`` each one
        finished: a row range of the weight gradient, with the bias gradient (final since
        :meth:`_backward_dx`) on the last."""
        a_in = self._x if layer == 0 else self._acts[layer - 1][:self._n]
        w = 2 * layer
        pieces = self.weight_rows(layer)
        for r0, r1 in matmul_pieces(a_in.T, self._dzs[layer], self.grads[w], pieces):
            last = r1 == self.sizes[layer]
            yield [w if r0 == 0 and last else (w, r0, r1)] + ([w + 1] if last else [])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy = d loss / d output [n, sizes[-1]] -> d loss / d input [n, sizes[0]]; fills
        grads."""
        return self._backward(dy, "new")
