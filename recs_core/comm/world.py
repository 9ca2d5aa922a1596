"""The MPI world of a job, imported lazily so that single-process commands need no MPI."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# Pause between printing an aborting rank's message and MPI_Abort: the launcher (MPICH's
# hydra) forwards the ranks' stderr through pipes and, handling the abort first, could
# drop a message it had not forwarded yet (seen: a test's expected error text missing
# once in ~650 runs).
ABORT_GRACE_S = 0.3
T = TypeVar("T")
# An mpi4py communicator (mpi4py.MPI.Intracomm), imported lazily: single-process commands
# need no MPI.
Comm = Any


def abort_ranks(comm: Comm, code: int, message: str) -> None:
    """Print ``message`` on stderr, then end every rank of ``comm`` with ``code``."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(code)


@dataclass
class World:
    """Rank, size and the communicator (None when running without MPI)."""

    rank: int = 0
    size: int = 1
    comm: Comm = None

    def allreduce_sum(self, value: Any) -> Any:
        return value if self.comm is None else self.comm.allreduce(value)

    def allreduce_max(self, value: float) -> float:
        if self.comm is None:
            return value
        from mpi4py import MPI

        return self.comm.allreduce(value, op=MPI.MAX)

    def gather_dicts_sum(self, d: dict[str, int]) -> dict[str, int]:
        """Sum of per-rank counters (every rank gets the result)."""
        if self.comm is None:
            return dict(d)
        out: dict[str, int] = {}
        for part in self.comm.allgather(d):
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
            msgs = self.comm.allgather(None if err is None else f"rank {self.rank}: {err}")
            first = next((m for m in msgs if m), None)
            if err is None and first is not None:
                raise RecsError(first)
        if err is not None:
            raise err
        return value  # type: ignore[return-value]

    def bcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        return value if self.size == 1 else self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code: int, message: str) -> None:
        """Print ``message`` and end every rank (no rank is left waiting)."""
        if self.comm is not None and self.size > 1:
            abort_ranks(self.comm, code, message)  # does not return
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        raise SystemExit(code)


def mpi_world() -> World:
    """The MPI world (a 1-rank world if launched without mpiexec)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return World(comm.Get_rank(), comm.Get_size(), comm)
