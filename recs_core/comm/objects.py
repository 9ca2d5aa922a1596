"""Python objects exchanged between ranks (pickled), each collective posted and waited
with the job's deadline (:class:`~recs_core.comm.pending.Pending`): a rank that dies or
hangs ends the job with a message naming the exchange, never a wait for ever, and a
waiting rank still sees Ctrl-C (mpi4py's blocking ``bcast``/``gather`` would do
neither). The payload moves in two steps: the sizes, then the bytes.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recs_core.comm.pending import Pending

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

T = TypeVar("T")


def _wait(request: Any, what: str, comm: Comm, keep: tuple[Any, ...]) -> None:
    Pending([request], lambda: None, what, comm, keep=keep, traced=False).wait()


def _pickled(value: Any) -> np.ndarray:
    return np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)


def _unpickled(buf: np.ndarray, sizes: np.ndarray) -> list[Any]:
    ends = np.cumsum(sizes)
    return [pickle.loads(buf[e - s:e]) for s, e in zip(sizes.tolist(), ends.tolist())]


def _displacements(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def bcast_object(comm: Comm, value: T, what: str, root: int = 0) -> T:
    """``root``'s ``value`` on every rank of ``comm``."""
    mine = _pickled(value) if comm.Get_rank() == root else None
    size = np.array([0 if mine is None else len(mine)], np.int64)
    _wait(comm.Ibcast(size, root=root), what, comm, (size,))
    if mine is not None:
        _wait(comm.Ibcast(mine, root=root), what, comm, (mine,))
        return value
    buf = np.empty(int(size[0]), np.uint8)
    _wait(comm.Ibcast(buf, root=root), what, comm, (buf,))
    return pickle.loads(buf)


def gather_objects(comm: Comm, value: T, what: str, root: int = 0) -> list[T] | None:
    """Every rank's ``value`` in rank order on ``root``; None on the other ranks."""
    from mpi4py import MPI

    mine = _pickled(value)
    me = np.array([len(mine)], np.int64)
    sizes = np.zeros(comm.Get_size(), np.int64)
    _wait(comm.Igather(me, sizes, root=root), what, comm, (me, sizes))
    if comm.Get_rank() != root:
        _wait(comm.Igatherv(mine, None, root=root), what, comm, (mine,))
        return None
    buf = np.empty(int(sizes.sum()), np.uint8)
    _wait(comm.Igatherv(mine, [buf, (sizes, _displacements(sizes)), MPI.BYTE], root=root),
          what, comm, (mine, buf, sizes))
    return _unpickled(buf, sizes)


def allgather_objects(comm: Comm, value: T, what: str) -> list[T]:
    """Every rank's ``value`` in rank order, on every rank."""
    from mpi4py import MPI

    mine = _pickled(value)
    me = np.array([len(mine)], np.int64)
    sizes = np.zeros(comm.Get_size(), np.int64)
    _wait(comm.Iallgather(me, sizes), what, comm, (me, sizes))
    buf = np.empty(int(sizes.sum()), np.uint8)
    _wait(comm.Iallgatherv(mine, [buf, (sizes, _displacements(sizes)), MPI.BYTE]), what,
          comm, (mine, buf, sizes))
    return _unpickled(buf, sizes)


def barrier(comm: Comm, what: str) -> None:
    """Return once every rank of ``comm`` has called it."""
    _wait(comm.Ibarrier(), what, comm, ())


def dup(comm: Comm, what: str) -> Comm:
    """A duplicate of ``comm`` (a collective: every rank calls it)."""
    new, request = comm.Idup()
    _wait(request, what, comm, ())
    return new
