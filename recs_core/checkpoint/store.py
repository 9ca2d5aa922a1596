"""Sharded, atomic, verified checkpoints.

A checkpoint is a directory::

    <ckpt>/manifest.json                      written last, by rank 0 (see manifest.py)
    <ckpt>/rank00000-of-00003/<name>.npy      each rank's arrays (its shard)
    <ckpt>/rank00001-of-00003/<name>.npy
    ...

Saving is collective when a communicator is given: every rank writes its shard into a
staging directory ``<ckpt>.partial-<token>`` (each file atomically, see files.py), rank 0
gathers every rank's file entries (shape, dtype, size, sha256), writes the manifest and
then renames the staging directory to ``<ckpt>`` (atomically swapping out an existing
checkpoint of the same name). A crash before that rename leaves only a ``.partial-``
directory (no manifest inside until its last step), so the previous checkpoint stays
usable and the half-written one is recognisable; a save that fails (e.g. a full disk)
removes its staging directory itself. A save directory is locked by the job writing into
it (``outdir.SaveLock``), which also removes the staging of earlier jobs' crashed saves.

Periodic checkpoints live under a root directory as ``step-000000123/``;
:func:`latest_complete` finds the newest one that verifies and :func:`prune` keeps the
newest ``keep`` (only ``step-*`` directories, never symbolic links or other entries).

An *increment* is a checkpoint that names a ``base`` (a sibling checkpoint of the same
world size and an older step) in its manifest and stores some arrays as :class:`RowPatch`
(arrays ``<name>.patch-rows``: int64 row indices, ``<name>.patch-values``: those rows);
each rank writes an increment's arrays as one pack, ``arrays.pack`` (see manifest.py):
read, it is its base's arrays with its own full arrays replacing them and its patches
applied. Its chain (increment, base, the base's base, ... down to a full checkpoint) is
checked as a whole: an increment whose chain has a missing or damaged link is itself
incomplete, so a partial chain is never loaded; :func:`prune` keeps the chains of the
checkpoints it keeps.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from recs_core.checkpoint import manifest as mf
from recs_core.checkpoint.files import fsync_dir, publish, staging_path
from recs_core.checkpoint.manifest import Manifest
from recs_core.comm.world import World
from recs_core.errors import RecsError

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

T = TypeVar("T")
U = TypeVar("U")
WORKERS = 4  # files written / read at once: hashing overlaps the waits on the disk
_STEP = re.compile(r"step-(\d{9,})\Z")


def shard_dir(rank: int, world: int) -> str:
    """The directory (relative to the checkpoint) holding rank ``rank``'s files."""
    return f"rank{rank:05d}-of-{world:05d}"


def step_path(root: str | Path, step: int) -> Path:
    """The checkpoint directory of ``step`` under ``root``."""
    return Path(root) / f"step-{step:09d}"


def _attempt(fn: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return fn(), None
    except Exception as e:  # shared with the other ranks, then re-raised here
        return None, e


def _each(fn: Callable[[T], U], items: Iterable[T], workers: int) -> list[U]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads (hashlib, file I/O and
    fsync release the GIL); the first exception is raised after all calls end (after an
    interrupt, the calls under way).

    The calling thread is one of the workers and helper threads that cannot start (a
    memory limit) are simply not used, so a save never fails for want of a thread."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    out: list[Any] = [None] * len(items)
    errors: list[tuple[int, BaseException]] = []
    todo = iter(range(len(items)))
    take = threading.Lock()

    def work() -> None:
        while True:
            with take:
                i = next(todo, None)
            if i is None:
                return
            try:
                out[i] = fn(items[i])
            except BaseException as e:  # raised by the caller once every call ended
                errors.append((i, e))
                if not isinstance(e, Exception):  # an interrupt (Ctrl-C): no call starts
                    with take:
                        for _ in todo:
                            pass

    helpers = []
    for _ in range(min(workers, len(items)) - 1):
        t = threading.Thread(target=work, daemon=True)
        try:
            t.start()
        except RuntimeError:  # "can't start new thread": the others do the work
            break
        helpers.append(t)
    work()
    for t in helpers:
        t.join()
    if errors:
        raise min(errors, key=lambda ie: ie[0])[1]
    return out


_PATCH = (".patch-rows", ".patch-values")


@dataclass(frozen=True)
class RowPatch:
    """The rows of an array that changed since the base checkpoint: ``rows`` (int64
    indices along the first axis, ascending) get ``values``; ``length``: the array's
    first dimension (checked against the base's when read)."""

    rows: np.ndarray
    values: np.ndarray
    length: int


def _files_of(arrays: Mapping[str, np.ndarray | RowPatch]) -> list[tuple[str, np.ndarray]]:
    """(file name, array) per file: a patch is two files."""
    out = []
    for name, a in arrays.items():
        mf.check_name(name, "checkpoint array name")
        if name.endswith(_PATCH):
            raise RecsError(f"checkpoint array name {name!r}: ends like a patch's files")
        if isinstance(a, RowPatch):
            out += [(name + _PATCH[0], np.asarray(a.rows, np.int64)),
                    (name + _PATCH[1], a.values)]
        else:
            out.append((name, a))
    return out


PACK = "arrays.pack"  # an increment's arrays, in one file per rank


def _write_shard(staging: Path, rank: int, world: int,
                 arrays: Mapping[str, np.ndarray | RowPatch],
                 workers: int, pack: bool) -> list[mf.FileEntry]:
    sub = shard_dir(rank, world)
    items = _files_of(arrays)
    (staging / sub).mkdir(parents=True, exist_ok=True)
    if pack:  # an increment is small: one create and one fsync, not one per array
        entries = mf.write_pack(staging, f"{sub}/{PACK}", rank, items)
    else:
        entries = _each(lambda item: mf.write_array(staging, f"{sub}/{item[0]}.npy", item[0],
                                                    rank, item[1]), items, workers)
    fsync_dir(staging / sub)  # the files' entries
    fsync_dir(staging)  # the shard directory's entry
    return entries


def save(path: str | Path, arrays: Mapping[str, np.ndarray | RowPatch],
         meta: Mapping[str, Any], comm: Comm | None = None,
         rank_meta: Mapping[str, Any] | None = None,
         after_publish: Callable[[], None] | None = None, workers: int = WORKERS,
         base: str | None = None) -> str:
    """Write a checkpoint to ``path``, replacing any checkpoint already there; return it.

    Collective over ``comm`` (an mpi4py communicator) when given: ``arrays`` are this
    rank's shard, ``meta`` is taken from rank 0, ``rank_meta`` (e.g. the input position) is
    kept per rank. Each rank writes up to ``workers`` files at once (threads).
    ``after_publish`` runs on rank 0 once the checkpoint is in place. ``base``: write an
    increment over the sibling checkpoint of that name (complete, of this world size and
    an older step: checked); then ``arrays`` may hold :class:`RowPatch` values.

    If any rank fails, every rank raises (the failing one its own exception, an OSError
    such as a full disk as RecsError, the others RecsError naming it) and, when the
    failure came before the manifest, nothing is published and the staging directory is
    removed. A symbolic link at ``path`` is refused before anything is written."""
    final = Path(path)
    if final.is_symlink():
        raise RecsError(f"checkpoint {final}: is a symbolic link: refusing to replace it")
    coll = World.of(comm)
    if base is None and any(isinstance(a, RowPatch) for a in arrays.values()):
        raise ValueError("row patches need a base checkpoint")
    if base is not None:
        coll.everyone(lambda: _check_base(final, base, coll.size) if coll.rank == 0 else None)
    staging = staging_path(final, coll.bcast(secrets.token_hex(6) if coll.rank == 0 else None,
                                             f"checkpoint {final}: staging name broadcast"))

    def write() -> tuple[list[mf.FileEntry], Any, Any]:
        m = mf.to_jsonable(dict(meta), "checkpoint meta") if coll.rank == 0 else None
        rm = mf.to_jsonable(dict(rank_meta or {}), f"rank {coll.rank} meta")
        return _write_shard(staging, coll.rank, coll.size, arrays, workers,
                            pack=base is not None), m, rm

    mine, err = _attempt(write)
    parts = coll.gather((mine, None if err is None else f"rank {coll.rank}: {err}"),
                        f"checkpoint {final}: file entries gather")
    status: str | None = None
    if coll.rank == 0:
        assert parts is not None
        status = next((f"not saved: {msg}" for _, msg in parts if msg), None)
        if status is None:
            _, err = _attempt(lambda: _finish(staging, final, parts, coll.size, base))
            status = None if err is None else f"not saved: rank 0: {err}"
        if status is None and after_publish is not None:
            _, err = _attempt(after_publish)
            status = None if err is None else f"saved, but then rank 0 failed: {err}"
    status = coll.bcast(status, f"checkpoint {final}: outcome broadcast")
    if coll.rank == 0 and status is not None and status.startswith("not saved"):
        shutil.rmtree(staging, ignore_errors=True)  # every rank is done writing into it
    if isinstance(err, OSError):
        raise RecsError(f"checkpoint {final} not saved: rank {coll.rank}: {err}") from err
    if err is not None:
        raise err
    if status is not None:
        raise RecsError(f"checkpoint {final} {status}")
    return str(final)


def _check_base(final: Path, base: str, world: int) -> None:
    """RecsError unless ``base`` names a sibling checkpoint (its manifest: the files are
    checked when the chain is loaded) of ``world`` ranks whose step is older than
    ``final``'s."""
    m = mf.read_manifest(final.parent / base)
    if m.kind != "checkpoint" or m.world_size != world:
        raise RecsError(f"checkpoint {final}: its base {base} is a {m.kind} of "
                        f"{m.world_size} ranks, this job has {world}")
    if _step_of(final.name) is not None and not (_step_of(base) or 0) < _step_of(final.name):
        raise RecsError(f"checkpoint {final}: its base {base} is not older")


def _step_of(name: str) -> int | None:
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def _finish(staging: Path, final: Path, parts: list, world: int, base: str | None) -> None:
    shards = [shard for shard, _ in parts]  # (entries, meta (rank 0 only), rank meta)
    m = Manifest(kind="checkpoint", world_size=world, meta=shards[0][1],
                 files=[e for entries, _, _ in shards for e in entries],
                 rank_meta=[rank_meta for _, _, rank_meta in shards], base=base)
    mf.write_manifest(staging, m)
    publish(staging, final)


def save_step(root: str | Path, step: int, arrays: Mapping[str, np.ndarray | RowPatch],
              meta: Mapping[str, Any], comm: Comm | None = None,
              rank_meta: Mapping[str, Any] | None = None, keep: int | None = None,
              base: str | None = None) -> str:
    """:func:`save` to ``root/step-<step>`` (an increment over ``root/<base>`` when
    given); then, when ``keep`` is given, :func:`prune` ``root`` to the newest ``keep``
    complete checkpoints and their chains (rank 0, before returning)."""
    if step < 0 or (keep is not None and keep < 1):
        raise ValueError(f"need step >= 0 and keep >= 1, got step {step}, keep {keep}")
    after = None if keep is None else (lambda: prune(root, keep))
    return save(step_path(root, step), arrays, meta, comm, rank_meta, after, base=base)


MAX_CHAIN = 1000  # links followed before a chain is called malformed (a cycle)


def load_chain(path: str | Path, full: bool = False,
               verified: dict[Path, Manifest] | None = None) -> list[tuple[Path, Manifest]]:
    """The checkpoint at ``path`` and, for an increment, its bases down to a full one
    (tip first), every link verified (sizes; also contents when ``full``). RecsError when
    any link is incomplete or damaged: the message names the link. ``verified``: links
    verified already (by this call or earlier ones sharing it), not checked again."""
    chain: list[tuple[Path, Manifest]] = []
    here = Path(path)
    while True:
        if verified is not None and here in verified:
            m = verified[here]
        else:
            m = mf.verify(here, full=full)
            if verified is not None:
                verified[here] = m
        if m.kind != "checkpoint":
            raise RecsError(f"{here}: a {m.kind}, not a checkpoint")
        if chain and m.world_size != chain[-1][1].world_size:
            raise RecsError(f"{path}: its base {here.name} was written by {m.world_size} "
                            f"ranks, the increment by {chain[-1][1].world_size}")
        chain.append((here, m))
        if m.base is None:
            return chain
        if len(chain) > MAX_CHAIN:
            raise RecsError(f"{path}: malformed chain of increments (over {MAX_CHAIN} links)")
        nxt = here.parent / m.base
        if not nxt.is_dir():
            raise RecsError(f"{path}: the base {m.base} of {here.name} is missing: the "
                            f"chain of increments is incomplete")
        here = nxt


def load_manifest(path: str | Path, full: bool = False) -> Manifest:
    """The manifest of the checkpoint at ``path``, after checking every file it lists
    (sizes; also contents when ``full``) and, for an increment, its whole chain. RecsError
    when incomplete or damaged."""
    return load_chain(path, full)[0][1]


def _patched(name: str) -> tuple[str, str] | None:
    """(array name, "rows" / "values") for a patch file's name, else None."""
    for suffix in _PATCH:
        if name.endswith(suffix):
            return name[:-len(suffix)], suffix.rsplit("-", 1)[1]
    return None


def _apply(where: Path, name: str, base: np.ndarray | None, rows: np.ndarray,
           values: np.ndarray) -> np.ndarray:
    if base is None:
        raise RecsError(f"{where}: a patch of {name!r}, which its base does not have")
    if (rows.ndim != 1 or len(rows) != len(values) or values.shape[1:] != base.shape[1:]
            or values.dtype != base.dtype or (len(rows) and not 0 <= rows.min() <= rows.max()
                                              < len(base))):
        raise RecsError(f"{where}: the patch of {name!r} does not fit its base "
                        f"({len(rows)} rows {values.shape} {values.dtype} onto "
                        f"{base.shape} {base.dtype})")
    base[rows] = values
    return base


def _compose(chain: list[tuple[Path, Manifest]], rank: int, names: list[str] | None,
             read: Callable[[Path, list[mf.FileEntry]], list[np.ndarray]]
             ) -> dict[str, np.ndarray]:
    """Rank ``rank``'s arrays (``names`` only, when given) through a chain: the full base
    first, then each increment's full arrays and patches in order."""
    out: dict[str, np.ndarray] = {}
    for where, m in reversed(chain):
        entries = m.rank_files(rank)
        wanted = [e for e in entries.values()
                  if names is None or (_patched(e.name) or (e.name,))[0] in names]
        got = dict(zip((e.name for e in wanted), read(where, wanted)))
        for fname, arr in got.items():
            patch = _patched(fname)
            if patch is None:
                out[fname] = arr
            elif patch[1] == "rows":
                name = patch[0]
                values = got.get(name + _PATCH[1])
                if values is None:
                    raise RecsError(f"{where}: the patch of {name!r} has no values")
                out[name] = _apply(where, name, out.get(name), arr, values)
    return out


def read_rank(path: str | Path, rank: int, verify: bool = True, world: int | None = None,
              manifest: Manifest | None = None,
              workers: int = WORKERS) -> dict[str, np.ndarray]:
    """Rank ``rank``'s arrays. ``verify`` checks each file's sha256 (shape, dtype and size
    are always checked). ``world``, when given, must equal the checkpoint's world size
    (else read every shard with :func:`read_all` and reshard). Up to ``workers`` files are
    read at once."""
    m = manifest if manifest is not None else load_manifest(path)
    if world is not None and world != m.world_size:
        raise RecsError(f"{path}: written by {m.world_size} ranks, this job has {world}: "
                        f"read all shards and reshard")
    if not 0 <= rank < m.world_size:
        raise RecsError(f"{path}: no rank {rank} (written by {m.world_size} ranks)")
    chain = [(Path(path), m)] if m.base is None else load_chain(path)
    return _compose(chain, rank, None, lambda where, entries: _each(
        lambda e: mf.read_entry(where, e, verify), entries, workers))


def read_arrays(chain: list[tuple[Path, Manifest]], rank: int, names: list[str],
                verify: bool = True) -> dict[str, np.ndarray]:
    """Rank ``rank``'s arrays ``names`` (those it has) of the checkpoint whose
    :func:`load_chain` is ``chain``: for reading one table at a time when resharding."""
    return _compose(chain, rank, names, lambda where, entries: [
        mf.read_entry(where, e, verify) for e in entries])


def read_all(path: str | Path, verify: bool = True,
             workers: int = WORKERS) -> list[dict[str, np.ndarray]]:
    """Every rank's arrays, by rank (for resharding to another world size)."""
    m = load_manifest(path)
    return [read_rank(path, r, verify, manifest=m, workers=workers)
            for r in range(m.world_size)]


def _steps(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*`` directory under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP.match(p.name)) and p.is_dir() and not p.is_symlink()]
    return sorted(found, reverse=True)


def _complete(path: Path) -> bool:
    try:
        load_manifest(path)
    except RecsError:
        return False
    return True


def latest_complete(root: str | Path) -> str | None:
    """The newest ``step-*`` checkpoint under ``root`` whose manifest exists and whose
    files all exist with their listed sizes (contents are checked when read); None if
    there is none."""
    return next((str(p) for _, p in _steps(Path(root)) if _complete(p)), None)


class DamagedCheckpoint(RecsError):
    """The newest checkpoint under a root is incomplete or damaged (``path``, ``reason``);
    ``older``: the newest complete one before it, or None."""

    def __init__(self, path: str, reason: str, older: str | None) -> None:
        super().__init__(f"{path}: damaged: {reason}")
        self.path, self.reason, self.older = path, reason, older


_SHARD = re.compile(r"rank\d{5,}-of-\d{5,}\Z")


def newest_checkpoint(root: str | Path) -> str | None:
    """``root`` itself when it is a checkpoint (it has a manifest or shard directories),
    else its newest ``step-*`` directory, or None when there is neither. When that
    checkpoint is incomplete or damaged (checked as :func:`latest_complete` checks),
    RecsError, :class:`DamagedCheckpoint` for a ``step-*`` one: an older one is never
    taken in its place."""
    root = Path(root)
    if (root / mf.MANIFEST).exists() or (root.is_dir() and any(
            _SHARD.match(p.name) for p in root.iterdir())):
        load_manifest(root)  # named explicitly: its own error
        return str(root)
    steps = _steps(root)
    if not steps:
        return None
    path = steps[0][1]
    older = next((str(p) for _, p in steps[1:] if _complete(p)), None)
    try:
        load_manifest(path)
    except RecsError as e:
        raise DamagedCheckpoint(str(path), str(e).removeprefix(f"{path}: "), older) from None
    return str(path)


def prune(root: str | Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` complete checkpoints under ``root``; remove every
    ``step-*`` directory older than the oldest kept one. Staging directories (``.partial-``,
    another save's, possibly in progress) and entries that are not ``step-*`` directories
    are left alone. Returns the removed paths."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    kept: list[int] = []
    needed: set[str] = set()  # the kept checkpoints and the links of their chains
    removed = []
    verified: dict[Path, Manifest] = {}  # each link is checked once
    for _, p in _steps(root):
        if len(kept) < keep:
            try:
                chain = load_chain(p, verified=verified)
            except RecsError:
                continue
            kept.append(1)
            needed.update(str(q) for q, _ in chain)
            continue
        if str(p) not in needed:
            removed.append(p)
    for p in removed:
        shutil.rmtree(p)
    return [str(p) for p in removed]
