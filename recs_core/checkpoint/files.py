"""Durable file primitives shared by checkpoints and deltas.

* :func:`atomic_write` is the one way a file is written: a temp file in the target's
  directory, write, flush, fsync, rename over the target, fsync the directory
  (:func:`written_aside`, which a writer that needs a path, such as Parquet's, uses
  itself). It returns the byte size and sha256 of what it wrote (hashed while writing, no
  second read).
* :func:`npy_chunks` streams an array as ``.npy`` bytes (header, then the data buffer
  itself, zero-copy); :func:`read_npy` reads one back, optionally hashing while reading.
  :func:`staged_write_blobs` writes several such blobs into one file (a pack).
* :func:`publish` moves a fully written staging directory to its final name; when the
  final directory exists it is swapped atomically (``renameat2(RENAME_EXCHANGE)`` where
  the file system supports it, else two renames) and the old one removed.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHUNK = 4 << 20  # bytes hashed and written / read at a time (stays in cache)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and new entries in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync ``root`` and every directory below it, making the entries of freshly written
    files and subdirectories durable."""
    for parent, _, _ in os.walk(root):
        fsync_dir(parent)


@contextmanager
def written_aside(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary name in ``path``'s directory to write the file to. When the block
    ends without an error, the file is fsynced and renamed over ``path`` (a reader sees the
    old file, or none, or the whole new one), then the directory fsynced; else it is
    removed. A crash leaves at worst a hidden ``.<name>.*.tmp`` file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def staged_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]
                 ) -> tuple[int, str]:
    """Write ``chunks`` to the new file ``path`` inside a staging directory and fsync it;
    return (bytes, sha256 hex). No rename: the directory is published whole, by its
    writer, once its entries are fsynced (:func:`fsync_tree`)."""
    (_, size, sha), = staged_write_blobs(path, [chunks])
    return size, sha


def staged_write_blobs(path: str | os.PathLike, blobs: Iterable[Iterable[bytes | memoryview]]
                       ) -> list[tuple[int, int, str]]:
    """:func:`staged_write` of several blobs one after another into one new file (a pack:
    one create and one fsync for many small arrays); return (offset, bytes, sha256 hex)
    per blob."""
    out = []
    pos = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            for chunks in blobs:
                digest, size = hashlib.sha256(), 0
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                out.append((pos, size, digest.hexdigest()))
                pos += size
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return out


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> tuple[int, str]:
    """Write ``chunks`` to ``path`` atomically and durably (:func:`written_aside`); return
    (bytes, sha256 hex)."""
    digest, size = hashlib.sha256(), 0
    with written_aside(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def npy_header(arr: np.ndarray) -> bytes:
    """The ``.npy`` header numpy.save would write for a C-ordered ``arr``."""
    buf = io.BytesIO()
    d = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # header too long for format 1.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def npy_chunks(arr: np.ndarray) -> Iterator[bytes | memoryview]:
    """``arr`` as ``.npy`` file bytes: the header, then views of its data (no copy when
    ``arr`` is C-contiguous)."""
    if arr.dtype.hasobject:
        raise ValueError(f"cannot store object arrays (dtype {arr.dtype})")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
    yield npy_header(arr)
    data = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def read_npy(path: str | os.PathLike, hash_it: bool, at: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, int, str | None]:
    """Read a ``.npy`` file whole, or the ``.npy`` blob at ``at`` = (offset, bytes) of a
    pack; return (array, bytes read, sha256 hex or None).

    The array is a view into the buffer the file was read into (one copy of the data).
    Raises ValueError when the header is bad or the data length does not match it."""
    size = os.path.getsize(path) if at is None else at[1]
    buf = np.empty(size, dtype=np.uint8)
    digest = hashlib.sha256() if hash_it else None
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        if at is not None:
            f.seek(at[0])
        pos = 0
        while pos < size:
            n = f.readinto(view[pos:pos + CHUNK])
            if not n:
                raise ValueError(f"file shrank while reading ({pos} of {size} bytes)")
            if digest is not None:
                digest.update(view[pos:pos + n])
            pos += n
    return _parse_npy(buf), size, (digest.hexdigest() if digest else None)


def _parse_npy(buf: np.ndarray) -> np.ndarray:
    head = io.BytesIO(buf[:1 << 16].tobytes())
    version = np.lib.format.read_magic(head)
    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = reader(head)
    if dtype.hasobject:
        raise ValueError(f"object dtype {dtype} is not allowed")
    offset = head.tell()
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) - offset != want:
        raise ValueError(f"data is {len(buf) - offset} bytes, header {shape} {dtype.str} "
                         f"needs {want}")
    flat = buf[offset:].view(dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def staging_path(final: Path, token: str) -> Path:
    """Where a directory that will become ``final`` is written first."""
    return final.parent / f"{final.name}.partial-{token}"


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def publish(staging: Path, final: Path) -> None:
    """Make the complete directory ``staging`` visible as ``final`` (replacing any old one).

    With an atomic exchange ``final`` is never missing; in the two-rename fallback a crash
    between the renames leaves the old copy at ``<final>.replaced-...`` (still complete)."""
    parent = final.parent
    if not final.exists():
        os.replace(staging, final)
        fsync_dir(parent)
        return
    if _exchange(staging, final):
        old = staging  # now holds the old contents
    else:
        old = parent / staging.name.replace(".partial-", ".replaced-")
        os.replace(final, old)
        os.replace(staging, final)
    fsync_dir(parent)
    shutil.rmtree(old)
