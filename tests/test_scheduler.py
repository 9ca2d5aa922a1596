"""The scheduler's parts: the flow-shop planner, the task loop, the timeline figures;
and, under mpiexec, that every mode trains the bit-identical model with agreed plans."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recs_core.comm.pending import Pending
from recs_core.sched.costs import Costs
from recs_core.sched.feature_work import RowChunks
from recs_core.sched.flowshop import best_order, johnson_order, makespan
from recs_core.sched.loop import Loop
from recs_core.sched.trace import (
    Timeline,
    _clip,
    _difference,
    _intersect,
    _Measure,
    _union,
    summarize,
)
from tests.conftest import ROOT, run_mpi

MODES_CHECK = str(ROOT / "tests" / "mpi" / "modes_check.py")


# ---- flow shop ---------------------------------------------------------------------------

def test_makespan_of_a_hand_worked_instance() -> None:
    # cpu 3, 1 / comm 2, 4: order (1, 0): cpu ends 1, 4; comm 1..5, 5..7 -> 7
    assert makespan([1, 0], [3, 1], [2, 4]) == 7
    assert makespan([0, 1], [3, 1], [2, 4]) == 9
    assert makespan([], [], []) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_johnson_equals_the_brute_force_optimum(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(60):
        cpu = rng.integers(0, 20, n).astype(float).tolist()
        comm = rng.integers(0, 20, n).astype(float).tolist()
        order = johnson_order(cpu, comm)
        assert sorted(order) == list(range(n))
        _, best = best_order(cpu, comm)
        assert makespan(order, cpu, comm) == best, (cpu, comm, order)


def test_best_order_really_tries_every_order() -> None:
    cpu, comm = [5.0, 1.0, 3.0], [1.0, 6.0, 2.0]
    every = [makespan(o, cpu, comm) for o in itertools.permutations(range(3))]
    assert best_order(cpu, comm)[1] == min(every) < max(every)


def test_johnson_breaks_ties_by_index_and_checks_lengths() -> None:
    assert johnson_order([1, 1, 1], [2, 2, 2]) == [0, 1, 2]
    assert johnson_order([2, 2], [1, 1]) == [0, 1]
    with pytest.raises(ValueError, match="2 cpu costs but 1 comm"):
        johnson_order([1, 2], [1])


def test_costs_are_moving_averages() -> None:
    c = Costs(alpha=0.5)
    assert c.get("x") is None
    c.add("x", 4.0)
    c.add("x", 2.0)
    assert c.get("x") == 3.0


def test_exchange_estimates_scale_with_the_message_size() -> None:
    """Per message size: an exchange's estimate is the averaged time scaled by its size
    against the averaged size (dense buckets of one key differ in size)."""
    c = Costs(alpha=0.5)
    c.add("comm/dense", 4e-3, nbytes=4000)
    c.add("comm/dense", 2e-3, nbytes=2000)  # averages: 3 ms, 3000 bytes
    assert c.get("comm/dense") == pytest.approx(3e-3)
    assert c.get("comm/dense", nbytes=6000) == pytest.approx(6e-3)
    assert c.get("comm/dense", nbytes=0) == 0.0
    c.add("x", 1.0)  # measured without a size: estimates ignore sizes
    assert c.get("x", nbytes=10) == 1.0
    assert c.get("unmeasured", nbytes=10) is None


def test_a_chain_longer_than_the_chunk_cost_runs_on_chunks_within_it() -> None:
    """``--chunk-ms``: a feature chain expected to take longer on a batch runs on as many
    row chunks as keep each within the chunk cost; a shorter or unmeasured one whole."""
    costs = Costs()
    costs.add("split", 10e-6)
    costs.add("hash", 15e-6)  # the chain: 25 us a row
    chain = [SimpleNamespace(name="split"), SimpleNamespace(name="hash")]
    graph = SimpleNamespace(chain=lambda feature: chain)
    chunks = RowChunks(graph, costs, 0.02)  # type: ignore[arg-type]
    assert chunks.rows(0, 600) is None  # 15 ms: whole
    assert chunks.rows(0, 1000) == 500  # 25 ms: two chunks of 12.5 ms
    assert chunks.rows(0, 2000) == 667  # 50 ms: three
    assert RowChunks(graph, costs, 0.0).rows(0, 2000) is None  # chunking off
    chain[1] = SimpleNamespace(name="unmeasured")
    assert chunks.rows(0, 2000) is None


# ---- the task loop -----------------------------------------------------------------------

class Flight(Pending):
    """An exchange that completes when the test says so (no MPI involved)."""

    def __init__(self, expected: float | None = None) -> None:
        super().__init__([], lambda: "done", "fake exchange", None, timeout=60)
        self.ready = False
        self.expected = expected

    def test(self) -> bool:
        if self.ready and self.completed is None:
            self.completed = time.perf_counter()
        return self.completed is not None

    settled = test  # the loop's check after its one Testsome over every exchange


@pytest.mark.parametrize("clocked", [False, True])
def test_the_loop_tells_the_cpu_of_its_waits_from_the_cpu_of_its_tasks(clocked: bool) -> None:
    # a task burns ~30 ms of CPU, then waits 60 ms on an exchange that the filler's
    # busy-wait (as MPI spins) keeps the CPU busy for: with a clock, the wait's CPU is idle
    # CPU and the thread's CPU less it is the task's; without one nothing is counted
    flight = Flight()
    t0 = time.perf_counter()

    def spin_filler(window: float | None) -> bool:
        if time.perf_counter() - t0 > 0.09:
            flight.ready = True
        return False

    burnt: list[float] = []

    def task():
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            pass
        burnt.append(time.perf_counter())
        yield flight

    loop = Loop(Timeline(), spin_filler, spin_s=1.0)  # never pauses: the wait spins
    loop.cpu_clock = time.thread_time if clocked else None
    c0 = time.thread_time()
    done = loop.spawn(task(), "work")
    loop.run_until(done)
    used, waited = time.thread_time() - c0, time.perf_counter() - burnt[0]
    if not clocked:
        assert loop.idle_cpu_seconds == 0.0
        return
    assert 0.0 < loop.idle_cpu_seconds <= waited  # it spun (unless descheduled)
    assert used - loop.idle_cpu_seconds == pytest.approx(0.03, abs=0.01)


def test_idle_time_is_counted_under_the_group_of_the_exchange_waited_on() -> None:
    flight = Flight()
    t0 = time.perf_counter()

    def filler(window: float | None) -> bool:
        flight.ready = time.perf_counter() - t0 > 0.03
        return False

    def task():
        yield flight

    loop = Loop(Timeline(), filler)
    loop.run_until(loop.spawn(task(), "lookup", group="crosses"))
    assert set(loop.waits) == {"crosses"}
    assert loop.waits["crosses"] == pytest.approx(loop.idle_seconds, rel=1e-9)
    assert loop.idle_seconds > 0.02


def test_ready_tasks_run_by_priority_then_arrival() -> None:
    tl = Timeline()
    loop = Loop(tl)
    ran = []

    def task(name: str, segments: int):
        for i in range(segments):
            ran.append(f"{name}{i}")
            yield None

    loop.spawn(task("low", 2), "low", prio=5)
    loop.spawn(task("high", 2), "high", prio=1)
    last = loop.spawn(task("mid", 1), "mid", prio=3)
    loop.drain()
    assert last.done
    assert ran == ["high0", "high1", "mid0", "low0", "low1"]
    assert [s[0] for s in tl.spans] == ["high", "high", "high", "mid", "mid", "low", "low",
                                        "low"]


def test_filler_runs_only_while_an_exchange_is_in_flight_and_nothing_is_ready() -> None:
    tl = Timeline()
    flight = Flight(expected=10.0)
    log: list[str] = []
    windows: list[float | None] = []

    def filler(window: float | None) -> bool:
        windows.append(window)
        log.append("fill")
        if len(windows) == 3:
            flight.ready = True
        return True

    loop = Loop(tl, filler)

    def consumer():
        log.append("post")
        got = yield flight
        log.append("consume")
        return got

    def other():
        log.append("other")
        yield None

    c = loop.spawn(consumer(), "consumer", prio=0)
    loop.spawn(other(), "other", prio=1)
    loop.run_until(c)
    # the ready task runs before any filling; the consumer resumes right after completion
    assert log == ["post", "other", "fill", "fill", "fill", "consume"]
    assert all(w is not None and 9.0 < w <= 10.0 for w in windows)
    assert len(loop.late) == 1 and loop.late[0] >= 0


def test_a_started_task_waits_without_a_turn_of_its_own() -> None:
    """``spawn(start=True)`` runs the first segment in the caller's: a task that first
    names the exchange it waits on is filed under it at once, and runs only after it."""
    tl = Timeline()
    loop = Loop(tl)
    flight, log = Flight(), []

    def apply():
        log.append("wait")
        yield flight
        log.append("apply")

    def spawner():
        started = loop.spawn(apply(), "apply", prio=0, start=True)
        log.append(f"spawned, waiting: {started.waiting is flight}")
        yield None
        flight.ready = True
        log.append("completed")
        yield started

    loop.run_until(loop.spawn(spawner(), "spawner", prio=1))
    assert log == ["wait", "spawned, waiting: True", "completed", "apply"]
    assert [s[0] for s in tl.spans if s[1] == 0] == ["spawner", "spawner", "apply", "spawner"]


class SlowFlight(Flight):
    """An exchange that completes at the loop's ``polls``-th look at it."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls

    def test(self) -> bool:
        self.polls -= 1
        self.ready = self.ready or self.polls <= 0
        return super().test()

    settled = test


def test_a_blocking_step_computes_on_while_its_own_phase_is_in_flight() -> None:
    """overlap=False: a task keeps running while exchanges of its phase are in flight (a
    blocking step computes the next bucket's weight gradients while the last bucket's
    allreduce runs, and applies each update once summed); a task of another phase waits
    while they are in flight."""
    loop = Loop(Timeline(), overlap=False)
    log: list[str] = []
    flights = [SlowFlight(3), SlowFlight(3)]

    def update(k: int):
        yield flights[k]
        log.append(f"apply{k}")

    def other():
        log.append("other")
        yield None

    def train():
        for k in range(2):
            log.append(f"dW{k}")
            loop.spawn(update(k), f"update {k}", start=True, phase="train 0")
            if k == 0:
                loop.spawn(other(), "other", prio=-1)
            yield None
        log.append("train done")

    loop.run_until(loop.spawn(train(), "train", phase="train 0"))
    loop.drain()
    assert log.index("dW1") < log.index("apply0")  # not a wait per bucket
    # ready (and first by priority) since dW0, it waited for the train phase's exchanges
    assert log.index("other") > log.index("apply0")


def test_join_on_another_task_and_deadlock_is_an_error() -> None:
    tl = Timeline()
    loop = Loop(tl)
    order = []

    def first():
        order.append("first")
        yield None

    a = loop.spawn(first(), "a", prio=9)

    def second():
        yield a
        order.append("second")

    b = loop.spawn(second(), "b", prio=0)
    loop.run_until(b)
    assert order == ["first", "second"]

    def wait_on(t):
        yield t

    y_holder: list = []

    def cyc():
        yield y_holder[0]

    x = loop.spawn(cyc(), "x")
    y = loop.spawn(wait_on(x), "y")
    y_holder.append(y)
    with pytest.raises(RuntimeError, match="deadlock"):
        loop.run_until(y)


def test_a_task_error_propagates() -> None:
    tl = Timeline()
    loop = Loop(tl)

    def bad():
        yield None
        raise ValueError("boom")

    t = loop.spawn(bad(), "bad")
    with pytest.raises(ValueError, match="boom"):
        loop.run_until(t)


# ---- timeline ----------------------------------------------------------------------------

def _brute(spans_a, spans_b, op):
    grid = np.linspace(0, 12, 12001)[:-1] + 0.0005
    ina = np.zeros(len(grid), bool)
    inb = np.zeros(len(grid), bool)
    for a, b in spans_a:
        ina |= (grid >= a) & (grid < b)
    for a, b in spans_b:
        inb |= (grid >= a) & (grid < b)
    return (op(ina, inb)).sum() * 0.001


@pytest.mark.parametrize("seed", range(5))
def test_interval_algebra_against_a_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def spans(k):
        return [(a, a + w) for a, w in zip(np.round(rng.uniform(0, 9, k), 2),
                                           np.round(rng.uniform(0, 2, k), 2))]

    a, b = spans(8), spans(6)
    ua, ub = _union(a), _union(b)
    assert all(x[1] < y[0] for x, y in zip(ua, ua[1:]))
    length = sum(y - x for x, y in ua)
    assert abs(length - _brute(a, [], lambda p, q: p)) < 0.02
    inter = sum(y - x for x, y in _intersect(ua, ub))
    assert abs(inter - _brute(a, b, lambda p, q: p & q)) < 0.02
    diff = sum(y - x for x, y in _difference(ua, ub))
    assert abs(diff - _brute(a, b, lambda p, q: p & ~q)) < 0.02


def test_step_figures_count_idle_while_comm_in_flight(tmp_path: Path) -> None:
    tl = Timeline()
    t0 = tl.t0
    tl.add("train", 0, t0 + 0.0, t0 + 0.004)  # CPU 0-4 ms
    tl.add("rows", 1, t0 + 0.002, t0 + 0.008)  # comm 2-8 ms
    tl.add("features", 2, t0 + 0.005, t0 + 0.006)  # prefetch thread 5-6 ms
    tl.add("wait rows", 3, t0 + 0.0035, t0 + 0.004)  # blocked 3.5-4 ms inside the CPU span
    tl.step(t0, t0 + 0.010)
    (f,) = tl.step_figures()
    assert f["wall"] == pytest.approx(0.010)
    assert f["cpu_busy"] == pytest.approx(0.0045)
    assert f["comm"] == pytest.approx(0.006)
    # comm 2-8 ms minus CPU busy 2-3.5 and 5-6 ms
    assert f["idle_in_comm"] == pytest.approx(0.0035)
    assert summarize([f])["cpu_busy_ms"] == pytest.approx(4.5)
    events = tl.events()
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {0, 1, 2, 3}
    assert json.loads(json.dumps(events)) == events


# ---- every mode trains the same model, across real ranks ---------------------------------

@pytest.mark.mpi
@pytest.mark.parametrize("n,placement,preset", [(2, "row", "dlrm"), (3, "table", "wdl"),
                                                (2, "row", "dlrm-dyn")])
def test_every_mode_trains_the_identical_model(sample_1200: Path, tmp_path: Path, n: int,
                                               placement: str, preset: str) -> None:
    trace = tmp_path / "trace.json"
    r = run_mpi(n, [MODES_CHECK, str(sample_1200), placement, preset, str(trace)],
                timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.split("\n")[:-1]) == [f"OK rank {i}" for i in range(n)]


def _one_rank_job(preset: str):
    from recs_core.train.job import Job
    from tests.conftest import small_test_spec
    from tests.test_dynamic_train import DYN
    from tests.test_dynamic_train import spec as dyn_spec

    if preset.endswith("-dyn"):
        return Job(dyn_spec(preset[:-4], dynamic=DYN))
    return Job(small_test_spec(preset, fitted=True,
                               optimizer="adam" if preset == "wdl" else None))


def _one_rank_state(job) -> dict[str, np.ndarray]:
    state = {k: v.copy() for k, v in job.model.state().items()}
    for si, e in enumerate(job.model.sets):
        for t in e.dynamic.tables:
            state.update({f"dyn{si}/{t}/{k}": np.copy(v) for k, v in e.dynamic.arrays(t).items()})
    return state


@pytest.mark.parametrize("preset", ["dlrm", "wdl", "dlrm-dyn"])
def test_every_mode_trains_the_identical_model_on_one_rank(sample_1200: Path, preset: str,
                                                           monkeypatch) -> None:
    """One rank runs the same task loop (the stages move nothing): every mode, also with
    operator workers and row chunks, gives bit-identical scores and parameters -- equal
    to the model's own train_step driven batch by batch (the independent reference)."""
    from recs_core.data.reader import ShardReader
    from recs_core.dense import layers
    from recs_core.sched import MODES

    monkeypatch.setattr(layers, "GRAD_PIECE_ELEMS", 4096)  # several dense buckets
    ref = _one_rank_job(preset)
    ref_probs = []
    for raw in ShardReader([str(sample_1200)], ref.spec.schema, batch_rows=ref.local_batch):
        ref_probs.append(ref.model.train_step(ref.graph.process(raw), len(raw))[0])
    ref_state = _one_rank_state(ref)
    assert any(k.startswith("dyn") for k in ref_state) == preset.endswith("-dyn")
    for mode, workers, chunk_ms in [(m, 0, None) for m in MODES] + [("recs", 1, 1e-6)]:
        job = _one_rank_job(preset)
        out = job.run([sample_1200], mode=mode, workers=workers, chunk_ms=chunk_ms)
        assert out["train_rows"] == 1200
        assert len(job.step_probs) == len(ref_probs), mode
        for s, (a, b) in enumerate(zip(job.step_probs, ref_probs)):
            assert np.array_equal(a, b), f"{mode}: step {s} scores differ"
        state = _one_rank_state(job)
        assert state.keys() == ref_state.keys()
        for k, v in ref_state.items():
            assert np.array_equal(state[k], v), f"{mode}: {k} differs"
        if chunk_ms:
            assert out["scheduler"]["chunk_runs"] > 0


# ---- operator worker threads -------------------------------------------------------------

def test_workers_run_jobs_in_parallel_threads_and_hand_back_errors() -> None:
    import threading

    from recs_core.sched.workers import OperatorWorkers

    seen: list[tuple[int, str]] = []

    def run(job: int) -> None:
        if job < 0:
            raise ValueError(f"bad job {job}")
        seen.append((job, threading.current_thread().name))

    w = OperatorWorkers(2, run)
    done: list[int] = []
    todo = list(range(20))
    deadline = time.perf_counter() + 10
    while len(done) < 20 and time.perf_counter() < deadline:
        for i in w.idle():
            if todo:
                w.submit(i, todo.pop(0))
        for job, start, end in w.completed():
            assert end >= start
            done.append(job)
    assert sorted(done) == list(range(20))
    assert {name for _, name in seen} <= {"recs-operator-0", "recs-operator-1"}
    w.submit(w.idle()[0], -1)
    with pytest.raises(ValueError, match="bad job -1"):
        while time.perf_counter() < deadline:
            list(w.completed())
    w.close()


def test_pending_keeps_buffers_alive_until_completion() -> None:
    """mpi4py keeps no reference to an Iallreduce's send buffer; a Pending must, or the
    freed memory is reused (or unmapped) while MPI still reads it (seen with Open MPI)."""
    import gc
    import weakref

    from mpi4py import MPI

    comm = MPI.COMM_SELF
    inbox = np.zeros(4, np.float32)
    send = np.arange(4, dtype=np.float32)
    gone = weakref.ref(send)
    recv_req = comm.Irecv([inbox, MPI.FLOAT], source=0, tag=7)
    p = Pending([recv_req], lambda: inbox, "test exchange", comm, keep=(send,))
    del send
    gc.collect()
    assert gone() is not None and not p.test()
    comm.Isend([gone(), MPI.FLOAT], dest=0, tag=7).Wait()
    np.testing.assert_array_equal(p.wait(), np.arange(4, dtype=np.float32))
    gc.collect()
    assert gone() is None  # released once complete


def test_spans_measured_at_once_equal_the_clipped_scan() -> None:
    rng = np.random.default_rng(5)
    for n in [0, 1, *[30] * 200]:
        raw = [(float(a), float(a + d)) for a, d in zip(rng.uniform(0, 100, n),
                                                        rng.uniform(0, 5, n))]
        spans = _union(raw)
        at = _Measure(spans)
        a = rng.uniform(-5, 105, 20)
        b = a + rng.uniform(0, 20, 20)
        if spans:  # a span's own ends, and an empty interval at its end
            edge = spans[len(spans) // 2]
            a = np.append(a, [edge[0], edge[1]])
            b = np.append(b, [edge[1], edge[1]])
        want = [sum(y - x for x, y in _clip(spans, lo, hi)) for lo, hi in zip(a, b)]
        np.testing.assert_allclose(at.within(a, b), want, rtol=0, atol=1e-9)
