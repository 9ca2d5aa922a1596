"""Delta export: the embedding rows and dense parameters that changed since a base model,
for a serving copy to apply in place.

Format (version :data:`~recs_core.checkpoint.manifest.FORMAT`), a directory::

    <delta>/manifest.json              kind "delta", world_size 1, the caller's meta
    <delta>/tables/<table>/ids.npy     int64 [k]: changed global row ids, strictly ascending
    <delta>/tables/<table>/values.npy  float32 [k, dim]: those rows' new values
    <delta>/dense/<name>.npy           a dense parameter, whole (any shape, its own dtype)

Every file is a plain NumPy ``.npy`` file listed in ``manifest.json`` with its shape,
dtype, byte size and sha256 (manifest entries are named ``tables/<table>/ids``,
``tables/<table>/values`` and ``dense/<name>``). The directory is written like a
checkpoint: each file atomically, the manifest last, the whole directory published by an
atomic rename, so a reader either sees a complete delta or none. Applying it sets
``table[ids] = values`` for each table and replaces each listed dense parameter.
Tables and dense parameters that did not change are simply absent.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from recs_core.checkpoint import manifest as mf
from recs_core.checkpoint.files import fsync_tree, publish, staging_path
from recs_core.checkpoint.outdir import check_delta_target
from recs_core.errors import RecsError

TableDelta = tuple[np.ndarray, np.ndarray]  # (ids int64 [k], values float32 [k, dim])


def rows_changed(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Row numbers (int64, ascending) where ``new`` differs bitwise from ``old`` (so
    ``-0.0`` vs ``0.0`` counts as a change and an unchanged NaN does not)."""
    if old.shape != new.shape or old.dtype != new.dtype:
        raise ValueError(f"tables differ in layout: {old.shape} {old.dtype} vs "
                         f"{new.shape} {new.dtype}")
    bits = np.dtype(f"u{old.dtype.itemsize}")
    diff = np.ascontiguousarray(old).view(bits) != np.ascontiguousarray(new).view(bits)
    return np.flatnonzero(diff.reshape(len(old), -1).any(axis=1)).astype(np.int64)


def _sorted_rows(table: str, ids: np.ndarray, values: np.ndarray) -> TableDelta:
    ids, values = np.asarray(ids), np.asarray(values)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise RecsError(f"delta table {table!r}: ids must be a 1-D integer array, got "
                        f"{ids.shape} {ids.dtype}")
    if values.dtype != np.float32 or values.ndim != 2 or len(values) != len(ids):
        raise RecsError(f"delta table {table!r}: values must be float32 [{len(ids)}, dim], "
                        f"got {values.shape} {values.dtype}")
    order = np.argsort(ids, kind="stable")
    ids = ids[order].astype(np.int64)
    if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
        raise RecsError(f"delta table {table!r}: repeated row ids")
    return ids, values[order]


def export_delta(path: str | Path, table_deltas: Mapping[str, TableDelta],
                 dense: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> str:
    """Write a delta (format in the module docstring) to ``path``, replacing an earlier
    delta there (anything else at ``path`` is refused: see ``outdir.check_delta_target``);
    return the path. ``table_deltas`` maps a table name to (row ids, their new values).
    A failed write (e.g. a full disk: RecsError) removes its staging directory."""
    staging = stage_delta(path)
    with writing(staging, path):
        entries = write_delta_arrays(staging, table_deltas, dense)
    return finish_delta(staging, path, entries, meta)


@contextmanager
def writing(staging: Path, path: str | Path, remove: bool = True) -> Iterator[None]:
    """Work on the staging directory of the delta ``path``: on an error it is removed
    (``remove``), and an OSError (a full disk) becomes one line naming the delta."""
    try:
        yield
    except BaseException as e:
        if remove:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise RecsError(f"delta {path} not written: {e}") from e
        raise


def stage_delta(path: str | Path) -> Path:
    """Check that a delta may be written to ``path`` and make its staging directory (the
    parts are written there by :func:`write_delta_arrays`, by one process or several)."""
    final = Path(path)
    check_delta_target(final, "delta")
    staging = staging_path(final, secrets.token_hex(6))
    with writing(staging, final, remove=False):
        staging.mkdir()
    return staging


def write_delta_arrays(staging: Path, table_deltas: Mapping[str, TableDelta],
                       dense: Mapping[str, np.ndarray]) -> list[mf.FileEntry]:
    """Write these tables' rows (sorted by id) and dense parameters into ``staging``
    (each file fsynced); return their manifest entries."""
    arrays: dict[str, np.ndarray] = {}
    for table, (ids, values) in table_deltas.items():
        mf.check_name(table, "delta table name")
        arrays[f"tables/{table}/ids"], arrays[f"tables/{table}/values"] = _sorted_rows(
            table, ids, values)
    for name, arr in dense.items():
        mf.check_name(name, "delta dense name")
        arrays[f"dense/{name}"] = np.asarray(arr)
    entries = []
    for name, arr in arrays.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        entries.append(mf.write_array(staging, f"{name}.npy", name, 0, arr))
    return entries


def finish_delta(staging: Path, path: str | Path, entries: list[mf.FileEntry],
                 meta: Mapping[str, Any]) -> str:
    """Write the manifest of the parts written into ``staging`` (``entries``) and publish
    it as ``path``; on failure the staging directory is removed. Returns the path."""
    final = Path(path)
    with writing(staging, final):
        meta = mf.to_jsonable(dict(meta), "delta meta")
        fsync_tree(staging)
        mf.write_manifest(staging, mf.Manifest(kind="delta", world_size=1, meta=meta,
                                               files=sorted(entries, key=lambda e: e.name)))
        publish(staging, final)
    return str(final)


def _checked_rows(path: str | Path, table: str, ids: np.ndarray,
                  values: np.ndarray) -> TableDelta:
    if (ids.dtype != np.int64 or ids.ndim != 1 or values.ndim != 2
            or len(values) != len(ids) or np.any(ids[1:] <= ids[:-1])):
        raise RecsError(f"{path}: table {table!r}: needs strictly ascending int64 ids and "
                        f"one values row each, got ids {ids.shape} {ids.dtype.str}, values "
                        f"{values.shape}")
    return ids, values


def read_delta(path: str | Path, verify: bool = True) -> tuple[
        dict[str, TableDelta], dict[str, np.ndarray], dict[str, Any]]:
    """(table deltas, dense parameters, meta) of the delta at ``path``, every file checked
    against the manifest (sha256 too when ``verify``)."""
    root = Path(path)
    m = mf.verify(root)
    if m.kind != "delta":
        raise RecsError(f"{path}: a {m.kind}, not a delta")
    got = {e.name: mf.read_entry(root, e, verify) for e in m.files}
    tables: dict[str, TableDelta] = {}
    dense: dict[str, np.ndarray] = {}
    for name, arr in got.items():
        parts = name.split("/")
        if parts[0] == "dense" and len(parts) == 2:
            dense[parts[1]] = arr
        elif parts[0] == "tables" and len(parts) == 3 and parts[2] == "ids":
            values = got.get(f"tables/{parts[1]}/values")
            if values is None:
                raise RecsError(f"{path}: table {parts[1]!r} has ids but no values")
            tables[parts[1]] = _checked_rows(path, parts[1], arr, values)
        elif not (parts[0] == "tables" and len(parts) == 3 and parts[2] == "values"):
            raise RecsError(f"{path}: unexpected entry {name!r}")
    return tables, dense, m.meta


def apply_delta(full_tables: Mapping[str, np.ndarray], dense: Mapping[str, np.ndarray],
                delta_dir: str | Path) -> dict[str, Any]:
    """Apply the delta at ``delta_dir`` in place: ``full_tables[t][ids] = values`` and each
    listed dense parameter overwritten. Everything is checked (names, row range, shapes,
    dtypes) before anything is changed. Returns the delta's meta."""
    tables, new_dense, meta = read_delta(delta_dir)
    for t in meta.get("dynamic_entries", []):  # rows of dynamic tables, by key: not here
        tables.pop(t, None)
    for t, (ids, values) in tables.items():
        full = full_tables.get(t)
        if full is None:
            raise RecsError(f"{delta_dir}: table {t!r} is not in the model")
        if values.shape[1:] != full.shape[1:] or (len(ids) and not
                                                   0 <= ids[0] <= ids[-1] < len(full)):
            raise RecsError(f"{delta_dir}: table {t!r}: rows {values.shape} with ids up to "
                            f"{ids[-1] if len(ids) else None} do not fit {full.shape}")
    for name, arr in new_dense.items():
        cur = dense.get(name)
        if cur is None or cur.shape != arr.shape or cur.dtype != arr.dtype:
            have = None if cur is None else (cur.shape, cur.dtype.str)
            raise RecsError(f"{delta_dir}: dense {name!r} {arr.shape} {arr.dtype.str} does "
                            f"not match the model's {have}")
    for t, (ids, values) in tables.items():
        full_tables[t][ids] = values
    for name, arr in new_dense.items():
        dense[name][...] = arr
    return meta
