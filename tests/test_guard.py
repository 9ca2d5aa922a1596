"""The schedule guard's decisions, on recorded step timings (busy and idle ms per step)."""

import numpy as np
import pytest

from recs_core.sched.guard import BLOCKING, OVERLAP, GuardSettings, ScheduleGuard

S = GuardSettings(warmup=2, block=3, rounds=2, every=20)

# (busy, idle) ms per step, 2 ranks x 1 core, canonical workload, MPICH (issue 29's table
# and docs/BENCHMARKS.md): on shared memory a blocking step idles 2.0 ms, an overlapped
# one 3.3 ms and spends 1.3 ms more CPU; at 0.25 Gbit/s a blocking step idles most of its
# exchanges' 120 ms, overlap hides 90 ms of it for 4 ms of CPU
SHM = {BLOCKING: (46.8, 2.0), OVERLAP: (48.1, 3.3)}
SLOW = {BLOCKING: (60.0, 120.0), OVERLAP: (64.0, 30.0)}


def test_probe_blocks_alternate_blocking_overlap_overlap_blocking() -> None:
    g = ScheduleGuard(S)
    got = "".join("B" if g.schedule(t) == BLOCKING else "O" for t in range(45))
    # warm-up, probe (B O O B blocks of 3), the choice until the next probe at step 22
    probe = "BBBOOOOOOBBB"
    assert got == "OO" + probe + "O" * 8 + probe + "O" * 8 + "BBB"
    assert [t for t in range(60) if g.decision_due(t)] == [14, 34, 54]


def run_probe(g: ScheduleGuard, first: int, timings: dict, switch_ms: float = 999.0,
              noise: np.random.Generator | None = None) -> None:
    """Record every step of the probe starting at ``first`` with ``timings`` (busy, idle ms
    of each schedule; ``noise``: each step's busy time times a draw of 1 +- 8%); the first
    step of each block (which pays the switch) gets ``switch_ms`` busy."""
    for t in range(first, first + S.probe_steps):
        busy, idle = timings[g.schedule(t)]
        if (t - first) % S.block == 0:
            busy = switch_ms
        elif noise is not None:
            busy *= noise.uniform(0.92, 1.08)
        g.record(t, busy / 1e3, idle / 1e3)


def probe_start(k: int) -> int:
    return S.warmup + k * S.every


def decide(g: ScheduleGuard, k: int) -> str:
    return g.decide(probe_start(k) + S.probe_steps, g.local_medians())


def test_overlap_that_hides_less_idle_time_than_it_costs_cpu_is_not_run() -> None:
    g = ScheduleGuard(S)
    run_probe(g, probe_start(0), SHM)
    np.testing.assert_allclose(g.local_medians() * 1e3, [48.1, 3.3, 46.8, 2.0])
    assert decide(g, 0) == BLOCKING
    p = g.probes[0]
    assert (p.hidden_ms, p.extra_cpu_ms, p.pooled) == (-1.3, 1.3, 1)
    assert [g.schedule(t) for t in range(14, 22)] == [BLOCKING] * 8


def test_overlap_runs_where_it_hides_more_idle_time_than_it_adds_cpu() -> None:
    g = ScheduleGuard(S)
    run_probe(g, probe_start(0), SLOW)
    assert decide(g, 0) == OVERLAP
    assert (g.probes[0].hidden_ms, g.probes[0].extra_cpu_ms) == (90.0, 4.0)


def test_steps_outside_probes_and_first_steps_of_blocks_are_not_counted() -> None:
    g = ScheduleGuard(S)
    assert [t for t in range(24) if g.measures(t)] == [3, 4, 6, 7, 9, 10, 12, 13, 23]
    for t in (0, 1, 14, 15, 21):  # warm-up and between probes: ignored
        g.record(t, 99.0, 50.0)
    run_probe(g, probe_start(0), SLOW, switch_ms=5000.0)
    np.testing.assert_allclose(g.local_medians() * 1e3, [64.0, 30.0, 60.0, 120.0])


@pytest.mark.parametrize("hidden,choice", [(3.1, OVERLAP), (2.9, BLOCKING)])
def test_overlap_must_gain_more_than_the_margin(hidden: float, choice: str) -> None:
    # margin 1% of a 100 ms blocking step: overlap must hide 1 ms more than its 2 ms of CPU
    g = ScheduleGuard(S)
    agreed = np.array([92.0, 10.0 - hidden, 90.0, 10.0]) / 1e3  # o busy, o idle, b busy, b idle
    assert g.decide(14, agreed) == choice


def test_with_nothing_measured_the_choice_stands() -> None:
    g = ScheduleGuard(S)
    assert np.isnan(g.local_medians()).all()
    assert g.decide(14, np.full(4, np.nan)) == OVERLAP
    assert g.decide(34, np.array([np.nan, np.nan, 0.01, 0.0])) == OVERLAP
    assert g.probes[-1].pooled == 0 and g.remembered == []


def test_pooled_probes_keep_the_choice_through_noise_and_follow_a_lasting_change() -> None:
    # per-step busy times +-8% (this machine's run-to-run noise): one probe's medians can
    # rank the schedules either way; pooled over 4 probes the choice settles and holds,
    # and after the link slows down it follows within the probes pooled
    rng = np.random.default_rng(3)
    g = ScheduleGuard(S)
    choices = []
    for k in range(12):
        run_probe(g, probe_start(k), SHM if k < 8 else SLOW, noise=rng)
        choices.append(decide(g, k))
    assert choices[3:8] == [BLOCKING] * 5, choices
    assert choices[-1] == OVERLAP and choices[8:].index(OVERLAP) <= 2, choices
    assert [p.pooled for p in g.probes] == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    alone = ScheduleGuard(GuardSettings(warmup=2, block=3, rounds=2, every=20, memory=1))
    for k in range(2):
        run_probe(alone, probe_start(k), (SLOW, SHM)[k])
        decide(alone, k)
    assert [p.choice for p in alone.probes] == [OVERLAP, BLOCKING]  # the last probe only
    assert [p.pooled for p in alone.probes] == [1, 1]


def test_a_blocking_step_is_charged_with_its_batch_prepared_ahead() -> None:
    # blocking steps after overlapped ones find their batches partly prepared (15 ms):
    # 40 ms busy measured, 55 ms in a blocking pass; overlapped steps prepare later
    # batches in turn, so the work done ahead of them is not added
    g = ScheduleGuard(S)
    for t in range(2, 2 + S.probe_steps):
        blocking = g.schedule(t) == BLOCKING
        g.record(t, 0.040 if blocking else 0.045, 0.005, ahead=0.015)
    np.testing.assert_allclose(g.local_medians() * 1e3, [45.0, 5.0, 55.0, 5.0])
    assert decide(g, 0) == OVERLAP


def test_the_next_pass_starts_with_the_choice_and_pools_the_probes_it_carries() -> None:
    first = ScheduleGuard(S)
    run_probe(first, probe_start(0), SHM)
    assert decide(first, 0) == BLOCKING
    state = first.state()
    assert state == {"choice": BLOCKING, "probes": [vars(first.probes[0])]}

    g = ScheduleGuard(S)
    g.restore(state)
    assert [g.schedule(t) for t in range(S.warmup)] == [BLOCKING] * S.warmup
    run_probe(g, probe_start(0), SLOW)  # one probe that favours overlap, pooled with SHM's
    assert decide(g, 0) == OVERLAP and g.probes[0].pooled == 2
    assert g.probes[0].hidden_ms == pytest.approx((90.0 - 1.3) / 2)
    assert g.figures({OVERLAP: 1, BLOCKING: 2})["started_with"] == BLOCKING
    for bad in ({"choice": "fast", "probes": []}, {"probes": []},
                {"choice": OVERLAP, "probes": [{"step": 1}]}):
        with pytest.raises(ValueError, match="schedule guard state"):
            ScheduleGuard(S).restore(bad)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        GuardSettings(block=1)
    with pytest.raises(ValueError):
        GuardSettings(block=3, rounds=2, every=12)
    with pytest.raises(ValueError):
        GuardSettings(memory=0)
