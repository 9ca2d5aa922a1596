"""The two dense networks the trainer offers: DLRM and Wide&Deep, with hand-written backward.

Both take the batch's embeddings already looked up ([n, num_sparse, dim]) and give back
their gradient, so the embedding tables and their sparse optimizer stay outside. ``params``
/ ``grads`` list every dense parameter (the same array objects for the model's life);
``backward`` overwrites ``grads``. Arrays returned by forward / backward are new arrays.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass

import numpy as np

from recs_core.dense.interaction import interact_backward_kernel, interact_kernel, num_pairs
from recs_core.dense.layers import MLP, GradPart, NeedBucket, drive, shift_parts


@dataclass
class EmbGrads:
    """Yielded once by ``backward_stages``: d loss / d the looked-up vectors (and, for
    Wide&Deep, d the wide weights), ready before the dense weight gradients."""

    d_emb: np.ndarray
    d_wide: np.ndarray | None = None


# A bucket of final parts of ``grads`` (indices, or row ranges of one, see GradPart), the
# embedding gradients, or None: a point where a scheduler may run other work (poll its
# exchanges) before the next stage.
BackwardItem = list[GradPart] | EmbGrads | None


def run_backward(stages: Iterable[BackwardItem]) -> EmbGrads:
    """Run backward stages to the end; the embedding gradients they gave."""
    out = [s for s in stages if isinstance(s, EmbGrads)]
    if len(out) != 1:
        raise RuntimeError(f"backward stages gave {len(out)} embedding gradients, not 1")
    return out[0]


def _as(x: np.ndarray, dtype: np.dtype, shape: tuple, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {x.shape}")
    return x


class DLRM:
    """bottom MLP on dense (ReLU after every layer), pairwise interaction of the F sparse
    embeddings + the bottom output, concat [bottom_out, interactions], top MLP (ReLU between,
    none after the last), final Linear to 1 logit.

    Bottom sizes are [num_dense, *bottom] with bottom[-1] == dim; top sizes are
    [dim + P, *top, 1] with P = (num_sparse + 1) * num_sparse / 2 pairs among the
    num_sparse + 1 vectors (bottom output first, then the embeddings in field order).
    """

    def __init__(self, num_dense: int, num_sparse: int, dim: int, bottom: list[int],
                 top: list[int], seed: int, dtype=np.float32) -> None:
        if not bottom or bottom[-1] != dim:
            raise ValueError(f"DLRM: the bottom MLP must end at the embedding dim ({dim}), "
                             f"got {bottom}")
        if num_dense < 1 or num_sparse < 0 or dim < 1:
            raise ValueError("DLRM: num_dense and dim must be >= 1, num_sparse >= 0")
        self.num_dense, self.num_sparse, self.dim = int(num_dense), int(num_sparse), int(dim)
        self.dtype = np.dtype(dtype)
        self.num_pairs = num_pairs(self.num_sparse + 1)
        rng = np.random.default_rng(seed)
        self.bottom = MLP([self.num_dense, *bottom], rng, self.dtype, relu_last=True)
        self.top = MLP([self.dim + self.num_pairs, *top, 1], rng, self.dtype, relu_last=False)
        self.params: list[np.ndarray] = self.bottom.params + self.top.params
        self.grads: list[np.ndarray] = self.bottom.grads + self.top.grads
        self._cap = 0
        self._top_in = np.empty((0, self.dim + self.num_pairs), self.dtype)
        self._x0: np.ndarray | None = None
        self._emb: np.ndarray | None = None

    def forward(self, dense: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """dense [n, num_dense], emb [n, num_sparse, dim] -> logits [n]."""
        return drive(self.forward_stages(dense, emb))

    def forward_stages(self, dense: np.ndarray, emb: np.ndarray) -> Generator[
            NeedBucket | None, None, np.ndarray]:
        """:meth:`forward`, yielding between its parts and a :class:`NeedBucket` before it
        reads each gradient bucket's parameters (bucket 0: the bottom MLP, then the top
        MLP's, as :meth:`backward_stages` yields them)."""
        dense = np.ascontiguousarray(dense, dtype=self.dtype)
        n = dense.shape[0]
        emb = _as(emb, self.dtype, (n, self.num_sparse, self.dim), "DLRM emb")
        if n > self._cap:
            self._cap = max(n, 2 * self._cap)
            self._top_in = np.empty((self._cap, self.dim + self.num_pairs), self.dtype)
        yield NeedBucket(0)
        x0 = self.bottom._forward(dense)  # [n, dim], internal buffer
        top_in = self._top_in[:n]
        top_in[:, :self.dim] = x0
        interact_kernel(x0, emb, top_in[:, self.dim:])
        self._x0, self._emb = x0, emb
        yield None
        return (yield from self.top._forward_stages(top_in, bucket=1))[:, 0].copy()

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """d loss / d logits [n] -> d loss / d emb [n, num_sparse, dim]; fills grads."""
        return run_backward(self.backward_stages(dlogits)).d_emb

    def backward_stages(self, dlogits: np.ndarray) -> Generator[BackwardItem, None, None]:
        """:meth:`backward` in stages, in critical-path order: first d emb (the sparse
        updates wait for it, and the next step's lookups for them), then the weight
        gradients, each bucket of ``grads`` indices yielded once final (its allreduce may
        start while the rest runs)."""
        if self._emb is None:
            raise RuntimeError("DLRM.backward called before forward")
        n = self._emb.shape[0]
        dy = _as(dlogits, self.dtype, (n,), "DLRM dlogits").reshape(n, 1)
        d_top_in = yield from self.top._backward_dx_stages(dy, "buffer")
        yield None
        d_x0 = np.empty((n, self.dim), self.dtype)
        d_emb = np.empty((n, self.num_sparse, self.dim), self.dtype)
        interact_backward_kernel(self._x0, self._emb, d_top_in[:, self.dim:], d_x0, d_emb)
        d_x0 += d_top_in[:, :self.dim]
        yield EmbGrads(d_emb)
        nb = len(self.bottom.params)
        self.bottom._backward(d_x0, "none")
        yield list(range(nb))
        for layer in range(self.top.num_layers):
            for parts in self.top._backward_dw_stages(layer):
                yield shift_parts(parts, nb)


class WideDeep:
    """Deep: MLP over concat(flattened embeddings, dense) with ReLU between layers, to 1 logit.
    Wide: the sum over fields of a 1-dim weight per sparse id (given to forward as ``wide``
    [n, num_sparse], the trainer looks them up from dim-1 embedding tables) plus a bias.

    params = the deep MLP's [W0, b0, ...] followed by the wide bias (shape [1], starts at 0).
    """

    def __init__(self, num_dense: int, num_sparse: int, dim: int, deep: list[int], seed: int,
                 dtype=np.float32) -> None:
        if num_dense < 0 or num_sparse < 0 or dim < 1 or num_dense + num_sparse < 1:
            raise ValueError("WideDeep: needs dim >= 1 and at least one dense or sparse field")
        self.num_dense, self.num_sparse, self.dim = int(num_dense), int(num_sparse), int(dim)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.deep = MLP([self.num_sparse * self.dim + self.num_dense, *deep, 1], rng, self.dtype,
                        relu_last=False)
        self.bias = np.zeros(1, self.dtype)
        self.params: list[np.ndarray] = [*self.deep.params, self.bias]
        self.grads: list[np.ndarray] = [*self.deep.grads, np.zeros(1, self.dtype)]
        self._cap = 0
        self._x = np.empty((0, self.deep.sizes[0]), self.dtype)
        self._n: int | None = None

    def forward(self, dense: np.ndarray, emb: np.ndarray, wide: np.ndarray) -> np.ndarray:
        """dense [n, num_dense], emb [n, num_sparse, dim], wide [n, num_sparse] -> logits [n]."""
        return drive(self.forward_stages(dense, emb, wide))

    def forward_stages(self, dense: np.ndarray, emb: np.ndarray, wide: np.ndarray
                       ) -> Generator[NeedBucket | None, None, np.ndarray]:
        """:meth:`forward`, yielding between layers and a :class:`NeedBucket` before it
        reads each gradient bucket's parameters (numbered as :meth:`backward_stages` yields
        them; the wide bias is read last)."""
        dense = np.asarray(dense)
        n = dense.shape[0]
        dense = _as(dense, self.dtype, (n, self.num_dense), "WideDeep dense")
        emb = np.asarray(emb)
        if emb.shape != (n, self.num_sparse, self.dim):
            raise ValueError(f"WideDeep emb must have shape {(n, self.num_sparse, self.dim)}, "
                             f"got {emb.shape}")
        wide = np.asarray(wide)
        if wide.shape != (n, self.num_sparse):
            raise ValueError(f"WideDeep wide must have shape {(n, self.num_sparse)}, "
                             f"got {wide.shape}")
        if n > self._cap:
            self._cap = max(n, 2 * self._cap)
            self._x = np.empty((self._cap, self.deep.sizes[0]), self.dtype)
        x = self._x[:n]
        fd = self.num_sparse * self.dim
        x[:, :fd] = emb.reshape(n, fd)
        x[:, fd:] = dense
        deep = (yield from self.deep._forward_stages(x, bucket=0))[:, 0]
        self._n = n
        return deep + wide.sum(axis=1, dtype=self.dtype) + self.bias[0]

    def backward(self, dlogits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d loss / d logits [n] -> (d emb [n, num_sparse, dim], d wide [n, num_sparse]);
        fills grads."""
        g = run_backward(self.backward_stages(dlogits))
        return g.d_emb, g.d_wide

    def backward_stages(self, dlogits: np.ndarray) -> Generator[BackwardItem, None, None]:
        """:meth:`backward` in stages, in the order of :meth:`DLRM.backward_stages`: the
        embedding and wide gradients first, then one bucket per deep layer (the wide bias
        with the first)."""
        if self._n is None:
            raise RuntimeError("WideDeep.backward called before forward")
        n = self._n
        dy = _as(dlogits, self.dtype, (n,), "WideDeep dlogits")
        dx = yield from self.deep._backward_dx_stages(dy.reshape(n, 1), "buffer")
        self.grads[-1][0] = dy.sum(dtype=np.float64)
        d_emb = np.ascontiguousarray(dx[:, :self.num_sparse * self.dim]).reshape(
            n, self.num_sparse, self.dim)
        d_wide = np.broadcast_to(dy[:, None], (n, self.num_sparse)).copy()
        yield EmbGrads(d_emb, d_wide)
        for layer in range(self.deep.num_layers):
            for parts in self.deep._backward_dw_stages(layer):
                last = parts[-1] == 2 * layer + 1  # the layer's bias: its last piece
                yield parts + ([len(self.params) - 1] if layer == 0 and last else [])
