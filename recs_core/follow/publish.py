"""Published model versions for serving: numbered directories, each written aside and
renamed in atomically.

    PUBLISH/
      7/version.json     {"version": 7, "kind": "full", "window", "step", "created"}
      7/model/           a checkpoint (the window's final one; files hard-linked when
                         on the same file system, else copied)
      8/version.json     {"version": 8, "kind": "delta", "base": 7, ...}
      8/delta/           the window's delta: the rows it changed and the dense parameters
      .9.partial-<hex>/  a version being written (never read)

A server watches the directory for the highest-numbered version with a ``version.json``
(as TF Serving does) and applies it: a ``full`` version replaces the model; a ``delta``
version applies to the model of version ``base`` (a server holding another version loads
the newest full version at or below and applies the deltas after it in order).
``recs predict --model PUBLISH/8`` does exactly that (:func:`version_chain`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from recs_core.checkpoint.files import atomic_write, fsync_tree
from recs_core.errors import RecsError

VERSION_FILE = "version.json"
_VERSION = re.compile(r"[1-9][0-9]*\Z")


def versions(root: str | os.PathLike) -> list[int]:
    """The complete versions under ``root`` (a ``version.json`` inside), ascending."""
    p = Path(root)
    if not p.is_dir():
        return []
    return sorted(int(d.name) for d in p.iterdir()
                  if _VERSION.match(d.name) and (d / VERSION_FILE).is_file())


def read_version(root: str | os.PathLike, n: int) -> dict[str, Any]:
    path = Path(root) / str(n) / VERSION_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecsError(f"{path}: unreadable version file ({e})") from None
    if meta.get("kind") not in ("full", "delta") or meta.get("version") != n:
        raise RecsError(f"{path}: not a version file of version {n}")
    return meta


def is_version_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / VERSION_FILE).is_file()


def version_chain(path: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(the full model's checkpoint, the deltas to apply in order) of the published
    version at ``path`` (``PUBLISH/<n>``); RecsError when a link is missing."""
    here = Path(path)
    root, n = here.parent, here.name
    if not _VERSION.match(n):
        raise RecsError(f"{path}: not a published version (a PUBLISH/<number> directory)")
    deltas: list[Path] = []
    v = int(n)
    for _ in range(10_000):
        meta = read_version(root, v)
        if meta["kind"] == "full":
            return root / str(v) / "model", list(reversed(deltas))
        deltas.append(root / str(v) / "delta")
        base = meta.get("base")
        if not isinstance(base, int) or not (root / str(base) / VERSION_FILE).is_file():
            raise RecsError(f"{root / str(v)}: its base version {base} is missing: cannot "
                            f"compose the model")
        v = base
    raise RecsError(f"{path}: malformed chain of versions")


def check_publish_dir(root: str | os.PathLike) -> None:
    """RecsError (one line) unless versions can be written to ``root`` (checked before
    training)."""
    p = Path(root)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RecsError(f"--publish {root}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RecsError(f"--publish {root}: {probe} is not writable")
    if p.is_dir():
        for e in p.iterdir():
            if not (_VERSION.match(e.name) or e.name.startswith(".")):
                raise RecsError(f"--publish {root}: holds {e.name!r}, which is not a version: "
                                f"give a directory of versions or a new one")


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` a copy of directory ``src``, its files hard-linked when possible."""
    def copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=copy)


def publish(root: str | os.PathLike, *, window: str, step: int, checkpoint: str,
            delta: str | None, base: int | None, extra: dict[str, Any]) -> int:
    """Write the next version: a delta over version ``base`` when ``delta`` and ``base``
    are given, else the full ``checkpoint``. Returns its number."""
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    have = versions(p)
    n = (have[-1] if have else 0) + 1
    staging = p / f".{n}.partial-{secrets.token_hex(6)}"
    try:
        staging.mkdir()
        if delta is not None and base is not None:
            _link_tree(Path(delta), staging / "delta")
            meta = {"kind": "delta", "base": base}
        else:
            _link_tree(Path(checkpoint), staging / "model")
            meta = {"kind": "full"}
        meta = {"version": n, **meta, "window": window, "step": step,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        atomic_write(staging / VERSION_FILE, [json.dumps(meta, indent=1).encode() + b"\n"])
        fsync_tree(staging)
        os.rename(staging, p / str(n))  # fails if a concurrent writer took n: never replaced
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise RecsError(f"--publish {root}: version {n} not written: {e}") from e
        raise
    return n


def retain(root: str | os.PathLike, keep: int) -> list[int]:
    """Remove versions older than the newest ``keep``, except the ones those need (the
    bases of their deltas down to a full version). Returns the removed numbers."""
    have = versions(root)
    needed: set[int] = set()
    for v in have[-keep:]:
        while v not in needed:
            needed.add(v)
            meta = read_version(root, v)
            if meta["kind"] == "full":
                break
            v = int(meta["base"])
    removed = [v for v in have if v not in needed]
    for v in removed:
        shutil.rmtree(Path(root) / str(v))
    for e in Path(root).iterdir():  # versions a killed supervisor was writing
        if e.name.startswith(".") and ".partial-" in e.name and e.is_dir():
            shutil.rmtree(e, ignore_errors=True)
    return removed
