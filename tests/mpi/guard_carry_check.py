"""Run under mpiexec (or alone): the schedule guard's decision travels with the model.

Window 1 trains with a guard that probes every few steps and is saved; a fresh job loads
that checkpoint and trains window 2: its pass starts with window 1's choice (the JSON's
``scheduler.guard.started_with``, its first steps run that schedule), pools window 1's
probes, and every rank agrees. A job that keeps its model (a worker's next window) starts
from the same state without a checkpoint. The models equal a sequential chain's.

argv: window 1 file, window 2 file, work directory
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from recs_core.checkpoint import load_manifest
from recs_core.comm.world import mpi_world
from recs_core.sched.guard import GuardSettings
from recs_core.train.job import Job
from tests.conftest import small_test_spec

GUARD = GuardSettings(warmup=3, block=2, rounds=1, every=5)


def job() -> Job:
    return Job(small_test_spec(fitted=True), world=mpi_world())


def main(w1: str, w2: str, work: str) -> None:
    comm = MPI.COMM_WORLD
    first = job()
    out1 = first.run([w1], mode="recs", guard=GUARD)
    g1 = out1["scheduler"]["guard"]
    assert g1["started_with"] == "overlap" and g1["probes"], g1
    saved = first.save(Path(work) / "w1")
    meta = load_manifest(saved).meta
    assert meta["schedule_guard"] == first.guard_state, (meta, first.guard_state)
    assert meta["schedule_guard"]["choice"] == g1["choice"]

    second = job()
    second.load(saved)
    out2 = second.run([w2], mode="recs", guard=GUARD)
    g2 = out2["scheduler"]["guard"]
    assert g2["started_with"] == g1["choice"], (g1, g2)
    # the warm-up steps before window 2's first probe ran the carried choice
    assert g2["steps"][g1["choice"]] >= GUARD.warmup, g2
    assert g2["probes"][0]["pooled"] == min(GUARD.memory, len(g1["probes"]) + 1), (g1, g2)
    every = comm.allgather(g2)
    assert all(g == every[0] for g in every), every

    kept = first.run([w2], mode="recs", guard=GUARD)["scheduler"]["guard"]  # the worker
    assert kept["started_with"] == g1["choice"], kept

    reference = job()
    reference.load(saved)
    reference.run([w2], mode="sequential")
    for a, b in zip(second.model.net.params, reference.model.net.params):
        np.testing.assert_array_equal(a, b)
    sys.stdout.write(f"OK rank {comm.Get_rank()} {g1['choice']}\n")
    sys.stdout.flush()
    comm.Barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
