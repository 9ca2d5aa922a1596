"""Online cost estimates (moving averages) and the plan every rank agrees on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from recs_core.comm.pending import post_allreduce
from recs_core.sched.flowshop import johnson_order

if TYPE_CHECKING:
    from mpi4py.MPI import Comm


class Costs:
    """Exponential moving averages of measured seconds, by key (operator, exchange, ...);
    for an exchange also of its size, so that an estimate scales with the message size."""

    def __init__(self, alpha: float = 0.25) -> None:
        self.alpha = alpha
        self.mean: dict[str, float] = {}

    def add(self, key: str, seconds: float, nbytes: int | None = None) -> None:
        """Record one measurement (of a message of ``nbytes``, if given)."""
        self._average(key, seconds)
        if nbytes is not None:
            self._average(key + " bytes", float(nbytes))

    def _average(self, key: str, value: float) -> None:
        old = self.mean.get(key)
        self.mean[key] = value if old is None else old + self.alpha * (value - old)

    def get(self, key: str, nbytes: int | None = None) -> float | None:
        """The average seconds of ``key``; with ``nbytes``, scaled to a message of that
        size (in proportion to the averaged size: the exchanges of one key differ in size
        by the batch's ids, or, for dense buckets, by their parameters)."""
        seconds = self.mean.get(key)
        size = self.mean.get(key + " bytes")
        if seconds is None or nbytes is None or not size:
            return seconds
        return seconds * nbytes / size


class PipelinePlan:
    """The pipeline order, from per-pipeline (CPU, comm) costs averaged over every rank.

    ``agree`` is a collective: every rank calls it at the same steps, so every rank
    computes the same order from the same numbers.
    """

    def __init__(self, pipelines: list[str], use_priority: bool) -> None:
        self.pipelines = pipelines
        self.use_priority = use_priority
        self.order = list(pipelines)
        self.agreed: np.ndarray = np.zeros((2, len(pipelines)))
        self.replans = 0
        self.history: list[list[str]] = []  # the order after each agreement

    def agree(self, cpu: list[float], comm_s: list[float], comm: Comm) -> list[str]:
        """Average this rank's per-pipeline (CPU, comm) estimates over ranks (an
        allreduce) and re-plan."""
        local = np.array([cpu, comm_s], dtype=np.float64)
        if comm is not None:
            local = post_allreduce(comm, local, "cost agreement").wait() / comm.Get_size()
        self.agreed = local
        if self.use_priority:
            order = [self.pipelines[i] for i in johnson_order(local[0], local[1])]
            if order != self.order:
                self.replans += 1
            self.order = order
        self.history.append(list(self.order))
        return self.order
