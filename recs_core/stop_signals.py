"""Preemption signals of ``recs train``: the first SIGTERM, SIGINT or SIGUSR1 asks the job
to stop at the next step boundary (``Job.request_stop``); a later one aborts.

Installed by the command only (``recs_core.cli``), never by the library on import. The
handler only sets a flag (and calls the job's ``request_stop``, which sets another); the
pass reads it when it posts its next step agreement. A signal of the same kind within
:data:`SAME_REQUEST_S` of the first is the same request delivered twice, not a second
one: Slurm signals every process of a job step (the ranks and ``mpiexec``, which forwards
it to them), and a terminal's Ctrl-C reaches every process in its foreground group.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

# SIGUSR1 too: Slurm's --signal=USR1@SECONDS warning, and what mpi_launch.sh relays to
# Open MPI's mpirun, whose own SIGTERM ends the ranks at once (it forwards SIGUSR1)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SAME_REQUEST_S = 1.0


class Interrupted(KeyboardInterrupt):
    """A second stop signal: the job aborts with 128 + its number (130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


class StopSignals:
    """The stop signals' handler: ``signum`` is the first one received (None: none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._aborting = False
        self._request: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        """Handle :data:`STOP_SIGNALS` from now on (main thread only)."""
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def attach(self, request: Callable[[], None]) -> None:
        """Call ``request`` on the first signal (at once when it came already)."""
        self._request = request
        if self.signum is not None:
            request()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if self._request is not None:
                self._request()
            return
        if self._aborting or signum == self.signum and now - self._first_at < SAME_REQUEST_S:
            return
        self._aborting = True  # (later signals while the abort runs change nothing)
        raise Interrupted(signum)
