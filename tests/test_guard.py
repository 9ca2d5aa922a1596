"""The schedule guard's decisions, on synthetic step times."""

import numpy as np
import pytest

from recs_core.sched.guard import BLOCKING, OVERLAP, GuardSettings, ScheduleGuard

S = GuardSettings(warmup=2, block=3, rounds=2, every=20)


def test_probe_blocks_alternate_blocking_overlap_overlap_blocking() -> None:
    g = ScheduleGuard(S)
    got = "".join("B" if g.schedule(t) == BLOCKING else "O" for t in range(45))
    # warm-up, probe (B O O B blocks of 3), the choice until the next probe at step 22
    probe = "BBBOOOOOOBBB"
    assert got == "OO" + probe + "O" * 8 + probe + "O" * 8 + "BBB"
    assert [t for t in range(60) if g.decision_due(t)] == [14, 34, 54]


def run_probe(g: ScheduleGuard, first: int, overlap_s: float, blocking_s: float,
              switch_s: float = 10.0) -> None:
    """Record every step of the probe starting at ``first``; the first step of each block
    (which pays the switch) gets ``switch_s``."""
    for t in range(first, first + S.probe_steps):
        if (t - first) % S.block == 0:
            g.record(t, switch_s)
        else:
            g.record(t, overlap_s if g.schedule(t) == OVERLAP else blocking_s)


def test_the_faster_schedule_wins_and_a_later_probe_can_reverse_it() -> None:
    g = ScheduleGuard(S)
    run_probe(g, 2, overlap_s=0.050, blocking_s=0.040)
    np.testing.assert_allclose(g.local_medians(), [0.050, 0.040])
    assert g.decide(14, g.local_medians()) == BLOCKING
    assert [g.schedule(t) for t in range(14, 22)] == [BLOCKING] * 8
    run_probe(g, 22, overlap_s=0.030, blocking_s=0.040)  # e.g. the network got slower
    np.testing.assert_allclose(g.local_medians(), [0.030, 0.040])  # only this probe
    assert g.decide(34, g.local_medians()) == OVERLAP
    assert [p.choice for p in g.probes] == [BLOCKING, OVERLAP]
    assert g.probes[0].overlap_ms == 50.0 and g.probes[0].blocking_ms == 40.0


def test_steps_outside_probes_and_first_steps_of_blocks_are_not_counted() -> None:
    g = ScheduleGuard(S)
    for t in (0, 1, 14, 15, 21):  # warm-up and between probes: ignored
        g.record(t, 99.0)
    run_probe(g, 2, overlap_s=0.020, blocking_s=0.030, switch_s=99.0)
    np.testing.assert_allclose(g.local_medians(), [0.020, 0.030])


@pytest.mark.parametrize("blocking_s,choice", [(0.0996, OVERLAP), (0.0985, BLOCKING)])
def test_overlap_keeps_ties_within_the_tolerance(blocking_s: float, choice: str) -> None:
    g = ScheduleGuard(S)  # tolerance 1%: blocking must be faster than 0.099
    assert g.decide(14, np.array([0.100, blocking_s])) == choice


def test_an_unmeasured_schedule_never_wins() -> None:
    g = ScheduleGuard(S)
    assert np.isnan(g.local_medians()).all()
    assert g.decide(14, np.array([np.nan, np.nan])) == OVERLAP
    assert g.decide(34, np.array([np.nan, 0.01])) == OVERLAP


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        GuardSettings(block=1)
    with pytest.raises(ValueError):
        GuardSettings(block=3, rounds=2, every=12)


def test_a_blocking_step_is_charged_with_its_batch_prepared_ahead() -> None:
    # blocking steps after overlapped ones find their batches partly prepared (15 ms):
    # 40 ms measured, 55 ms in a blocking pass; overlapped steps prepare later batches in
    # turn, so the work done ahead of them is not added
    g = ScheduleGuard(S)
    for t in range(2, 2 + S.probe_steps):
        blocking = g.schedule(t) == BLOCKING
        g.record(t, 0.040 if blocking else 0.050, ahead=0.015)
    np.testing.assert_allclose(g.local_medians(), [0.050, 0.055])
    assert g.decide(14, g.local_medians()) == OVERLAP
