"""Worker threads for feature operators, fed through the Cython core's lock-free rings.

Where a rank has more than one core, the task loop hands operator tasks (one operator of
one pipeline on one batch) to worker threads: per worker one single-producer /
single-consumer ring carries job numbers to it and one carries them back; no Python
lock is on this path. The operators are compiled (nogil), so workers run in parallel
with the loop's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from recs_core.native import SpscRing


class OperatorWorkers:
    """``n`` threads that each run ``run(job)`` for the jobs :meth:`submit` gives them."""

    def __init__(self, n: int, run: Callable[[Any], None]) -> None:
        self._run = run
        self._todo = [SpscRing(2) for _ in range(n)]
        self._done = [SpscRing(2) for _ in range(n)]
        self._jobs: dict[int, list] = {}  # job number -> [job, start, end, error]
        self._busy = [False] * n
        self._next = 0
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True,
                                          name=f"recs-operator-{i}") for i in range(n)]
        for t in self._threads:
            t.start()

    def idle(self) -> list[int]:
        """Workers without a job."""
        return [i for i, b in enumerate(self._busy) if not b]

    def submit(self, worker: int, job: Any) -> None:
        """Give ``job`` to an idle ``worker``."""
        self._next += 1
        self._jobs[self._next] = [job, 0.0, 0.0, None]  # visible to the worker via the ring
        self._busy[worker] = True
        self._todo[worker].push(self._next)

    def completed(self) -> Iterator[tuple[Any, float, float]]:
        """The jobs finished since the last call, with their start and end times
        (re-raises a job's exception)."""
        for i, ring in enumerate(self._done):
            num = ring.try_pop()
            if num is None:
                continue
            self._busy[i] = False
            job, start, end, error = self._jobs.pop(num)
            if error is not None:
                raise error
            yield job, start, end

    def _work(self, i: int) -> None:
        todo, done = self._todo[i], self._done[i]
        while True:
            num = todo.pop()
            if num is None:  # closed
                return
            entry = self._jobs[num]
            entry[1] = time.perf_counter()
            try:
                self._run(entry[0])
            except BaseException as e:  # handed to the loop's thread
                entry[3] = e
            entry[2] = time.perf_counter()
            done.push(num)

    def close(self) -> None:
        """Stop the threads (after their current job)."""
        for ring in self._todo:
            ring.close()
        for t in self._threads:
            t.join()
