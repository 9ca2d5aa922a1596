"""Bytes this rank sends to other ranks, per kind of exchange: the traffic behind a step's
comm time (the job's summary reports it per step).

Exchanges record when they are posted. For an all-to-all the figure is exact (what this
rank sends to the others); for an allreduce it is the payload (one rank's buffer: on two
ranks both a ring and recursive doubling send about that much per rank).
"""

from __future__ import annotations

_sent: dict[str, int] = {}


def add(kind: str, nbytes: int) -> None:
    """Count ``nbytes`` sent by this rank under ``kind`` (an exchange's name)."""
    _sent[kind] = _sent.get(kind, 0) + int(nbytes)


def sent() -> dict[str, int]:
    """Bytes sent per kind since the last :func:`reset`."""
    return dict(_sent)


def reset() -> None:
    """Start counting from zero (e.g. at the start of a training pass)."""
    _sent.clear()
