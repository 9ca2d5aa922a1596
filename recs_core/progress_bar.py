"""A progress line for long work: rows, rows/s. On a terminal one line redrawn in place;
otherwise (cron, Kubernetes and Slurm logs) a plain timestamped line every
``RECS_PROGRESS_EVERY`` seconds (default 30; 0: none)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DEFAULT_LOG_EVERY_S = 30.0


def log_every() -> float:
    """Seconds between plain progress lines when stderr is not a terminal."""
    raw = os.environ.get("RECS_PROGRESS_EVERY", "")
    try:
        value = float(raw) if raw else DEFAULT_LOG_EVERY_S
    except ValueError:
        return DEFAULT_LOG_EVERY_S
    return max(value, 0.0)


class ProgressBar:
    """Prints ``label: N rows, R rows/s`` at most every ``every`` seconds on a terminal, or
    a plain line every :func:`log_every` seconds elsewhere."""

    def __init__(self, label: str, total: int | None = None, *, quiet: bool = False,
                 stream: TextIO | None = None, every: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        plain = 0.0 if self.tty else log_every()
        self.enabled = not quiet and (self.tty or plain > 0)
        self.label, self.total = label, total
        self.every = every if self.tty else plain
        self.t0 = self.last = time.perf_counter()
        self.done, self.extra, self.lines = 0, "", 0

    def _text(self, now: float) -> str:
        rate = self.done / max(now - self.t0, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        return f"{self.label}: {self.done:,}{of} rows, {rate:,.0f} rows/s {self.extra}".rstrip()

    def update(self, done: int, extra: str = "") -> None:
        """Report ``done`` rows so far."""
        self.done, self.extra = done, extra
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        self._write(now)

    def _write(self, now: float) -> None:
        if self.tty:
            self.stream.write(f"\r{self._text(now)}   ")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.stream.write(f"{stamp} recs {self._text(now)}, {now - self.t0:.0f} s\n")
        self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._write(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
        elif self.lines:  # a log that showed progress also shows the end
            self._write(time.perf_counter())
