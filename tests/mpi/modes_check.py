"""Run under mpiexec: every schedule (``--mode``) trains exactly the same model.

Each mode trains a fresh job on the same data; the scores of every step, the dense
parameters and the full embedding tables must be bit-identical to mode "sequential",
also mid-pass, when the step hook (periodic checkpoints) sees the model. The dense
weights are split into several gradient buckets (so the task loop's bucket-by-bucket
dense update and the forward that waits for each bucket are exercised), with Adam as the
dense optimizer for "wdl" (its step count advances once per step, however many buckets).
The pipeline plans must be the same on every rank, and the Chrome trace must hold
every rank's track.

argv: data file, placement ("row" | "table"), preset ("dlrm" | "wdl", with "-dyn": the
categorical tables dynamic), trace file
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from mpi4py import MPI

from recs_core.comm.world import mpi_world
from recs_core.dense import layers
from recs_core.sched import MODES
from recs_core.sched.guard import GuardSettings
from recs_core.sched.policy import CHUNK_MS
from recs_core.sched.training_pass import StepHook
from recs_core.train.job import Job
from tests.conftest import small_test_spec
from tests.test_dynamic_train import DYN
from tests.test_dynamic_train import spec as dyn_spec

# the schedule guard probing and deciding every few steps (switching at step boundaries)
EAGER_GUARD = GuardSettings(warmup=1, block=2, rounds=1, every=5)


def train(path: str, placement: str, preset: str, mode: str, trace: str | None,
          workers: int = 0, chunk_ms: float = CHUNK_MS,
          guard: GuardSettings | None = None) -> tuple:
    world = mpi_world()
    if preset.endswith("-dyn"):  # the categorical tables dynamic (hash-keyed)
        job = Job(dyn_spec(preset[:-4], dynamic=DYN, placement=placement), world=world)
    else:
        job = Job(small_test_spec(preset, fitted=True, placement=placement,
                                  optimizer="adam" if preset == "wdl" else None), world=world)
    net = job.model.net
    first = net.top if hasattr(net, "top") else net.deep
    assert len(first.weight_rows(0)) > 1, "the first dense layer should span several buckets"
    snaps: list = []

    def snapshot(steps: int) -> None:  # mid-pass state, as a periodic checkpoint sees it
        snaps.append((steps, [p.copy() for p in job.model.net.params],
                      job.model.emb.shards.local.copy()))

    out = job.run([path], mode=mode, trace=trace, replan_every=3, lookahead=2,
                  hook=StepHook(5, snapshot), workers=workers, chunk_ms=chunk_ms, guard=guard)
    out["snapshots"] = snaps
    tables = [job.model.emb.gather_tables(world.comm)]
    if job.model.wide is not None:
        tables.append(job.model.wide.gather_tables(world.comm))
    dense = [p.copy() for p in job.model.net.params]
    dyn = job.model.emb.dynamic  # this rank's dynamic rows (keys, values, counts, ...)
    out["dynamic_rows"] = {t: {k: np.copy(v) for k, v in dyn.arrays(t).items()}
                           for t in dyn.tables}
    return out, job.step_probs, dense, tables


def main(path: str, placement: str, preset: str, trace: str) -> None:
    layers.GRAD_PIECE_ELEMS = 4096  # the small test MLPs' weights: several buckets each
    world = mpi_world()
    comm = world.comm
    ref_out, ref_probs, ref_dense, ref_tables = train(path, placement, preset, "sequential",
                                                     None)
    assert bool(ref_out["dynamic_rows"]) == preset.endswith("-dyn")
    # every step sums every dense gradient once: its payload is the parameters' bytes
    dense_mib = 4 * sum(p.size for p in ref_dense) / 2**20
    assert abs(ref_out["sent_mib_per_step"]["dense gradient allreduce"] - dense_mib) < 1e-4
    # the task loop also with operator worker threads (lock-free rings), and with every
    # row-wise feature chain run on row chunks (a tiny chunk cost: chunks of 16 rows)
    tiny = 1e-6
    for mode, workers, chunk_ms, guard in ([(m, 0, CHUNK_MS, None) for m in MODES[1:]]
                                           + [("recs", 2, CHUNK_MS, None),
                                              ("recs", 0, tiny, None),
                                              ("recs-intra", 1, tiny, None),
                                              ("recs", 0, CHUNK_MS, EAGER_GUARD)]):
        traced = guard is EAGER_GUARD
        out, probs, dense, tables = train(path, placement, preset, mode,
                                          trace if traced else None, workers, chunk_ms, guard)
        if chunk_ms == tiny:
            assert out["scheduler"]["chunk_runs"] > 0, (mode, out["scheduler"])
        assert out["train_rows"] == ref_out["train_rows"], (mode, out, ref_out)
        # the same exchanges carry the same bytes, whenever they run
        assert out["sent_mib_per_step"] == ref_out["sent_mib_per_step"], mode
        assert len(probs) == len(ref_probs), mode
        assert [k for k, *_ in out["snapshots"]] == [k for k, *_ in ref_out["snapshots"]]
        for (k, d1, e1), (_, d2, e2) in zip(out["snapshots"], ref_out["snapshots"]):
            assert all(np.array_equal(a, b) for a, b in zip(d1, d2)), f"{mode}: after {k}"
            assert np.array_equal(e1, e2), f"{mode}: tables after step {k}"
        for s, (a, b) in enumerate(zip(probs, ref_probs)):
            assert np.array_equal(a, b), f"{mode}: step {s} scores differ"
        for i, (a, b) in enumerate(zip(dense, ref_dense)):
            assert np.array_equal(a, b), f"{mode}: dense parameter {i} differs"
        for t, arrays in ref_out["dynamic_rows"].items():
            for k, a in arrays.items():
                assert np.array_equal(out["dynamic_rows"][t][k], a), f"{mode}: dyn {t} {k}"
        if world.rank == 0:
            for k, (set_a, set_b) in enumerate(zip(tables, ref_tables)):
                for t, (a, b) in enumerate(zip(set_a, set_b)):
                    assert np.array_equal(a, b), f"{mode}: table {k}/{t} differs"
        if mode.startswith("recs"):
            plans = comm.allgather(out["scheduler"]["plans"])
            assert plans[0], f"{mode}: no plan agreed"
            assert all(p == plans[0] for p in plans), f"{mode}: plans differ: {plans}"
            guarded = comm.allgather(out["scheduler"]["guard"])
            assert all(g == guarded[0] for g in guarded), f"{mode}: guards differ: {guarded}"
            if guard is EAGER_GUARD:  # a decision after every probe; both schedules ran
                steps = out["window_steps"]
                assert len(guarded[0]["probes"]) == (steps - 5) // 5 + 1, guarded[0]
                assert min(guarded[0]["steps"].values()) >= 2, guarded[0]
                assert sum(guarded[0]["steps"].values()) == steps, guarded[0]
            # memory stays flat: the previous, current and look-ahead batches at most
            assert out["scheduler"]["most_batches_held"] <= 2 + 2, out["scheduler"]
            for key in ("wall_ms", "cpu_busy_ms", "comm_ms", "idle_in_comm_ms"):
                assert out["step"][key] >= 0, (mode, out["step"])
    if world.rank == 0:
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
        pids = {e["pid"] for e in events if e["ph"] == "X"}
        assert pids == set(range(world.size)), pids
        names = {e["name"] for e in events if e["ph"] == "X"}
        assert not any(n.startswith("worker ") for n in names)
        assert any(n.startswith("train ") for n in names), sorted(names)[:10]
        assert any(e["cat"] == "comm" for e in events if e["ph"] == "X")
        assert any(n.startswith("guard: ") for n in names), sorted(names)[:10]
        os.unlink(trace)
    comm.Barrier()
    sys.stdout.write(f"OK rank {world.rank}\n")
    sys.stdout.flush()
    MPI.COMM_WORLD.Barrier()


if __name__ == "__main__":
    main(*sys.argv[1:5])
