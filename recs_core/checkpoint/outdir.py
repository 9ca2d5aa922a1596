"""Output directories: checked before a job trains, and locked while it saves.

* :func:`check_save_root` / :func:`check_delta_target` refuse, with one line, a location
  that cannot or must not be written: an existing file, a directory that is not writable,
  a directory holding something other than what the job would write there (user files,
  symbolic links; for a delta: checkpoints, or a checkpoint root's ``step-*``). A delta
  replaces only an earlier delta (recognised by its manifest); nothing else is deleted.
* :class:`SaveLock` is a save directory's lock: the file ``.recs-save.lock`` naming its
  owner (host, pid, start time), created atomically (``link(2)`` of a complete file, which
  fails when the lock exists). A second job gets a one-line error naming the owner. A lock
  left by a dead job (same host, its pid gone) is taken over under a short-lived guard
  file (``.recs-save.lock.break``, also created by ``link``), so two jobs never both break
  it. Taking the lock removes the staging directories of the dead jobs' interrupted saves.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from recs_core.checkpoint.manifest import MANIFEST
from recs_core.errors import RecsError

LOCK = ".recs-save.lock"
_BREAK = LOCK + ".break"
_STEP = re.compile(r"step-\d{9,}\Z")
_DAMAGED = re.compile(r"step-\d{9,}\.damaged\Z")  # set aside as a refused resume advises
_STAGING = re.compile(r"step-\d{9,}\.(partial|replaced)-[0-9a-f]+\Z")
# a lock being created (see _link_new); left only by a job killed at that moment: harmless
_LOCK_TMP = re.compile(r"\.\.recs-save\.lock(\.break)?\.[0-9a-f]+\.tmp\Z")


def _writable_dir(p: Path, what: str) -> None:
    """RecsError unless ``p`` (or, when it does not exist yet, its nearest existing
    ancestor) is a directory this process may create entries in."""
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RecsError(f"{what} {p}: {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecsError(f"{what} {p}: {probe} is not writable")


def _foreign(entry: Path) -> str | None:
    """Why ``entry`` of a save directory is not something the store wrote, else None."""
    if entry.is_symlink():
        return "a symbolic link"
    if entry.name in (LOCK, _BREAK) or _LOCK_TMP.match(entry.name):
        return None
    if (_STEP.match(entry.name) or _STAGING.match(entry.name)
            or _DAMAGED.match(entry.name)) and entry.is_dir():
        return None
    return "a directory" if entry.is_dir() else "a file"


def check_save_root(path: str | os.PathLike, what: str = "--save") -> None:
    """RecsError (one line) unless ``path`` can hold this job's ``step-*`` checkpoints: it
    does not exist yet (under a writable directory), or it is a writable directory holding
    only checkpoints, interrupted saves, damaged checkpoints set aside (``step-N.damaged``)
    and the save lock."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RecsError(f"{what} {p}: exists and is not a directory")
    _writable_dir(p, what)
    if not p.exists():
        return
    if (p / MANIFEST).exists():
        raise RecsError(f"{what} {p}: is one checkpoint (or a delta), not a directory of "
                        f"step-N checkpoints: give its parent or a new directory")
    for entry in sorted(p.iterdir()):
        why = _foreign(entry)
        if why is not None:
            raise RecsError(f"{what} {p}: holds {entry.name!r} ({why}) that is not a "
                            f"checkpoint of this program: give an empty or new directory")


def _kind(p: Path) -> str | None:
    """The ``kind`` of the manifest in ``p``, None when there is no readable one."""
    try:
        kind = json.loads((p / MANIFEST).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def check_delta_target(path: str | os.PathLike, what: str = "--export-delta") -> None:
    """RecsError (one line) unless a delta may be written to ``path``: it does not exist
    yet (under a writable directory), or it is an empty directory or an earlier delta."""
    p = Path(path)
    if p.is_symlink():
        raise RecsError(f"{what} {p}: is a symbolic link: give the directory itself")
    if p.exists() and not p.is_dir():
        raise RecsError(f"{what} {p}: exists and is not a directory")
    _writable_dir(p.parent, what)
    if not p.exists():
        return
    if not os.access(p, os.W_OK | os.X_OK):
        raise RecsError(f"{what} {p}: is not writable")
    entries = sorted(p.iterdir())
    if not entries:
        return
    kind = _kind(p)
    if kind == "delta":
        return
    if kind is not None:
        raise RecsError(f"{what} {p}: is a {kind}, not a delta: give a new directory")
    steps = [e.name for e in entries if _STEP.match(e.name)]
    if steps:
        raise RecsError(f"{what} {p}: is a checkpoint directory (holds {steps[0]}), not a "
                        f"delta: give a new directory")
    raise RecsError(f"{what} {p}: is not empty and not a delta (holds {entries[0].name!r}): "
                    f"give an empty or new directory")


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": secrets.token_hex(8)}


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner written in a lock file; None when it is gone; {} when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dead(owner: dict[str, Any]) -> bool:
    """True when ``owner`` is a process of this host that no longer exists."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _link_new(path: Path, owner: dict[str, Any]) -> bool:
    """Create ``path`` holding ``owner`` atomically; False when it already exists."""
    tmp = path.parent / f".{path.name}.{owner['token']}.tmp"
    with open(tmp, "x", encoding="utf-8") as f:
        json.dump(owner, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unreadable owner"
    return (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}")


class SaveLock:
    """The lock of a save directory, held by one job (see the module docstring).

    ``SaveLock(root).acquire()`` creates ``root`` if needed and takes the lock (RecsError
    when another live job holds it); :meth:`release` removes it (only if still ours)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK
        self.owner = _owner()
        self.held = False
        self.took_over: dict[str, Any] | None = None  # the dead owner whose lock was taken

    def acquire(self) -> SaveLock:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a lock broken by another job between our steps: look again
            if _link_new(self.path, self.owner):
                self.held = True
                self._remove_leftovers()
                return self
            found = _read_owner(self.path)
            if found is None:
                continue
            if not _dead(found):
                raise RecsError(f"{self.root}: locked by another job ({_describe(found)}); "
                                f"wait for it, or if no job uses it, remove {self.path}")
            self._break(found)
        raise RecsError(f"{self.root}: could not take the lock {self.path} (contended)")

    def _break(self, dead: dict[str, Any]) -> None:
        """Remove the lock of a dead job, under the guard file (one breaker at a time)."""
        guard = self.root / _BREAK
        if not _link_new(guard, self.owner):
            holder = _read_owner(guard)
            if holder and _dead(holder):
                raise RecsError(f"{self.root}: a job died while taking over the stale lock "
                                f"{self.path}: remove {guard} and {self.path}")
            time.sleep(0.05)
            return
        try:
            if _read_owner(self.path) == dead:  # still the same dead job's lock
                self.path.unlink()
                self.took_over = dead
        finally:
            guard.unlink()

    def _remove_leftovers(self) -> None:
        """The staging directories of saves interrupted in earlier jobs (no job writes
        here but us now); an old copy left by a two-rename publish whose new copy exists."""
        for entry in self.root.iterdir():
            m = _STAGING.match(entry.name)
            if not m or entry.is_symlink() or not entry.is_dir():
                continue
            final = self.root / entry.name.split(".", 1)[0]
            if m.group(1) == "partial" or final.is_dir():
                shutil.rmtree(entry)

    def release(self) -> None:
        if self.held and _read_owner(self.path) == self.owner:
            self.path.unlink()
        self.held = False

    def __enter__(self) -> SaveLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or below it (after resolving links)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def claim_outputs(save_root: str | os.PathLike | None, delta: str | os.PathLike | None,
                  save_flag: str = "--save") -> SaveLock | None:
    """Check a job's output locations (:func:`check_save_root`, :func:`check_delta_target`,
    and that neither lies inside the other), then lock the save directory: the lock, or
    None without one. RecsError (one line) when a location is refused or locked."""
    try:
        return _claim(save_root, delta, save_flag)
    except OSError as e:  # e.g. a directory that cannot be listed, a full disk
        raise RecsError(f"cannot prepare the output directories: {e}") from None


def _claim(save_root: str | os.PathLike | None, delta: str | os.PathLike | None,
           save_flag: str) -> SaveLock | None:
    if save_root is not None:
        check_save_root(save_root, save_flag)
    if delta is not None:
        check_delta_target(delta)
        if save_root is not None and (_inside(Path(delta), Path(save_root))
                                      or _inside(Path(save_root), Path(delta))):
            raise RecsError(f"--export-delta {delta}: overlaps the save directory "
                            f"{save_root}: give a directory outside it")
    return SaveLock(save_root).acquire() if save_root is not None else None
