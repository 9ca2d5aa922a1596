"""Dynamic (hash-keyed) embedding tables against a pure-Python reference.

The reference keeps a dict key -> [frequency, last seen], exact pre-admission counts and
the initial vectors computed with Python integers straight from the documented formula.
The sketch is wide enough (2**20 x 4 for a few thousand keys) that its estimates are
exact, so admission must match the exact counts."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from recs_core.embedding.dynamic import EMPTY, NEXT, DynamicTable

DIM, SEED = 6, 11
M64 = (1 << 64) - 1
G = 0x9E3779B97F4A7C15


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    return x ^ (x >> 33)


def ref_vector(key: int, seed: int = SEED, dim: int = DIM, init_scale: int = 2**20) -> list:
    bound = math.sqrt(1.0 / init_scale)
    base = _fmix((key & M64) ^ _fmix((seed + G) & M64))
    out = []
    for d in range(dim):
        u = (_fmix((base + (d + 1) * G) & M64) >> 40) / 2**24
        out.append(np.float32(u * (2.0 * bound) - bound))
    return out


class Ref:
    """The documented behaviour, with exact counts."""

    def __init__(self, admit_after: int = 1, row_budget: int | None = None,
                 evict_after_windows: int | None = None) -> None:
        self.k, self.budget, self.after = admit_after, row_budget, evict_after_windows
        self.rows: dict[int, list[int]] = {}
        self.pending: dict[int, int] = defaultdict(int)

    def observe(self, keys, window: int) -> list[bool]:
        out = []
        for key in map(int, keys):
            if key in self.rows:
                self.rows[key][0] += 1
                self.rows[key][1] = window
            elif self.k == 1:  # no sketch: admitted at once with frequency 1
                self.rows[key] = [1, window]
            else:  # frequency starts at the count so far (sketch counts never drop)
                self.pending[key] += 1
                if self.pending[key] >= self.k:
                    self.rows[key] = [self.pending[key], window]
            out.append(key in self.rows)
        return out

    def end_window(self, window: int) -> list[int]:
        gone = [k for k, (_, seen) in self.rows.items()
                if self.after is not None and window - seen > self.after]
        for k in gone:
            del self.rows[k]
        if self.budget is not None and len(self.rows) > self.budget:
            order = sorted(self.rows, key=lambda k: (self.rows[k][0], k))
            for k in order[:len(self.rows) - self.budget]:
                gone.append(k)
                del self.rows[k]
        return sorted(gone)

    def check(self, table: DynamicTable) -> None:
        st = table.state()
        keys = sorted(self.rows)
        assert st["keys"].tolist() == keys
        assert st["freq"].tolist() == [self.rows[k][0] for k in keys]
        assert st["last_seen"].tolist() == [self.rows[k][1] for k in keys]
        expect = np.array([ref_vector(k) for k in keys], dtype=np.float32).reshape(-1, DIM)
        np.testing.assert_array_equal(st["values"], expect)
        assert len(table) == len(keys)


def _zipf_keys(rng: np.random.Generator, n: int, pool: np.ndarray) -> np.ndarray:
    return pool[(rng.zipf(1.3, n) - 1) % len(pool)]


def _pool(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct 64-bit keys of any sign (the sentinel excluded)."""
    keys = np.unique(rng.integers(-(2**63) + 1, 2**63 - 1, 2 * n, dtype=np.int64))
    keys = rng.permutation(keys)[:n]
    keys[:3] = [0, -1, 2**63 - 1]
    return keys


def _table(**kw) -> DynamicTable:
    kw.setdefault("initial_capacity", 4)
    return DynamicTable(DIM, SEED, **kw)


def _run(table: DynamicTable, ref: Ref, rng: np.random.Generator, pool: np.ndarray,
         windows: int, batches: int = 3, batch: int = 400) -> list[np.ndarray]:
    """Feeds both the same Zipf stream; checks every observe and eviction. Returns the
    evicted keys of every window."""
    evicted = []
    for w in range(windows):
        for _ in range(batches):
            keys = _zipf_keys(rng, batch, pool)
            rows = table.observe(keys, w)
            assert ((rows >= 0) == np.array(ref.observe(keys, w))).all()
            after = table.rows_of(keys)  # a key admitted late in the batch has a row now
            np.testing.assert_array_equal(after[rows >= 0], rows[rows >= 0])
            assert ((after >= 0) == np.isin(keys, list(ref.rows))).all()
        gone = table.end_window(w)
        assert gone.tolist() == ref.end_window(w)
        assert (table.rows_of(gone) == -1).all()
        evicted.append(gone)
        ref.check(table)
    return evicted


# ---------------------------------------------------------------------------------------
# Hash table
# ---------------------------------------------------------------------------------------


def test_insert_lookup_through_many_rehashes() -> None:
    rng = np.random.default_rng(0)
    pool = _pool(rng, 30_000)
    table, ref = _table(initial_capacity=1), Ref()
    seen = np.zeros(0, dtype=np.int64)
    for start in range(0, 20_000, 2_500):
        keys = np.concatenate([pool[start:start + 2_500], seen[:500]])
        rows = table.observe(rng.permutation(keys), 0)
        ref.observe(keys, 0)
        assert (rows >= 0).all()
        seen = np.concatenate([seen, pool[start:start + 2_500]])
        assert len(table) == len(seen) <= 0.7 * table.slot_capacity
    rows = table.rows_of(seen)
    assert sorted(rows.tolist()) == list(range(len(seen)))  # dense, one row per key
    assert (table.rows_of(pool[20_000:]) == -1).all()
    assert table.slot_capacity >= 2**15 and table.row_capacity >= 20_000
    ref.check(table)
    np.testing.assert_array_equal(table.gather(pool[20_000:20_010]), np.zeros((10, DIM)))


def test_uint64_keys_read_as_int64() -> None:
    keys = np.array([1, 2**63 - 1, 2**64 - 1, 2**63 + 5], dtype=np.uint64)
    a, b = _table(), _table()
    a.observe(keys, 0)
    b.observe(keys.view(np.int64), 0)
    np.testing.assert_array_equal(a.state()["keys"], np.sort(keys.view(np.int64)))
    np.testing.assert_array_equal(a.gather(keys), b.gather(keys.view(np.int64)))


# ---------------------------------------------------------------------------------------
# Initial vectors
# ---------------------------------------------------------------------------------------


def test_initial_vectors_follow_the_documented_formula() -> None:
    keys = np.array([0, 1, -1, 2**63 - 1, -(2**63) + 1, 123456789], dtype=np.int64)
    for seed, scale in ((SEED, 2**20), (0, 7), (2**62, 1)):
        table = DynamicTable(DIM, seed, init_scale=scale)
        table.observe(keys, 0)
        expect = [ref_vector(int(k), seed, DIM, scale) for k in keys]
        np.testing.assert_array_equal(table.gather(keys), np.array(expect, dtype=np.float32))
        bound = math.sqrt(1.0 / scale)
        assert (np.abs(table.gather(keys)) <= bound).all()


def test_initial_vector_ignores_order_capacity_and_history() -> None:
    rng = np.random.default_rng(1)
    keys = _pool(rng, 3_000)
    a = _table(initial_capacity=1)
    a.observe(keys, 0)
    b = _table(initial_capacity=8192, admit_after=3, sketch_width=2**16)
    b.observe(rng.integers(-(2**40), 2**40, 5_000), 0)  # other keys first
    for _ in range(3):
        b.observe(rng.permutation(keys), 1)
    np.testing.assert_array_equal(a.gather(keys), b.gather(keys))
    other = DynamicTable(DIM, SEED + 1)
    other.observe(keys, 0)
    assert not np.array_equal(a.gather(keys), other.gather(keys))


# ---------------------------------------------------------------------------------------
# Admission
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_admission_after_k_sightings(k: int) -> None:
    rng = np.random.default_rng(2 + k)
    pool = _pool(rng, 2_000)
    table, ref = _table(admit_after=k), Ref(admit_after=k)
    _run(table, ref, rng, pool, windows=3)
    assert 0 < len(table) < len(np.unique(pool))
    never = pool[-5:]
    assert (table.observe(never[:1].repeat(k - 1), 9) == -1).all()
    assert table.observe(never[:1], 9)[0] >= 0


def test_not_admitted_reads_zero() -> None:
    table = _table(admit_after=2)
    rows = table.observe(np.array([5, 6, 5]), 0)
    assert rows[:2].tolist() == [-1, -1] and rows[2] >= 0
    got = table.gather(np.array([5, 6]))
    np.testing.assert_array_equal(got[1], np.zeros(DIM, dtype=np.float32))
    np.testing.assert_array_equal(got[0], np.array(ref_vector(5), dtype=np.float32))
    np.testing.assert_array_equal(table.gather_rows(np.array([-1, rows[2]])), got[::-1])


def test_sketch_memory_is_fixed() -> None:
    table = _table(admit_after=10**9, sketch_width=2**12, sketch_depth=3)
    before = table.nbytes
    assert table.state()["sketch"].shape == (3, 2**12)
    rng = np.random.default_rng(3)
    for w in range(5):
        table.observe(rng.integers(-(2**62), 2**62, 50_000), w)
    assert table.nbytes == before and len(table) == 0
    total = int(table.state()["sketch"].sum())  # conservative update: at least one counter
    assert 250_000 <= total < 3 * 250_000  # per sighting, not always all three
    assert _table().state()["sketch"].size == 0  # admit_after=1: no sketch at all


def test_sketch_may_overcount_but_never_undercounts() -> None:
    rng = np.random.default_rng(4)
    pool = _pool(rng, 5_000)
    table = _table(admit_after=3, sketch_width=64, sketch_depth=2)  # many collisions
    ref = Ref(admit_after=3)
    for w in range(3):
        keys = _zipf_keys(rng, 3_000, pool)
        rows = table.observe(keys, w)
        exact = np.array(ref.observe(keys, w))
        assert (rows[exact] >= 0).all()  # every key the exact rule admits is admitted
    assert len(table) > len(ref.rows)


# ---------------------------------------------------------------------------------------
# Eviction
# ---------------------------------------------------------------------------------------


def test_eviction_by_window() -> None:
    rng = np.random.default_rng(5)
    pool = _pool(rng, 1_500)
    table, ref = _table(evict_after_windows=2), Ref(evict_after_windows=2)
    evicted = _run(table, ref, rng, pool, windows=6)
    assert sum(map(len, evicted)) > 100


def test_eviction_by_budget_and_window_with_admission() -> None:
    rng = np.random.default_rng(6)
    pool = _pool(rng, 3_000)
    kw = {"admit_after": 2, "row_budget": 150, "evict_after_windows": 1}
    table, ref = _table(**kw), Ref(**kw)
    evicted = _run(table, ref, rng, pool, windows=6)
    assert len(table) == 150 and all(len(e) for e in evicted[2:])


def test_budget_ties_go_by_key() -> None:
    table = _table(row_budget=2)
    table.observe(np.array([9, -4, 7, 3, 3]), 0)  # freq: 3 -> 2, others 1
    assert table.end_window(0).tolist() == [-4, 7]
    assert table.state()["keys"].tolist() == [3, 9]


def test_churn_keeps_every_key_findable() -> None:
    """Evictions at high load exercise the backward-shift deletion, wraparound included."""
    rng = np.random.default_rng(7)
    pool = _pool(rng, 4_000)
    table, ref = _table(row_budget=350), Ref(row_budget=350)
    for w in range(30):
        keys = rng.choice(pool, 150)
        table.observe(keys, w)
        ref.observe(keys, w)
        assert table.end_window(w).tolist() == ref.end_window(w)
        live = np.array(sorted(ref.rows), dtype=np.int64)
        assert (table.rows_of(live) >= 0).all()
        assert (table.rows_of(np.setdiff1d(pool, live)) == -1).all()
    ref.check(table)
    assert table.slot_capacity == 1024  # 500 keys at most: never above 0.7 * 1024


def test_freed_rows_are_reused_and_states_reset() -> None:
    table = _table(row_budget=100, initial_capacity=128)
    acc = table.add_row_state("acc", 0.25)
    table.observe(np.arange(128), 0)
    acc[table.rows_of(np.arange(128))] = np.arange(128, dtype=np.float32)
    freed = table.rows_of(np.arange(28))
    assert table.end_window(0).tolist() == list(range(28))
    rows = table.observe(np.arange(1000, 1028), 1)
    assert table.row_capacity == 128
    assert sorted(rows.tolist()) == sorted(freed.tolist())
    acc = table.row_state("acc")
    np.testing.assert_array_equal(acc[rows], np.full(28, 0.25, dtype=np.float32))
    np.testing.assert_array_equal(acc[table.rows_of(np.arange(28, 128))],
                                  np.arange(28, 128, dtype=np.float32))


def test_row_state_follows_rows_through_growth() -> None:
    rng = np.random.default_rng(8)
    keys = _pool(rng, 5_000)
    table = _table(initial_capacity=2)
    table.add_row_state("acc", -1.0)
    table.observe(keys[:10], 0)
    table.row_state("acc")[table.rows_of(keys[:10])] = np.arange(10, dtype=np.float32)
    table.observe(keys, 0)  # many row growths and rehashes
    acc = table.row_state("acc")
    np.testing.assert_array_equal(acc[table.rows_of(keys[:10])], np.arange(10))
    assert (acc[table.rows_of(keys[10:])] == -1.0).all()
    assert table.state()["extra/acc"].shape == (5_000,)
    with pytest.raises(ValueError, match="already exists"):
        table.add_row_state("acc")


# ---------------------------------------------------------------------------------------
# State and determinism
# ---------------------------------------------------------------------------------------


def _states_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _workload(table: DynamicTable, seed: int, windows: range) -> None:
    rng = np.random.default_rng(seed)
    pool = _pool(np.random.default_rng(99), 2_000)
    for w in windows:
        for _ in range(3):
            rows = table.observe(_zipf_keys(rng, 500, pool), w)
            if "acc" in table._extra:
                table.row_state("acc")[rows[rows >= 0]] += 1.0
        table.end_window(w)


def test_state_round_trip_and_layout_independence() -> None:
    kw = {"admit_after": 2, "row_budget": 300, "evict_after_windows": 2, "sketch_width": 2**14}
    table = _table(**kw)
    table.add_row_state("acc", 0.5)
    _workload(table, 10, range(4))
    st = table.state()
    again = DynamicTable.from_state(st)
    _states_equal(again.state(), st)
    assert again.config() == table.config()
    loaded = _table(**kw)
    loaded.load_state(st)
    _states_equal(loaded.state(), st)
    for t in (table, again, loaded):  # the row layout differs; the behaviour does not
        _workload(t, 11, range(4, 8))
    _states_equal(again.state(), table.state())
    _states_equal(loaded.state(), table.state())


def test_same_calls_give_bit_identical_state() -> None:
    kw = {"admit_after": 3, "row_budget": 200, "evict_after_windows": 1, "sketch_width": 256}
    a, b = _table(**kw), _table(**kw)
    for t in (a, b):
        t.add_row_state("acc")
        _workload(t, 12, range(5))
    _states_equal(a.state(), b.state())
    used = int(a._counts[NEXT])  # rows ever allocated (the rest is unset memory)
    np.testing.assert_array_equal(a.values[:used], b.values[:used])
    np.testing.assert_array_equal(a._slots, b._slots)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_bad_keys_are_rejected() -> None:
    table = _table()
    with pytest.raises(ValueError, match="sentinel"):
        table.observe(np.array([1, EMPTY]), 0)
    with pytest.raises(ValueError, match="sentinel"):
        table.rows_of(np.array([2**63], dtype=np.uint64))
    with pytest.raises(TypeError, match="integers"):
        table.observe(np.array([1.0, 2.0]), 0)
    with pytest.raises(ValueError, match="1-d"):
        table.gather(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(IndexError):
        table.gather_rows(np.array([-2]))
    assert len(table) == 0  # nothing admitted by a rejected call


@pytest.mark.parametrize("kw", [{"dim": 0}, {"sketch_width": 1000}, {"admit_after": 0},
                                {"row_budget": 0}, {"evict_after_windows": -1},
                                {"seed": -1}])
def test_bad_config_is_rejected(kw: dict) -> None:
    args = {"dim": DIM, "seed": SEED, **kw}
    with pytest.raises(ValueError):
        DynamicTable(**args)


def test_bad_state_is_rejected() -> None:
    table = _table(admit_after=2, sketch_width=64)
    table.observe(np.array([3, 1, 2, 3, 1]), 0)
    st = table.state()
    with pytest.raises(ValueError, match="ascending"):
        _table(admit_after=2, sketch_width=64).load_state({**st, "keys": st["keys"][::-1]})
    with pytest.raises(ValueError, match="sketch"):
        _table(admit_after=2, sketch_width=128).load_state(st)
    with pytest.raises(ValueError, match="values"):
        _table(admit_after=2, sketch_width=64).load_state({**st, "values": st["values"][:1]})
