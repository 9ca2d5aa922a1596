"""Launching one window's training job and waiting for it.

The job is ``recs train`` behind a launcher template: ``{mpi_launch} -n {ranks}`` by
default (this checkout's ``mpi_launch.sh``), or e.g. ``mpiexec -f hosts -n {ranks}`` or an
``srun -n {ranks}`` line. The supervisor forwards SIGTERM/SIGINT to it (a launcher
forwards them to the ranks, which checkpoint and exit with ``EXIT_PREEMPTED``), and the
job gets SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), so a killed supervisor
leaves a preempted, resumable window rather than a job nobody waits for.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recs_core.errors import EXIT_PREEMPTED, RecsError

MPI_LAUNCH = str(Path(__file__).resolve().parents[2] / "mpi_launch.sh")
DEFAULT_LAUNCHER = "{mpi_launch} -n {ranks}"
_PR_SET_PDEATHSIG = 1


def check_template(template: str) -> None:
    """RecsError (one line) unless ``template`` names ``{ranks}`` and formats."""
    if "{ranks}" not in template:
        raise RecsError(f"--launcher {template!r}: must contain {{ranks}} (the number of "
                        f"ranks of each job)")
    try:
        shlex.split(template.format(ranks=1, mpi_launch=MPI_LAUNCH))
    except (KeyError, IndexError, ValueError) as e:
        raise RecsError(f"--launcher {template!r}: {e} (fields: {{ranks}}, "
                        f"{{mpi_launch}})") from None


def job_command(template: str, ranks: int, train_args: list[str]) -> list[str]:
    """The command line of one job: the launcher, then ``python -m recs_core train``."""
    check_template(template)
    prefix = shlex.split(template.format(ranks=ranks, mpi_launch=MPI_LAUNCH))
    return [*prefix, sys.executable, "-m", "recs_core", "train", *train_args]


def worker_command(template: str, ranks: int) -> list[str]:
    """The command line of a worker (``recs worker``: windows on its stdin, the ranks
    kept up between them)."""
    check_template(template)
    prefix = shlex.split(template.format(ranks=ranks, mpi_launch=MPI_LAUNCH))
    return [*prefix, sys.executable, "-m", "recs_core", "worker"]


@dataclass
class JobResult:
    """What a finished job left: its status, the last JSON line of its stdout, the tail
    of its stderr, and how long it ran."""

    returncode: int
    out: dict[str, Any] | None
    stderr_tail: list[str]
    seconds: float

    @property
    def preempted(self) -> bool:
        return self.returncode == EXIT_PREEMPTED and bool(self.out and self.out.get("preempted"))

    @property
    def error(self) -> str:
        """One line saying why it failed."""
        if self.out and self.out.get("error"):
            return str(self.out["error"])
        lines = [ln for ln in self.stderr_tail if ln.strip()]
        errs = [ln for ln in lines if "error" in ln.lower()]
        last = (errs or lines or [f"exit status {self.returncode}"])[-1]
        return f"{last.strip()} (exit status {self.returncode})"


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Running:
    """One job (or worker) being run: its process, its output readers, signal forwarding;
    a worker takes windows through :meth:`send` and gives each result by :meth:`result`."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None,
                 log: Any = None, worker: bool = False) -> None:
        self.cmd = cmd
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE if worker else subprocess.DEVNULL,
                                     text=True, env=env, preexec_fn=_die_with_parent)
        self.last_json: dict[str, Any] | None = None
        self.results: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=40)
        self.log = log if log is not None else sys.stderr
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            s = line.strip()
            if s.startswith("{"):
                try:
                    obj = json.loads(s)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    self.last_json = obj
                    self.results.put(obj)
        self.results.put(None)  # the process ended

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line.rstrip("\n"))
            self.log.write(line)
            self.log.flush()

    def signal(self, sig: int) -> None:
        """Forward ``sig`` to the job (its launcher forwards it to the ranks)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self) -> JobResult:
        rc = self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        return JobResult(rc, self.last_json, list(self.tail), time.monotonic() - self.t0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, train_args: list[str]) -> None:
        """Give a worker its next window."""
        assert self.proc.stdin is not None
        self.t0 = time.monotonic()
        self.proc.stdin.write(json.dumps({"args": train_args}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> JobResult:
        """The worker's result of the window sent last: its JSON line, or, when the
        process ended instead, its exit."""
        got = self.results.get()
        if got is not None and self.alive and got.get("saved") and not got.get("preempted"):
            return JobResult(0, got, list(self.tail), time.monotonic() - self.t0)
        end = self.wait()
        return JobResult(end.returncode, got or end.out, end.stderr_tail, end.seconds)

    def finish(self) -> JobResult:
        """Close a worker's input (no more windows) and wait for it to end."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return self.wait()


def env_for_job() -> dict[str, str]:
    """The job's environment: this process's, with this checkout importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
