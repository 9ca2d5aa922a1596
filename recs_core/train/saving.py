"""The trainer's checkpoints: what a job saves and how it loads (any world size) and
resumes (same world size, exact). The on-disk format is docs/CHECKPOINT_FORMAT.md.

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
``base_step``, ``done``), ``schedule_guard`` (the schedule guard's choice and pooled
probes, for the next window). ``rank_meta``: per rank ``steps`` and ``train_rows`` (this
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

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recs_core.checkpoint import load_manifest, read_rank, save, step_path
from recs_core.checkpoint import save_step as save_step_dir
from recs_core.checkpoint.manifest import Manifest
from recs_core.checkpoint.store import (
    DamagedCheckpoint,
    RowPatch,
    load_chain,
    newest_checkpoint,
    read_arrays,
)
from recs_core.comm.world import World
from recs_core.data.units import RankUnits
from recs_core.errors import RecsError
from recs_core.features.graph import FeatureGraph
from recs_core.features.hashing import HASH_VERSION
from recs_core.train.compat import (
    TRAINER_FORMAT,
    check_compatible,
    fitted_ops,
    model_description,
    spec_description,
    train_description,
)
from recs_core.train.tally import MASK, RowTally
from recs_core.train.window import ResumePoint, Window

if TYPE_CHECKING:
    from recs_core.train.model import Model


def find_checkpoint(path: str | os.PathLike, world: World, flag: str = "--init-from") -> (
        str | None):
    """``path`` itself when it is a checkpoint, else the newest ``step-*`` checkpoint under
    it, else None (rank 0 looks, every rank gets the answer). When that checkpoint is
    incomplete or damaged, RecsError on every rank, worded for ``flag`` (``--resume``
    would overwrite it; ``--init-from`` would silently take an older one)."""
    def find() -> str | None:
        if world.rank != 0:
            return None
        try:
            return newest_checkpoint(path)
        except DamagedCheckpoint as e:
            raise RecsError(_damaged_advice(path, e, flag)) from None

    return world.bcast(world.everyone(find))


def _damaged_advice(root: str | os.PathLike, e: DamagedCheckpoint, flag: str) -> str:
    head = f"{flag} {os.fspath(root)}: the checkpoint {e.path} is damaged ({e.reason})"
    away = f"mv {e.path} {e.path}.damaged"
    if flag == "--resume":
        return (f"{head}; resuming past it would overwrite it: move it away ({away}) to "
                f"resume from the checkpoint before it or start over")
    if e.older is None:
        return f"{head}, and there is no older complete checkpoint"
    extra = ""
    if flag == "--init-from" and not (load_manifest(e.older).meta.get("window") or {}).get(
            "done", True):
        extra = " --accept-unfinished: it is a periodic checkpoint of an unfinished window"
    return (f"{head}; an older one is not taken silently: name it ({flag} {e.older}{extra}) "
            f"or move the damaged one away ({away})")


def resolve(path: str | os.PathLike, world: World, flag: str = "--init-from") -> str:
    """:func:`find_checkpoint`, or RecsError when there is none."""
    found = find_checkpoint(path, world, flag)
    if found is None:
        raise RecsError(f"{path}: no complete checkpoint there")
    return found


# ---- saving ----------------------------------------------------------------------------

def checkpoint_meta(model: Model, window: Window, config_text: str | None,
                    done: bool, guard_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's meta (rank 0's; see the module docstring)."""
    return {"trainer": TRAINER_FORMAT, "hash": HASH_VERSION,
            "feature_spec": spec_description(model.spec), "config_text": config_text,
            "model": model_description(model), "train_config": train_description(model.cfg),
            "batch_size": model.spec.batch_size, "placement": model.cfg.placement,
            "step": window.global_step, "window": window.meta(done),
            "schedule_guard": guard_state}


def shard_arrays(model: Model, graph: FeatureGraph, window: Window,
                 rank: int, increment: bool = False) -> dict[str, np.ndarray | RowPatch]:
    """This rank's arrays of the job's checkpoint (names in the module docstring);
    ``increment``: the tables' rows as patches over the last checkpoint."""
    arrays = model.sparse_state(increment)
    if rank == 0:
        arrays.update(model.dense_state())
    for key, op in fitted_ops(graph):
        state = op.fitted_state()
        if state is not None:
            arrays[f"{key}.mean"], arrays[f"{key}.std"] = state["mean"], state["std"]
    prog = window.progressive
    arrays["progressive.labels"] = prog.labels()
    arrays["progressive.probs"] = prog.probs()
    return arrays


def save_checkpoint(model: Model, graph: FeatureGraph, window: Window, world: World,
                    path: str | os.PathLike | None = None, *,
                    root: str | os.PathLike | None = None, keep: int | None = None,
                    done: bool = False, config_text: str | None = None,
                    base: Increment | None = None,
                    guard_state: dict[str, Any] | None = None) -> str:
    """Write the checkpoint (collective) to ``path``, or to ``root/step-<step>`` (pruning
    ``root`` to ``keep`` checkpoints and their chains); ``base``: an increment over that
    checkpoint of ``root`` (the last this model saved); ``guard_state``: the schedule
    guard's, for the next window. Returns where it went."""
    arrays = shard_arrays(model, graph, window, world.rank, increment=base is not None)
    meta = checkpoint_meta(model, window, config_text, done, guard_state)
    meta["increments"] = 0 if base is None else base.increments + 1
    comm = world.comm if world.size > 1 else None
    rank_meta = window.rank_meta()
    if root is not None:
        out = save_step_dir(root, window.global_step, arrays, meta, comm, rank_meta=rank_meta,
                            keep=keep, base=None if base is None else Path(base.path).name)
    else:
        assert path is not None and base is None
        out = save(path, arrays, meta, comm, rank_meta=rank_meta)
    model.saved()
    return out


FULL_EVERY = 8  # a periodic checkpoint is whole every this many saves (else an increment)


@dataclass(frozen=True)
class Increment:
    """A checkpoint the next periodic save may be an increment over: where it is and how
    many increments its chain already has (``meta.increments``)."""

    path: str
    increments: int

    def fits(self, root: str | os.PathLike, full_every: int) -> bool:
        """True when the next save to ``root`` may be an increment over it (same
        directory, and the chain stays shorter than ``full_every`` saves)."""
        here = Path(self.path).parent
        try:
            same = here.exists() and os.path.samefile(here, root)
        except OSError:
            same = False
        return same and self.increments + 1 < full_every

    def at(self, root: str | os.PathLike, step: int) -> bool:
        """True when it is ``root``'s checkpoint of global step ``step``."""
        try:
            return os.path.samefile(self.path, step_path(root, step))
        except OSError:
            return False


# ---- loading ---------------------------------------------------------------------------

def _need(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    a = arrays.get(name)
    if a is None:
        raise RecsError(f"the checkpoint has no {name!r} for this rank")
    return a


def _shard_reader(root: str) -> Callable[[int, str], np.ndarray | None]:
    """``read(old_rank, name)``: one array of a shard of the checkpoint (through its chain
    of increments), None if absent."""
    chain = load_chain(root)

    def read(rank: int, name: str) -> np.ndarray | None:
        return read_arrays(chain, rank, [name]).get(name)

    return read


def _read_named(root: str, rank: int, names: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """Rank ``rank``'s arrays whose names pass ``names`` (through the chain)."""
    chain = load_chain(root)
    every = {n for _, m in chain for n in m.rank_files(rank)}
    return read_arrays(chain, rank, [n for n in every if names(n)])


def _load_fitted(graph: FeatureGraph, arrays: dict[str, np.ndarray]) -> None:
    for key, op in fitted_ops(graph):
        mean, std = arrays.get(f"{key}.mean"), arrays.get(f"{key}.std")
        if mean is not None and std is not None:
            try:
                op.set_fitted_state(mean, std)
            except ValueError as e:
                raise RecsError(str(e)) from None


def data_text(window: dict[str, Any]) -> str:
    """A window's data arguments as ``--data`` would name them (shortened)."""
    files = [f[0] for f in window.get("data") or [] if isinstance(f, list) and f]
    if not files:
        return "--data <its data>"
    shown = " ".join(files[:3])
    return f"--data {shown}" + (f" (and {len(files) - 3} more files)" if len(files) > 3 else "")


def check_finished(m: Manifest, path: str, flag: str = "--init-from") -> None:
    """RecsError when the checkpoint ``m`` at ``path`` is a periodic one of a window that
    did not finish: starting a new window from it would never train the rest of that one."""
    window = m.meta.get("window") or {}
    if window.get("done", True):
        return
    steps = window.get("steps", "?")
    root = os.path.dirname(os.path.normpath(path)) or "."
    raise RecsError(f"{flag} {path}: a periodic checkpoint of a window that did not finish "
                    f"({steps} of its steps trained, the rest never): finish it with "
                    f"`recs train ... {data_text(window)} --resume {root}` (any number of "
                    f"ranks), or start from it anyway with --accept-unfinished")


def load_checkpoint(model: Model, graph: FeatureGraph, world: World, path: str | os.PathLike,
                    resume: bool = False, unfinished: bool = False,
                    flag: str = "--init-from") -> tuple[str, Manifest, ResumePoint | None]:
    """Load a checkpoint (a checkpoint directory, or a directory of ``step-*`` ones: the
    newest complete) into ``model`` (and the fitted operators of ``graph``), collectively.
    ``resume``: also restore this rank's input position, progressive scores and touched
    rows (same world size and config); else the checkpoint's window must have finished
    unless ``unfinished`` (``flag`` names the option in messages). Returns (the checkpoint
    loaded, its manifest, the resume point or None)."""
    path = resolve(path, world, "--resume" if resume else flag)
    m = world.everyone(lambda: load_manifest(path))
    world.everyone(lambda: check_compatible(model, world.size, m, path, resume))
    if not resume and not unfinished:
        world.everyone(lambda: check_finished(m, path, flag))
    direct = m.world_size == world.size and (world.size == 1 or
                                             m.meta.get("placement") == model.cfg.placement)
    elastic = resume and m.world_size != world.size

    def read() -> ResumePoint | None:
        mine: dict[str, np.ndarray] = {}
        if direct:
            mine = read_rank(path, world.rank, manifest=m)
            model.load_sparse(mine, touched=resume)
            dense = mine if world.rank == 0 else _read_named(
                path, 0, lambda n: n.startswith("dense"))
            fitted = mine
        else:
            model.load_sparse_resharded(_shard_reader(path), m.world_size,
                                        m.meta.get("placement", "row"), touched=resume)
            dense = _read_named(path, 0, lambda n: n.startswith(("dense", "feat.")))
            fitted = dense
        model.load_dense(dense)
        _load_fitted(graph, fitted)
        if not resume:
            return None
        window = dict(m.meta.get("window") or {})
        if elastic:
            return _elastic_point(path, m, world, window)
        rm = m.rank_meta[world.rank] if world.rank < len(m.rank_meta) else {}
        units = rm.get("units")
        return ResumePoint(path, int(rm.get("steps", -1)), int(rm.get("train_rows", -1)),
                           _need(mine, "progressive.labels"), _need(mine, "progressive.probs"),
                           window, RowTally.restored(rm.get("tally")),
                           None if units is None else RankUnits.from_json(units))

    return path, m, world.everyone(read)


def _elastic_point(path: str, m: Manifest, world: World, window: dict[str, Any]
                   ) -> ResumePoint:
    """This rank's part of a window continued on another world size: the progressive
    scores of the old ranks ``r`` with ``r % world == rank`` (so the ranks together hold
    every scored row), and rank 0 the old ranks' tallies summed; the lines to read are
    dealt when the data is known (``Job.run``)."""
    chain = load_chain(path)
    mine = [r for r in range(m.world_size) if r % world.size == world.rank]
    labels, probs = [], []
    for r in mine:
        got = read_arrays(chain, r, ["progressive.labels", "progressive.probs"])
        labels.append(_need(got, "progressive.labels"))
        probs.append(_need(got, "progressive.probs"))
    steps = {int(rm.get("steps", -1)) for rm in m.rank_meta}
    if len(steps) != 1:
        raise RecsError(f"{path}: its ranks disagree on the steps done ({sorted(steps)})")
    tally = RowTally()
    if world.rank == 0:
        for rm in m.rank_meta:
            tally.checksum = (tally.checksum + RowTally.restored(rm.get("tally")).checksum
                              ) & MASK
    lab = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    return ResumePoint(path, steps.pop(), len(lab), lab,
                       np.concatenate(probs) if probs else np.zeros(0, np.float32), window,
                       tally, None, [dict(rm) for rm in m.rank_meta])
