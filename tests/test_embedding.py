"""Embedding kernels and sparse optimizers against NumPy / pure-Python references.

The references are written from the definitions (fancy indexing, explicit loops, a dict of
sums, dense gradients built with np.add.at and the dense row-wise Adagrad formula), never
from the kernels. Inputs are seeded, with heavy duplication (Zipf ids), empty bags, edge
ids (0 and rows - 1) and edge shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba.typed import List as TypedList

from recs_core.embedding.sparse_optim import (
    RowwiseAdagrad,
    SparseSGD,
    make_sparse_optimizer,
)
from recs_core.embedding.table import (
    EmbeddingSet,
    dedup_grads,
    gather,
    gather_fields,
    gather_pooled,
    init_table,
    pooled_grads,
)

ROWS, DIM = 97, 8


def _zipf_ids(rng: np.random.Generator, shape, rows: int = ROWS) -> np.ndarray:
    ids = np.minimum(rng.zipf(1.3, shape) - 1, rows - 1).astype(np.int64)
    flat = ids.reshape(-1)
    flat[:2] = [0, rows - 1]  # both ends of the table
    return ids


def _csr(rng: np.random.Generator, n: int, max_len: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A CSR batch with some empty bags (including the first and the last)."""
    counts = rng.integers(0, max_len + 1, n)
    counts[[0, -1]] = 0
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return _zipf_ids(rng, int(offsets[-1]) + 2)[2:], offsets


def _bits(a: np.ndarray) -> bytes:
    return a.tobytes()


# ---------------------------------------------------------------------------------------
# init_table and EmbeddingSet
# ---------------------------------------------------------------------------------------


def test_init_table_range_and_determinism() -> None:
    t = init_table(1000, 16, seed=7, index=3)
    assert t.shape == (1000, 16) and t.dtype == np.float32 and t.flags.c_contiguous
    bound = np.sqrt(1 / 1000)
    assert t.min() >= -bound and t.max() <= bound
    assert t.min() < -0.9 * bound and t.max() > 0.9 * bound  # spans the range
    assert abs(float(t.mean())) < 0.05 * bound
    assert _bits(t) == _bits(init_table(1000, 16, seed=7, index=3))
    assert _bits(t) != _bits(init_table(1000, 16, seed=7, index=4))
    assert _bits(t) != _bits(init_table(1000, 16, seed=8, index=3))
    assert init_table(10, 4, 0, 0, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError):
        init_table(0, 4, 0, 0)
    with pytest.raises(ValueError):
        init_table(4, 4, 0, 0, dtype=np.int32)


def test_embedding_set() -> None:
    es = EmbeddingSet([10, 20, 5], [4, 4, 2], seed=3)
    assert len(es) == 3
    assert [t.shape for t in es.tables] == [(10, 4), (20, 4), (5, 2)]
    assert all(t.dtype == np.float32 for t in es.tables)
    for i, t in enumerate(es.tables):
        assert _bits(t) == _bits(init_table(t.shape[0], t.shape[1], 3, i))
    with pytest.raises(ValueError):
        EmbeddingSet([10], [4, 4], 0)


# ---------------------------------------------------------------------------------------
# Gathers
# ---------------------------------------------------------------------------------------


def test_gather_matches_fancy_indexing() -> None:
    rng = np.random.default_rng(0)
    t = init_table(ROWS, DIM, 0, 0)
    for ids in (_zipf_ids(rng, 500), np.array([5], np.int64), np.array([], np.int64),
                rng.integers(0, ROWS, 300).astype(np.int32)):
        np.testing.assert_array_equal(gather(t, ids), t[ids])
    for bad in (ROWS, -1):
        with pytest.raises(IndexError, match=str(bad)):
            gather(t, np.array([1, bad]))


def _ref_pooled(table: np.ndarray, ids: np.ndarray, offsets: np.ndarray,
                mean: bool) -> np.ndarray:
    out = np.zeros((len(offsets) - 1, table.shape[1]), dtype=table.dtype)
    for i in range(len(offsets) - 1):
        acc = np.zeros(table.shape[1], dtype=table.dtype)
        for j in range(offsets[i], offsets[i + 1]):
            acc = acc + table[ids[j]]
        cnt = offsets[i + 1] - offsets[i]
        out[i] = acc / cnt if mean and cnt else acc
    return out


@pytest.mark.parametrize("mean", [False, True])
def test_gather_pooled_matches_loop(mean: bool) -> None:
    rng = np.random.default_rng(1)
    t = init_table(ROWS, DIM, 0, 1)
    ids, offsets = _csr(rng, 200)
    got = gather_pooled(t, ids, offsets, mean)
    np.testing.assert_array_equal(got, _ref_pooled(t, ids, offsets, mean))
    assert not got[0].any() and not got[-1].any()  # empty bags give zeros
    # all bags empty, and no bags at all
    np.testing.assert_array_equal(gather_pooled(t, np.array([], np.int64), np.zeros(4, np.int64),
                                                mean), np.zeros((3, DIM), np.float32))
    assert gather_pooled(t, np.array([], np.int64), np.zeros(1, np.int64), mean).shape == (0, DIM)


def test_gather_pooled_rejects_bad_input() -> None:
    t = init_table(ROWS, DIM, 0, 1)
    with pytest.raises(IndexError):
        gather_pooled(t, np.array([1, ROWS]), np.array([0, 1, 2]), False)
    with pytest.raises(ValueError):
        gather_pooled(t, np.array([1, 2]), np.array([0, 1]), False)  # does not end at nnz
    with pytest.raises(ValueError):
        gather_pooled(t, np.array([1, 2]), np.array([0, 2, 1, 2]), False)  # decreasing


def test_gather_fields_matches_per_field_gather() -> None:
    rng = np.random.default_rng(2)
    rows = [ROWS, 13, 1, 50, 7]
    es = EmbeddingSet(rows, [DIM] * len(rows), seed=5)
    n, first, k = 64, 1, 4
    ids = np.stack([_zipf_ids(rng, n, rows[first + j]) for j in range(k)], axis=1)
    ref = np.full((n, 6, DIM), -7.0, np.float32)
    for j in range(k):
        ref[:, first + j, :] = gather(es.tables[first + j], ids[:, j])
    typed = TypedList(es.tables)
    for tables in (es, es.tables, tuple(es.tables), typed):
        out = np.full((n, 6, DIM), -7.0, np.float32)
        gather_fields(tables, ids, out, first)
        np.testing.assert_array_equal(out, ref)  # other fields untouched
    # one field, and a non-contiguous ids view
    out = np.zeros((n, 6, DIM), np.float32)
    gather_fields(es, ids[:, 1:2], out, 2)
    np.testing.assert_array_equal(out[:, 2], es.tables[2][ids[:, 1]])


def test_gather_fields_sees_replaced_tables_and_rejects_bad_input() -> None:
    es = EmbeddingSet([10, 10], [4, 4], seed=0)
    ids = np.array([[1, 2], [3, 9]])
    out = np.zeros((2, 2, 4), np.float32)
    gather_fields(es, ids, out, 0)
    es.tables[1] = np.arange(40, dtype=np.float32).reshape(10, 4)  # the cached list is stale
    gather_fields(es, ids, out, 0)
    np.testing.assert_array_equal(out[:, 1], es.tables[1][[2, 9]])
    for tables in (es, es.tables):
        with pytest.raises(IndexError, match="field 1"):
            gather_fields(tables, np.array([[1, 10]]), np.zeros((1, 2, 4), np.float32), 0)
        with pytest.raises(ValueError):  # more fields than out holds
            gather_fields(tables, ids, np.zeros((2, 2, 4), np.float32), 1)
        with pytest.raises(ValueError):  # dim mismatch
            gather_fields(tables, ids, np.zeros((2, 2, 3), np.float32), 0)
    with pytest.raises(ValueError):  # more fields than tables
        gather_fields(es.tables, np.zeros((2, 3), np.int64), np.zeros((2, 3, 4), np.float32), 0)


# ---------------------------------------------------------------------------------------
# Gradient helpers
# ---------------------------------------------------------------------------------------


def _ref_dedup(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sums: dict[int, np.ndarray] = {}
    for r, g in zip(ids.tolist(), grads):
        sums[r] = sums[r] + g if r in sums else g.copy()
    keys = sorted(sums)
    return (np.array(keys, np.int64),
            np.array([sums[k] for k in keys], grads.dtype).reshape(len(keys), grads.shape[1]))


@pytest.mark.parametrize("case", ["zipf", "few", "uniform", "wide", "one", "empty"])
def test_dedup_grads_matches_dict_of_sums(case: str) -> None:
    rng = np.random.default_rng(3)
    ids = {"zipf": _zipf_ids(rng, 3000, 1 << 18),  # many duplicates, ~2 radix passes
           "few": rng.integers(0, 3, 1000),  # only 3 distinct ids
           "uniform": rng.integers(0, 1 << 40, 2000),  # 4 radix passes
           "wide": rng.integers(-(1 << 62), 1 << 62, 500),  # negative, full 64-bit span
           "one": np.array([42]),
           "empty": np.array([], np.int64)}[case]
    grads = rng.standard_normal((len(ids), 5)).astype(np.float32)
    uniq, summed = dedup_grads(ids, grads)
    ref_ids, ref_sums = _ref_dedup(ids, grads)
    np.testing.assert_array_equal(uniq, ref_ids)
    assert _bits(summed) == _bits(ref_sums)  # same order of additions: bit-identical
    assert summed.dtype == np.float32


def _dense_grad(rows: int, ids: np.ndarray, grads: np.ndarray) -> np.ndarray:
    g = np.zeros((rows, grads.shape[1]), grads.dtype)
    np.add.at(g, ids, grads)
    return g


@pytest.mark.parametrize("mean", [False, True])
def test_pooled_backward_matches_dense_gradient(mean: bool) -> None:
    """Pooled forward -> pooled_grads -> dedup_grads is the gradient w.r.t. the table of
    L = sum(grad_out * pooled(table)); the float64 reference adds grad_out[i] (/ bag size)
    into every row of bag i."""
    rng = np.random.default_rng(4)
    t = init_table(ROWS, DIM, 0, 2)
    ids, offsets = _csr(rng, 150)
    grad_out = rng.standard_normal((150, DIM)).astype(np.float32)
    uniq, summed = dedup_grads(ids, pooled_grads(ids, offsets, grad_out, mean))
    ref = np.zeros((ROWS, DIM))
    for i in range(150):
        lo, hi = offsets[i], offsets[i + 1]
        for j in range(lo, hi):
            ref[ids[j]] += grad_out[i] / ((hi - lo) if mean else 1)
    got = np.zeros((ROWS, DIM))
    got[uniq] = summed
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # adjoint identity: L(table) = sum(G * table) since L is linear in the table
    loss = float((grad_out.astype(np.float64) * gather_pooled(t, ids, offsets, mean)).sum())
    np.testing.assert_allclose(loss, float((ref * t).sum()), rtol=1e-5)


def test_pooled_grads_shapes() -> None:
    g = pooled_grads(np.array([3, 4, 5]), np.array([0, 0, 3]), np.ones((2, 2), np.float32),
                     True)
    np.testing.assert_array_equal(g, np.full((3, 2), np.float32(1) / 3))
    with pytest.raises(ValueError):
        pooled_grads(np.array([3]), np.array([0, 1]), np.ones((2, 2), np.float32), False)


# ---------------------------------------------------------------------------------------
# Sparse optimizers against dense references
# ---------------------------------------------------------------------------------------


def _batch(rng: np.random.Generator, m: int = 400) -> tuple[np.ndarray, np.ndarray]:
    ids = _zipf_ids(rng, m)
    return ids, rng.standard_normal((m, DIM)).astype(np.float32)


@pytest.mark.parametrize("init_acc", [0.0, 0.1])
def test_rowwise_adagrad_with_duplicates_equals_dense_reference(init_acc: float) -> None:
    rng = np.random.default_rng(5)
    lr, eps = 0.05, 1e-8
    table = init_table(ROWS, DIM, 1, 0)
    ref_t = table.copy()
    ref_acc = np.full(ROWS, init_acc, np.float32)
    opt = RowwiseAdagrad(lr, eps=eps, initial_accumulator=init_acc)
    for step in range(5):
        ids, grads = _batch(rng)
        before_t, before_acc = ref_t.copy(), ref_acc.copy()
        # dense reference: the full gradient, the formula on touched rows only
        g = _dense_grad(ROWS, ids, grads)
        touched = np.zeros(ROWS, bool)
        touched[ids] = True
        ref_acc[touched] += (g[touched] ** 2).mean(axis=1)
        ref_t[touched] -= lr * g[touched] / (np.sqrt(ref_acc[touched])[:, None] + eps)
        uniq, summed = dedup_grads(ids, grads)
        opt.update(3, table, uniq, summed)
        acc = opt.state[3]
        assert acc.dtype == np.float32 and acc.shape == (ROWS,)
        np.testing.assert_allclose(table, ref_t, rtol=1e-6, atol=1e-8, err_msg=f"step {step}")
        np.testing.assert_allclose(acc, ref_acc, rtol=1e-6, err_msg=f"step {step}")
        # untouched rows and their accumulators are exactly as before
        assert _bits(table[~touched]) == _bits(before_t[~touched])
        assert _bits(acc[~touched]) == _bits(before_acc[~touched])
        ref_t[:], ref_acc[:] = table, acc  # no drift: each step checks one update
    assert list(opt.state) == [3]


def test_sparse_sgd_with_duplicates_equals_dense_reference() -> None:
    rng = np.random.default_rng(6)
    table = init_table(ROWS, DIM, 1, 1)
    ref_t = table.copy()
    opt = SparseSGD(0.1)
    for _ in range(4):
        ids, grads = _batch(rng)
        ref_t -= np.float32(0.1) * _dense_grad(ROWS, ids, grads)
        opt.update(0, table, *dedup_grads(ids, grads))
        np.testing.assert_array_equal(table, ref_t)  # untouched rows: g = 0, exact


def test_sparse_optimizers_reject_bad_input() -> None:
    table = init_table(ROWS, DIM, 1, 1)
    before = table.copy()
    for opt in (SparseSGD(0.1), RowwiseAdagrad(0.1)):
        with pytest.raises(IndexError):
            opt.update(0, table, np.array([0, ROWS]), np.ones((2, DIM), np.float32))
        assert _bits(table) == _bits(before)  # nothing was written
        with pytest.raises(ValueError):
            opt.update(0, table, np.array([0, 1]), np.ones((2, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        RowwiseAdagrad(-1.0)


def test_rowwise_adagrad_zero_eps_zero_gradient_is_a_no_op() -> None:
    table = init_table(ROWS, DIM, 1, 1)
    before = table.copy()
    RowwiseAdagrad(0.1, eps=0.0).update(0, table, np.array([4]), np.zeros((1, DIM), np.float32))
    assert _bits(table) == _bits(before)


def test_make_sparse_optimizer() -> None:
    assert isinstance(make_sparse_optimizer("sgd", 0.1), SparseSGD)
    opt = make_sparse_optimizer("adagrad", 0.1, eps=1e-6, initial_accumulator=0.5)
    assert isinstance(opt, RowwiseAdagrad) and opt.eps == 1e-6
    with pytest.raises(ValueError, match="sgd, adagrad"):
        make_sparse_optimizer("adam", 0.1)


# ---------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------


def _train(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    es = EmbeddingSet([ROWS, 31], [DIM, DIM], seed=11)
    opt = RowwiseAdagrad(0.05)
    for _ in range(3):
        ids = np.stack([_zipf_ids(rng, 256), _zipf_ids(rng, 256, 31)], axis=1)
        out = np.empty((256, 2, DIM), np.float32)
        gather_fields(es, ids, out, 0)
        d = out * np.float32(0.5) - np.float32(0.01)
        for f in range(2):
            opt.update(f, es.tables[f], *dedup_grads(ids[:, f], np.ascontiguousarray(d[:, f])))
        bag_ids, offsets = _csr(rng, 64)
        pooled = gather_pooled(es.tables[0], bag_ids, offsets, True)
        tok = pooled_grads(bag_ids, offsets, pooled, True)
        opt.update(0, es.tables[0], *dedup_grads(bag_ids, tok))
    return [_bits(t) for t in es.tables] + [_bits(a) for a in opt.state.values()]


def test_same_inputs_give_bit_identical_tables() -> None:
    assert _train(0) == _train(0)
    assert _train(0) != _train(1)
