"""Posted non-blocking exchanges: a handle the caller waits on later, never forever.

Every wait on another rank has a deadline; past it the job is aborted with a message
naming the exchange and the rank, so that no rank waits forever on a dead peer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
SPIN_S = 0.05  # busy-poll this long before backing off to short sleeps
_timeout_s = DEFAULT_TIMEOUT_S  # the process's deadline (--comm-timeout)


def set_comm_timeout(seconds: float) -> None:
    """The deadline of every exchange this process posts from now on, unless given one
    (``recs train --comm-timeout``; default :data:`DEFAULT_TIMEOUT_S`)."""
    global _timeout_s
    if not 0 < seconds < float("inf"):
        raise ValueError(f"the comm timeout must be a positive number of seconds, got {seconds}")
    _timeout_s = float(seconds)


def comm_timeout() -> float:
    """The deadline, in seconds, of exchanges posted without one."""
    return _timeout_s


class Pending(Generic[T]):
    """MPI requests in flight and the step that turns their buffers into a result."""

    def __init__(self, requests: list[Any], finish: Callable[[], T], what: str, comm: Comm,
                 timeout: float | None = None, keep: tuple[Any, ...] = (),
                 nbytes: int | None = None, sent: int = 0, traced: bool = True) -> None:
        """``keep``: buffers MPI may still read or write until completion. mpi4py keeps
        none alive for some non-blocking collectives (``Iallreduce``), and a freed send
        buffer would be reused by the next allocation while the MPI library (Open MPI
        over TCP, say) still sends from it. ``nbytes``: the exchange's size (bytes this
        rank moves to and from the others; an allreduce's payload), which cost estimates
        scale by. ``sent``: the bytes this rank sends to the others (its traffic).
        ``traced``: a timeline shows its time in flight (not for one posted far ahead,
        which is no window to fill). ``timeout``: seconds from now (default
        :func:`comm_timeout`)."""
        self.requests, self._finish, self.what, self.comm = requests, finish, what, comm
        self.nbytes, self.sent, self.traced = nbytes, sent, traced
        self.expected: float | None = None  # estimated seconds from post to completion
        self._keep = keep
        self.timeout = _timeout_s if timeout is None else timeout
        self.posted = time.perf_counter()
        self.completed: float | None = None
        self._result: T | None = None
        self._done = False

    @classmethod
    def ready(cls, value: T, what: str) -> Pending[T]:
        """An exchange with nothing to move (one rank): complete from the start."""
        done: Pending[T] = cls([], lambda: value, what, None)
        done.completed = done.posted
        return done

    def test(self) -> bool:
        """Progress MPI and tell whether every request has completed (never blocks)."""
        if self.completed is None:
            from mpi4py import MPI

            if MPI.Request.Testall(self.requests):
                self._complete()
        return self.completed is not None

    def settled(self) -> bool:
        """Whether every request has completed, judged without an MPI call: after one
        ``Request.Testsome`` over many exchanges' requests (as the task loop polls), the
        completed ones are null."""
        if self.completed is None and not any(self.requests):
            self._complete()
        return self.completed is not None

    def _complete(self) -> None:
        self.completed = time.perf_counter()
        self._keep = ()

    def check_deadline(self, now: float) -> None:
        """Abort the job if the exchange is past its deadline (a peer died or hung)."""
        if now > self.posted + self.timeout:
            from recs_core.comm.world import abort_ranks

            abort_ranks(self.comm, 3, f"recs: error: rank {self.comm.Get_rank()}: {self.what} "
                        f"did not complete within {self.timeout:.0f} s (a peer rank died or "
                        "hung); aborting the job")

    def result(self) -> T:
        """The result of a completed exchange (runs its finishing step once)."""
        if not self._done:
            assert self.completed is not None, f"{self.what}: result() before completion"
            self._result = self._finish()
            self._done = True
        return self._result  # type: ignore[return-value]

    def wait(self) -> T:
        """The exchange's result; polls with a short back-off and aborts past the deadline."""
        if not self._done:
            poll_until(self.test, [self])
        return self.result()


def poll_until(done: Callable[[], bool], pending: list[Pending]) -> None:
    """Call ``done()`` (it polls MPI) until it is true, aborting the job if one of
    ``pending`` passes its deadline. Polls without pause for SPIN_S: MPI progresses only
    inside its calls, and a sleep per poll would add up over the rounds of a collective;
    then with pauses growing to 1 ms."""
    t0, pause = time.perf_counter(), 0.0
    while not done():
        now = time.perf_counter()
        for p in pending:
            p.check_deadline(now)
        if now - t0 > SPIN_S:
            time.sleep(pause)
            pause = min(1e-3, pause + 2e-5)


def post_allreduce(comm: Comm, local: np.ndarray, what: str, op: str = "sum",
                   finish: Callable[[np.ndarray], T] | None = None,
                   timeout: float | None = None, traced: bool = True) -> Pending:
    """Post the element-wise ``op`` ("sum" or "max") of ``local`` over the ranks of
    ``comm``; the result is the reduced array, or ``finish(reduced)``. With no
    communicator (one rank) it is complete at once."""
    local = np.ascontiguousarray(local)
    done = finish or (lambda total: total)
    if comm is None or comm.Get_size() == 1:
        return Pending.ready(done(local.copy()), what)
    from mpi4py import MPI

    total = np.empty_like(local)
    req = comm.Iallreduce(local, total, op={"sum": MPI.SUM, "max": MPI.MAX}[op])
    return Pending([req], lambda: done(total), what, comm, timeout, keep=(local,),
                   nbytes=local.nbytes, sent=local.nbytes, traced=traced)


def post_alltoallv(comm: Comm, send: np.ndarray, send_counts: np.ndarray,
                   recv_counts: np.ndarray, what: str, tag: int,
                   timeout: float | None = None,
                   finish: Callable[[np.ndarray], T] | None = None) -> Pending:
    """Post an all-to-all of rows: ``send_counts[r]`` rows of ``send`` (in rank order) go
    to rank r, ``recv_counts[r]`` rows come from it; the result is the received rows in
    rank order, or ``finish(received)``. Every rank posts the exchanges of one ``comm``
    and ``tag`` in the same order.

    One point-to-point message per peer and direction (empty ones too, so that the k-th
    message of ``tag`` always belongs to the k-th exchange): MPICH's Ialltoallv moves
    about 8 KiB per poll while the rank computes between polls, so an exchange posted
    before a long task waited for many tasks; Isend/Irecv complete in a few polls
    (bench/bench_exchange.py)."""
    row_shape = send.shape[1:]
    recv = np.empty((int(recv_counts.sum()),) + row_shape, dtype=send.dtype)
    send = np.ascontiguousarray(send)
    s_end, r_end = np.cumsum(send_counts).tolist(), np.cumsum(recv_counts).tolist()
    me, size = comm.Get_rank(), comm.Get_size()
    bounds = [(s - c, s, r - d, r) for s, c, r, d in
              zip(s_end, send_counts.tolist(), r_end, recv_counts.tolist())]
    requests = [comm.Irecv(recv[bounds[p][2]:bounds[p][3]], source=p, tag=tag)
                for p in range(size) if p != me]
    requests += [comm.Isend(send[bounds[p][0]:bounds[p][1]], dest=p, tag=tag)
                 for p in range(size) if p != me]
    s0, s1, r0, r1 = bounds[me]  # what a rank sends itself never leaves the process
    recv[r0:r1] = send[s0:s1]
    row_bytes = send.itemsize * int(np.prod(row_shape, dtype=np.int64))
    sent = (s_end[-1] - (s1 - s0)) * row_bytes
    moved = sent + (r_end[-1] - (r1 - r0)) * row_bytes
    done = finish or (lambda received: received)
    return Pending(requests, lambda: done(recv), what, comm, timeout, keep=(send, recv),
                   nbytes=moved, sent=sent)
