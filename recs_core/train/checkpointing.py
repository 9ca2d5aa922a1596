"""The trainer's checkpoints: what a job saves, how it loads (any world size), resumes
(same world size, exact) and exports the rows a window changed.

A model checkpoint is a checkpoint directory of :mod:`recs_core.checkpoint` (sharded,
atomic, manifest last, sha256 per file). Each rank writes its shard:

* ``<set>.<table>.values`` float32 [k, dim]: the rows of the table this rank owns, in
  ascending global row order (``<set>`` is ``emb`` or ``wide``, Wide&Deep's 1-dim set;
  ``<table>`` the field name with characters other than letters, digits, ``_.-`` made
  ``.``, e.g. ``emb.cat.C1``). Which rows a rank owns follows from the placement
  (``meta.placement``, ``manifest.world_size``; see ``recs_core.embedding.sharded``), so
  the row ids are not stored;
* ``<set>.<table>.acc`` float32 [k]: the row-wise Adagrad accumulator of those rows
  (absent for sparse SGD);
* ``<set>.<table>.touched`` uint8 [ceil(k / 8)]: ``numpy.packbits`` of the rows the
  window updated so far (what ``--export-delta`` writes);
* ``feat.<feature>.<step>.mean`` / ``.std`` float64: a ``standardize`` operator's
  statistics fitted on this rank's first batch (``fit = true``);
* ``progressive.labels`` / ``progressive.probs`` float32: the window's pre-update scores
  of this rank's rows so far (a resumed job reports the uninterrupted job's figures);
* rank 0 only: ``dense.<i>`` (the network's parameters, replicated on every rank) and
  ``dense_opt.<key>`` (the dense optimizer's state, ``/`` in its keys made ``.``).

``meta`` (rank 0): ``trainer`` (:data:`TRAINER_FORMAT`), ``hash`` (the feature hash's
version), ``feature_spec`` (the spec's columns, pipelines, operator chains with their
parameters and tables, as JSON; checked on every load), ``config_text`` (the config
file, when known), ``model`` (architecture and optimizer names; checked on every load),
``train_config`` and ``batch_size`` (checked on resume), ``placement``, ``step`` (global
steps since the first window), ``window`` (``data``: the files and their sizes,
``eval_fraction``, ``steps``: global steps of this window done = the input position,
``base_step``, ``done``). ``rank_meta``: per rank ``steps`` and ``train_rows`` (this
rank's rows trained in the window).

Loading (``--init-from``) takes any world size: with the writer's world size and
placement each rank reads its own shard; otherwise every rank reads every shard table
by table and keeps the rows it owns now (:func:`~recs_core.checkpoint.reshard_rows`),
dense parameters and their optimizer state come from rank 0, fitted ``standardize``
statistics from the same rank or, across world sizes, from rank 0. Resuming
(``--resume``) needs the same world size, config and data: each rank restores its shard
and its progressive scores, re-reads its first ``steps`` local batches without training
(holding out their held-out rows as before, and checking their labels against the saved
ones) and continues: the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recs_core.checkpoint import (
    export_delta,
    latest_complete,
    load_manifest,
    read_rank,
    reshard_rows,
    save,
    save_step,
)
from recs_core.checkpoint.manifest import MANIFEST, Manifest, read_entry, to_jsonable
from recs_core.embedding.dynamic_store import merge_shards
from recs_core.embedding.sharded import owners
from recs_core.errors import RecsError
from recs_core.features.hashing import HASH_VERSION
from recs_core.features.ops import Standardize, Vocab
from recs_core.features.spec import Spec

TRAINER_FORMAT = "recs-model v1"
T = TypeVar("T")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


# ---- what a model is: names and descriptions ------------------------------------------

def table_stems(spec: Spec, prefix: str) -> list[str]:
    """File-name stems of the tables of one embedding set (``emb`` / ``wide``)."""
    return _stems([n for n, _ in spec.sparse_fields], prefix)


def _stems(fields: list[str], prefix: str) -> list[str]:
    names = [f"{prefix}.{_UNSAFE.sub('.', n)}" for n in fields]
    if len(set(names)) != len(names):  # two field names that differ only in odd chars
        names = [f"{prefix}.t{i:04d}" for i in range(len(names))]
    return names


def embedding_sets(model: Any) -> list[tuple[str, Any]]:
    """(prefix, embeddings) of the model's embedding sets."""
    return [("emb", model.emb)] + ([("wide", model.wide)] if model.wide is not None else [])


def _plain(v: Any) -> Any:
    """An operator parameter as plain JSON (non-finite floats as strings)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else str(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _op_description(op: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"op": op.name}
    for k, v in vars(op).items():
        if k == "where" or k.startswith("_"):
            continue
        if isinstance(op, Standardize) and op.fit and k in ("mean", "std"):
            continue  # fitted state, not configuration
        d[k] = _plain(v)
    if isinstance(op, Vocab):  # the entries themselves (perhaps from a file)
        h = hashlib.sha256(op._arena.tobytes())
        h.update(op._len.tobytes())
        d["values_sha256"] = h.hexdigest()
    return d


def spec_description(spec: Spec) -> dict[str, Any]:
    """The feature spec as plain JSON: raw columns (name, type), and per pipeline its
    features' inputs, operator chains with every parameter, outputs and tables. Two specs
    that give the same ids and tables have equal descriptions."""
    return {
        "columns": [[c.name, c.type] for c in spec.columns],
        "pipelines": [{"name": p.name, "features": [{
            "name": f.name, "inputs": list(f.inputs), "arity": f.arity,
            "ops": [_op_description(o) for o in f.ops], "output": f.output,
            "fields": list(f.field_names),
            "table": None if f.table is None else [f.table.rows, f.table.dim, f.table.pooling]
            + ([] if f.table.dynamic is None else [asdict(f.table.dynamic)]),
        } for f in p.features]} for p in spec.pipelines],
    }


def model_description(model: Any) -> dict[str, Any]:
    """Architecture and optimizer names: what must match for a checkpoint to load."""
    cfg, spec = model.cfg, model.spec
    mlp = ({"bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp)}
           if cfg.preset == "dlrm" else {"deep_mlp": list(cfg.deep_mlp)})
    return {"preset": cfg.preset, **mlp, "dense_width": spec.dense_width,
            "tables": [[n, t.fixed_rows, t.dim] for n, t in spec.sparse_fields],
            "wide": model.wide is not None,
            "dense_shapes": [list(p.shape) for p in model.net.params],
            "optimizer": cfg.optimizer, "sparse_optimizer": cfg.sparse_optimizer}


def train_description(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("extra", None)
    return d


def _first_difference(got: Any, want: Any, where: str) -> str | None:
    """Where two JSON values first differ, as 'where: checkpoint X, this job Y'."""
    if isinstance(got, dict) and isinstance(want, dict):
        for k in list(want) + [k for k in got if k not in want]:
            sub = f"{where}.{k}" if where else str(k)
            if k not in got or k not in want:
                where_not = "the checkpoint" if k not in got else "this job"
                return f"{sub}: missing in {where_not}"
            diff = _first_difference(got[k], want[k], sub)
            if diff:
                return diff
        return None
    if isinstance(got, list) and isinstance(want, list):
        named = all(isinstance(x, dict) and "name" in x for x in got + want)
        if named and [x["name"] for x in got] == [x["name"] for x in want]:
            for g, w in zip(got, want):
                diff = _first_difference(g, w, f"{where}[{w['name']!r}]")
                if diff:
                    return diff
            return None
        if len(got) == len(want) and not named:
            for i, (g, w) in enumerate(zip(got, want)):
                diff = _first_difference(g, w, f"{where}[{i}]")
                if diff:
                    return diff
            return None
    if got != want:
        return f"{where}: the checkpoint has {_short(got)}, this job has {_short(want)}"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:100] + f"... ({len(text)} chars)"


def fitted_ops(graph: Any) -> list[tuple[str, Standardize]]:
    """(key, operator) of every operator that fits on the first batch."""
    out = []
    for fi, f in enumerate(graph.features):
        for si, op in enumerate(f.ops):
            if isinstance(op, Standardize) and op.fit:
                out.append((f"feat.{fi}.{si}", op))
    return out


# ---- collective helpers ----------------------------------------------------------------

def _everyone(world: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raises on any rank, raise on every rank (the
    failing rank its own error, the others a RecsError naming it): no rank is left
    waiting in a collective."""
    try:
        value, err = fn(), None
    except Exception as e:  # shared with the other ranks, then re-raised here
        value, err = None, e
    if world.size > 1:
        msgs = world.comm.allgather(None if err is None else f"rank {world.rank}: {err}")
        first = next((m for m in msgs if m), None)
        if err is None and first is not None:
            raise RecsError(first)
    if err is not None:
        raise err
    return value  # type: ignore[return-value]


def _bcast(world: Any, value: T) -> T:
    return value if world.size == 1 else world.comm.bcast(value, root=0)


def find_checkpoint(path: str | os.PathLike, world: Any) -> str | None:
    """``path`` itself when it is a checkpoint (has a manifest), else the newest complete
    ``step-*`` checkpoint under it, else None (rank 0 looks, every rank gets the answer)."""
    def find() -> str | None:
        if world.rank != 0:
            return None
        p = Path(path)
        return str(p) if (p / MANIFEST).exists() else latest_complete(p)

    return _bcast(world, _everyone(world, find))


def resolve(path: str | os.PathLike, world: Any) -> str:
    """:func:`find_checkpoint`, or RecsError when there is none."""
    found = find_checkpoint(path, world)
    if found is None:
        raise RecsError(f"{path}: no complete checkpoint there")
    return found


# ---- saving ----------------------------------------------------------------------------

def window_meta(job: Any, done: bool) -> dict[str, Any]:
    w = job.window
    return {"data": w.get("data"), "eval_fraction": w.get("eval_fraction"),
            "steps": job.window_steps, "base_step": job.base_step, "done": done}


def checkpoint_meta(job: Any, done: bool) -> dict[str, Any]:
    return {"trainer": TRAINER_FORMAT, "hash": HASH_VERSION,
            "feature_spec": spec_description(job.spec),
            "config_text": getattr(job, "config_text", None),
            "model": model_description(job.model), "train_config": train_description(job.cfg),
            "batch_size": job.spec.batch_size, "placement": job.cfg.placement,
            "step": job.base_step + job.window_steps, "window": window_meta(job, done)}


def shard_arrays(job: Any) -> dict[str, np.ndarray]:
    """This rank's arrays of the job's checkpoint (names in the module docstring)."""
    model = job.model
    arrays: dict[str, np.ndarray] = {}
    for prefix, emb in embedding_sets(model):
        for t, stem in enumerate(table_stems(job.spec, prefix)):
            arrays[f"{stem}.values"] = emb.rows_view(t)
            acc = emb.accumulator_view(t)
            if acc is not None:
                arrays[f"{stem}.acc"] = acc
            arrays[f"{stem}.touched"] = np.packbits(emb.touched_view(t))
            if t in emb.dynamic:
                for k, a in emb.dynamic.arrays(t).items():
                    arrays[f"{stem}.dyn.{k}"] = a
        if emb.dynamic.tables:
            arrays[f"{prefix}.dyn_window"] = np.array([emb.dynamic.window], dtype=np.int64)
    if job.world.rank == 0:
        for i, p in enumerate(model.net.params):
            arrays[f"dense.{i}"] = p
        for k, a in model.dense_opt.state.items():
            arrays[f"dense_opt.{k.replace('/', '.')}"] = a
    for key, op in fitted_ops(job.graph):
        state = op.fitted_state()
        if state is not None:
            arrays[f"{key}.mean"], arrays[f"{key}.std"] = state["mean"], state["std"]
    prog = job.progressive
    arrays["progressive.labels"] = prog.labels()
    arrays["progressive.probs"] = prog.probs()
    return arrays


def save_checkpoint(job: Any, path: str | os.PathLike | None = None, *,
                    root: str | os.PathLike | None = None, keep: int | None = None,
                    done: bool = False) -> str:
    """Write the job's checkpoint (collective) to ``path``, or to ``root/step-<step>``
    (pruning ``root`` to ``keep`` checkpoints). Returns where it went."""
    t0 = time.perf_counter()
    arrays = shard_arrays(job)
    meta = checkpoint_meta(job, done)
    comm = job.world.comm if job.world.size > 1 else None
    rank_meta = {"steps": job.window_steps, "train_rows": int(job.progressive.rows)}
    if root is not None:
        out = save_step(root, job.base_step + job.window_steps, arrays, meta, comm,
                        rank_meta=rank_meta, keep=keep)
    else:
        assert path is not None
        out = save(path, arrays, meta, comm, rank_meta=rank_meta)
    figures = job.checkpoint_figures
    figures["saves"] = figures.get("saves", 0) + 1
    figures["save_seconds"] = figures.get("save_seconds", 0.0) + time.perf_counter() - t0
    return out


# ---- loading ---------------------------------------------------------------------------

@dataclass
class ResumePoint:
    """What a resumed run continues from (this rank's part)."""

    path: str
    steps: int  # global steps of the window done: local batches to skip
    train_rows: int  # this rank's trained rows in those steps
    labels: np.ndarray
    probs: np.ndarray
    window: dict[str, Any]


def _check_meta(job: Any, m: Manifest, path: str, resume: bool) -> None:
    meta = m.meta
    if meta.get("trainer") != TRAINER_FORMAT:
        raise RecsError(f"{path}: not a model checkpoint of this trainer (trainer "
                        f"{meta.get('trainer')!r}, expected {TRAINER_FORMAT!r})")
    if meta.get("hash") != HASH_VERSION:
        raise RecsError(f"{path}: written with feature hash {meta.get('hash')!r}, this "
                        f"version hashes with {HASH_VERSION!r}: the ids would not match")
    for key, want, what in (("feature_spec", spec_description(job.spec), "feature spec"),
                            ("model", model_description(job.model), "model")):
        diff = _first_difference(meta.get(key), _json(want), "")
        if diff:
            raise RecsError(f"{path}: the checkpoint's {what} differs from this job's: {diff}")
    if not resume:
        return
    if m.world_size != job.world.size:
        raise RecsError(f"{path}: written by {m.world_size} rank(s), this job has "
                        f"{job.world.size}: --resume needs the same world size (the input "
                        f"position is per rank); use --init-from to load it on "
                        f"{job.world.size} rank(s) and start the window over")
    for key, want in (("train_config", train_description(job.cfg)),
                      ("batch_size", job.spec.batch_size)):
        diff = _first_difference(meta.get(key), _json(want), key)
        if diff:
            raise RecsError(f"{path}: --resume needs the same config: {diff}")


def _json(v: Any) -> Any:
    return to_jsonable(v, "checkpoint meta")


def _assign(dst: np.ndarray, src: np.ndarray, what: str) -> None:
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise RecsError(f"checkpoint array {what} is {src.shape} {src.dtype}, the model's "
                        f"{dst.shape} {dst.dtype}")
    dst[...] = src


def _old_owner(t: int, rows: int, world: int, placement: str) -> np.ndarray:
    if world == 1:
        return np.zeros(rows, dtype=np.int64)
    return owners(t, np.arange(rows, dtype=np.int64), world, placement)


def _new_owner(job: Any, t: int) -> Callable[[np.ndarray], np.ndarray]:
    w = job.world.size
    if w == 1:
        return lambda ids: np.zeros(len(ids), dtype=np.int64)
    return lambda ids: owners(t, ids, w, job.cfg.placement)


def _load_tables_direct(job: Any, mine: dict[str, np.ndarray], resume: bool) -> None:
    for prefix, emb in embedding_sets(job.model):
        for t, stem in enumerate(table_stems(job.spec, prefix)):
            _assign(emb.rows_view(t), _need(mine, f"{stem}.values"), f"{stem}.values")
            acc = emb.accumulator_view(t)
            if acc is not None:
                _assign(acc, _need(mine, f"{stem}.acc"), f"{stem}.acc")
            if resume:
                mark = emb.touched_view(t)
                bits = np.unpackbits(_need(mine, f"{stem}.touched"), count=len(mark))
                _assign(mark, bits, f"{stem}.touched")
            if t in emb.dynamic:
                emb.dynamic.load_arrays(t, _dyn_part(mine, stem), touched=resume)
        if emb.dynamic.tables:
            emb.dynamic.window = int(_need(mine, f"{prefix}.dyn_window")[0])


_DYN_PARTS = ("keys", "values", "freq", "last_seen", "sketch", "acc", "touched")


def _dyn_part(arrays: dict[str, np.ndarray], stem: str) -> dict[str, np.ndarray]:
    """One shard's dynamic-table arrays of table ``stem`` (names without the prefix)."""
    out = {k: arrays[f"{stem}.dyn.{k}"] for k in _DYN_PARTS if f"{stem}.dyn.{k}" in arrays}
    for k in ("keys", "values", "freq", "last_seen", "sketch", "touched"):
        if k not in out:
            raise RecsError(f"the checkpoint has no {stem}.dyn.{k} for this rank (was the "
                            "table dynamic when it was written?)")
    return out


def _need(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    a = arrays.get(name)
    if a is None:
        raise RecsError(f"the checkpoint has no {name!r} for this rank")
    return a


def _load_tables_resharded(job: Any, root: str, m: Manifest) -> None:
    """Every shard, table by table: keep the rows this rank owns under the job's world
    size and placement."""
    old_world, old_placement = m.world_size, m.meta.get("placement", "row")
    entries = [m.rank_files(r) for r in range(old_world)]
    rank = job.world.rank
    for prefix, emb in embedding_sets(job.model):
        for t, stem in enumerate(table_stems(job.spec, prefix)):
            rows = job.spec.sparse_fields[t][1].fixed_rows
            old = _old_owner(t, rows, old_world, old_placement)
            keys = ["values"] + (["acc"] if emb.accumulator_view(t) is not None else [])
            shards = []
            for r in range(old_world):
                part: dict[str, np.ndarray] = {"ids": np.flatnonzero(old == r)}
                for k in keys:
                    e = entries[r].get(f"{stem}.{k}")
                    if e is None:
                        raise RecsError(f"{root}: rank {r} has no {stem}.{k}")
                    part[k] = read_entry(Path(root), e)
                    if len(part[k]) != len(part["ids"]):
                        raise RecsError(f"{root}: rank {r}'s {stem}.{k} has {len(part[k])} "
                                        f"rows, the placement gives it {len(part['ids'])}")
                shards.append(part)
            if t in emb.dynamic:
                _reshard_dynamic(job, emb, t, stem, root, entries)
                continue
            got = reshard_rows(shards, _new_owner(job, t), rank)
            if not np.array_equal(got["ids"], emb.owned_rows(t)):
                raise RecsError(f"{root}: {stem}: the resharded rows are not this rank's")
            _assign(emb.rows_view(t), got["values"], f"{stem}.values")
            if "acc" in keys:
                _assign(emb.accumulator_view(t), got["acc"], f"{stem}.acc")


def _reshard_dynamic(job: Any, emb: Any, t: int, stem: str, root: str,
                     entries: list[dict[str, Any]]) -> None:
    """A dynamic table on a new world size: every old shard's rows, kept where this rank
    owns their key under the new world (``owners``), in key order; the sketch is the
    saturating sum of the old shards' sketches (see ``dynamic_tables.merge_shards``).
    Touched marks are cleared: a load starts a new window."""
    parts = []
    for files in entries:
        part = {}
        for k in _DYN_PARTS:
            e = files.get(f"{stem}.dyn.{k}")
            if e is not None:
                part[k] = read_entry(Path(root), e)
        parts.append(_dyn_part({f"{stem}.dyn.{k}": v for k, v in part.items()}, stem))
    owner, rank = _new_owner(job, t), job.world.rank
    merged = merge_shards(parts, lambda keys: owner(keys) == rank)
    emb.dynamic.load_arrays(t, merged, touched=False)
    window = read_entry(Path(root), entries[0][f"{stem.split('.', 1)[0]}.dyn_window"])
    emb.dynamic.window = int(window[0])


def _read_named(root: str, m: Manifest, rank: int, names: Callable[[str], bool]) -> dict[
        str, np.ndarray]:
    return {n: read_entry(Path(root), e) for n, e in m.rank_files(rank).items() if names(n)}


def _load_dense(job: Any, arrays: dict[str, np.ndarray]) -> None:
    model = job.model
    for i, p in enumerate(model.net.params):
        _assign(p, _need(arrays, f"dense.{i}"), f"dense.{i}")
    for k, a in model.dense_opt.state.items():
        name = f"dense_opt.{k.replace('/', '.')}"
        _assign(a, _need(arrays, name), name)


def _load_fitted(job: Any, arrays: dict[str, np.ndarray]) -> None:
    for key, op in fitted_ops(job.graph):
        mean, std = arrays.get(f"{key}.mean"), arrays.get(f"{key}.std")
        if mean is not None and std is not None:
            try:
                op.set_fitted_state(mean, std)
            except ValueError as e:
                raise RecsError(str(e)) from None


def load_checkpoint(job: Any, path: str | os.PathLike, resume: bool = False) -> tuple[
        str, Manifest, ResumePoint | None]:
    """Load a checkpoint (a checkpoint directory, or a directory of ``step-*`` ones: the
    newest complete) into the job's model, collectively. ``resume``: also restore this
    rank's input position, progressive scores and touched rows (same world size and
    config). Returns (the checkpoint loaded, its manifest, the resume point or None)."""
    t0 = time.perf_counter()
    world = job.world
    path = resolve(path, world)
    m = _everyone(world, lambda: load_manifest(path))
    _everyone(world, lambda: _check_meta(job, m, path, resume))
    direct = m.world_size == world.size and (world.size == 1 or
                                             m.meta.get("placement") == job.cfg.placement)
    assert direct or not resume  # resume checked the world size and the train config

    def read() -> ResumePoint | None:
        mine: dict[str, np.ndarray] = {}
        if direct:
            mine = read_rank(path, world.rank, manifest=m)
            _load_tables_direct(job, mine, resume)
            dense = mine if world.rank == 0 else _read_named(
                path, m, 0, lambda n: n.startswith("dense"))
            fitted = mine
        else:
            _load_tables_resharded(job, path, m)
            dense = _read_named(path, m, 0, lambda n: n.startswith(("dense", "feat.")))
            fitted = dense
        _load_dense(job, dense)
        _load_fitted(job, fitted)
        if not resume:
            return None
        rm = m.rank_meta[world.rank] if world.rank < len(m.rank_meta) else {}
        return ResumePoint(path, int(rm.get("steps", -1)), int(rm.get("train_rows", -1)),
                           _need(mine, "progressive.labels"), _need(mine, "progressive.probs"),
                           dict(m.meta.get("window") or {}))

    point = _everyone(world, read)
    figures = job.checkpoint_figures
    figures["loaded_from"] = path
    figures["load_seconds"] = round(time.perf_counter() - t0, 4)
    return path, m, point


def skip_steps(parts: Iterator[Any], point: ResumePoint) -> None:
    """Consume this rank's first ``point.steps`` local batches (their held-out rows are
    collected by the iterator as usual) and check them against the checkpoint: the same
    number of training rows with the same labels."""
    got = []
    for _ in range(point.steps):
        part = next(parts)
        if part is None:
            break
        got.append(np.asarray(part.labels, dtype=np.float32))
    labels = np.concatenate(got) if got else np.zeros(0, np.float32)
    if len(labels) != point.train_rows or not np.array_equal(labels, point.labels):
        raise RecsError(f"{point.path}: the data differs from the checkpoint's: its first "
                        f"{point.steps} steps held {point.train_rows} training rows on this "
                        f"rank, the data gives {len(labels)}"
                        + ("" if len(labels) != point.train_rows else " with other labels"))


def window_data(paths: list[str], eval_fraction: float) -> dict[str, Any]:
    """The data arguments a resumed window must repeat."""
    return {"data": [[os.path.abspath(p), _size(p)] for p in paths],
            "eval_fraction": eval_fraction}


def _size(p: str) -> int | None:
    try:
        return os.stat(p).st_size
    except OSError:
        return None


def check_window(point: ResumePoint, data: dict[str, Any]) -> None:
    """RecsError unless the resumed run reads the same data as the checkpoint's window."""
    for key in ("data", "eval_fraction"):
        diff = _first_difference(point.window.get(key), _json(data[key]), key)
        if diff:
            raise RecsError(f"{point.path}: --resume needs the same data arguments: {diff}")


# ---- delta export ----------------------------------------------------------------------

def export_window_delta(job: Any, path: str | os.PathLike) -> str:
    """Write the rows the window updated (every embedding set and table: the rows whose
    touched bit is set, their current values) and every dense parameter as a delta
    (format: ``recs_core.checkpoint.delta``); collective, rank 0 writes. Applied to the
    window's starting model it gives the current model bit for bit (a touched row whose
    update left it unchanged is listed too)."""
    world = job.world
    comm = world.comm if world.size > 1 else None
    deltas: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fields: dict[str, str] = {}
    dynamic: list[str] = []  # the dynamic tables' entries (by key; apply_delta skips them)
    rows = 0
    for prefix, emb in embedding_sets(job.model):
        for t, stem in enumerate(table_stems(job.spec, prefix)):
            if t in emb.dynamic:  # by key, plus the keys evicted at the window's end
                a = emb.dynamic.arrays(t)
                mark = a["touched"].astype(bool)
                mine = (a["keys"][mark], a["values"][mark])
                gone = [emb.dynamic.evicted[t]] if comm is None else comm.gather(
                    emb.dynamic.evicted[t], root=0)
                parts = [mine] if comm is None else comm.gather(mine, root=0)
                if parts is None:
                    continue
                dynamic += [f"{stem}.dyn", f"{stem}.dyn.evicted"]
                for name, ids, vals in (
                        (f"{stem}.dyn", np.concatenate([p[0] for p in parts]),
                         np.concatenate([p[1] for p in parts])),
                        (f"{stem}.dyn.evicted", np.concatenate(gone),
                         np.zeros((sum(len(g) for g in gone), 0), np.float32))):
                    if len(ids):
                        deltas[name] = (ids, vals)
                        fields[name] = job.spec.sparse_fields[t][0]
                        rows += len(ids)
                continue
            mark = emb.touched_view(t).astype(bool)
            mine = (emb.owned_rows(t)[mark], emb.rows_view(t)[mark])
            parts = [mine] if comm is None else comm.gather(mine, root=0)
            if parts is None:
                continue
            ids = np.concatenate([p[0] for p in parts])
            if len(ids):
                deltas[stem] = (ids, np.concatenate([p[1] for p in parts]))
                fields[stem] = job.spec.sparse_fields[t][0]
                rows += len(ids)
    dense = {str(i): p for i, p in enumerate(job.model.net.params)}
    meta = {"trainer": TRAINER_FORMAT, "hash": HASH_VERSION, "base_step": job.base_step,
            "step": job.base_step + job.window_steps, "tables": fields, "rows": rows}
    if dynamic:
        meta["dynamic_entries"] = dynamic

    def write() -> str | None:
        return export_delta(path, deltas, dense, meta) if world.rank == 0 else None

    out = _bcast(world, _everyone(world, write))
    assert out is not None
    return out


def merged_checkpoint(path: str | os.PathLike, part: str = "values", verify: bool = True
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """A checkpoint's full tables (``{stem: [rows, dim]}``, every shard merged by the
    placement in its meta; ``part="acc"``: the row-wise accumulators instead), its dense
    parameters (``{"<i>": array}``, the delta's names) and its meta. For tests, serving
    copies and tools (one process)."""
    m = load_manifest(path)
    shards = [read_rank(path, r, verify, manifest=m) for r in range(m.world_size)]
    placement = m.meta.get("placement", "row")
    model_tables = m.meta["model"]["tables"]
    tables: dict[str, np.ndarray] = {}
    for prefix in ("emb", "wide"):
        for t, stem in enumerate(_stems([f for f, _, _ in model_tables], prefix)):
            first = shards[0].get(f"{stem}.{part}")
            if first is None:
                continue
            rows = model_tables[t][1]
            old = _old_owner(t, rows, m.world_size, placement)
            full = np.zeros((rows,) + first.shape[1:], first.dtype)
            for r, s in enumerate(shards):
                full[np.flatnonzero(old == r)] = s[f"{stem}.{part}"]
            tables[stem] = full
    dense = {k.split(".", 1)[1]: v for k, v in shards[0].items()
             if k.startswith("dense.") and not k.startswith("dense_opt.")}
    return tables, dense, m.meta


def merged_dynamic(path: str | os.PathLike, verify: bool = True) -> dict[
        str, dict[str, np.ndarray]]:
    """A checkpoint's dynamic tables, every shard merged: ``{stem + ".dyn": {"keys",
    "values", "freq", "last_seen", ...}}`` by ascending key (sketches summed). For tests,
    serving copies and tools (one process)."""
    m = load_manifest(path)
    shards = [read_rank(path, r, verify, manifest=m) for r in range(m.world_size)]
    stems = sorted({n.rsplit(".dyn.", 1)[0] for n in shards[0] if ".dyn." in n})
    return {f"{stem}.dyn": merge_shards([_dyn_part(s, stem) for s in shards])
            for stem in stems}


def apply_dynamic_delta(tables: dict[str, dict[int, np.ndarray]],
                        delta_dir: str | os.PathLike) -> None:
    """Apply a delta's dynamic-table entries to ``{stem + ".dyn": {key: row}}`` in place:
    listed keys get their new rows, evicted keys are removed. (:func:`apply_delta`
    applies the fixed tables and the dense parameters and skips these entries.)"""
    from recs_core.checkpoint import read_delta

    changed, _, meta = read_delta(delta_dir)
    for name in meta.get("dynamic_entries", []):
        if name not in changed:
            continue
        ids, values = changed[name]
        if name.endswith(".dyn.evicted"):
            table = tables.setdefault(name[:-len(".evicted")], {})
            for k in ids.tolist():
                table.pop(k, None)
        else:
            table = tables.setdefault(name, {})
            for k, v in zip(ids.tolist(), values):
                table[k] = v
