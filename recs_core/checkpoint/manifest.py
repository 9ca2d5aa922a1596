"""The manifest: what a checkpoint or delta directory holds, and its verification.

``manifest.json`` (UTF-8 JSON, written last and atomically) has the keys

* ``format``: the layout version (:data:`FORMAT`); readers refuse versions they do not know;
* ``kind``: ``"checkpoint"`` or ``"delta"``;
* ``world_size``: the number of ranks that wrote it (1 for a delta);
* ``meta``: the caller's free dict (feature spec, hash version, model config, step...);
* ``rank_meta``: one free dict per rank (e.g. that rank's input position);
* ``files``: one entry per ``.npy`` file: ``path`` (relative, ``/``-separated), ``name``
  (the array's key), ``rank``, ``shape``, ``dtype`` (numpy ``dtype.str``, e.g. ``"<f4"``),
  ``bytes`` (file size) and ``sha256`` (hex digest of the whole file); an entry with an
  ``offset`` is a ``.npy`` blob of ``bytes`` bytes at that offset inside a *pack* (a file
  holding several arrays' blobs back to back, whose size is the end of its last blob),
  and its ``sha256`` is the blob's;
* ``base`` (checkpoints): null for a full checkpoint; for an *increment*, the directory
  name of the sibling checkpoint it applies to (see ``store.py``).

A directory without a manifest is incomplete. Structural verification checks that every
listed file exists with its listed size (cheap: one ``stat`` each); full verification
also reads it and checks its sha256 and ``.npy`` header against the entry.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from recs_core.checkpoint import files
from recs_core.errors import RecsError

FORMAT = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def check_name(name: str, what: str) -> None:
    """RecsError unless ``name`` is a safe file name stem (letters, digits, ``_.-``, not
    starting with ``.`` or ``-``); ``what`` says what it names."""
    if not _NAME.match(name):
        raise RecsError(f"{what} {name!r}: use letters, digits, '_', '.', '-' "
                        f"(not starting with '.' or '-')")


@dataclass(frozen=True)
class FileEntry:
    """One ``.npy`` file of a checkpoint or delta."""

    path: str
    name: str
    rank: int
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    sha256: str
    offset: int | None = None  # a blob inside a pack (see the module docstring)


@dataclass
class Manifest:
    """The parsed ``manifest.json`` (see the module docstring for the fields)."""

    kind: str
    world_size: int
    meta: dict[str, Any]
    files: list[FileEntry]
    rank_meta: list[dict[str, Any]] = field(default_factory=list)
    format: int = FORMAT
    base: str | None = None  # an increment's base: a sibling checkpoint's directory name

    def rank_files(self, rank: int) -> dict[str, FileEntry]:
        """The entries rank ``rank`` wrote, by array name."""
        return {e.name: e for e in self.files if e.rank == rank}

    def check_meta(self, expected: Mapping[str, Any]) -> None:
        """Raise RecsError naming the first key of ``expected`` whose value differs from
        (or is missing in) ``meta``; keys not in ``expected`` are not compared."""
        for key, want in expected.items():
            if key not in self.meta:
                raise RecsError(f"checkpoint meta has no {key!r} (this job has {_short(want)})")
            got = self.meta[key]
            if got != to_jsonable(want, f"expected meta {key!r}"):
                raise RecsError(f"checkpoint meta {key!r} differs: the checkpoint has "
                                f"{_short(got)}, this job has {_short(want)}")

    def to_json(self) -> bytes:
        """Indented JSON with one line per file entry."""
        d = asdict(self)
        entries = ",\n  ".join(json.dumps({k: v for k, v in e.items()
                                            if not (k == "offset" and v is None)},
                                           sort_keys=True) for e in d.pop("files"))
        head = json.dumps(d, indent=1, sort_keys=True)[:-2]  # without the closing "\n}"
        return f'{head},\n "files": [\n  {entries}\n ]\n}}\n'.encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            d = json.loads(data)
            fmt = d["format"]
            if fmt != FORMAT:
                raise RecsError(f"{where}: format {fmt!r} is not supported (this version "
                                f"reads format {FORMAT})")
            entries = [FileEntry(**{**e, "shape": tuple(e["shape"])}) for e in d["files"]]
            base = d.get("base")
            if base is not None and (not isinstance(base, str) or "/" in base
                                     or base in ("", ".", "..")):
                raise ValueError(f"bad base {base!r}")
            m = cls(kind=d["kind"], world_size=int(d["world_size"]), meta=dict(d["meta"]),
                    files=entries, rank_meta=list(d.get("rank_meta", [])), format=fmt,
                    base=base)
        except (ValueError, KeyError, TypeError) as e:
            raise RecsError(f"{where}: malformed manifest: {type(e).__name__}: {e}") from None
        # a checkpoint's writer gives every rank a rank_meta entry: a world size that
        # disagrees (e.g. 10**9 typed in) is refused before anything loops over it
        if m.world_size < 1 or (m.kind == "checkpoint" and len(m.rank_meta) != m.world_size):
            raise RecsError(f"{where}: malformed manifest: world_size {m.world_size}, but "
                            f"rank_meta for {len(m.rank_meta)} rank(s)")
        for e in m.files:
            p = PurePosixPath(e.path)
            if (p.is_absolute() or ".." in p.parts or not (0 <= e.rank < m.world_size)
                    or (e.offset is not None and not (isinstance(e.offset, int)
                                                      and e.offset >= 0))):
                raise RecsError(f"{where}: malformed manifest: bad entry {e.path!r} "
                                f"(rank {e.rank})")
        return m


def _short(value: Any) -> str:
    text = repr(value)
    if len(text) <= 60:
        return text
    h = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[:40]}... ({len(text)} chars, sha256 {h})"


def to_jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (tuples become lists, NumPy scalars and arrays
    Python numbers and lists); RecsError naming ``what`` when it cannot be stored."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic | np.ndarray):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serializable")

    try:
        return json.loads(json.dumps(value, default=default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise RecsError(f"{what}: {e}") from None


def write_array(root: Path, rel: str, name: str, rank: int, arr: np.ndarray) -> FileEntry:
    """Write ``arr`` to ``root/rel`` in a staging directory ``root`` (fsynced; the caller
    fsyncs the directories and publishes ``root`` by a rename); return its manifest
    entry."""
    arr = np.asarray(arr)
    size, sha = files.staged_write(root / rel, files.npy_chunks(arr))
    return FileEntry(path=rel, name=name, rank=rank, shape=tuple(arr.shape),
                     dtype=arr.dtype.str, bytes=size, sha256=sha)


def write_pack(root: Path, rel: str, rank: int, arrays: list[tuple[str, np.ndarray]]
               ) -> list[FileEntry]:
    """Write ``arrays`` (name, array) as one pack ``root/rel`` in a staging directory
    (fsynced, as :func:`write_array`); return their manifest entries."""
    arrays = [(name, np.asarray(a)) for name, a in arrays]
    blobs = files.staged_write_blobs(root / rel, (files.npy_chunks(a) for _, a in arrays))
    return [FileEntry(path=rel, name=name, rank=rank, shape=tuple(a.shape), dtype=a.dtype.str,
                      bytes=size, sha256=sha, offset=offset)
            for (name, a), (offset, size, sha) in zip(arrays, blobs)]


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``root/manifest.json`` atomically (the last step of any save)."""
    files.atomic_write(root / MANIFEST, [manifest.to_json()])


def read_manifest(root: str | Path) -> Manifest:
    """Parse ``root/manifest.json``; RecsError when missing (an incomplete directory) or
    malformed. Files are not checked (see :func:`verify`)."""
    path = Path(root) / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecsError(f"{root}: incomplete or not a checkpoint (no {MANIFEST})") from None
    except OSError as e:
        raise RecsError(f"{path}: cannot read: {e.strerror}") from None
    return Manifest.from_json(data, str(path))


def _fail(root: Path, entry: FileEntry, what: str) -> RecsError:
    blob = "" if entry.offset is None else f" (array {entry.name})"
    return RecsError(f"{root}: {entry.path}{blob}: {what}")


def check_file(root: Path, entry: FileEntry, pack_bytes: int | None = None) -> None:
    """Structural check of one entry: the file exists with its listed size (a blob of a
    pack: the pack reaches the blob's end, and is ``pack_bytes`` long when given)."""
    try:
        size = (root / entry.path).stat().st_size
    except FileNotFoundError:
        raise _fail(root, entry, "missing") from None
    listed = entry.bytes if entry.offset is None else (
        entry.offset + entry.bytes if pack_bytes is None else pack_bytes)
    if size != listed and (entry.offset is None or pack_bytes is not None or size < listed):
        what = "truncated" if size < listed else "too long"
        raise RecsError(f"{root}: {entry.path}: {what}: {size} bytes, the manifest lists "
                        f"{listed}")


def read_entry(root: Path, entry: FileEntry, verify: bool = True) -> np.ndarray:
    """Read one entry's array, checking size, ``.npy`` header (shape, dtype) and, when
    ``verify``, the sha256 of the whole file; RecsError naming the file otherwise."""
    check_file(root, entry)
    try:
        arr, _, sha = files.read_npy(root / entry.path, hash_it=verify, at=None if (
            entry.offset is None) else (entry.offset, entry.bytes))
    except ValueError as e:
        raise _fail(root, entry, f"not a valid .npy file: {e}") from None
    if verify and sha != entry.sha256:
        raise _fail(root, entry, f"sha256 mismatch (corrupt): file {sha[:16]}..., "
                                 f"manifest {entry.sha256[:16]}...")
    if arr.shape != entry.shape or arr.dtype.str != entry.dtype:
        raise _fail(root, entry, f"holds {arr.shape} {arr.dtype.str}, the manifest lists "
                                 f"{entry.shape} {entry.dtype}")
    return arr


def verify(root: str | Path, manifest: Manifest | None = None, full: bool = False) -> Manifest:
    """Check every file the manifest lists (structurally, or fully when ``full``); return
    the manifest. Raises RecsError naming the first bad file."""
    root = Path(root)
    m = read_manifest(root) if manifest is None else manifest
    packs: dict[str, int] = {}  # each pack's size: the end of its last blob
    for e in m.files:
        if e.offset is not None:
            packs[e.path] = max(packs.get(e.path, 0), e.offset + e.bytes)
    for e in m.files:
        check_file(root, e, packs.get(e.path))
        if full:
            read_entry(root, e, verify=True)
    return m
