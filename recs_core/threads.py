"""Threads per rank when ranks are launched by a bare ``mpiexec``/``mpirun``.

``mpi_launch.sh`` gives each rank ``cores / ranks on the host`` BLAS and Numba threads.
Launched without it, every rank's BLAS would use every core: on a 2-core host 2 ranks
scored 200,000 held-out rows in 9.1-10.2 s instead of 2.4 s (2.2 s under mpi_launch.sh).
So, where the user set none of the thread variables and the launcher says several ranks
share this host (MPICH's ``MPI_LOCALNRANKS``, Open MPI's ``OMPI_COMM_WORLD_LOCAL_SIZE``),
they are set the same way. Imported first by the package: BLAS reads them when NumPy
loads (a process that loaded NumPy before ``recs_core`` keeps its own setting).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")
LOCAL_RANKS_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def threads_per_rank(environ: MutableMapping[str, str], cores: int) -> int | None:
    """Set the thread variables in ``environ`` to ``cores`` // the ranks on this host,
    where the launcher says there are several and none is set; return that number
    (None: left alone)."""
    if any(v in environ for v in THREAD_VARS):
        return None
    local = next((int(environ[v]) for v in LOCAL_RANKS_VARS
                  if environ.get(v, "").isdigit()), 0)
    if local < 2:
        return None
    n = max(1, cores // local)
    for v in THREAD_VARS:
        environ[v] = str(n)
    return n


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


threads_per_rank(os.environ, _cores())
