"""Threads per rank under a bare mpiexec: each rank's BLAS and Numba threads are this
host's cores over its ranks, as mpi_launch.sh sets them, unless the user set them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recs_core.threads import THREAD_VARS, threads_per_rank
from tests.conftest import ROOT, mpiexec


def test_threads_per_rank_from_the_launchers_local_size() -> None:
    env = {"MPI_LOCALNRANKS": "4"}
    assert threads_per_rank(env, 16) == 4
    assert all(env[v] == "4" for v in THREAD_VARS)
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}
    assert threads_per_rank(env, 2) == 1 and env["OMP_NUM_THREADS"] == "1"
    for alone in ({}, {"MPI_LOCALNRANKS": "1"}, {"MPI_LOCALNRANKS": "x"}):
        assert threads_per_rank(alone, 8) is None and not set(alone) & set(THREAD_VARS)
    mine = {"MPI_LOCALNRANKS": "2", "OMP_NUM_THREADS": "3"}
    assert threads_per_rank(mine, 8) is None and "NUMBA_NUM_THREADS" not in mine


@pytest.mark.mpi
@pytest.mark.parametrize("preset", [None, "2"])
def test_ranks_of_a_bare_mpiexec_share_the_cores(preset: str | None) -> None:
    """mpiexec -n 2 without mpi_launch.sh: each rank sees cores // 2 threads in every
    variable (and Numba's pool that size); a variable the user set is left alone."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(ROOT)
    if preset:
        env["OMP_NUM_THREADS"] = preset
    code = ("import json, os, recs_core, numba; print(json.dumps([os.environ.get(v) for v in "
            f"{list(THREAD_VARS)!r}] + [numba.config.NUMBA_NUM_THREADS]))")
    r = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", code], capture_output=True,
                       text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(rows) == 2
    cores = len(os.sched_getaffinity(0))
    want = str(max(1, cores // 2))
    for row in rows:
        if preset:
            assert row[0] == preset and row[1:4] == [None, None, None]
        else:
            assert row == [want] * 4 + [int(want)]
