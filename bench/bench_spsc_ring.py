"""Two-thread transfer throughput: SpscRing vs queue.SimpleQueue vs deque+Condition.

Run with: python -m pytest bench/bench_spsc_ring.py --benchmark-only -q

Each round moves N ints from a producer thread to the consumer (the calling
thread) and checks that all of them arrived in order. SpscRing is bounded
(CAPACITY) and waits without the GIL; the two baselines are unbounded.
"""

from __future__ import annotations

import collections
import queue
import threading

from recs_core.native import SpscRing

N = 50_000
CAPACITY = 1024
ROUNDS = 5
_END = object()


def _check(count: int, total: int) -> None:
    assert count == N, count
    assert total == N * (N - 1) // 2, total


def _spsc_transfer() -> None:
    ring = SpscRing(CAPACITY)

    def producer() -> None:
        push = ring.push
        for i in range(N):
            push(i)
        ring.close()

    thread = threading.Thread(target=producer)
    thread.start()
    pop = ring.pop
    count = total = 0
    while (v := pop()) is not None:
        count += 1
        total += v
    thread.join()
    _check(count, total)


def _simple_queue_transfer() -> None:
    q: queue.SimpleQueue = queue.SimpleQueue()

    def producer() -> None:
        put = q.put
        for i in range(N):
            put(i)
        put(_END)

    thread = threading.Thread(target=producer)
    thread.start()
    get = q.get
    count = total = 0
    while (v := get()) is not _END:
        count += 1
        total += v
    thread.join()
    _check(count, total)


def _deque_condition_transfer() -> None:
    dq: collections.deque = collections.deque()
    cond = threading.Condition()

    def producer() -> None:
        for i in range(N):
            with cond:
                dq.append(i)
                cond.notify()
        with cond:
            dq.append(_END)
            cond.notify()

    thread = threading.Thread(target=producer)
    thread.start()
    count = total = 0
    while True:
        with cond:
            while not dq:
                cond.wait()
            v = dq.popleft()
        if v is _END:
            break
        count += 1
        total += v
    thread.join()
    _check(count, total)


def test_spsc_ring_transfer(benchmark):
    benchmark.extra_info["n"] = N
    benchmark.pedantic(_spsc_transfer, rounds=ROUNDS, warmup_rounds=1)


def test_simple_queue_transfer(benchmark):
    benchmark.extra_info["n"] = N
    benchmark.pedantic(_simple_queue_transfer, rounds=ROUNDS, warmup_rounds=1)


def test_deque_condition_transfer(benchmark):
    benchmark.extra_info["n"] = N
    benchmark.pedantic(_deque_condition_transfer, rounds=ROUNDS, warmup_rounds=1)
