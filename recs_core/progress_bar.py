"""A small progress line for long work: rows, rows/s; quiet when not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Prints ``label: N rows, R rows/s`` at most every ``every`` seconds on a terminal."""

    def __init__(self, label: str, total: int | None = None, *, quiet: bool = False,
                 stream: TextIO | None = None, every: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.label, self.total, self.every = label, total, every
        self.t0 = self.last = time.perf_counter()
        self.done = 0

    def update(self, done: int, extra: str = "") -> None:
        """Report ``done`` rows so far."""
        self.done = done
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        self.stream.write(f"\r{self.label}: {done:,}{of} rows, {rate:,.0f} rows/s {extra}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.last = 0.0
            self.update(self.done)
            self.stream.write("\n")
            self.stream.flush()
