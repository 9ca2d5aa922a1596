"""Pipeline order as a two-machine flow shop: CPU stage (features, plan) then comm stage.

Each pipeline is a job that first needs the CPU (its feature operators and exchange
plan) and then the network (its exchange). Johnson's rule gives an order of minimum
makespan for this problem; ties are broken by index so every rank gets the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def johnson_order(cpu: Sequence[float], comm: Sequence[float]) -> list[int]:
    """Johnson's rule: jobs with cpu <= comm by increasing cpu, then the rest by
    decreasing comm."""
    if len(cpu) != len(comm):
        raise ValueError(f"{len(cpu)} cpu costs but {len(comm)} comm costs")
    first = sorted((i for i in range(len(cpu)) if cpu[i] <= comm[i]), key=lambda i: (cpu[i], i))
    last = sorted((i for i in range(len(cpu)) if cpu[i] > comm[i]), key=lambda i: (-comm[i], i))
    return first + last


def makespan(order: Sequence[int], cpu: Sequence[float], comm: Sequence[float]) -> float:
    """Finish time of the last exchange when pipelines run in ``order`` (one CPU, one
    network, each doing one job at a time)."""
    t_cpu = t_comm = 0.0
    for i in order:
        t_cpu += cpu[i]
        t_comm = max(t_comm, t_cpu) + comm[i]
    return max(t_cpu, t_comm)


def best_order(cpu: Sequence[float], comm: Sequence[float]) -> tuple[list[int], float]:
    """The minimum-makespan order by trying every permutation (for tests; n <= 8)."""
    if len(cpu) > 8:
        raise ValueError("best_order is exhaustive; use johnson_order for more than 8 jobs")
    best = min(itertools.permutations(range(len(cpu))), key=lambda o: makespan(o, cpu, comm))
    return list(best), makespan(best, cpu, comm)
