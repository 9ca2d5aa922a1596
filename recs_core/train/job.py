"""``recs train``: one test-then-train pass over a window of logs, as a library object.

    job = Job.from_config("configs/criteo_dlrm.toml")
    job.load("models/day1")                 # the previous window's checkpoint (optional)
    metrics = job.run(["day2.txt"], eval_fraction=0.1,
                      hook=job.checkpoint_hook("models/day2", every=1000))
    job.save_step("models/day2")            # models/day2/step-<N>: sharded, verified
    job.export_delta("deltas/day2")         # the rows this window changed
    probs = job.score(["day3.txt"])          # files, directories, globs; in row order
    scores = job.score_rows(["day3/"], id_column="user")   # on rank 0: positions, ids

A killed job continues with ``job.resume("models/day2")`` and the same ``run`` call.
``job.request_stop()`` (e.g. from a SIGTERM handler; ``recs train`` installs one) makes
every rank stop at the next step boundary: ``run`` returns with ``preempted`` true and the
caller writes a checkpoint (``job.checkpoint("models/day2")``) to resume from.
Checkpoints: ``recs_core.train.saving`` (format: docs/CHECKPOINT_FORMAT.md).
"""

from __future__ import annotations

import atexit
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from recs_core.checkpoint.outdir import SaveLock, claim_outputs
from recs_core.checkpoint.store import load_manifest
from recs_core.comm.objects import dup
from recs_core.comm.pending import post_allreduce
from recs_core.comm.world import World, job_world
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import RawBatch
from recs_core.data.sources import (
    NO_DECOMPRESSION,
    DataInput,
    Reader,
    decompression_figures,
    is_file_list,
    open_input,
)
from recs_core.data.units import RankUnits
from recs_core.errors import RecsError
from recs_core.features.feature_pass import warm_up
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.spec import Spec, load_spec
from recs_core.metrics.auc import auc, logloss
from recs_core.progress_bar import ProgressBar
from recs_core.sched.guard import ScheduleGuard
from recs_core.sched.policy import Policy, policy
from recs_core.sched.trace import Timeline, summarize, write_trace
from recs_core.sched.training_pass import PassFigures, StepHook, TrainingPass
from recs_core.train.comparison import (
    Comparison,
    Scored,
    capped,
    compared_share,
    guard_units,
    same_checkpoint,
)
from recs_core.train.config import TrainConfig, train_config
from recs_core.train.delta_export import export_window_delta
from recs_core.train.elastic import continued_units, trained_checksum
from recs_core.train.model import Model
from recs_core.train.saving import (
    FULL_EVERY,
    Increment,
    data_text,
    load_checkpoint,
    save_checkpoint,
)
from recs_core.train.scores import RankScores, Scores, check_id_column, column_array
from recs_core.train.window import Window, data_arguments, skip_steps

T = TypeVar("T")
# this process's save-directory locks (rank 0's), by absolute path: a process is one job to
# another (a lock names its process), so every Job of a process shares them
_SAVE_LOCKS: dict[str, SaveLock] = {}


class Job:
    """A model built from a spec, trained by one pass per window (see module docstring)."""

    def __init__(self, spec: Spec, cfg: TrainConfig | None = None,
                 world: World | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or train_config(spec)
        self.world = job_world(world)
        self.graph = FeatureGraph(spec)
        self.model = Model(spec, self.cfg, self.world)
        # the global batch is split evenly across ranks (the first ranks take the remainder)
        b, w, r = spec.batch_size, self.world.size, self.world.rank
        self.local_batch = b // w + (1 if r < b % w else 0)
        if self.local_batch < 1:
            raise RecsError(f"batch_size {b} is smaller than the {w} ranks")
        self.window = Window()
        self.config_text: str | None = None  # the config file, kept in checkpoints
        self.checkpoint_figures: dict[str, Any] = {}
        self.step_probs: list[np.ndarray] = []  # this rank's scores of the last pass's steps
        # the fitted operators' statistics allreduce (its own communicator: fits may run
        # on the prefetch thread while the trainer uses the others)
        self._fit_comm = (dup(self.world.comm, "communicator duplication")
                          if self.world.size > 1 else None)
        self._reader: Reader | None = None
        self._input_warnings: list[str] = []  # from the data arguments, for the next report
        # the save directories this job saved into, by absolute path: rank 0's lock (lease)
        self.save_locks: dict[str, SaveLock | None] = {}
        # the checkpoint the next window starts from, and its window's meta (load)
        self._loaded: tuple[str, dict[str, Any]] | None = None
        self._last_save: Increment | None = None  # what a periodic increment applies to
        self.comparison: Comparison | None = None  # compare_with's, for the next pass
        # the last pass's data arguments and its first compared held-out rows (labels,
        # scores) by the model it left: the guard rows of the next window's comparison
        # when that model is still the job's (a worker's next window)
        self._held_first: tuple[dict[str, Any], Scored] | None = None
        self._stop = False  # request_stop: set by a signal handler, read at each admission
        # the schedule guard's choice and pooled probes (ScheduleGuard.state): the next
        # pass starts from them; saved with the checkpoint, so the next window does too
        self.guard_state: dict[str, Any] | None = None

    def request_stop(self) -> None:
        """Ask the pass to stop at the next step boundary (safe from a signal handler: it
        only sets a flag). This rank's next step agreement carries the request, so every
        rank stops at the same step; :meth:`run` then returns with ``preempted`` true,
        before the held-out rows are scored. A job asked to stop stays so: a later pass
        stops before its first step."""
        self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @classmethod
    def from_config(cls, path: str | os.PathLike, world: World | None = None) -> Job:
        """Load and validate a config file and build its job over ``world`` (default: the
        ranks this process was launched on, see :func:`~recs_core.comm.world.job_world`)."""
        job = cls(load_spec(path), world=world)
        job.config_text = config_text(path)
        return job

    def _open(self, data: DataInput, policy: BadRowPolicy | None, holdout: float = 0.0,
              units: RankUnits | None = None) -> Reader:
        """This rank's reader of ``data`` (files, directories, globs, or an Arrow source:
        ``recs_core.data.sources``); the last ``holdout`` of its shard are the held-out
        rows (its ``held_out()``); ``units``: these line ranges instead."""
        self._reader, self._input_warnings = open_input(
            data, self.spec.schema, self.spec.format, rank=self.world.rank,
            world=self.world.size, batch_rows=self.local_batch,
            policy=policy or self.spec.policy, holdout=holdout, units=units)
        return self._reader

    def _units(self, data: DataInput, frac: float) -> RankUnits | None:
        """The line ranges this rank reads in the next pass: a resumed window's (None: the
        default plan); on another world size than the checkpoint's, the rows no old rank
        trained dealt over this job's ranks (``recs_core.train.elastic``)."""
        point = self.window.resume_point
        if point is None:
            return None
        if point.others is None:
            return point.units
        mine = self.world.everyone(lambda: continued_units(
            point, data, self.spec.schema, self.spec.format, frac, self.world))
        self.checkpoint_figures["resharded_from_ranks"] = len(point.others)
        point.units = self.window.units = mine
        return mine

    def _tallied(self, reader: Reader) -> Iterator[RawBatch]:
        """The reader's training batches; each one's origins go to the window's tally."""
        for raw, origins in reader.with_origins():
            self.window.tally.read(origins)
            yield raw

    @staticmethod
    def _timed(batches: Iterable[RawBatch], timer: dict[str, float],
               key: str = "input") -> Iterator[RawBatch]:
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            raw = next(it, None)
            timer[key] += time.perf_counter() - t0
            if raw is None:
                return
            yield raw

    def run(self, paths: DataInput, *, eval_fraction: float | None = None,
            policy: BadRowPolicy | None = None, quiet: bool = True,
            hook: StepHook | None = None, trace: str | None = None, mode: str = "sequential",
            retrain: bool = False, **options: Any) -> dict[str, Any]:
        """One pass over ``paths`` (files: text or Parquet; or an Arrow source: tables,
        record batches, pandas frames, or an iterator of them, see
        :mod:`recs_core.data.sources`): each batch is scored, then trained on; the rows in the last
        ``eval_fraction`` of each rank's shard (by bytes: approximate in rows for .gz) are
        held out, read again after the pass and scored. ``mode`` and ``options``
        (lookahead, workers, chunk_ms, ...): the schedule's Policy (every mode computes
        the same model); ``hook``, ``trace``: see :meth:`run_batches`. Training again the
        files the loaded checkpoint's window already trained is refused unless ``retrain``.
        Returns the job's figures; ``preempted`` true when the pass stopped on
        :meth:`request_stop` (the held-out rows not scored, the window unfinished)."""
        frac = self.cfg.eval_fraction if eval_fraction is None else eval_fraction
        if not 0.0 <= frac < 1.0:
            raise RecsError(f"eval fraction must be in [0, 1), got {frac}")
        schedule = self.schedule(mode, **options)
        units = self._units(paths, frac)
        reader = self._open(paths, policy, holdout=frac, units=units)
        data = (data_arguments(reader.paths, frac) if is_file_list(paths)
                else {"data": "arrow source", "eval_fraction": frac})
        self.window.check_resume(data)
        if not retrain and self.window.resume_point is None:
            self._check_not_trained(data)
        self._loaded = None
        timer = {"input": 0.0, "train": 0.0}
        return self.run_batches(self._timed(self._tallied(reader), timer), schedule=schedule,
                                held=reader.held_out() if frac > 0 else (), quiet=quiet,
                                held_again=lambda: (self.open_reader(paths, frac).held_out()
                                                    if frac > 0 else ()),
                                timer=timer, hook=hook, trace=trace, data=data)

    def _check_not_trained(self, data: dict[str, Any]) -> None:
        """RecsError when the loaded checkpoint's finished window trained exactly the files
        of ``data`` (a retried job): they would be trained twice, silently."""
        if self._loaded is None:
            return
        found, window = self._loaded
        if not window.get("done") or not data.get("data") or window.get("data") != data["data"]:
            return
        raise RecsError(f"--init-from {found}: its window already trained exactly these "
                        f"files ({data_text(window)}, same sizes); training them again counts "
                        f"them twice: give the next window's data, or add --retrain to train "
                        f"them again on purpose")

    @staticmethod
    def schedule(mode: str = "sequential", workers: int | None = None,
                 **options: Any) -> Policy:
        """The policy of ``mode`` (see :func:`~recs_core.sched.policy.policy`); operator
        workers default to the rank's other cores (mpi_launch.sh sets the count)."""
        if workers is None:
            workers = max(0, int(os.environ.get("RECS_THREADS_PER_RANK", "1")) - 1)
        return policy(mode, workers=workers, **options)

    def _sum_over_ranks(self, a: np.ndarray) -> np.ndarray:
        """Element-wise float64 sum of ``a`` over the ranks (posted, waited with a
        deadline)."""
        return post_allreduce(self._fit_comm, np.asarray(a, dtype=np.float64),
                              "fit statistics allreduce").wait()

    @staticmethod
    def _local_parts(batches: Iterator[RawBatch]) -> Iterator[RawBatch | None]:
        """This rank's batches, then None for ever once the shard is exhausted."""
        yield from batches
        while True:
            yield None

    def run_batches(self, batches: Iterator[RawBatch], *, schedule: Policy | None = None,
                    hook: StepHook | None = None, trace: str | None = None,
                    held: Iterable[RawBatch] = (), quiet: bool = True,
                    timer: dict[str, float] | None = None,
                    data: dict[str, Any] | None = None,
                    held_again: Callable[[], Iterable[RawBatch]] | None = None
                    ) -> dict[str, Any]:
        """The pass of :meth:`run` over given raw batches (this rank's part of each global
        batch) under ``schedule`` (default: sequential); ``held``: this rank's held-out
        rows, read and scored after the pass. ``hook.fn(steps_done)`` runs after every
        ``hook.every`` steps, in every mode, with the model up to date (for periodic
        checkpoints); ``trace``: write a Chrome trace there. After :meth:`resume` the pass
        skips the steps the checkpoint had done and continues its progressive metrics;
        otherwise it starts a new window. ``data``: its data arguments (:meth:`run`);
        ``held_again``: the held-out rows read anew (for a comparison before the pass).
        After :meth:`request_stop` the pass ends at a step boundary and nothing after it
        runs (held-out rows, comparison, the dynamic tables' end of window)."""
        schedule = schedule or self.schedule()
        timer = timer if timer is not None else {"input": 0.0, "train": 0.0}
        jit_seconds = warm_up(self.spec)
        point = self.window.begin_pass(data or {})
        if point is None:
            self._clear_touched()
        source = self._local_parts(batches)
        if point is not None:  # the steps the checkpoint had done: read, not trained
            t_skip = time.perf_counter()
            skip_steps(source, point, self.window.tally)
            self.checkpoint_figures["resumed_at_step"] = point.steps
            self.checkpoint_figures["skip_seconds"] = round(time.perf_counter() - t_skip, 4)
        comp = self.comparison
        frac = float((data or {}).get("eval_fraction") or 0.0)
        last, self._held_first = self._held_first, None  # (the model changes now)
        t_compare = time.perf_counter()
        if comp is not None and comp.baseline is None:  # the model the window began with
            comp.scores = self._compared(held_again or (lambda: ()), frac, last)
        t_start = time.perf_counter()
        compare_seconds = t_start - t_compare
        figures, timeline = self._train(source, schedule, hook, quiet, timer)
        t_eval = time.perf_counter()
        if figures.preempted:  # the window goes on later: nothing of its end runs
            comp = self.comparison = None
            held = ()
        others = (comp.baseline,) if comp is not None and comp.baseline is not None else ()
        eval_y, eval_p, base_p, first = self._evaluate(held, others,
                                                       compared_share(self.world.size))
        out = self._report(figures, timeline, timer, t_start, t_eval, jit_seconds, eval_y,
                           eval_p)
        if first is not None and len(first[0]) and data is not None and (
                "dynamic_tables" not in out):  # (their window's end evicted rows since)
            self._held_first = (data, first)
        out["finite"] = self.finite() and (out["train_rows"] == 0
                                           or out["train_logloss"] is not None)
        out["preempted"] = figures.preempted
        if comp is not None:  # (after the pass's seconds: a gate's work, not training)
            t_compare = time.perf_counter()
            comp.trained_held = first
            if base_p and first is not None:
                comp.scores["held"] = (first[0], base_p[0])
            if comp.guard is not None:
                y, p, b, _ = self._evaluate(self._compared_rows(self._guard_reader(
                    comp.guard, frac).held_out()), others)
                comp.trained_guard = (y, p)
                if b:
                    comp.scores["guard"] = (y, b[0])
            out["baseline"] = comp.report()
            self.comparison = None
            out["compare_seconds"] = round(self.world.allreduce_max(
                compare_seconds + time.perf_counter() - t_compare), 4)
        if trace:
            events = timeline.events()
            every = self.world.gather(events, "trace gather")
            if every is not None:
                write_trace(trace, every)
        return out

    def _empty(self) -> RawBatch:
        schema = self.spec.schema
        return RawBatch.empty(len(schema.int_names), len(schema.str_names),
                              len(schema.float_names), len(schema.list_names))

    def _train(self, source: Iterator[RawBatch | None], schedule: Policy,
               hook: StepHook | None, quiet: bool, timer: dict[str, float]) -> tuple[
                   PassFigures, Timeline]:
        """Train on every step of ``source`` through the task loop."""
        self.step_probs = []
        progress = ProgressBar("train", quiet=quiet)
        window, world = self.window, self.world
        timeline = Timeline(world.rank)
        timeline.sync(world.comm)
        if world.size > 1:  # fitted operators fit on the global first batch
            self.graph.set_fit_reduction(self._sum_over_ranks)

        def record(fb: FeatureBatch, probs: np.ndarray) -> None:
            window.record(fb.labels, probs)
            self.step_probs.append(probs)
            rows = window.progressive.rows * world.size
            progress.update(rows, f"logloss {window.progressive.running_logloss:.4f}")

        sched = TrainingPass(self.model, self.graph, world, schedule, timeline, self.guard_state)
        try:
            t0 = time.perf_counter()
            figures = sched.run(source, self._empty(), record, hook, lambda: self._stop)
            if figures.guard_state is not None:
                self.guard_state = figures.guard_state
            timer["input"] += figures.feature_seconds + figures.thread_feature_seconds
            timer["train"] += time.perf_counter() - t0 - figures.feature_seconds
        finally:
            progress.close()
        return figures, timeline

    def _predicted(self, batches: Iterable[T], raw_of: Callable[[T], RawBatch] | None = None,
                   model: Model | None = None
                   ) -> Iterator[tuple[T | None, FeatureBatch, np.ndarray]]:
        """Each of this rank's ``batches`` (``raw_of`` gives an item's raw rows) with its
        features and click probabilities, streamed. Scoring is a collective: while another
        rank has batches left, a rank with none scores an empty one (its item None)."""
        it, empty = iter(batches), None
        while True:
            item = next(it, None)
            more = item is not None
            if self.world.size > 1:
                more = bool(post_allreduce(self.world.comm, np.array([int(more)]),
                                           "scoring round", op="max").wait()[0])
            if not more:
                return
            if item is None:  # this rank is done: an empty batch, processed once
                if empty is None:
                    empty = self.graph.process(self._empty())
                fb = empty
            else:
                fb = self.graph.process(item if raw_of is None else raw_of(item))
            self._last_probs = (model or self.model).predict(fb)
            yield item, fb, self._last_probs

    def _evaluate(self, held: Iterable[RawBatch], others: tuple[Model, ...] = (),
                  first: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], Scored | None]:
        """Labels and scores of every rank's held-out rows by this job's model, streamed
        batch by batch (read once); with ``first``, also the labels and this model's
        scores of each rank's first ``first`` rows, and each of ``others``' scores of
        those rows (of all rows without ``first``). Every rank's rows, gathered."""
        ys, ps, os_ = [], [], [[] for _ in others]
        seen = 0
        for _, fb, probs in self._predicted(held):
            ys.append(fb.labels)
            ps.append(probs)
            take = len(probs) if first is None else min(len(probs), max(0, first - seen))
            seen += len(probs)
            if take:
                for o, m in zip(os_, others):
                    o.append(m.predict(fb)[:take])

        def joined(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)

        y, p = joined(ys), joined(ps)
        sub = None if first is None else (self._gathered(y[:first]),
                                          self._gathered(p[:first]))
        return (self._gathered(y), self._gathered(p), [self._gathered(joined(o)) for o in os_],
                sub)

    def _compared(self, held: Callable[[], Iterable[RawBatch]], frac: float,
                  last: tuple[dict[str, Any], Scored] | None) -> dict[str, Scored]:
        """The job's model's scores of the compared held-out rows (each rank's first
        ``compared_share``) and of the comparison's guard rows; ``last``: the previous
        pass's data and first held-out rows' scores, by this model (the guard rows' scores
        when the guard is that data, cut the same way)."""
        comp = self.comparison
        assert comp is not None
        y, p, _, _ = self._evaluate(self._compared_rows(held()))
        out = {"held": (y, p)}
        if comp.guard is not None:
            reader = self._guard_reader(comp.guard, frac)
            same = last is not None and comp.guard_units is None and (
                last[0] == data_arguments(reader.paths, frac))
            if self.world.bcast(same, "guard rows scored already") and last is not None:
                out["guard"] = last[1]
            else:
                gy, gp, _, _ = self._evaluate(self._compared_rows(reader.held_out()))
                out["guard"] = (gy, gp)
        return out

    def _guard_reader(self, guard: DataInput, frac: float) -> Reader:
        """A reader of ``guard`` whose held-out rows are those the compared checkpoint's
        job set aside (``comparison.guard_units``)."""
        comp = self.comparison
        if comp is not None and comp.trained_by is not None and not comp.guard_planned:
            comp.guard_units = guard_units(comp.trained_by, guard, self.spec.schema,
                                           self.spec.format, frac, self.world)
            comp.guard_planned = True
        return self.open_reader(guard, frac, comp.guard_units if comp is not None else None)

    def _compared_rows(self, held: Iterable[RawBatch]) -> Iterator[RawBatch]:
        """This rank's share of the first COMPARED_ROWS of ``held``."""
        return capped(held, compared_share(self.world.size))

    def open_reader(self, data: DataInput, holdout: float, units: RankUnits | None = None
                    ) -> Reader:
        """A reader of ``data`` for this rank (another than the pass's: its own counts);
        ``units``: these line ranges instead of the rank's shard (``open_input``)."""
        reader, _ = open_input(data, self.spec.schema, self.spec.format, rank=self.world.rank,
                               world=self.world.size, batch_rows=self.local_batch,
                               policy=self.spec.policy, holdout=holdout, units=units)
        return reader

    def compare_with(self, path: str | os.PathLike, guard: DataInput | None = None) -> str:
        """Also score the next pass's held-out rows with the model at ``path`` (a
        checkpoint, or a published version ``PUBLISH/<n>``), and, with ``guard``, the
        held-out rows of that data (the same eval fraction; e.g. the last good window's,
        whose labels passed a gate) with both models: the pass's figures under
        ``baseline`` (``recs_core.train.comparison``). When ``path`` is the checkpoint
        this job loaded, its rows are scored before the pass instead of loading it twice."""
        from recs_core.follow.publish import is_version_dir

        loaded = self._loaded[0] if self._loaded is not None else None
        if loaded is not None and not is_version_dir(path) and same_checkpoint(
                path, loaded, self.world):
            self.comparison = Comparison(loaded, None, guard,
                                         trained_by=self._rank_meta(loaded, guard))
            return loaded
        other = Job(self.spec, self.cfg, self.world)
        found = (other.load_published(path) if is_version_dir(path)
                 else other.load(path, unfinished=True, flag="--compare-with"))
        self.comparison = Comparison(found, other.model, guard, trained_by=None if (
            is_version_dir(path)) else self._rank_meta(found, guard))
        return found

    def _rank_meta(self, checkpoint: str, guard: DataInput | None) -> list[dict[str, Any]] | None:
        """The checkpoint's rank_meta (rank 0 reads it), when there are guard rows."""
        if guard is None:
            return None
        return self.world.bcast(load_manifest(checkpoint).rank_meta if self.world.rank == 0
                                else None, "the compared checkpoint's rank meta")

    def finite(self) -> bool:
        """True when every dense parameter and every table row this window changed is
        finite, on every rank."""
        mine = self.model.finite()
        return bool(self.world.allreduce_sum(np.array([int(not mine)]), "finite check")[0] == 0)

    def _gathered(self, a: np.ndarray) -> np.ndarray:
        return np.concatenate(self.world.allgather(a, "scores gather"))

    def _report(self, figures: PassFigures, timeline: Timeline, timer: dict[str, float],
                t_start: float, t_eval: float, jit_seconds: float, ey: np.ndarray,
                ep: np.ndarray) -> dict[str, Any]:
        """The pass's figures (global over the ranks, on every rank)."""
        world, window = self.world, self.window
        eval_seconds = time.perf_counter() - t_eval
        seconds = world.allreduce_max(time.perf_counter() - t_start)
        labels = self._gathered(window.progressive.labels())
        probs = self._gathered(window.progressive.probs())
        bad = self._reader.counter.by_reason if self._reader is not None else {}
        train_rows, rows = len(labels), len(labels) + len(ey)
        out: dict[str, Any] = {
            "rows": rows,
            "train_rows": train_rows,
            "eval_rows": int(len(ey)),
            "seconds": round(seconds, 4),
            "samples_per_sec": round(rows / seconds, 1) if seconds else 0.0,
            "train_logloss": _round(logloss(labels, probs)),
            "progressive_auc": _round(auc(labels, probs)),
            "eval_auc": _round(auc(ey, ep)) if len(ey) else None,
            "eval_logloss": _round(logloss(ey, ep)) if len(ey) else None,
            "world_size": world.size,
            "input_seconds": round(world.allreduce_max(timer["input"]), 4),
            "train_seconds": round(world.allreduce_max(timer["train"]), 4),
            "eval_seconds": round(eval_seconds, 4),
            "jit_seconds": round(jit_seconds, 3),
            "bad_rows": world.gather_dicts_sum(bad),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "model": self.cfg.preset,
            "mode": figures.mode,
            "step": summarize(timeline.step_figures()),
            "sent_mib_per_step": _per_step_mib(figures.traffic, window.steps),
            "trained_rows_checksum": trained_checksum(window, world),
            "window_steps": window.steps,
            "global_step": window.global_step,
        }
        out["warnings"] = self._warnings(train_rows if not figures.preempted else None)
        spent = decompression_figures(world.allgather(
            self._reader.decompressed if self._reader else NO_DECOMPRESSION))
        if spent:
            out["decompression"] = spent
        dyn = {} if figures.preempted else self._end_dynamic_window()  # (a window's end)
        if dyn:
            out["dynamic_tables"] = dyn
        if self.checkpoint_figures:
            out["checkpoint"] = self.checkpoint_report()
        out["scheduler"] = figures.scheduler
        if world.size > 1:  # idle while each pipeline's (and the dense) exchanges were out
            waits = {p: round(world.allreduce_max(v), 4) for p, v in figures.comm_waits.items()}
            out["comm_wait_seconds"] = waits
            out["comm_wait_fraction"] = {p: round(v / seconds, 4) if seconds else 0.0
                                         for p, v in waits.items()}
        return out

    def _warnings(self, train_rows: int | None) -> list[str]:
        """What the user should be told about the pass (every rank's, each once): files
        given twice or empty, header-only files, files that changed size while being read,
        no row trained in a finished window (``train_rows`` None: it did not finish)."""
        mine = self._input_warnings + (self._reader.size_warnings() if self._reader else [])
        self._input_warnings = []
        every = self.world.comm.allgather(mine) if self.world.size > 1 else [mine]
        out = list(dict.fromkeys(w for part in every for w in part))
        if train_rows == 0:  # (None: a preempted window, to be continued)
            out.append("no rows trained in this window: the model is unchanged (what was "
                       "asked is still written: checkpoint, delta)")
        return out

    def score(self, paths: DataInput, policy: BadRowPolicy | None = None) -> np.ndarray:
        """Click probabilities of every (good) row of the window ``paths`` names, in row
        order, with the current model (collective; every rank gets them all)."""
        s = self.score_rows(paths, policy=policy)
        return self.world.bcast(None if s is None else s.probs, "scores broadcast")

    def score_rows(self, paths: DataInput, *, id_column: str | None = None,
                   policy: BadRowPolicy | None = None) -> Scores | None:
        """Click probabilities of every (good) row of the window ``paths`` names (files,
        directories, globs), with the current model, on any number of ranks (collective):
        on rank 0 in the window's row order with each row's position (and its
        ``id_column`` value), gathered there; None on the other ranks. See
        ``recs_core.train.scores``."""
        if id_column is not None:
            check_id_column(self.spec.schema, id_column)
        reader = self._open(paths, policy)
        mine = RankScores(reader.part_keys(), [], warnings=self._input_warnings)
        for item, fb, probs in self._predicted(reader.with_origins(), lambda t: t[0]):
            if item is not None:
                raw, origins = item
                mine.origins.append(origins)
                mine.probs.append(probs)
                mine.labels.append(np.asarray(fb.labels, np.float32))
                if id_column is not None:
                    mine.ids.append(column_array(raw, self.spec.schema, id_column))
        mine.part_lines, mine.bad_rows = reader.part_lines, reader.counter.by_reason
        mine.warnings = mine.warnings + reader.size_warnings()
        every = self.world.gather(mine, "scores gather")
        return None if every is None else Scores.in_row_order(every, id_column)

    # ---- windows and checkpoints ------------------------------------------------------

    def _clear_touched(self) -> None:
        self.model.new_window()

    def _end_dynamic_window(self) -> dict[str, Any]:
        """End the window of every dynamic table (eviction, see
        ``recs_core.embedding.dynamic_store``); their figures summed over the ranks:
        ``{set/field: {rows, admitted, evicted, bytes}}``."""
        figs = self.model.end_window()
        if not figs:
            return {}
        local = np.array([figs[k] for k in figs], dtype=np.int64)
        total = self.world.allreduce_sum(local, "dynamic table figures")
        return {k: dict(zip(("rows", "admitted", "evicted", "bytes"), row))
                for k, row in zip(figs, total.tolist())}

    def checkpoint_hook(self, root: str | os.PathLike, every: int | None = None,
                        keep: int | None = 3, full_every: int = FULL_EVERY, *,
                        seconds: float | None = None) -> StepHook:
        """A :class:`StepHook` for :meth:`run` that writes a periodic checkpoint
        (:meth:`checkpoint`) every ``every`` steps, or, with ``seconds`` instead, at the
        first step boundary after ``seconds`` have passed on rank 0 since the pass began
        or the last one (the ranks agree on the step); collective."""
        if (every is None) == (seconds is None):
            raise RecsError("a checkpoint interval is a number of steps or of seconds")
        if every is not None and every < 1:
            raise RecsError(f"checkpoint interval must be >= 1 step, got {every}")
        if seconds is not None and not 0 < seconds < float("inf"):
            raise RecsError(f"checkpoint interval must be > 0 seconds, got {seconds:g}")
        if full_every < 1:
            raise RecsError(f"full checkpoint interval must be >= 1 save, got {full_every}")

        def fn(steps_done: int) -> None:
            w = self.window
            if w.skipped + steps_done != w.steps:  # the pass and record agree
                raise RuntimeError(f"step count {w.skipped + steps_done} != {w.steps}")
            self.checkpoint(root, keep, full_every)

        return StepHook(every, fn, seconds)

    def checkpoint(self, root: str | os.PathLike, keep: int | None = 3,
                   full_every: int = FULL_EVERY) -> str:
        """Write the window as it stands (unfinished) to ``root/step-<N>`` (collective;
        e.g. after a preempted :meth:`run`), keeping the newest ``keep`` (and the chains
        they need): an increment over the last checkpoint this job wrote or resumed from
        (the rows changed since, the dense state) unless that chain holds ``full_every``
        saves. When that checkpoint is already ``root/step-<N>``, it is returned."""
        last = self._last_save
        if last is not None and last.at(root, self.window.global_step):
            return last.path
        base = last if last is not None and last.fits(root, full_every) else None
        return self._save(root=os.fspath(root), keep=keep, base=base)

    def claim_save_root(self, root: str | os.PathLike, lock: SaveLock | None = None) -> None:
        """Check and lock ``root`` for ``step-*`` checkpoints as ``--save`` does, unless this
        process holds its lock already (collective; rank 0 holds it, for every job of the
        process, until :meth:`close` or the process ends); ``lock``: rank 0's lock, taken
        for the job already (``recs train``'s)."""
        key = os.path.abspath(root)
        rank0 = self.world.rank == 0

        def claim() -> SaveLock | None:
            if not rank0:
                return None
            held = lock or _SAVE_LOCKS.get(key)
            if held is None or not held.held:
                held = claim_outputs(root, None)
                atexit.register(held.release)
            _SAVE_LOCKS[key] = held
            return held

        self.save_locks[key] = self.world.everyone(claim)

    def close(self) -> None:
        """Release the locks of the save directories this job saved into."""
        for key in self.save_locks:
            held = _SAVE_LOCKS.pop(key, None)
            if held is not None:
                held.release()
        self.save_locks.clear()

    def _save(self, path: str | None = None, *, root: str | None = None,
              keep: int | None = None, done: bool = False,
              base: Increment | None = None) -> str:
        if root is not None:
            self.claim_save_root(root)
        t0 = time.perf_counter()
        lock = self.save_locks.get(os.path.abspath(root)) if root is not None else None
        # a job whose lease was taken over stops before it writes
        self.world.everyone(lambda: lock.check() if lock is not None else None)
        out = save_checkpoint(self.model, self.graph, self.window, self.world, path, root=root,
                              keep=keep, done=done, config_text=self.config_text, base=base,
                              guard_state=self.guard_state)
        self._last_save = Increment(out, 0 if base is None else base.increments + 1)
        figures = self.checkpoint_figures
        took = time.perf_counter() - t0
        figures["saves"] = figures.get("saves", 0) + 1
        figures["save_seconds"] = figures.get("save_seconds", 0.0) + took
        if base is not None:
            figures["increments"] = figures.get("increments", 0) + 1
        # each save: [this rank's seconds, "increment" or "whole"]
        figures.setdefault("each", []).append([round(took, 4),
                                               "increment" if base is not None else "whole"])
        return out

    def save(self, path: str | os.PathLike, done: bool = True) -> str:
        """Write the model, optimizer and window state as a sharded checkpoint directory
        at ``path`` (collective; atomic: the manifest last, then one rename)."""
        return self._save(os.fspath(path), done=done)

    def save_step(self, root: str | os.PathLike, keep: int | None = None,
                  done: bool = True) -> str:
        """:meth:`save` to ``root/step-<global step>``, keeping the newest ``keep``; ``root``
        is checked and locked as ``--save`` is (:meth:`claim_save_root`)."""
        return self._save(root=os.fspath(root), keep=keep, done=done)

    def _load(self, path: str | os.PathLike, resume: bool, unfinished: bool = False,
              flag: str = "--init-from") -> tuple[str, Any, Any]:
        t0 = time.perf_counter()
        found, m, point = load_checkpoint(self.model, self.graph, self.world, path, resume,
                                          unfinished, flag)
        self._held_first = None  # another model
        self.guard_state = m.meta.get("schedule_guard")
        if self.guard_state is not None:
            try:
                ScheduleGuard().restore(self.guard_state)
            except ValueError as e:
                raise RecsError(f"{found}: meta.schedule_guard: {e}") from None
        self.checkpoint_figures["loaded_from"] = found
        self.checkpoint_figures["load_seconds"] = round(time.perf_counter() - t0, 4)
        return found, m, point

    def load(self, path: str | os.PathLike, *, unfinished: bool = False,
             flag: str = "--init-from") -> str:
        """Start from a checkpoint (``--init-from``): a checkpoint directory or a directory
        of ``step-*`` ones (the newest complete), written by any number of ranks. Checks
        the feature spec, hash version and model; the next :meth:`run` is a new window.
        A periodic checkpoint of an unfinished window is refused (the rest of that window
        would never be trained: :meth:`resume` it) unless ``unfinished``. Returns the
        checkpoint loaded."""
        found, m, _ = self._load(path, resume=False, unfinished=unfinished, flag=flag)
        self._last_save = None  # the next periodic save is whole
        self.window = Window(base_step=int(m.meta.get("step", 0)))
        self._loaded = (found, dict(m.meta.get("window") or {}))
        self._clear_touched()
        return found

    def continue_from(self, path: str) -> str:
        """Start the next window from the checkpoint this job saved last at ``path``, the
        model being still in memory (what :meth:`load` of it would give, nothing read):
        for a worker that keeps its ranks up between windows."""
        self._loaded = (path, {"data": self.window.data.get("data"), "done": True})
        self.checkpoint_figures = {"loaded_from": path, "load_seconds": 0.0,
                                   "kept_in_memory": True}
        return path

    def load_published(self, path: str | os.PathLike) -> str:
        """Start from a published version (``recs follow --publish``: ``PUBLISH/<n>``): its
        full model, then the deltas of the versions after it, in order (collective).
        Returns the path."""
        from recs_core.checkpoint.delta import read_delta
        from recs_core.follow.publish import version_chain

        full, deltas = self.world.everyone(lambda: version_chain(path))
        self.load(full, unfinished=True, flag="--model")
        for d in deltas:
            tables, dense, _ = self.world.everyone(lambda d=d: read_delta(d))
            self.world.everyone(lambda t=tables, de=dense: self.model.apply_delta(t, de))
        self._held_first = None
        self.checkpoint_figures["loaded_from"] = os.fspath(path)
        return os.fspath(path)

    def resume(self, path: str | os.PathLike) -> str:
        """Continue an interrupted window (``--resume``) from a checkpoint written by the
        same number of ranks with the same config: the next :meth:`run`, given the same
        data arguments, skips the steps already done and ends with the model an
        uninterrupted run would have. Returns the checkpoint loaded."""
        found, m, point = self._load(path, resume=True)
        assert point is not None
        # on another world size the next save is whole (an increment's base has its ranks)
        self._last_save = (None if point.others is not None
                           else Increment(found, int(m.meta.get("increments", 0))))
        self.window.resumed(point, int((m.meta.get("window") or {}).get("base_step", 0)))
        return found

    def export_delta(self, path: str | os.PathLike) -> str:
        """Write the embedding rows this window changed and the dense parameters as a
        delta directory (collective; see ``recs_core.checkpoint.delta``)."""
        return export_window_delta(self.model, self.window, self.world, os.fspath(path))

    def checkpoint_report(self) -> dict[str, Any]:
        """Checkpoint figures of this job: loads, skipped steps, saves and their time."""
        out = dict(self.checkpoint_figures)
        if "save_seconds" in out:
            out["save_seconds"] = round(self.world.allreduce_max(out["save_seconds"]), 4)
        if "each" in out:  # the slowest rank's time of each save
            every = self.world.allgather(out["each"], "save times")
            out["each"] = [[max(r[i][0] for r in every), kind]
                           for i, (_, kind) in enumerate(out["each"])]
        return out


def config_text(path: str | os.PathLike) -> str | None:
    """The config file's text (kept in checkpoints), None when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _per_step_mib(sent: dict[str, int], steps: int) -> dict[str, float]:
    """MiB this rank sent to the others per step, per exchange and in total."""
    per = {k: v / 2**20 / max(1, steps) for k, v in sorted(sent.items())}
    return {**{k: round(v, 4) for k, v in per.items()},
            "total": round(float(sum(per.values())), 4)}


def _round(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)
