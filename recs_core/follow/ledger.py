"""A chain's ledger and its pointer to the newest good model.

``ledger.jsonl`` holds one JSON object per line, appended (and fsynced) as things happen;
a window's state is the fold of its records (:meth:`Ledger.windows`). Every record has
``window``, ``status`` and ``time``; the others say what is known then: ``attempt``,
``ranks``, ``start`` / ``end``, ``rows``, ``train_rows``, ``eval_rows``,
``progressive_auc``, ``progressive_logloss``, ``eval_auc``, ``eval_logloss``,
``baseline`` (the held-out figures of the last published model), ``samples_per_sec``,
``seconds``, ``parts`` (seconds of launch, load, train, save, gate, publish),
``checkpoint``, ``version``, ``gate`` (decision and why), ``bad_rows``, ``error``,
``files`` (the window's [name, size] list when it was trained).

Statuses: ``running`` (a job was launched), ``preempted`` (it stopped on SIGTERM with a
checkpoint), ``error`` (it failed; another attempt follows), and the final ones:
``published`` / ``accepted`` (trained and passed the gate; accepted: no publish
directory), ``withheld`` (trained, failed the gate), ``quarantined`` (not trained: too
many bad rows), ``failed`` (out of attempts: the chain stops).

``current.json`` (replaced atomically) names the newest good model: ``{"window",
"checkpoint", "version"}``; it is rebuilt from the ledger when missing or damaged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recs_core.checkpoint.files import atomic_write
from recs_core.errors import RecsError

FINAL = ("published", "accepted", "withheld", "quarantined", "failed")
GOOD = ("published", "accepted")
STATUSES = ("running", "preempted", "error") + FINAL


@dataclass
class WindowState:
    """A window's state: its records folded, the latest value of each key winning."""

    id: str
    status: str = "new"
    attempts: int = 0
    preemptions: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL


class Ledger:
    """The ledger file of a state directory (see the module docstring)."""

    def __init__(self, state: str | os.PathLike) -> None:
        self.path = Path(state) / "ledger.jsonl"
        self.pointer = Path(state) / "current.json"
        self.warnings: list[str] = []
        self.records = self._read()

    def _read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        out = []
        for i, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            last = i == len(lines)  # no newline after it: an append cut short
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or rec.get("status") not in STATUSES or \
                        not isinstance(rec.get("window"), str):
                    raise ValueError("not a ledger record (window, status)")
            except ValueError as e:
                if last:
                    self.warnings.append(f"{self.path}:{i}: an unfinished last line (the "
                                         f"supervisor was killed while writing it): dropped")
                    self._rewrite(out)
                    break
                raise RecsError(f"{self.path}:{i}: corrupt ledger line ({e}): fix or remove "
                                f"that line; the supervisor does not guess") from None
            out.append(rec)
        return out

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        atomic_write(self.path, [b"".join(json.dumps(r).encode() + b"\n" for r in records)])

    def append(self, window: str, status: str, **fields: Any) -> dict[str, Any]:
        """Record an event of ``window`` (flushed to disk before returning)."""
        assert status in STATUSES, status
        rec = {"window": window, "status": status,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        line = json.dumps(rec, default=str).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(json.loads(line))
        return rec

    def windows(self) -> dict[str, WindowState]:
        """Every window's state, in the order first recorded."""
        out: dict[str, WindowState] = {}
        for r in self.records:
            w = out.setdefault(r["window"], WindowState(r["window"]))
            w.status = r["status"]
            if r["status"] == "running":
                w.attempts = max(w.attempts, int(r.get("attempt", w.attempts + 1)))
            elif r["status"] == "preempted":
                w.preemptions += 1
            w.fields.update({k: v for k, v in r.items() if k not in ("window", "status")})
        return out

    # ---- the pointer to the newest good model ------------------------------------------

    def good(self) -> dict[str, Any] | None:
        """The newest good model by the ledger: ``{"window", "checkpoint", "version"}``."""
        for r in reversed(self.records):
            if r["status"] in GOOD and r.get("checkpoint"):
                return {"window": r["window"], "checkpoint": r["checkpoint"],
                        "version": r.get("version")}
        return None

    def write_pointer(self) -> None:
        """Replace ``current.json`` with :meth:`good` (atomically)."""
        good = self.good()
        if good is not None:
            atomic_write(self.pointer, [json.dumps(good, indent=1).encode() + b"\n"])

    def read_pointer(self) -> dict[str, Any] | None:
        """``current.json``, checked against the ledger; rebuilt (with a warning) when it
        is missing, unreadable or disagrees."""
        want = self.good()
        try:
            got = json.loads(self.pointer.read_text())
        except FileNotFoundError:
            got = None
        except (OSError, ValueError) as e:
            self.warnings.append(f"{self.pointer}: unreadable ({e}): rebuilt from the ledger")
            got = None
        if got != want:
            if got is not None:
                self.warnings.append(f"{self.pointer}: disagrees with the ledger: rebuilt")
            self.write_pointer()
        return want
