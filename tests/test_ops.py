"""Every feature operator against an independent pure-Python / NumPy reference.

The references here are written from the documented definitions (recs-hash64 v1 in
``recs_core.features.hashing``, the id conventions in ``recs_core.features.kernels``),
not from the kernels, and run on seeded random batches with missing values, empty
strings, negative numbers, values on boundaries, NaN and +-inf, and on edge shapes
(zero rows, one column, many columns, non-contiguous column views).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from recs_core.errors import ConfigError, DataError
from recs_core.features.ops import OPERATORS, VType, make_operator
from recs_core.features.values import (
    FloatValues,
    IdValues,
    IntValues,
    ListIdValues,
    ListStrValues,
    StrValues,
)
from tests.test_hashing import ref_bucket, ref_fmix, ref_hash
from tests.test_hashing import ref_cross as ref_cross_args

# ---------------------------------------------------------------------------------------
# Pure-Python recs-hash64 v1 (from the module docstring), bucket mapping and id rules
# ---------------------------------------------------------------------------------------

M64 = (1 << 64) - 1
INT_SALT = 0xD6E8FEB86659FD93  # kernels.int_hash: fmix64(two's complement bits ^ salt)
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def ref_cross(hs: list[int]) -> int:
    return ref_cross_args(*hs)


def ref_int_hash(v: int) -> int:
    return ref_fmix((v & M64) ^ INT_SALT)


# ---------------------------------------------------------------------------------------
# Building and reading value batches
# ---------------------------------------------------------------------------------------

JUNK = b"Z|\xc3A"  # bytes a kernel would notice if it read outside (start, length)


def _b(s: str | bytes) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else s


def str_values(rows: list[list[str | bytes]], k: int | None = None) -> StrValues:
    """StrValues from rows of Python strings; junk bytes between strings, none at the end
    (so the last string ends exactly at the end of the arena)."""
    k = len(rows[0]) if rows else (k or 1)
    n = len(rows)
    start = np.zeros((n, k), dtype=np.int64)
    length = np.zeros((n, k), dtype=np.int32)
    parts: list[bytes] = []
    pos = 0
    t = 0
    for i, row in enumerate(rows):
        assert len(row) == k
        for j, s in enumerate(row):
            if parts:
                junk = JUNK[: t % 5]
                parts.append(junk)
                pos += len(junk)
            b = _b(s)
            start[i, j] = pos
            length[i, j] = len(b)
            parts.append(b)
            pos += len(b)
            t += 1
    arena = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    return StrValues(arena, start, length)


def list_str_values(rows: list[list[str | bytes]]) -> ListStrValues:
    """ListStrValues from rows of token lists (junk bytes between tokens)."""
    flat = [[t] for row in rows for t in row]
    sv = str_values(flat, k=1)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    return ListStrValues(sv.arena, sv.start.reshape(-1), sv.length.reshape(-1), offsets)


def str_rows(v: StrValues) -> list[list[bytes]]:
    a = v.arena.tobytes()
    return [[a[s:s + ln] for s, ln in zip(srow, lrow)] for srow, lrow in zip(v.start, v.length)]


def list_rows(v: ListStrValues) -> list[list[bytes]]:
    a = v.arena.tobytes()
    toks = [a[s:s + ln] for s, ln in zip(v.start, v.length)]
    return [toks[v.offsets[i]:v.offsets[i + 1]] for i in range(len(v.offsets) - 1)]


def list_ids(v: ListIdValues) -> list[list[int]]:
    return [v.ids[v.offsets[i]:v.offsets[i + 1]].tolist() for i in range(len(v.offsets) - 1)]


def op_for(raw: dict, t: VType, arity: int = 1):
    """make_operator + check_input + out_type, as the spec compiler does."""
    op = make_operator(raw, "test", arity)
    op.check_input(t)
    out = op.out_type(t)
    return op, out


def vtype(v) -> VType:
    if isinstance(v, IntValues):
        return VType("int", v.values.shape[1])
    if isinstance(v, FloatValues):
        return VType("float", v.values.shape[1])
    if isinstance(v, StrValues):
        return VType("str", v.start.shape[1])
    if isinstance(v, ListStrValues):
        return VType("list_str", 1)
    raise TypeError(v)


# ---------------------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------------------

SHAPES = [(0, 3), (1, 1), (300, 1), (257, 5), (40, 64)]
BOUNDS = [-10.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 100.0, 1e6]
ALPHABET = list("abcxyzABCXYZ0189_-|.") + ["é", "Ä", "ß", "日", "本", "🙂"]


def rand_str(rng: np.random.Generator, max_chars: int = 20, p_empty: float = 0.15) -> str:
    if rng.random() < p_empty:
        return ""
    n = int(rng.integers(1, max_chars + 1))
    return "".join(ALPHABET[int(i)] for i in rng.integers(0, len(ALPHABET), n))


def rand_strs(rng: np.random.Generator, n: int, k: int, **kw) -> list[list[str]]:
    return [[rand_str(rng, **kw) for _ in range(k)] for _ in range(n)]


def rand_ints(rng: np.random.Generator, n: int, k: int, *, extremes: bool = True) -> IntValues:
    v = np.clip(rng.standard_cauchy((n, k)) * 50, -1e15, 1e15).astype(np.int64)
    special = np.array([0, 1, -1, 2, 4, 100, -2, 1 << 40, -(1 << 40)]
                       + ([I64_MIN, I64_MAX, I64_MIN + 1] if extremes else []), dtype=np.int64)
    pick = rng.random((n, k)) < 0.1
    v[pick] = rng.choice(special, size=int(pick.sum()))
    missing = rng.random((n, k)) < 0.2
    v[missing] = rng.integers(-9, 9, size=int(missing.sum()))  # junk under the mask
    return IntValues(v, missing)


def rand_floats(rng: np.random.Generator, n: int, k: int) -> FloatValues:
    x = rng.standard_normal((n, k)) * 10
    heavy = rng.random((n, k)) < 0.2
    x[heavy] = rng.exponential(1e4, size=int(heavy.sum()))
    special = np.array(BOUNDS + [-0.0, 1e-5, -1e-5, 1e-4, -1e-4, np.inf, -np.inf, 5e-324,
                                 np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0)])
    pick = rng.random((n, k)) < 0.15
    x[pick] = rng.choice(special, size=int(pick.sum()))
    x[rng.random((n, k)) < 0.15] = np.nan
    return FloatValues(x)


def numeric_inputs(seed: int, n: int, k: int) -> list:
    """An int batch, a float batch, and a non-contiguous float view (every other column)."""
    rng = np.random.default_rng(seed)
    wide = rand_floats(rng, n, 2 * k)
    return [rand_ints(rng, n, k), rand_floats(rng, n, k), FloatValues(wide.values[:, ::2])]


def as_float(v) -> np.ndarray:
    if isinstance(v, IntValues):
        return np.where(v.missing, np.nan, v.values.astype(np.float64))
    return v.values


# ---------------------------------------------------------------------------------------
# Numeric operators
# ---------------------------------------------------------------------------------------


def test_a_copy_of_a_fitting_standardize_fits_alone() -> None:
    # the reduction over the ranks holds their communicator (not copyable); the kernels'
    # warm-up copies the spec before every pass, a worker's second window included
    class Uncopyable:
        def __deepcopy__(self, memo: dict) -> None:
            raise ValueError("cannot serialize a communicator")

    comm = Uncopyable()
    v = FloatValues(np.arange(6, dtype=np.float64).reshape(3, 2))
    op, _ = op_for({"op": "standardize", "fit": True}, vtype(v))
    op.set_reduction(lambda a, c=comm: a + 1.0)  # another rank's sums: one row more
    twin = copy.deepcopy(op)
    twin.apply(v)
    op.apply(v)
    mean, std = ref_fit(v.values)
    np.testing.assert_allclose(twin.mean, mean, rtol=1e-12)  # this rank's rows alone
    np.testing.assert_allclose(twin.std, std, rtol=1e-12)
    assert not np.allclose(op.mean, mean)  # the original still reduces


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("value", [0, -3.5, 1e300])
def test_fill_missing(n: int, k: int, value: float) -> None:
    for v in numeric_inputs(1, n, k):
        op, t = op_for({"op": "fill_missing", "value": value}, vtype(v))
        assert t == VType("float", k, missing=False)
        out = op.apply(v)
        assert isinstance(out, FloatValues) and out.values.dtype == np.float64
        x = as_float(v)
        np.testing.assert_array_equal(out.values, np.where(np.isnan(x), float(value), x))
        assert not np.isnan(out.values).any()


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bounds", [{"min": 0}, {"max": 2.0}, {"min": -1, "max": 4},
                                    {"min": 1.0, "max": 1.0}])
def test_clip(n: int, k: int, bounds: dict) -> None:
    for v in numeric_inputs(2, n, k):
        op, t = op_for({"op": "clip", **bounds}, vtype(v))
        assert t == VType("float", k, True)
        out = op.apply(v)
        x = as_float(v)
        want = np.clip(x, bounds.get("min", -np.inf), bounds.get("max", np.inf))  # NaN stays
        np.testing.assert_array_equal(out.values, want)


@pytest.mark.parametrize("n,k", SHAPES)
def test_log1p(n: int, k: int) -> None:
    rng = np.random.default_rng(3)
    ints = rand_ints(rng, n, k, extremes=False)
    ints.values[:] = np.abs(ints.values)
    x = rand_floats(rng, n, k).values
    x[x < -1] = -1.0  # exactly -1 is allowed (-> -inf)
    tiny = rng.random((n, k)) < 0.2
    x[tiny] = rng.uniform(-2e-4, 2e-4, size=int(tiny.sum()))  # both sides of the 1e-4 switch
    for v in (ints, FloatValues(x)):
        op, t = op_for({"op": "log1p"}, vtype(v))
        assert t == VType("float", k, True)
        out = op.apply(v)
        with np.errstate(divide="ignore"):
            want = np.log1p(as_float(v))
        # log(1 + x) (used for |x| >= 1e-4) is within ~1e-12 relative of log1p
        np.testing.assert_allclose(out.values, want, rtol=2e-12, atol=0)
        assert np.array_equal(np.isnan(out.values), np.isnan(as_float(v)))


def test_log1p_below_minus_one_is_a_data_error() -> None:
    op, _ = op_for({"op": "log1p"}, VType("float", 2))
    x = np.array([[0.0, np.nan], [-1.0, 3.0], [np.nextafter(-1.0, -2.0), -5.0]])
    with pytest.raises(DataError, match=r"test: log1p got 2 value\(s\) below -1") as e:
        op.apply(FloatValues(x))
    assert e.value.reason == "log1p_domain"
    with pytest.raises(DataError):
        op.apply(IntValues(np.array([[-2]], dtype=np.int64), np.array([[False]])))
    # a missing int with a junk negative value underneath is not an error
    out = op.apply(IntValues(np.array([[-2, 0]], dtype=np.int64), np.array([[True, False]])))
    np.testing.assert_array_equal(out.values, [[np.nan, 0.0]])
    # NaN and exactly -1 are fine
    out = op.apply(FloatValues(np.array([[np.nan, -1.0]])))
    assert np.isnan(out.values[0, 0]) and out.values[0, 1] == -np.inf


@pytest.mark.parametrize("n,k", SHAPES)
def test_standardize_given(n: int, k: int) -> None:
    rng = np.random.default_rng(4)
    means = [float(m) for m in rng.normal(0, 5, k)]
    stds = [float(s) for s in rng.uniform(0.1, 20, k)]
    for v in numeric_inputs(4, n, k):
        for mean, std in ((means, stds), (1.5, 3), (0, [2] * k)):
            op, t = op_for({"op": "standardize", "mean": mean, "std": std}, vtype(v))
            assert t == VType("float", k, True)
            out = op.apply(v)
            m = np.broadcast_to(np.asarray(mean, dtype=np.float64), (k,))
            s = np.broadcast_to(np.asarray(std, dtype=np.float64), (k,))
            with np.errstate(invalid="ignore"):
                want = (as_float(v) - m) / s
            np.testing.assert_allclose(out.values, want, rtol=1e-14, atol=0)


def ref_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(x.shape[1])
    std = np.ones(x.shape[1])
    for j in range(x.shape[1]):
        col = x[:, j][~np.isnan(x[:, j])]
        if len(col):
            mean[j] = col.mean()
            sd = col.std()
            std[j] = sd if sd > 0 else 1.0
    return mean, std


@pytest.mark.parametrize("n,k", [(1, 1), (300, 1), (257, 5), (40, 64)])
def test_standardize_fitted_on_first_batch(n: int, k: int) -> None:
    rng = np.random.default_rng(5)
    for kind in ("int", "float"):
        if kind == "int":
            v = rand_ints(rng, n, k, extremes=False)
        else:
            v = FloatValues(np.where(np.isinf(x := rand_floats(rng, n, k).values), 7.0, x))
        x = as_float(v)
        x[:, 0] = np.nan  # an all-missing column: mean 0, std 1
        if k > 1:
            x[:, 1] = 42.0  # a constant column: std 0 -> 1
        v = FloatValues(x)
        op, t = op_for({"op": "standardize", "fit": True}, vtype(v))
        assert t == VType("float", k, True)
        out = op.apply(v)
        mean, std = ref_fit(x)
        np.testing.assert_allclose(op.mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(op.std, std, rtol=1e-12, atol=0)
        np.testing.assert_allclose(out.values, (x - mean) / std, rtol=1e-9, atol=1e-12)
        # the second batch reuses the first batch's fit
        x2 = rng.normal(100, 1, (n, k))
        out2 = op.apply(FloatValues(x2))
        np.testing.assert_allclose(op.mean, mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out2.values, (x2 - mean) / std, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bounds", [BOUNDS, [0.0], [float(2 ** i) for i in range(100)],
                                    [float(b) for b in range(-40, 40)]])  # > 64: binary search
def test_bucketize(n: int, k: int, bounds: list[float]) -> None:
    for v in numeric_inputs(6, n, k):
        x = as_float(v)
        if x.size:  # values exactly on every boundary, and just around them
            rng = np.random.default_rng(61)
            on = rng.random(x.shape) < 0.3
            b = np.asarray(bounds)
            picks = rng.choice(np.concatenate([b, np.nextafter(b, -np.inf),
                                               np.nextafter(b, np.inf)]), size=int(on.sum()))
            if isinstance(v, IntValues):
                picks = np.round(np.clip(picks, -9e18, 9e18)).astype(np.int64)
                on &= ~v.missing
                v.values[on] = picks[: int(on.sum())]
            else:
                x = x.copy()
                x[on] = picks
                v = FloatValues(x)
            x = as_float(v)
        op, t = op_for({"op": "bucketize", "boundaries": bounds}, vtype(v))
        assert t == VType("id", k, False, len(bounds) + 2)
        out = op.apply(v)
        assert isinstance(out, IdValues) and out.ids.dtype == np.int64
        want = np.where(np.isnan(x), 0, np.searchsorted(bounds, x, side="right") + 1)
        np.testing.assert_array_equal(out.ids, want)
        assert out.ids.size == 0 or out.ids.max() <= len(bounds) + 1


def test_bucketize_int_boundaries_and_infinities() -> None:
    op, _ = op_for({"op": "bucketize", "boundaries": [0, 10]}, VType("float", 1))
    x = np.array([[-np.inf], [-1.0], [0.0], [9.99], [10.0], [np.inf], [np.nan]])
    np.testing.assert_array_equal(op.apply(FloatValues(x)).ids.ravel(), [1, 1, 2, 2, 3, 3, 0])


# ---------------------------------------------------------------------------------------
# Hashing operators
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("buckets", [2, 1000, 262144, 1 << 32])
def test_hash_bucket_str(n: int, k: int, buckets: int) -> None:
    rng = np.random.default_rng(7)
    rows = rand_strs(rng, n, k)
    v = str_values(rows, k)
    op, t = op_for({"op": "hash_bucket", "buckets": buckets}, VType("str", k))
    assert t == VType("id", k, False, buckets)
    out = op.apply(v)
    want = [[ref_bucket(ref_hash(_b(s)), buckets) if s else 0 for s in row] for row in rows]
    np.testing.assert_array_equal(out.ids, np.array(want, dtype=np.int64).reshape(n, k))
    present = out.ids[v.length > 0]
    assert np.all((present >= 1) & (present <= buckets - 1))


def test_hash_bucket_str_column_view() -> None:
    """A non-contiguous column subset (as the graph passes for scattered inputs)."""
    rng = np.random.default_rng(71)
    rows = rand_strs(rng, 50, 6)
    v = str_values(rows)
    view = StrValues(v.arena, v.start[:, [0, 2, 5]], v.length[:, [0, 2, 5]])
    sl = StrValues(v.arena, v.start[:, 1:4], v.length[:, 1:4])
    op, _ = op_for({"op": "hash_bucket", "buckets": 977}, VType("str", 3))
    full = op.apply(v).ids
    np.testing.assert_array_equal(op.apply(view).ids, full[:, [0, 2, 5]])
    np.testing.assert_array_equal(op.apply(sl).ids, full[:, 1:4])


@pytest.mark.parametrize("n", [0, 1, 300])
def test_hash_bucket_list_str(n: int) -> None:
    rng = np.random.default_rng(8)
    rows = [[rand_str(rng, p_empty=0.0) for _ in range(int(rng.integers(0, 6)))]
            for _ in range(n)]
    v = list_str_values(rows)
    op, t = op_for({"op": "hash_bucket", "buckets": 5000}, VType("list_str", 1))
    assert t == VType("list_id", 1, False, 5000)
    out = op.apply(v)
    assert isinstance(out, ListIdValues)
    np.testing.assert_array_equal(out.offsets, v.offsets)
    assert list_ids(out) == [[ref_bucket(ref_hash(_b(s)), 5000) for s in row] for row in rows]


# Pinned with the pure-Python reference above: a change to the hash or the bucket mapping
# remaps every id and must fail here.
GOLDEN_BUCKETS = {
    # string: (bucket for 262144, bucket for 1000, bucket for 2**32)
    "68fd1e64": (250854, 956, 4109991471),  # recs-hash64 0xF4F97E2F989B55CD
    "80e26c9b": (25609, 98, 419574109),
    "a": (197156, 752, 3230210442),
    "hello world, this is long": (207214, 790, 3395004727),
    "Grüße": (72553, 277, 1188704869),
}
GOLDEN_CROSS_STR = {("68fd1e64", "80e26c9b"): 41782, ("a", ""): 166480,
                    ("", "b", "c"): 134773}
GOLDEN_CROSS_INT = {(1, 2): 162805, (-1, 0): 43719, (I64_MIN, None, 7): 3555}


def test_hash_bucket_golden_values() -> None:
    names = list(GOLDEN_BUCKETS)
    v = str_values([[s] for s in names])
    for col, buckets in enumerate((262144, 1000, 1 << 32)):
        op, _ = op_for({"op": "hash_bucket", "buckets": buckets}, VType("str", 1))
        got = op.apply(v).ids.ravel().tolist()
        assert got == [GOLDEN_BUCKETS[s][col] for s in names], buckets
        assert got == [ref_bucket(ref_hash(_b(s)), buckets) for s in names]


def test_hash_cross_golden_values() -> None:
    for arity in (2, 3):
        groups = [g for g in GOLDEN_CROSS_STR if len(g) == arity]
        op, _ = op_for({"op": "hash_cross", "buckets": 262144}, VType("str", arity), arity)
        got = op.apply(str_values([list(g) for g in groups])).ids.ravel().tolist()
        assert got == [GOLDEN_CROSS_STR[g] for g in groups]
        groups = [g for g in GOLDEN_CROSS_INT if len(g) == arity]
        vals = np.array([[0 if x is None else x for x in g] for g in groups], dtype=np.int64)
        miss = np.array([[x is None for x in g] for g in groups])
        op, _ = op_for({"op": "hash_cross", "buckets": 262144}, VType("int", arity), arity)
        got = op.apply(IntValues(vals, miss)).ids.ravel().tolist()
        assert got == [GOLDEN_CROSS_INT[g] for g in groups]


def ref_cross_str_ids(rows: list[list[str]], arity: int, buckets: int) -> list[list[int]]:
    out = []
    for row in rows:
        ids = []
        for g in range(len(row) // arity):
            comp = row[g * arity:(g + 1) * arity]
            h = ref_cross([ref_hash(_b(s)) for s in comp])
            ids.append(ref_bucket(h, buckets) if any(comp) else 0)
        out.append(ids)
    return out


@pytest.mark.parametrize("n,k,arity", [(0, 4, 2), (1, 2, 2), (300, 2, 2), (257, 8, 2),
                                       (200, 6, 3), (100, 3, 3), (30, 64, 4)])
def test_hash_cross_str(n: int, k: int, arity: int) -> None:
    rng = np.random.default_rng(9)
    rows = rand_strs(rng, n, k, p_empty=0.3)  # some groups all-missing
    if n:
        rows[0] = [""] * k
    v = str_values(rows, k)
    op, t = op_for({"op": "hash_cross", "buckets": 262144}, VType("str", k), arity)
    assert t == VType("id", k // arity, False, 262144)
    out = op.apply(v)
    want = np.array(ref_cross_str_ids(rows, arity, 262144), dtype=np.int64)
    np.testing.assert_array_equal(out.ids, want.reshape(n, k // arity))


@pytest.mark.parametrize("n,k,arity", [(0, 4, 2), (1, 2, 2), (300, 2, 2), (257, 6, 3),
                                       (40, 64, 2)])
def test_hash_cross_int(n: int, k: int, arity: int) -> None:
    rng = np.random.default_rng(10)
    v = rand_ints(rng, n, k)
    if n:
        v.missing[0] = True
    op, t = op_for({"op": "hash_cross", "buckets": 1 << 20}, VType("int", k), arity)
    assert t == VType("id", k // arity, False, 1 << 20)
    out = op.apply(v)
    empty = ref_hash(b"")
    want = np.zeros((n, k // arity), dtype=np.int64)
    for i in range(n):
        for g in range(k // arity):
            cols = range(g * arity, (g + 1) * arity)
            hs = [empty if v.missing[i, j] else ref_int_hash(int(v.values[i, j])) for j in cols]
            present = not all(v.missing[i, j] for j in cols)
            want[i, g] = ref_bucket(ref_cross(hs), 1 << 20) if present else 0
    np.testing.assert_array_equal(out.ids, want)


def test_hash_cross_is_ordered_and_int_differs_from_str() -> None:
    op, _ = op_for({"op": "hash_cross", "buckets": 1 << 30}, VType("str", 2), 2)
    ids = op.apply(str_values([["a", "b"], ["b", "a"]])).ids.ravel()
    assert ids[0] != ids[1]
    opi, _ = op_for({"op": "hash_cross", "buckets": 1 << 30}, VType("int", 2), 2)
    ints = opi.apply(IntValues(np.array([[1, 2], [2, 1]]), np.zeros((2, 2), bool))).ids.ravel()
    assert ints[0] != ints[1]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("buckets", [2, 7, 1000, 1 << 32])
def test_id_mod(n: int, k: int, buckets: int) -> None:
    v = rand_ints(np.random.default_rng(11), n, k)
    op, t = op_for({"op": "id_mod", "buckets": buckets}, VType("int", k))
    assert t == VType("id", k, False, buckets)
    out = op.apply(v)
    m = buckets - 1
    want = [[0 if miss else 1 + int(x) % m for x, miss in zip(r, mr)]
            for r, mr in zip(v.values.tolist(), v.missing.tolist())]
    np.testing.assert_array_equal(out.ids, np.array(want, dtype=np.int64).reshape(n, k))


def test_id_mod_negative_values() -> None:
    op, _ = op_for({"op": "id_mod", "buckets": 11}, VType("int", 1))
    vals = np.array([[-1], [-10], [-11], [0], [10], [I64_MIN], [I64_MAX]], dtype=np.int64)
    out = op.apply(IntValues(vals, np.zeros_like(vals, dtype=bool))).ids.ravel()
    assert out.tolist() == [10, 1, 10, 1, 1, 1 + I64_MIN % 10, 1 + I64_MAX % 10]


# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------


def ref_vocab(s: bytes, table: dict[bytes, int], oov: int) -> int:
    if not s:
        return 0
    if s in table:
        return table[s]
    return 1 + len(table) + ref_hash(s) % oov


def _vocab_words(rng: np.random.Generator, size: int) -> list[str]:
    words: list[str] = ["a", "ab", "abc", "abcdefgh", "abcdefghi", "Grüße", "日本"]
    while len(words) < size:
        w = rand_str(rng, p_empty=0.0)
        if w not in words:
            words.append(w)
    return words[:size]


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("size,oov", [(1, 1), (7, 13), (500, 1), (500, 97)])
def test_vocab_str(n: int, k: int, size: int, oov: int) -> None:
    rng = np.random.default_rng(12)
    words = _vocab_words(rng, size)
    rows = [[words[int(rng.integers(0, size))] if rng.random() < 0.5 else rand_str(rng)
             for _ in range(k)] for _ in range(n)]
    v = str_values(rows, k)
    op, t = op_for({"op": "vocab", "values": words, "oov_buckets": oov}, VType("str", k))
    assert t == VType("id", k, False, 1 + size + oov)
    out = op.apply(v)
    table = {_b(w): i + 1 for i, w in enumerate(words)}
    want = [[ref_vocab(_b(s), table, oov) for s in row] for row in rows]
    np.testing.assert_array_equal(out.ids, np.array(want, dtype=np.int64).reshape(n, k))
    assert out.ids.size == 0 or out.ids.max() <= size + oov


@pytest.mark.parametrize("n", [0, 1, 300])
def test_vocab_list_str(n: int) -> None:
    rng = np.random.default_rng(13)
    words = _vocab_words(rng, 40)
    rows = [[words[int(rng.integers(0, 40))] if rng.random() < 0.6 else rand_str(rng)
             for _ in range(int(rng.integers(0, 6)))] for _ in range(n)]
    v = list_str_values(rows)
    op, t = op_for({"op": "vocab", "values": words, "oov_buckets": 5}, VType("list_str", 1))
    assert t == VType("list_id", 1, False, 1 + 40 + 5)
    out = op.apply(v)
    np.testing.assert_array_equal(out.offsets, v.offsets)
    table = {_b(w): i + 1 for i, w in enumerate(words)}
    assert list_ids(out) == [[ref_vocab(_b(s), table, 5) for s in row] for row in rows]


def test_vocab_from_file(tmp_path) -> None:
    p = tmp_path / "vocab.txt"
    p.write_bytes(b"alpha\r\n\nbeta\ngamma")
    op, t = op_for({"op": "vocab", "file": str(p)}, VType("str", 1))
    assert t.cardinality == 1 + 3 + 1
    out = op.apply(str_values([["beta"], ["gamma"], ["alpha"], [""], ["delta"], ["Alpha"]]))
    assert out.ids.ravel().tolist() == [2, 3, 1, 0, 4, 4]


# ---------------------------------------------------------------------------------------
# String operators
# ---------------------------------------------------------------------------------------


def ref_split(s: bytes, sep: bytes, max_len: int, keep: str) -> list[bytes]:
    toks = [t for t in s.split(sep) if t]
    return toks[:max_len] if keep == "first" else toks[max(0, len(toks) - max_len):]


SPLIT_CASES = ["", "a", "a|b|c", "a||b", "|a|b", "a|b|", "||", "|", "|||x|||", "abc",
               "a|b|c|d|e|f|g", "Grüße|日本|🙂", "x" * 30 + "|y", "|" * 10 + "z"]


@pytest.mark.parametrize("max_len", [1, 2, 3, 100])
@pytest.mark.parametrize("keep", ["first", "last"])
def test_split(max_len: int, keep: str) -> None:
    rng = np.random.default_rng(14)
    strs = SPLIT_CASES + [rand_str(rng, max_chars=25) for _ in range(300)]
    for rows in ([[s] for s in strs], [], [[strs[2]]]):
        v = str_values(rows, 1)
        op, t = op_for({"op": "split", "sep": "|", "max_len": max_len, "keep": keep},
                       VType("str", 1))
        assert t == VType("list_str", 1, False)
        out = op.apply(v)
        assert isinstance(out, ListStrValues)
        assert out.offsets.dtype == np.int64 and len(out.offsets) == len(rows) + 1
        want = [ref_split(_b(r[0]), b"|", max_len, keep) for r in rows]
        assert list_rows(out) == want
        assert np.all(out.length > 0)


def test_split_column_view_and_default_keep() -> None:
    """A one-column view of a wider batch; keep defaults to "first"."""
    rows = [["x|y", "a|b|c|d"], ["", "q"], ["1", "|p||r|"]]
    v = str_values(rows)
    view = StrValues(v.arena, v.start[:, 1:2], v.length[:, 1:2])
    op, _ = op_for({"op": "split", "sep": "|", "max_len": 2}, VType("str", 1))
    assert list_rows(op.apply(view)) == [[b"a", b"b"], [b"q"], [b"p", b"r"]]


@pytest.mark.parametrize("n,k", SHAPES)
def test_lowercase_str(n: int, k: int) -> None:
    rng = np.random.default_rng(15)
    rows = rand_strs(rng, n, k)
    if n:
        rows[0][0] = b"\xc3\x84BC\xe6\x97\xa5Z@[`{\xff\x80"  # only A-Z changes
    v = str_values(rows, k)
    op, t = op_for({"op": "lowercase"}, VType("str", k))
    assert t == VType("str", k)
    out = op.apply(v)
    assert isinstance(out, StrValues)
    assert str_rows(out) == [[_b(s).lower() for s in row] for row in rows]
    assert str_rows(v) == [[_b(s) for s in row] for row in rows]  # input untouched
    if n:
        assert str_rows(out)[0][0] == b"\xc3\x84bc\xe6\x97\xa5z@[`{\xff\x80"


@pytest.mark.parametrize("n", [0, 1, 300])
def test_lowercase_list_str(n: int) -> None:
    rng = np.random.default_rng(16)
    rows = [[rand_str(rng, p_empty=0.0) for _ in range(int(rng.integers(0, 5)))]
            for _ in range(n)]
    v = list_str_values(rows)
    op, t = op_for({"op": "lowercase"}, VType("list_str", 1, False))
    assert t == VType("list_str", 1, False)
    out = op.apply(v)
    assert isinstance(out, ListStrValues)
    np.testing.assert_array_equal(out.offsets, v.offsets)
    assert list_rows(out) == [[_b(s).lower() for s in row] for row in rows]


# ---------------------------------------------------------------------------------------
# Pad
# ---------------------------------------------------------------------------------------


def ref_pad(rows: list[list[int]], max_len: int, value: int, keep: str) -> list[list[int]]:
    out = []
    for r in rows:
        r = r[:max_len] if keep == "first" else r[max(0, len(r) - max_len):]
        out.append(r + [value] * (max_len - len(r)))
    return out


@pytest.mark.parametrize("n", [0, 1, 300])
@pytest.mark.parametrize("max_len,value,keep", [(1, 0, "first"), (3, 0, "last"),
                                                (8, 7, "first"), (4, 99, "last")])
def test_pad(n: int, max_len: int, value: int, keep: str) -> None:
    rng = np.random.default_rng(17)
    rows = [rng.integers(1, 50, int(rng.integers(0, 12))).tolist() for _ in range(n)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.array([x for r in rows for x in r], dtype=np.int64)
    op, t = op_for({"op": "pad", "max_len": max_len, "value": value, "keep": keep},
                   VType("list_id", 1, False, 50))
    assert t == VType("list_id", 1, False, max(50, value + 1))
    out = op.apply(ListIdValues(ids, offsets))
    np.testing.assert_array_equal(out.offsets, np.arange(n + 1) * max_len)
    assert list_ids(out) == ref_pad(rows, max_len, value, keep)


def test_chain_split_lowercase_vocab_pad() -> None:
    rows = [["A|b||C"], [""], ["|x|B|a|"], ["Q"]]
    t = VType("str", 1)
    v = str_values(rows)
    for raw in ({"op": "split", "sep": "|", "max_len": 2, "keep": "last"}, {"op": "lowercase"},
                {"op": "vocab", "values": ["a", "b", "c"], "oov_buckets": 1},
                {"op": "pad", "max_len": 2}):
        op, t = op_for(raw, t)
        v = op.apply(v)
    assert t == VType("list_id", 1, False, 5)
    assert list_ids(v) == [[2, 3], [0, 0], [2, 1], [4, 0]]


# ---------------------------------------------------------------------------------------
# Coverage, parameter validation and type rules
# ---------------------------------------------------------------------------------------


def test_every_operator_is_covered_here() -> None:
    assert set(OPERATORS) == {"fill_missing", "clip", "log1p", "standardize", "bucketize",
                              "hash_bucket", "hash_cross", "id_mod", "vocab", "split",
                              "lowercase", "pad"}


@pytest.mark.parametrize("raw,match", [
    ({"op": "hash_bucket"}, r"^test\.buckets: is required"),
    ({"op": "hash_bucket", "buckets": 1}, r"^test\.buckets: must be an integer in \[2, 2\*\*32\]"),
    ({"op": "hash_bucket", "buckets": (1 << 32) + 1}, r"^test\.buckets: must be"),
    ({"op": "hash_bucket", "buckets": 2.0}, r"^test\.buckets: expected"),
    ({"op": "hash_bucket", "buckets": True}, r"^test\.buckets: expected"),
    ({"op": "hash_bucket", "buckets": "8"}, r"^test\.buckets: expected"),
    ({"op": "hash_cross"}, r"^test\.buckets: is required"),
    ({"op": "id_mod", "buckets": 0}, r"^test\.buckets: must be"),
    ({"op": "fill_missing", "value": "x"}, r"^test\.value: expected a number"),
    ({"op": "fill_missing", "value": False}, r"^test\.value: expected a number"),
    ({"op": "clip"}, r"^test: clip needs min or max"),
    ({"op": "clip", "min": 2, "max": 1}, r"^test\.min: 2\.0 is above max 1\.0"),
    ({"op": "clip", "max": [1]}, r"^test\.max: expected a number"),
    ({"op": "standardize"}, r"^test\.mean: is required"),
    ({"op": "standardize", "mean": 0}, r"^test\.std: is required"),
    ({"op": "standardize", "fit": True, "mean": 0}, r"^test: give mean/std or fit = true"),
    ({"op": "standardize", "fit": 1}, r"^test\.fit: expected"),
    ({"op": "standardize", "mean": "0", "std": 1}, r"^test\.mean: expected a number or list"),
    ({"op": "bucketize"}, r"^test\.boundaries: is required"),
    ({"op": "bucketize", "boundaries": []}, r"^test\.boundaries: expected a non-empty list"),
    ({"op": "bucketize", "boundaries": 3}, r"^test\.boundaries: expected a list of numbers"),
    ({"op": "bucketize", "boundaries": [1, "2"]}, r"^test\.boundaries: expected a non-empty"),
    ({"op": "bucketize", "boundaries": [0, True]}, r"^test\.boundaries: list holds a boolean"),
    ({"op": "bucketize", "boundaries": [0, 1, 1]}, r"^test\.boundaries: must be strictly"),
    ({"op": "bucketize", "boundaries": [2, 1]}, r"^test\.boundaries: must be strictly"),
    ({"op": "vocab"}, r"^test: give exactly one of values or file"),
    ({"op": "vocab", "values": ["a"], "file": "x"}, r"^test: give exactly one of values or file"),
    ({"op": "vocab", "values": []}, r"^test\.values: expected non-empty strings"),
    ({"op": "vocab", "values": ["a", ""]}, r"^test\.values: expected non-empty strings"),
    ({"op": "vocab", "values": ["a", 1]}, r"^test\.values: expected non-empty strings"),
    ({"op": "vocab", "values": ["a", "b", "a"]}, r"^test\.values: duplicate entries"),
    ({"op": "vocab", "values": ["a"], "oov_buckets": 0}, r"^test\.oov_buckets: must be"),
    ({"op": "vocab", "file": "/nonexistent/vocab.txt"}, r"^test\.file: cannot read"),
    ({"op": "split", "max_len": 2}, r"^test\.sep: is required"),
    ({"op": "split", "sep": "||", "max_len": 2}, r"^test\.sep: must be one byte"),
    ({"op": "split", "sep": "é", "max_len": 2}, r"^test\.sep: must be one byte"),
    ({"op": "split", "sep": "|"}, r"^test\.max_len: is required"),
    ({"op": "split", "sep": "|", "max_len": 0}, r"^test\.max_len: must be an integer >= 1"),
    ({"op": "split", "sep": "|", "max_len": 2, "keep": "middle"}, r"^test\.keep: must be"),
    ({"op": "pad"}, r"^test\.max_len: is required"),
    ({"op": "pad", "max_len": 2, "value": -1}, r"^test\.value: must be an id >= 0"),
    ({"op": "pad", "max_len": 2, "keep": 1}, r"^test\.keep: expected"),
])
def test_parameter_errors_name_the_key(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_operator(raw, "test")


@pytest.mark.parametrize("raw", [
    {"op": "log1p", "base": 10},
    {"op": "lowercase", "locale": "tr"},
    {"op": "hash_bucket", "buckets": 8, "seed": 1},
    {"op": "clip", "min": 0, "mx": 1},
    {"op": "pad", "max_len": 2, "padding": 0},
])
def test_unknown_parameters_are_rejected(raw: dict) -> None:
    extra = sorted(set(raw) - {"op", "buckets", "min", "max_len"})
    with pytest.raises(ConfigError, match=rf"^test: unknown parameter\(s\) {extra[0]}$"):
        make_operator(raw, "test")


def test_unknown_operator_and_bad_table() -> None:
    with pytest.raises(ConfigError, match=r"^test\.op: unknown operator 'log2'; known: "):
        make_operator({"op": "log2"}, "test")
    with pytest.raises(ConfigError, match=r"^test\.op: unknown operator None"):
        make_operator({"buckets": 2}, "test")
    with pytest.raises(ConfigError, match=r"^test: expected a table"):
        make_operator(["log1p"], "test")  # type: ignore[arg-type]


@pytest.mark.parametrize("raw,kind", [
    ({"op": "log1p"}, "str"),
    ({"op": "fill_missing"}, "id"),
    ({"op": "clip", "min": 0}, "list_str"),
    ({"op": "standardize", "fit": True}, "str"),
    ({"op": "bucketize", "boundaries": [0]}, "id"),
    ({"op": "hash_bucket", "buckets": 8}, "int"),
    ({"op": "hash_cross", "buckets": 8}, "list_str"),
    ({"op": "id_mod", "buckets": 8}, "str"),
    ({"op": "id_mod", "buckets": 8}, "float"),
    ({"op": "vocab", "values": ["a"]}, "int"),
    ({"op": "split", "sep": "|", "max_len": 2}, "list_str"),
    ({"op": "lowercase"}, "id"),
    ({"op": "pad", "max_len": 2}, "id"),
    ({"op": "pad", "max_len": 2}, "list_str"),
])
def test_type_rules(raw: dict, kind: str) -> None:
    op = make_operator(raw, "test", 2)
    with pytest.raises(ConfigError, match=rf"^test: {raw['op']} takes .* input, got {kind}$"):
        op.check_input(VType(kind, 2))


def test_type_rule_accepts_documented_kinds() -> None:
    for name, kinds in [("log1p", ("int", "float")), ("hash_bucket", ("str", "list_str")),
                        ("lowercase", ("str", "list_str")), ("pad", ("list_id",))]:
        raw = {"op": name, **({"buckets": 8} if name == "hash_bucket" else {}),
               **({"max_len": 2} if name == "pad" else {})}
        op = make_operator(raw, "test")
        for kind in kinds:
            op.check_input(VType(kind, 1))


def test_shape_rules_in_out_type() -> None:
    op = make_operator({"op": "hash_cross", "buckets": 8}, "test")  # arity 1
    with pytest.raises(ConfigError, match=r"^test: hash_cross needs inputs as groups"):
        op.out_type(VType("str", 2))
    op = make_operator({"op": "hash_cross", "buckets": 8}, "test", 2)
    with pytest.raises(ConfigError, match=r"^test: hash_cross needs inputs as groups"):
        op.out_type(VType("str", 5))
    assert op.out_type(VType("int", 6)) == VType("id", 3, False, 8)
    op = make_operator({"op": "split", "sep": ",", "max_len": 2}, "test")
    with pytest.raises(ConfigError, match=r"^test: split takes exactly one input column, got 3"):
        op.out_type(VType("str", 3))
    op = make_operator({"op": "standardize", "mean": [0, 1], "std": 1}, "test")
    with pytest.raises(ConfigError, match=r"^test\.mean: expected a number or 3 numbers"):
        op.out_type(VType("float", 3))
    op = make_operator({"op": "standardize", "mean": 0, "std": [1, 0]}, "test")
    with pytest.raises(ConfigError, match=r"^test\.std: must be > 0"):
        op.out_type(VType("float", 2))
    op = make_operator({"op": "standardize", "mean": 0, "std": -1}, "test")
    with pytest.raises(ConfigError, match=r"^test\.std: must be > 0"):
        op.out_type(VType("int", 1))


def test_out_type_cardinalities() -> None:
    t = VType("float", 4)
    b = [0, 1, 2, 4, 8]
    assert make_operator({"op": "bucketize", "boundaries": b}, "t").out_type(t) == VType(
        "id", 4, False, len(b) + 2)
    v = make_operator({"op": "vocab", "values": ["x", "y", "z"], "oov_buckets": 10}, "t")
    assert v.out_type(VType("str", 2)) == VType("id", 2, False, 1 + 3 + 10)
    assert v.out_type(VType("list_str", 1)) == VType("list_id", 1, False, 1 + 3 + 10)
    v = make_operator({"op": "vocab", "values": ["x"]}, "t")
    assert v.out_type(VType("str", 1)).cardinality == 1 + 1 + 1  # oov_buckets defaults to 1
    h = make_operator({"op": "hash_bucket", "buckets": 1 << 32}, "t")
    assert h.out_type(VType("str", 26)) == VType("id", 26, False, 1 << 32)
    assert h.out_type(VType("list_str", 1)) == VType("list_id", 1, False, 1 << 32)
    assert make_operator({"op": "id_mod", "buckets": 9}, "t").out_type(
        VType("int", 3)) == VType("id", 3, False, 9)
    p = make_operator({"op": "pad", "max_len": 3, "value": 9}, "t")
    assert p.out_type(VType("list_id", 1, False, 5)).cardinality == 10
    assert p.out_type(VType("list_id", 1, False, 50)).cardinality == 50
    assert p.out_type(VType("list_id", 1, False, None)).cardinality is None
    assert make_operator({"op": "fill_missing"}, "t").out_type(
        VType("int", 3)) == VType("float", 3, missing=False)
    for name in ("clip", "log1p"):
        raw = {"op": name, **({"min": 0} if name == "clip" else {})}
        assert make_operator(raw, "t").out_type(VType("int", 2, False)) == VType(
            "float", 2, False)


# Fixes for problems found while writing these tests.
@pytest.mark.parametrize("raw", [
    {"op": "bucketize", "boundaries": [0.0, float("nan"), 1.0]},
    {"op": "standardize", "mean": 0, "std": float("nan")},
    {"op": "clip", "min": float("nan")},
    {"op": "standardize", "mean": [True, 1], "std": 1},
])
def test_nan_and_bool_parameters_are_rejected(raw) -> None:
    with pytest.raises(ConfigError, match=r"^test\."):
        make_operator(raw, "test")


def test_given_standardize_without_out_type_uses_given_values() -> None:
    op = make_operator({"op": "standardize", "mean": 10, "std": 2}, "test")
    out = op.apply(FloatValues(np.array([[10.0], [14.0]])))
    assert out.values.ravel().tolist() == [0.0, 2.0]


def test_fit_ignores_infinite_values() -> None:
    op = make_operator({"op": "standardize", "fit": True}, "test")
    out = op.apply(FloatValues(np.array([[1.0], [np.inf], [3.0]])))
    assert out.values[0, 0] == -1.0 and out.values[2, 0] == 1.0
