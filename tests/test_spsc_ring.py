"""Tests of the native lock-free SPSC ring (recs_core.native.SpscRing)."""

from __future__ import annotations

import threading
import time

import pytest

from recs_core.native import RingClosedError, SpscRing

U64_MAX = 2**64 - 1


# ---------------------------------------------------------------- single thread


def test_fifo_order_and_len():
    ring = SpscRing(8)
    assert ring.capacity == 8
    assert len(ring) == 0
    for v in (5, 0, 7, U64_MAX, 3):
        assert ring.try_push(v) is True
    assert len(ring) == 5
    assert [ring.try_pop() for _ in range(5)] == [5, 0, 7, U64_MAX, 3]
    assert len(ring) == 0


def test_full_ring_rejects_push_and_empty_ring_pops_none():
    ring = SpscRing(4)
    assert ring.try_pop() is None
    assert all(ring.try_push(i) for i in range(4))
    assert ring.try_push(99) is False
    assert len(ring) == 4
    assert ring.try_pop() == 0
    assert ring.try_push(4) is True  # one slot freed
    assert ring.try_push(5) is False
    assert [ring.try_pop() for _ in range(5)] == [1, 2, 3, 4, None]


def test_wraparound_many_times():
    ring = SpscRing(2)
    for i in range(1000):
        assert ring.try_push(2 * i)
        assert ring.try_push(2 * i + 1)
        assert ring.try_push(0) is False
        assert ring.try_pop() == 2 * i
        assert ring.try_pop() == 2 * i + 1
    assert ring.try_pop() is None


def test_capacity_one_is_allowed():
    ring = SpscRing(1)
    assert ring.try_push(1)
    assert not ring.try_push(2)
    assert ring.try_pop() == 1


@pytest.mark.parametrize("bad", [0, 3, 6, 100, -4, -1, 2**41])
def test_capacity_must_be_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        SpscRing(bad)


def test_capacity_must_be_an_integer():
    with pytest.raises(TypeError):
        SpscRing(4.0)


@pytest.mark.parametrize("bad", [-1, -(2**63), 2**64])
def test_out_of_range_values_raise_overflow(bad):
    ring = SpscRing(4)
    with pytest.raises(OverflowError, match=r"0\.\.2\*\*64-1"):
        ring.try_push(bad)
    with pytest.raises(OverflowError):
        ring.push(bad, timeout=0)
    assert len(ring) == 0


@pytest.mark.parametrize("bad", [1.5, 2.0, "1", None])
def test_non_int_value_raises_type_error(bad):
    ring = SpscRing(4)
    with pytest.raises(TypeError):
        ring.try_push(bad)
    with pytest.raises(TypeError):
        ring.push(bad)
    assert len(ring) == 0


def test_index_types_accepted():
    np = pytest.importorskip("numpy")
    ring = SpscRing(4)
    assert ring.try_push(np.uint64(U64_MAX)) and ring.try_push(np.int32(7))
    assert [ring.try_pop(), ring.try_pop()] == [U64_MAX, 7]


def test_close_drains_then_returns_none_immediately():
    ring = SpscRing(4)
    ring.push(1)
    ring.push(2)
    assert ring.closed is False
    ring.close()
    assert ring.closed is True
    assert ring.pop() == 1
    assert ring.pop(timeout=10) == 2
    t0 = time.monotonic()
    assert ring.pop() is None  # no timeout: must not block once closed & empty
    assert ring.pop(timeout=10) is None
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(RingClosedError):
        ring.try_push(3)
    with pytest.raises(RingClosedError):
        ring.push(3)


def test_pop_timeout_on_empty_open_ring():
    ring = SpscRing(4)
    t0 = time.monotonic()
    assert ring.pop(timeout=0.2) is None
    elapsed = time.monotonic() - t0
    assert 0.19 <= elapsed < 1.0
    assert ring.closed is False  # timeout, not end of stream
    assert ring.pop(timeout=0) is None


def test_push_timeout_on_full_ring():
    ring = SpscRing(2)
    assert ring.push(1, timeout=0) and ring.push(2, timeout=0)
    t0 = time.monotonic()
    assert ring.push(3, timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert [ring.try_pop(), ring.try_pop(), ring.try_pop()] == [1, 2, None]


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_negative_timeout_rejected(bad):
    ring = SpscRing(2)
    with pytest.raises(ValueError, match="timeout"):
        ring.pop(timeout=bad)


def test_repr():
    assert repr(SpscRing(4)) == "SpscRing(capacity=4, len=0, closed=False)"


# ---------------------------------------------------------------- two threads


def _transfer(capacity: int, n: int) -> list[int]:
    ring = SpscRing(capacity)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for i in range(n):
                if not ring.push(i, timeout=30):
                    raise AssertionError(f"push of {i} timed out")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            ring.close()

    out: list[int] = []
    thread = threading.Thread(target=producer)
    thread.start()
    while True:
        v = ring.pop(timeout=30)
        if v is None:
            break
        out.append(v)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not errors, errors
    assert ring.closed, "consumer stopped on a timeout, not on close"
    return out


@pytest.mark.parametrize(("capacity", "n"), [(1024, 200_000), (2, 20_000), (1, 5_000)])
def test_two_threads_no_loss_no_duplication_in_order(capacity, n):
    out = _transfer(capacity, n)
    assert len(out) == n
    assert sum(out) == n * (n - 1) // 2
    assert len(set(out)) == n
    assert sorted(out) == list(range(n))
    assert out == list(range(n))  # exact FIFO order


def test_blocking_pop_releases_the_gil():
    """A consumer blocked in pop() must let the main thread run and push."""
    ring = SpscRing(4)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(ring.pop(timeout=5)))
    t0 = time.monotonic()
    thread.start()
    time.sleep(0.05)
    assert ring.try_push(42)
    thread.join(timeout=5)
    assert got == [42]
    assert time.monotonic() - t0 < 2.0


def test_close_wakes_blocked_consumer():
    ring = SpscRing(4)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(ring.pop()))
    thread.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    ring.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert got == [None]
    assert time.monotonic() - t0 < 1.0


def test_waiting_does_not_burn_a_core():
    """pop() backs off with sleeps: waiting 0.5 s must use little CPU."""
    ring = SpscRing(4)
    res: dict[str, float] = {}

    def waiter() -> None:
        c0 = time.thread_time()
        assert ring.pop(timeout=0.5) is None
        res["cpu"] = time.thread_time() - c0

    thread = threading.Thread(target=waiter)
    thread.start()
    thread.join(timeout=5)
    assert res["cpu"] < 0.1, f"waiting thread used {res['cpu']:.3f} s CPU in 0.5 s"
