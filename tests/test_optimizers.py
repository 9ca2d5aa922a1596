"""Dense optimizers against hand-written reference formulas over several steps.

The references are the textbook updates in plain NumPy (Adam: Kingma & Ba, Algorithm 1,
with bias correction), run in float64 on the same gradient sequence; the compiled
optimizers run in float32 (and float64 for Adam, where they must agree to ~1 ulp).
"""

from __future__ import annotations

import numpy as np
import pytest

from recs_core.dense.optim import SGD, Adagrad, Adam, make_dense_optimizer

SHAPES = [(7, 5), (5,), (3, 2, 4), (1,)]
STEPS = 6


def _params(dtype=np.float32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _grad_seq(dtype=np.float32, seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    seq = []
    for step in range(STEPS):
        gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        if step == 1:
            gs[0][0, 0] = 0.0  # a zero gradient in the middle of the history
        seq.append(gs)
    return seq


def _run(opt, params: list[np.ndarray], seq: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Parameter copies after every step (checks the updates are in place)."""
    ids = [id(p) for p in params]
    history = []
    for gs in seq:
        opt.step(gs)
        assert [id(p) for p in opt.params] == ids
        history.append([p.copy() for p in params])
    return history


def _close(history, ref_history, rtol: float) -> None:
    for step, (got, ref) in enumerate(zip(history, ref_history)):
        for i, (g, r) in enumerate(zip(got, ref)):
            np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol,
                                       err_msg=f"step {step}, param {i}")


def test_sgd_matches_reference() -> None:
    params, seq = _params(), _grad_seq()
    ref = [p.astype(np.float64) for p in params]
    ref_hist = []
    for gs in seq:
        ref = [p - 0.1 * g for p, g in zip(ref, gs)]
        ref_hist.append(ref)
    _close(_run(SGD(params, 0.1), params, seq), ref_hist, 1e-6)


@pytest.mark.parametrize("init_acc", [0.0, 0.5])
def test_adagrad_matches_reference(init_acc: float) -> None:
    params, seq = _params(), _grad_seq()
    lr, eps = 0.05, 1e-8
    ref = [p.astype(np.float64) for p in params]
    acc = [np.full(p.shape, init_acc) for p in params]
    ref_hist = []
    for gs in seq:
        for i, g in enumerate(gs):
            acc[i] = acc[i] + g.astype(np.float64) ** 2
            ref[i] = ref[i] - lr * g / (np.sqrt(acc[i]) + eps)
        ref_hist.append([p.copy() for p in ref])
    opt = Adagrad(params, lr, eps=eps, initial_accumulator=init_acc)
    _close(_run(opt, params, seq), ref_hist, 1e-5)
    assert sorted(opt.state) == [f"acc/{i}" for i in range(len(SHAPES))]
    for i in range(len(SHAPES)):
        np.testing.assert_allclose(opt.state[f"acc/{i}"], acc[i], rtol=1e-5)


def _textbook_adam(params, seq, lr, b1, b2, eps) -> list[list[np.ndarray]]:
    theta = [p.astype(np.float64) for p in params]
    m = [np.zeros(p.shape) for p in params]
    v = [np.zeros(p.shape) for p in params]
    hist = []
    for t, gs in enumerate(seq, start=1):
        for i, g in enumerate(gs):
            g = g.astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            theta[i] = theta[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        hist.append([p.copy() for p in theta])
    return hist


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_adam_matches_textbook(dtype, rtol: float) -> None:
    params, seq = _params(dtype), _grad_seq(dtype)
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-6
    ref_hist = _textbook_adam(params, seq, lr, b1, b2, eps)
    opt = Adam(params, lr, beta1=b1, beta2=b2, eps=eps)
    _close(_run(opt, params, seq), ref_hist, rtol)
    assert int(opt.state["step"]) == STEPS
    assert {"m/0", "v/0", f"m/{len(SHAPES) - 1}", "step"} <= set(opt.state)


def test_adam_first_step_is_lr_times_sign() -> None:
    """With bias correction the first step is lr * g / (|g| + eps) for every element."""
    p = [np.array([1.0, -2.0, 3.0], np.float32)]
    Adam(p, 0.1, eps=0.0).step([np.array([5.0, -0.001, 0.0], np.float32)])
    np.testing.assert_allclose(p[0], [0.9, -1.9, 3.0], rtol=1e-6)


def test_zero_eps_zero_history_is_a_no_op() -> None:
    for cls in (Adagrad, Adam):
        p = [np.ones(3, np.float32)]
        cls(p, 0.1, eps=0.0).step([np.zeros(3, np.float32)])
        assert np.array_equal(p[0], np.ones(3, np.float32))


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_deterministic(name: str) -> None:
    def once() -> list[bytes]:
        params = _params()
        opt = make_dense_optimizer(name, params, 0.03)
        _run(opt, params, _grad_seq())
        return [p.tobytes() for p in params] + [a.tobytes() for a in opt.state.values()]
    assert once() == once()


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_step_by_parts_is_bit_identical(name: str) -> None:
    """A step applied part by part (row ranges and whole parameters, in any order, as
    allreduce buckets complete) leaves parameters and state exactly as one step."""
    def run(by_parts: bool) -> list[bytes]:
        params = _params()
        opt = make_dense_optimizer(name, params, 0.03)
        for gs in _grad_seq():
            if not by_parts:
                opt.step(gs)
                continue
            opt.start_step()
            for part in [3, (2, 1, 3), (0, 4, 7), 1, (2, 0, 1), (0, 0, 1), (0, 1, 4)]:
                opt.update_part(gs, part)
        return [p.tobytes() for p in params] + [a.tobytes() for a in opt.state.values()]
    assert run(by_parts=True) == run(by_parts=False)


def test_make_dense_optimizer_and_checks() -> None:
    params = _params()
    assert isinstance(make_dense_optimizer("sgd", params, 0.1), SGD)
    assert isinstance(make_dense_optimizer("adagrad", params, 0.1, eps=1e-6), Adagrad)
    opt = make_dense_optimizer("adam", params, 0.1, beta1=0.5)
    assert isinstance(opt, Adam) and opt.beta1 == 0.5
    with pytest.raises(ValueError, match="sgd, adagrad, adam"):
        make_dense_optimizer("rmsprop", params, 0.1)
    with pytest.raises(ValueError):  # wrong number of gradients
        opt.step(_grad_seq()[0][:-1])
    with pytest.raises(ValueError):  # wrong shape
        opt.step([np.zeros((5, 7), np.float32)] + _grad_seq()[0][1:])
    with pytest.raises(ValueError):  # a non-contiguous parameter cannot be updated in place
        SGD([np.zeros((4, 4), np.float32)[:, ::2]], 0.1)
    with pytest.raises(ValueError):
        Adam(params, 0.1, beta1=1.0)
