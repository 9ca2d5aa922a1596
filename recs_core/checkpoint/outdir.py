"""Output directories: checked before a job trains, and locked while it saves.

* :func:`check_save_root` / :func:`check_delta_target` refuse, with one line, a location
  that cannot or must not be written: an existing file, a directory that is not writable,
  a directory holding something other than what the job would write there (user files,
  symbolic links; for a delta: checkpoints, or a checkpoint root's ``step-*``). A delta
  replaces only an earlier delta (recognised by its manifest); nothing else is deleted.
* :class:`SaveLock` is a save directory's lock, held as a *lease*: the file
  ``.recs-save.lock`` naming its owner (host, pid, start time, lease length), created
  atomically (``link(2)`` of a complete file, which fails when the lock exists). The holder
  refreshes it (a thread sets the file's modification time every third of the lease,
  :func:`lease_seconds`, 30 s by default). A second job gets a one-line error naming the
  owner while the lease is live. A lock is taken over when its lease expired (not
  refreshed for longer than its length: the holder was preempted, on this host or another)
  or, at once, when its owner is a process of this host that is gone; under a short-lived
  guard file (``.recs-save.lock.break``, also created by ``link``), so two jobs never both
  break it. A holder checks its lease before it writes (:meth:`SaveLock.check`): one whose
  lease was taken over stops. Taking the lock removes the staging directories of the
  earlier jobs' interrupted saves.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from recs_core.checkpoint.manifest import MANIFEST
from recs_core.errors import RecsError

LOCK = ".recs-save.lock"
DEFAULT_LEASE_S = 30.0
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


def lease_seconds() -> float:
    """How long a save lock lives without a refresh (``RECS_LEASE_SECONDS``, default 30):
    a job that stopped refreshing for longer (preempted, stopped, its host gone) loses it.
    Its holder refreshes every third of it. It must exceed the clock skew between hosts
    sharing the directory (modification times are the file system's)."""
    raw = os.environ.get("RECS_LEASE_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_S
    except ValueError:
        raise RecsError(f"RECS_LEASE_SECONDS must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise RecsError(f"RECS_LEASE_SECONDS must be positive, got {raw!r}")
    return value


def host_id() -> str:
    """The name a lease records for this host (``RECS_HOST_ID``, default the host name:
    a pod's name on Kubernetes)."""
    return os.environ.get("RECS_HOST_ID") or socket.gethostname()


def _owner() -> dict[str, Any]:
    return {"host": host_id(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": secrets.token_hex(8),
            "lease_s": lease_seconds()}


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The owner written in a lock file; None when it is gone; {} when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _age(path: Path) -> float | None:
    """Seconds since ``path`` was last refreshed; None when it is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _expired(owner: dict[str, Any], path: Path) -> bool:
    """True when the lease in ``path`` was not refreshed for longer than its length."""
    age = _age(path)
    lease = owner.get("lease_s")
    if not isinstance(lease, (int, float)) or lease <= 0:
        lease = lease_seconds()  # a lock written before leases, or unreadable
    return age is not None and age > lease


def _stale(owner: dict[str, Any], path: Path) -> bool:
    return _dead(owner) or _expired(owner, path)


def _dead(owner: dict[str, Any]) -> bool:
    """True when ``owner`` is a process of this host that no longer exists."""
    pid = owner.get("pid")
    if owner.get("host") != host_id() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _link_new(path: Path, owner: dict[str, Any]) -> int | None:
    """Create ``path`` holding ``owner`` atomically: an open descriptor of it, None when
    it already exists."""
    tmp = path.parent / f".{path.name}.{owner['token']}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink()
    return fd


def _describe(owner: dict[str, Any], path: Path | None = None) -> str:
    if not owner:
        return "an unreadable owner"
    age = _age(path) if path is not None else None
    fresh = "" if age is None else f", refreshed {max(age, 0.0):.0f} s ago"
    return (f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"
            f"{fresh}")


class SaveLock:
    """The lock of a save directory, held by one job as a lease (see the module docstring).

    ``SaveLock(root).acquire()`` creates ``root`` if needed, takes the lock (RecsError
    when another job holds a live lease) and refreshes it from a thread; :meth:`check`
    raises when the lease was taken over; :meth:`release` removes it (only if still ours)."""

    def __init__(self, root: str | os.PathLike, name: str = LOCK) -> None:
        self.root = Path(root)
        self.path = self.root / name
        self.owner = _owner()
        self.held = False
        self.took_over: dict[str, Any] | None = None  # the stale owner whose lock was taken
        self._fd: int | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def acquire(self) -> SaveLock:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a lock broken by another job between our steps: look again
            fd = _link_new(self.path, self.owner)
            if fd is not None:
                self._fd, self.held = fd, True
                self._remove_leftovers()
                self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                                   name="recs-lease")
                self._refresher.start()
                return self
            found = _read_owner(self.path)
            if found is None:
                continue
            if not _stale(found, self.path):
                raise RecsError(f"{self.root}: locked by another job "
                                f"({_describe(found, self.path)}); wait for it, or if no "
                                f"job uses it, remove {self.path} (a lock not refreshed for "
                                f"{found.get('lease_s', lease_seconds()):g} s is taken over)")
            self._break(found)
        raise RecsError(f"{self.root}: could not take the lock {self.path} (contended)")

    def _break(self, stale: dict[str, Any]) -> None:
        """Remove a stale lock, under the guard file (one breaker at a time)."""
        guard = self.root / (self.path.name + ".break")
        fd = _link_new(guard, self.owner)
        if fd is None:
            holder = _read_owner(guard)
            if holder is not None and _stale(holder, guard):
                raise RecsError(f"{self.root}: a job died while taking over the stale lock "
                                f"{self.path}: remove {guard} and {self.path}")
            time.sleep(0.05)
            return
        try:
            if _read_owner(self.path) == stale:  # still the same stale lease
                self.path.unlink()
                self.took_over = stale
        finally:
            os.close(fd)
            guard.unlink()

    def _ours(self) -> bool:
        """True while the lock file is the one this job created."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def _refresh(self) -> None:
        while not self._stop.wait(self.owner["lease_s"] / 3):
            if self._fd is None or not self._ours():
                return
            try:
                os.utime(self._fd)
            except OSError:  # e.g. the file system went away: check() will tell
                return

    def check(self) -> None:
        """RecsError when this job no longer holds the lock (its lease expired and another
        job took it over): a job stops before it writes."""
        if not self.held:
            return
        if not self._ours():
            other = _read_owner(self.path)
            raise RecsError(f"{self.root}: this job's lease on {self.path} expired and "
                            f"{'another job' if not other else _describe(other)} took it "
                            f"over: stopping before writing (was this job stopped for longer "
                            f"than {self.owner['lease_s']:g} s?)")
        os.utime(self._fd)  # type: ignore[arg-type]

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
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self.held and self._ours():
            self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
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
