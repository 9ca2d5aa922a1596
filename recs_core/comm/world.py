"""The MPI world of a job, imported lazily so that single-process commands need no MPI."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

# Pause between printing an aborting rank's message and MPI_Abort: the launcher (MPICH's
# hydra) forwards the ranks' stderr through pipes and, handling the abort first, could
# drop a message it had not forwarded yet (seen: a test's expected error text missing
# once in ~650 runs).
ABORT_GRACE_S = 0.3
T = TypeVar("T")
# An mpi4py communicator (mpi4py.MPI.Intracomm), imported lazily: single-process commands
# need no MPI.
Comm = Any


def abort_ranks(comm: Comm, code: int, message: str) -> NoReturn:
    """Print ``message`` on stderr, then end every rank of ``comm`` with ``code``; never
    returns (MPICH's MPI_Abort returns to the caller, which the launcher then kills)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the abort
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(code)
    os._exit(code)


@dataclass
class World:
    """Rank, size and the communicator (None when running without MPI)."""

    rank: int = 0
    size: int = 1
    comm: Comm = None

    @classmethod
    def of(cls, comm: Comm) -> World:
        """The world of ``comm`` (a 1-rank world for None)."""
        return cls() if comm is None else cls(comm.Get_rank(), comm.Get_size(), comm)

    # Every collective below is posted and waited with the job's deadline
    # (recs_core.comm.objects): a dead or stopped peer ends the job, never a wait for ever.

    def allgather(self, value: T, what: str = "allgather") -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        from recs_core.comm.objects import allgather_objects

        return allgather_objects(self.comm, value, what)

    def gather(self, value: T, what: str = "gather", root: int = 0) -> list[T] | None:
        """Every rank's ``value``, in rank order, on ``root``; None on the others."""
        if self.size == 1:
            return [value]
        from recs_core.comm.objects import gather_objects

        return gather_objects(self.comm, value, what, root)

    def allreduce_sum(self, value: Any, what: str = "sum over the ranks") -> Any:
        parts = self.allgather(value, what)
        return sum(parts[1:], parts[0])

    def allreduce_max(self, value: float, what: str = "max over the ranks") -> float:
        return max(self.allgather(value, what))

    def gather_dicts_sum(self, d: dict[str, int]) -> dict[str, int]:
        """Sum of per-rank counters (every rank gets the result)."""
        out: dict[str, int] = {}
        for part in self.allgather(d, "counter sum"):
            for k, v in part.items():
                out[k] = out.get(k, 0) + v
        return out

    def everyone(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raises on any rank, raise on every rank (the
        failing rank its own error, the others a RecsError naming it): no rank is left
        waiting in a collective."""
        from recs_core.errors import RecsError

        try:
            value, err = fn(), None
        except Exception as e:  # shared with the other ranks, then re-raised here
            value, err = None, e
        if self.size > 1:
            msgs = self.allgather(None if err is None else f"rank {self.rank}: {err}",
                                  "error check")
            first = next((m for m in msgs if m), None)
            if err is None and first is not None:
                raise RecsError(first)
        if err is not None:
            raise err
        return value  # type: ignore[return-value]

    def bcast(self, value: T, what: str = "broadcast") -> T:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        from recs_core.comm.objects import bcast_object

        return bcast_object(self.comm, value, what)

    def barrier(self, what: str = "barrier") -> None:
        if self.size > 1:
            from recs_core.comm.objects import barrier

            barrier(self.comm, what)

    def abort(self, code: int, message: str) -> None:
        """Print ``message`` and end every rank (no rank is left waiting)."""
        if self.comm is not None and self.size > 1:
            abort_ranks(self.comm, code, message)
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        raise SystemExit(code)


def launched_ranks() -> int:
    """The ranks the launcher started, from its environment (MPICH, Open MPI); 1 when
    not launched by one. Known before MPI starts."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def mpi_world() -> World:
    """The MPI world (a 1-rank world if launched without mpiexec)."""
    from mpi4py import MPI

    return World.of(MPI.COMM_WORLD)


def job_world(world: World | None = None) -> World:
    """The world a library job runs in: ``world`` when given, else the one this process was
    launched in (MPI's when the launcher started several ranks; else one rank, without
    starting MPI). A one-rank world in a process launched on several ranks is warned about:
    each rank would run a whole job of its own."""
    ranks = launched_ranks()
    if "mpi4py.MPI" in sys.modules:  # started already (perhaps by a launcher we do not know)
        ranks = max(ranks, mpi_world().size)
    if world is None:
        return mpi_world() if ranks > 1 else World()
    if world.size == 1 and ranks > 1:
        warnings.warn(f"a one-rank job in a process launched on {ranks} ranks: each rank runs "
                      f"a whole job of its own (leave world out for one job over the ranks)",
                      RuntimeWarning, stacklevel=3)
    return world
