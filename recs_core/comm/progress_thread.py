"""A thread that pokes MPI's progress engine about every millisecond.

MPI moves a posted non-blocking collective forward only inside MPI calls; over TCP a
rank busy in a long CPU task (an MLP backward) would leave its exchanges stalled. This
thread calls ``Iprobe`` on a private communicator (never on the job's requests: two
threads must not test one request) while the main thread computes in BLAS or compiled
kernels, which release the GIL. It needs MPI_THREAD_MULTIPLE (mpi4py's default).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from recs_core.comm.objects import dup

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

INTERVAL_S = 1e-3


def over_network(comm: Comm) -> bool:
    """Whether this job's messages go over a network: ranks on several nodes, or MPI
    told to use TCP between local ranks (as bench/emulated_network.sh does). On shared
    memory the thread only costs (ranks copy messages with their own CPUs). Collective."""
    import os

    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    several_nodes = node.Get_size() < comm.Get_size()
    node.Free()
    btl = os.environ.get("OMPI_MCA_btl", "")
    forced_tcp = (os.environ.get("MPIR_CVAR_NOLOCAL") == "1"
                  or ("tcp" in btl and not any(s in btl for s in ("vader", "sm"))))
    return several_nodes or forced_tcp


class ProgressThread:
    """Start with :meth:`start`; :meth:`stop` joins it (also usable as a context manager)."""

    def __init__(self, comm: Comm, interval: float = INTERVAL_S) -> None:
        from mpi4py import MPI

        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError("the progress thread needs MPI_THREAD_MULTIPLE")
        self._comm = dup(comm, "communicator duplication")
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recs-mpi-progress", daemon=True)
        self.polls = 0

    def _run(self) -> None:
        from mpi4py import MPI

        while not self._stop.wait(self._interval):
            self._comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
            self.polls += 1

    def start(self) -> ProgressThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._comm.Free()

    def __enter__(self) -> ProgressThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
