"""Dense model parts against independent references: forward passes against plain NumPy /
Python, every backward against central finite differences in float64."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from recs_core.dense import layers
from recs_core.dense.interaction import (
    interact,
    interact_backward,
    interact_backward_numpy,
    interact_numpy,
)
from recs_core.dense.layers import MLP
from recs_core.dense.loss import bce_with_logits, sigmoid
from recs_core.dense.presets import DLRM, EmbGrads, WideDeep

EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8


def numeric_grad(f, x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. every element of x (perturbed in place)."""
    g = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    assert np.shares_memory(flat, x)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def ref_mlp(params: list[np.ndarray], x: np.ndarray, relu_last: bool) -> tuple:
    """Plain forward: (output, list of pre-activations)."""
    pre, a = [], x
    layers = len(params) // 2
    for i in range(layers):
        z = a @ params[2 * i] + params[2 * i + 1]
        pre.append(z)
        a = np.maximum(z, 0) if (i < layers - 1 or relu_last) else z
    return a, pre


def away_from_kinks(pre: list[np.ndarray], margin: float = 1e-3) -> bool:
    return all(np.abs(z).min() > margin for z in pre)


# -- MLP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("relu_last", [False, True])
def test_mlp_gradients(relu_last: bool) -> None:
    sizes = [5, 7, 6, 3]
    for seed in range(100):
        rng = np.random.default_rng(seed)
        mlp = MLP(sizes, rng, dtype=np.float64, relu_last=relu_last)
        x = rng.standard_normal((4, sizes[0]))
        out, pre = ref_mlp(mlp.params, x, relu_last)
        if away_from_kinks(pre):
            break
    else:
        pytest.fail("no kink-free draw")
    dy = rng.standard_normal(out.shape)
    y = mlp.forward(x)
    np.testing.assert_allclose(y, out, rtol=1e-12, atol=1e-12)
    dx = mlp.backward(dy)

    def loss() -> float:
        return float(np.sum(dy * mlp.forward(x)))

    for p, g in zip(mlp.params, mlp.grads, strict=True):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=RTOL, atol=ATOL)
    if relu_last:
        assert (y >= 0).all()


def test_mlp_grads_overwritten_and_stable() -> None:
    rng = np.random.default_rng(3)
    mlp = MLP([4, 8, 2], rng)
    grads_before = [id(g) for g in mlp.grads]
    x = rng.standard_normal((6, 4)).astype(np.float32)
    dy = rng.standard_normal((6, 2)).astype(np.float32)
    mlp.forward(x)
    mlp.backward(dy)
    first = [g.copy() for g in mlp.grads]
    # a bigger, then the same batch again: grads are overwritten, never accumulated
    mlp.forward(rng.standard_normal((50, 4)).astype(np.float32))
    mlp.backward(np.ones((50, 2), np.float32))
    mlp.forward(x)
    dx = mlp.backward(dy)
    assert [id(g) for g in mlp.grads] == grads_before
    for a, b in zip(first, mlp.grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert dx.dtype == np.float32 and dx.shape == (6, 4)
    assert all(p.dtype == np.float32 for p in mlp.params + mlp.grads)


def test_mlp_init() -> None:
    a = MLP([1144, 256, 1], np.random.default_rng(0))
    b = MLP([1144, 256, 1], np.random.default_rng(0))
    for p, q in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert a.params[0].shape == (1144, 256) and a.params[1].shape == (256,)
    assert abs(a.params[0].std() - math.sqrt(2 / (1144 + 256))) < 0.02 * math.sqrt(2 / 1400)
    assert abs(a.params[1].std() - math.sqrt(1 / 256)) < 0.15 * math.sqrt(1 / 256)


# -- interaction ---------------------------------------------------------------------------


def loop_interact(z: np.ndarray) -> np.ndarray:
    n, f, d = z.shape
    out = []
    for r in range(n):
        row = []
        for i in range(f):
            for j in range(i + 1, f):
                row.append(sum(float(z[r, i, k]) * float(z[r, j, k]) for k in range(d)))
        out.append(row)
    return np.array(out, dtype=np.float64).reshape(n, f * (f - 1) // 2)


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 2, 1), (2, 1, 3), (1, 7, 16)])
def test_interaction_forward(shape: tuple) -> None:
    z = np.random.default_rng(0).standard_normal(shape)
    ref = loop_interact(z)
    np.testing.assert_allclose(interact(z), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(interact_numpy(z), ref, rtol=1e-12, atol=1e-12)
    z32 = z.astype(np.float32)
    assert interact(z32).dtype == np.float32
    np.testing.assert_allclose(interact(z32), ref, rtol=1e-5, atol=1e-5)


def test_interaction_backward() -> None:
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 5, 4))
    dt = rng.standard_normal((3, 10))
    dz = interact_backward(z, dt)
    num = numeric_grad(lambda: float(np.sum(dt * interact(z))), z)
    np.testing.assert_allclose(dz, num, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(interact_backward_numpy(z, dt), dz, rtol=1e-12, atol=1e-12)
    # non-contiguous inputs (strided views) give the same results
    zs = np.repeat(z, 2, axis=2)[:, :, ::2]
    np.testing.assert_allclose(interact_backward(zs, dt), dz, rtol=1e-12)
    np.testing.assert_allclose(interact(zs), interact(z), rtol=1e-12)


# -- loss ------------------------------------------------------------------------------------


def test_bce_loss_and_gradient() -> None:
    x = np.array([-100.0, -30.0, -2.5, -0.1, 0.0, 0.3, 4.0, 35.0, 100.0, 100.0, -100.0])
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    # -y log p - (1-y) log(1-p) with log p = -log(1+e^-x), log(1-p) = -log(1+e^x)
    ref = np.mean(y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, g = bce_with_logits(x, y)
    assert isinstance(loss, float) and math.isfinite(loss)
    assert loss == pytest.approx(ref, rel=1e-12)
    assert np.isfinite(g).all() and g.dtype == np.float64
    # moderate logits: the naive formula too
    xm, ym = x[2:8], y[2:8]
    p = 1 / (1 + np.exp(-xm))
    naive = np.mean(-ym * np.log(p) - (1 - ym) * np.log(1 - p))
    assert bce_with_logits(xm, ym)[0] == pytest.approx(naive, rel=1e-12)
    xg = xm.copy()
    _, g = bce_with_logits(xg, ym)
    num = numeric_grad(lambda: bce_with_logits(xg, ym)[0], xg)
    np.testing.assert_allclose(g, num, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(g, (p - ym) / len(xm), rtol=1e-12)
    # float32 logits, integer / bool labels
    l32, g32 = bce_with_logits(x.astype(np.float32), y.astype(bool))
    assert g32.dtype == np.float32 and l32 == pytest.approx(ref, rel=1e-6)


def test_sigmoid_stable() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]))
        s32 = sigmoid(np.array([-1000.0, 1000.0], dtype=np.float32))
    assert s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
    assert 0 < s[1] < 1e-17 and s[3] == pytest.approx(1.0)
    assert s32.dtype == np.float32 and s32.tolist() == [0.0, 1.0]
    x = np.linspace(-20, 20, 41)
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    assert float(sigmoid(0.0)) == 0.5


# -- presets ---------------------------------------------------------------------------------

N, ND, NS, DIM = 5, 3, 4, 2


def _inputs(seed: int, dtype=np.float64) -> tuple:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((N, ND)).astype(dtype)
    emb = rng.standard_normal((N, NS, DIM)).astype(dtype)
    wide = rng.standard_normal((N, NS)).astype(dtype)
    return dense, emb, wide


def ref_dlrm(m: DLRM, dense: np.ndarray, emb: np.ndarray) -> tuple:
    nb = len(m.bottom.params)
    x0, pre_b = ref_mlp(m.params[:nb], dense, True)
    z = np.concatenate([x0[:, None, :], emb], axis=1)
    f = z.shape[1]
    inter = np.stack([np.einsum("nd,nd->n", z[:, i], z[:, j])
                      for i in range(f) for j in range(i + 1, f)], axis=1)
    out, pre_t = ref_mlp(m.params[nb:], np.concatenate([x0, inter], axis=1), False)
    return out[:, 0], pre_b + pre_t[:-1]


def _kink_free_dlrm() -> tuple:
    for seed in range(200):
        m = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=seed, dtype=np.float64)
        dense, emb, _ = _inputs(seed)
        logits, pre = ref_dlrm(m, dense, emb)
        if away_from_kinks(pre):
            return m, dense, emb, logits
    pytest.fail("no kink-free draw")


def test_dlrm_forward_and_gradients() -> None:
    m, dense, emb, ref = _kink_free_dlrm()
    assert m.top.sizes == [DIM + (NS + 1) * NS // 2, 5, 3, 1]
    logits = m.forward(dense, emb)
    assert logits.shape == (N,) and logits.dtype == np.float64
    np.testing.assert_allclose(logits, ref, rtol=1e-12, atol=1e-12)
    c = np.random.default_rng(7).standard_normal(N)
    d_emb = m.backward(c)
    assert d_emb.shape == (N, NS, DIM)

    def loss() -> float:
        return float(np.sum(c * m.forward(dense, emb)))

    assert len(m.params) == len(m.grads) == 10
    for p, g in zip(m.params, m.grads, strict=True):
        assert g.shape == p.shape
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_emb, numeric_grad(loss, emb), rtol=RTOL, atol=ATOL)


def test_dlrm_with_bce() -> None:
    """The trainer's chain: logits -> bce_with_logits -> backward, through the emb grads."""
    m, dense, emb, _ = _kink_free_dlrm()
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    _, dl = bce_with_logits(m.forward(dense, emb), y)
    d_emb = m.backward(dl)
    num = numeric_grad(lambda: bce_with_logits(m.forward(dense, emb), y)[0], emb)
    np.testing.assert_allclose(d_emb, num, rtol=RTOL, atol=ATOL)


def test_dlrm_construction() -> None:
    a = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=11)
    b = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=11)
    c = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=12)
    assert all(p.dtype == np.float32 for p in a.params + a.grads)
    for p, q in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a.params[0], c.params[0])
    with pytest.raises(ValueError):
        DLRM(ND, NS, DIM, [4, DIM + 1], [5, 3], seed=0)
    dense, emb, _ = _inputs(0, np.float32)
    logits = a.forward(dense, emb)
    assert logits.shape == (N,) and logits.dtype == np.float32
    d_emb = a.backward(np.ones(N, np.float32))
    assert d_emb.shape == (N, NS, DIM) and d_emb.dtype == np.float32
    # float32 agrees with float64 on the same (seeded) parameters
    m64 = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=11, dtype=np.float64)
    np.testing.assert_allclose(logits, m64.forward(dense, emb), rtol=1e-4, atol=1e-5)
    # canonical shape: 1144 inputs to the top MLP
    big = DLRM(13, 47, 16, [64, 16], [256, 128], seed=0)
    assert big.top.sizes == [1144, 256, 128, 1]


def test_dlrm_logits_survive_next_step() -> None:
    m = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=1)
    dense, emb, _ = _inputs(1, np.float32)
    first = m.forward(dense, emb)
    keep = first.copy()
    m.backward(np.ones(N, np.float32))
    m.forward(dense * 2, emb)
    np.testing.assert_array_equal(first, keep)


def ref_widedeep(m: WideDeep, dense, emb, wide) -> tuple:
    x = np.concatenate([emb.reshape(len(emb), -1), dense], axis=1)
    out, pre = ref_mlp(m.params[:-1], x, False)
    return out[:, 0] + wide.sum(axis=1) + m.params[-1][0], pre[:-1]


def test_widedeep_forward_and_gradients() -> None:
    for seed in range(200):
        m = WideDeep(ND, NS, DIM, [5, 3], seed=seed, dtype=np.float64)
        m.params[-1][0] = 0.25  # a non-zero wide bias
        dense, emb, wide = _inputs(seed)
        ref, pre = ref_widedeep(m, dense, emb, wide)
        if away_from_kinks(pre):
            break
    else:
        pytest.fail("no kink-free draw")
    logits = m.forward(dense, emb, wide)
    assert logits.shape == (N,)
    np.testing.assert_allclose(logits, ref, rtol=1e-12, atol=1e-12)
    c = np.random.default_rng(8).standard_normal(N)
    d_emb, d_wide = m.backward(c)
    assert d_emb.shape == (N, NS, DIM) and d_wide.shape == (N, NS)

    def loss() -> float:
        return float(np.sum(c * m.forward(dense, emb, wide)))

    assert m.params[0].shape == (NS * DIM + ND, 5) and m.params[-1].shape == (1,)
    for p, g in zip(m.params, m.grads, strict=True):
        np.testing.assert_allclose(g, numeric_grad(loss, p), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_emb, numeric_grad(loss, emb), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(d_wide, numeric_grad(loss, wide), rtol=RTOL, atol=ATOL)


def test_widedeep_construction() -> None:
    a = WideDeep(ND, NS, DIM, [5, 3], seed=4)
    b = WideDeep(ND, NS, DIM, [5, 3], seed=4)
    assert all(p.dtype == np.float32 for p in a.params + a.grads)
    for p, q in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(p, q)
    dense, emb, wide = _inputs(2, np.float32)
    full = np.stack([wide, wide], axis=2)
    logits = a.forward(dense, emb, full[:, :, 0])  # a strided view, as the trainer passes
    assert logits.shape == (N,) and logits.dtype == np.float32
    d_emb, d_wide = a.backward(np.ones(N, np.float32))
    assert d_emb.dtype == d_wide.dtype == np.float32
    assert d_emb.shape == (N, NS, DIM) and d_wide.shape == (N, NS)


@pytest.mark.parametrize("pieces", [False, True], ids=["whole-gemms", "gemm-pieces"])
@pytest.mark.parametrize("preset", ["dlrm", "widedeep"])
def test_backward_stages_give_emb_grads_before_weight_grads(
        preset: str, pieces: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staged backward the scheduler runs: the embedding gradients come first, before
    any weight gradient is written (their pushes go out while the weights' GEMMs run);
    the buckets after it cover every row of every dense gradient once; the results equal
    backward() (with GEMMs in one piece each; split into row pieces, to float32 rounding
    at most)."""

    def build():
        if preset == "dlrm":
            return DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=3), ()
        return WideDeep(ND, NS, DIM, [6, 4], seed=3), (_inputs(2, np.float32)[2],)

    dense, emb, _ = _inputs(2, np.float32)
    c = np.random.default_rng(9).standard_normal(N).astype(np.float32)
    whole, extra = build()
    whole.forward(dense, emb, *extra)
    expected = whole.backward(c)
    if pieces:  # every GEMM in one-row pieces, a bucket per weight-gradient row
        monkeypatch.setattr(layers, "GEMM_PIECE_FLOPS", 1.0)
        monkeypatch.setattr(layers, "GRAD_PIECE_ELEMS", 1)
    staged, extra = build()
    staged.forward(dense, emb, *extra)
    for g in staged.grads:
        g[...] = np.nan
    stages = staged.backward_stages(c)
    first = next(s for s in stages if s is not None)  # None: a poll point
    assert isinstance(first, EmbGrads)
    weights = range(0, len(staged.grads) - (preset == "widedeep"), 2)
    assert all(np.isnan(staged.grads[i]).all() for i in weights)  # no weight grad yet
    buckets = [s for s in stages if s is not None]
    assert not any(isinstance(s, EmbGrads) for s in buckets)
    covered = [np.zeros(len(g), np.int64) for g in staged.grads]  # per row of each grad
    for part in (i for b in buckets for i in b):
        if isinstance(part, int):
            covered[part] += 1
        else:
            covered[part[0]][part[1]:part[2]] += 1
    assert all((c == 1).all() for c in covered)  # every row of every gradient, once
    assert any(isinstance(i, tuple) for b in buckets for i in b) == pieces
    same = (functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7) if pieces
            else np.testing.assert_array_equal)
    got = [first.d_emb] + ([first.d_wide] if preset == "widedeep" else [])
    for x, y in zip(got, expected if preset == "widedeep" else [expected], strict=True):
        same(x, y)
    for g, h in zip(staged.grads, whole.grads, strict=True):
        same(g, h)


@pytest.mark.parametrize("preset", ["dlrm", "widedeep"])
def test_gradient_buckets_do_not_depend_on_batch_rows(
        preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks may hold batches of different sizes, yet must post the same allreduce
    buckets: with weight gradients split into row pieces, the pieces follow the weights'
    shapes only."""
    monkeypatch.setattr(layers, "GEMM_PIECE_FLOPS", 40.0)  # pieces by rows: N and 2 differ
    monkeypatch.setattr(layers, "GRAD_PIECE_ELEMS", 3)
    seen = []
    for rows in (N, 2):
        dense, emb, wide = (x[:rows] for x in _inputs(2, np.float32))
        if preset == "dlrm":
            net, extra = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=3), ()
        else:
            net, extra = WideDeep(ND, NS, DIM, [6, 4], seed=3), (wide,)
        net.forward(dense, emb, *extra)
        seen.append([s for s in net.backward_stages(np.ones(rows, np.float32))
                     if isinstance(s, list)])
    assert seen[0] == seen[1]
    assert any(isinstance(i, tuple) for b in seen[0] for i in b)  # split: a real check


@pytest.mark.parametrize("split", [False, True], ids=["whole-weights", "split-weights"])
@pytest.mark.parametrize("preset", ["dlrm", "widedeep"])
def test_forward_reads_each_bucket_only_after_asking_for_it(
        preset: str, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler applies the previous step's dense update bucket by bucket and lets
    the next forward run as far as the buckets applied so far allow: the staged forward
    must announce every gradient bucket (in backward's order) before it reads any of its
    parameters. Checked by handing it NaN parameters and filling in each bucket only when
    asked: the logits must come out exactly as with every parameter in place."""
    if split:
        monkeypatch.setattr(layers, "GRAD_PIECE_ELEMS", 3)
        monkeypatch.setattr(layers, "GEMM_PIECE_FLOPS", 40.0)
    dense, emb, wide = _inputs(2, np.float32)
    if preset == "dlrm":
        net, extra = DLRM(ND, NS, DIM, [4, DIM], [5, 3], seed=3), ()
    else:
        net, extra = WideDeep(ND, NS, DIM, [6, 4], seed=3), (wide,)
        net.bias[0] = 0.25  # not its initial zero: a NaN read would show
    expected = net.forward(dense, emb, *extra)
    buckets = [s for s in net.backward_stages(np.ones(N, np.float32)) if isinstance(s, list)]
    assert any(isinstance(i, tuple) for b in buckets for i in b) == split
    true = [p.copy() for p in net.params]
    for p in net.params:
        p[...] = np.nan
    asked = []
    stages = net.forward_stages(dense, emb, *extra)
    while True:
        try:
            need = next(stages)
        except StopIteration as done:
            got = done.value
            break
        if isinstance(need, layers.NeedBucket):
            asked.append(need.index)
            for part in buckets[need.index]:
                layers.grad_part(net.params, part)[...] = layers.grad_part(true, part)
    assert asked == list(range(len(buckets)))
    np.testing.assert_array_equal(got, expected)
