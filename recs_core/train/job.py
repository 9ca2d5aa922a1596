"""``recs train``: one test-then-train pass over a window of logs, as a library object.

    job = Job.from_config("configs/criteo_dlrm.toml")
    job.load("models/day1")                 # the previous window's checkpoint (optional)
    metrics = job.run(["day2.txt"], eval_fraction=0.1,
                      hook=job.checkpoint_hook("models/day2", every=1000))
    job.save_step("models/day2")            # models/day2/step-<N>: sharded, verified
    job.export_delta("deltas/day2")         # the rows this window changed
    probs = job.score(["day3.txt"])

A killed job continues with ``job.resume("models/day2")`` and the same ``run`` call.
Checkpoint layout and semantics: ``recs_core/train/checkpointing.py``.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from recs_core.comm import volume
from recs_core.comm.pending import post_allreduce
from recs_core.comm.world import World
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import RawBatch
from recs_core.data.reader import ShardReader, count_lines_in_spans
from recs_core.data.shards import plan_shards
from recs_core.errors import RecsError
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.job import warm_up
from recs_core.features.spec import Spec, load_spec
from recs_core.metrics.auc import ProgressiveMetrics, auc, logloss
from recs_core.progress import Progress
from recs_core.sched.policy import policy
from recs_core.sched.trace import Timeline, summarize, write_trace
from recs_core.sched.training_pass import StepHook, TrainingPass
from recs_core.train import checkpointing as ckpt
from recs_core.train.config import TrainConfig, train_config
from recs_core.train.model import Model


class Job:
    """A model built from a spec, trained by one pass per window (see module docstring)."""

    def __init__(self, spec: Spec, cfg: TrainConfig | None = None,
                 world: World | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or train_config(spec)
        self.world = world or World()
        self.graph = FeatureGraph(spec)
        self.model = Model(spec, self.cfg, self.world)
        # the global batch is split evenly across ranks (the first ranks take the remainder)
        b, w, r = spec.batch_size, self.world.size, self.world.rank
        self.local_batch = b // w + (1 if r < b % w else 0)
        if self.local_batch < 1:
            raise RecsError(f"batch_size {b} is smaller than the {w} ranks")
        # the window (one pass) and what a checkpoint records of it
        self.config_text: str | None = None  # the config file, kept in checkpoints
        self.base_step = 0  # global steps of the windows before this one
        self.window_steps = 0  # global steps of this window done (the input position)
        self.window: dict[str, Any] = {}  # its data arguments (see checkpointing.window_data)
        self.progressive = ProgressiveMetrics()
        self.checkpoint_figures: dict[str, Any] = {}
        self._resume: ckpt.ResumePoint | None = None
        self._run_skip = 0
        # the fitted operators' statistics allreduce (its own communicator: fits may run
        # on the prefetch thread while the trainer uses the others)
        self._fit_comm = self.world.comm.Dup() if self.world.size > 1 else None

    @classmethod
    def from_config(cls, path: str | os.PathLike) -> Job:
        """Load and validate a config file and build its job."""
        job = cls(load_spec(path))
        job.config_text = config_text(path)
        return job

    def _batches(self, paths: list[str], policy: BadRowPolicy | None,
                 timer: dict[str, float]) -> Iterator[RawBatch]:
        reader = ShardReader(paths, self.spec.schema, rank=self.world.rank,
                             world=self.world.size, batch_rows=self.local_batch,
                             policy=policy or self.spec.policy)
        self._reader = reader
        it = iter(reader)
        while True:
            t0 = time.perf_counter()
            raw = next(it, None)
            timer["input"] += time.perf_counter() - t0
            if raw is None:
                return
            yield raw

    def run(self, paths: list[str], *, eval_fraction: float | None = None,
            policy: BadRowPolicy | None = None, quiet: bool = True,
            **schedule: Any) -> dict[str, Any]:
        """One pass: each batch is scored, then trained on; the last ``eval_fraction`` of
        the rows (of each rank's shard, with several ranks) is held out and scored after
        the pass. ``schedule``: :meth:`run_batches`' mode, trace, lookahead, replan_every
        and hook (every mode computes the same model). Returns the job's figures."""
        frac = self.cfg.eval_fraction if eval_fraction is None else eval_fraction
        if not 0.0 <= frac < 1.0:
            raise RecsError(f"eval fraction must be in [0, 1), got {frac}")
        paths = [os.fspath(p) for p in paths]
        window = ckpt.window_data(paths, frac)
        if self._resume is not None:
            ckpt.check_window(self._resume, window)
        holdout_at = None
        if frac > 0:  # each rank holds out the last share of its own shard
            spans = plan_shards(paths, self.world.size)[self.world.rank]
            holdout_at = int(round(count_lines_in_spans(spans) * (1.0 - frac)))
        timer = {"input": 0.0, "train": 0.0}
        return self.run_batches(self._batches(paths, policy, timer), holdout_at=holdout_at,
                                quiet=quiet, timer=timer, window=window, **schedule)

    def _sum_over_ranks(self, a: np.ndarray) -> np.ndarray:
        """Element-wise float64 sum of ``a`` over the ranks (posted, waited with a
        deadline)."""
        return post_allreduce(self._fit_comm, np.asarray(a, dtype=np.float64),
                              "fit statistics allreduce").wait()

    def _local_parts(self, batches: Iterator[RawBatch], holdout_at: int | None,
                     held: list[RawBatch]) -> Iterator[RawBatch | None]:
        """This rank's training part of each batch (rows from ``holdout_at`` on go to
        ``held``), then None for ever once the shard is exhausted."""
        rows_seen = 0
        for raw in batches:
            part = raw
            if holdout_at is not None and rows_seen + len(raw) > holdout_at:
                k = max(0, holdout_at - rows_seen)
                part = raw.slice(0, k)
                held.append(raw.slice(k, len(raw)))
            rows_seen += len(raw)
            yield part
        while True:
            yield None

    def run_batches(self, batches: Iterator[RawBatch], *, holdout_at: int | None = None,
                    quiet: bool = True, timer: dict[str, float] | None = None,
                    mode: str = "sequential", trace: str | None = None,
                    lookahead: int | None = None, replan_every: int | None = None,
                    hook: StepHook | None = None, workers: int | None = None,
                    window: dict[str, Any] | None = None,
                    progress_thread: str | None = None,
                    chunk_ms: float | None = None) -> dict[str, Any]:
        """The pass of :meth:`run` over given raw batches (this rank's part of each global
        batch); rows from ``holdout_at`` on are held out and scored after the pass.
        ``mode``: one of :data:`recs_core.sched.MODES`; ``trace``: write a Chrome trace
        there; ``lookahead``: batches prepared ahead (prefetch, recs*); ``workers``:
        operator worker threads of the task loop (default: the rank's cores - 1);
        ``progress_thread``: poke MPI every ms during long tasks ("auto": when messages
        cross a network and the rank has a spare core, i.e. ``workers`` > 0);
        ``chunk_ms``: in modes recs and recs-intra, a feature chain that takes longer on a
        batch runs on row chunks of at most this cost (0: never);
        ``hook.fn(steps_done)`` runs after every ``hook.every`` steps, in every mode, with
        the model up to date (for periodic checkpoints). After :meth:`resume` the pass
        skips the steps the checkpoint had done and continues its progressive metrics;
        otherwise it starts a new window. ``window``: the data arguments (:meth:`run`).
        Every mode is a :class:`~recs_core.sched.policy.Policy` over the same task loop."""
        if workers is None:  # the rank's other cores (mpi_launch.sh sets the count)
            workers = max(0, int(os.environ.get("RECS_THREADS_PER_RANK", "1")) - 1)
        pol = policy(mode, lookahead=lookahead, replan_every=replan_every, workers=workers,
                     progress_thread=progress_thread, chunk_ms=chunk_ms)
        jit_seconds = warm_up(self.spec)
        timer = timer if timer is not None else {"input": 0.0, "train": 0.0}
        point, self._resume = self._resume, None
        prog = self._start_window(point, window or {})
        self.step_probs: list[np.ndarray] = []
        held_raw: list[RawBatch] = []
        progress = Progress("train", quiet=quiet)
        t_start = time.perf_counter()
        schema = self.spec.schema
        empty = RawBatch.empty(len(schema.int_names), len(schema.str_names))
        timeline = Timeline(self.world.rank)
        timeline.sync(self.world.comm)
        if self.world.size > 1:  # fitted operators fit on the global first batch
            self.graph.set_fit_reduction(self._sum_over_ranks)
        source = self._local_parts(batches, holdout_at, held_raw)
        if point is not None:  # the steps the checkpoint had done: read, not trained
            t_skip = time.perf_counter()
            ckpt.skip_steps(source, point)
            self.checkpoint_figures["resumed_at_step"] = point.steps
            self.checkpoint_figures["skip_seconds"] = round(time.perf_counter() - t_skip, 4)

        def record(fb: FeatureBatch, probs: np.ndarray) -> None:
            self.window_steps += 1
            prog.add(fb.labels, probs)
            self.step_probs.append(probs)
            progress.update(prog.rows * self.world.size, f"logloss {prog.running_logloss:.4f}")

        volume.reset()
        sched = TrainingPass(self.model, self.graph, self.world, pol, timeline)
        try:
            t0 = time.perf_counter()
            sched.run(source, empty, record, hook)
            timer["input"] += sched.feature_seconds + sched.thread_feature_seconds
            timer["train"] += time.perf_counter() - t0 - sched.feature_seconds
        finally:
            timeline.close()
        sent = volume.sent()  # the pass's traffic, before scoring's lookups add to it
        held = [self.graph.process(r) for r in held_raw]
        progress.close()
        t_eval = time.perf_counter()
        if self.world.size > 1:  # scoring is a collective: the same count on every rank
            rounds = int(self.world.allreduce_max(len(held)))
            held += [self.graph.process(empty)] * (rounds - len(held))
        eval_y = [fb.labels for fb in held]
        eval_p = [self.model.predict(fb) for fb in held]
        eval_seconds = time.perf_counter() - t_eval
        seconds = time.perf_counter() - t_start
        ey = np.concatenate(eval_y) if held else np.zeros(0)
        ep = np.concatenate(eval_p) if held else np.zeros(0)
        if self.world.size > 1:
            ey = np.concatenate(self.world.comm.allgather(ey))
            ep = np.concatenate(self.world.comm.allgather(ep))
        counter = getattr(self, "_reader", None)
        bad = counter.counter.by_reason if counter is not None else {}
        world = self.world
        labels, probs = prog.labels(), prog.probs()
        if world.size > 1:  # global figures, on every rank
            labels = np.concatenate(world.comm.allgather(labels))
            probs = np.concatenate(world.comm.allgather(probs))
            seconds = world.allreduce_max(seconds)
        train_rows = len(labels)
        out = {
            "rows": train_rows + len(ey),
            "train_rows": train_rows,
            "eval_rows": int(len(ey)),
            "seconds": round(seconds, 4),
            "samples_per_sec": round((train_rows + len(ey)) / seconds, 1) if seconds else 0.0,
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
            "mode": mode,
            "step": summarize(timeline.step_figures()),
            "sent_mib_per_step": _per_step_mib(sent, self.window_steps),
            "window_steps": self.window_steps,
            "global_step": self.base_step + self.window_steps,
        }
        dyn = self._end_dynamic_window()
        if dyn:
            out["dynamic_tables"] = dyn
        if self.checkpoint_figures:
            out["checkpoint"] = self.checkpoint_report()
        out["scheduler"] = sched.figures()
        if trace:
            events = timeline.events()
            every = world.comm.gather(events, root=0) if world.size > 1 else [events]
            if world.rank == 0:
                write_trace(trace, every)
        if world.size > 1:  # idle while each pipeline's (and the dense) exchanges were out
            out["comm_wait_seconds"] = {p: round(world.allreduce_max(v), 4)
                                        for p, v in sched.comm_waits().items()}
            out["comm_wait_fraction"] = {p: round(v / seconds, 4) if seconds else 0.0
                                         for p, v in out["comm_wait_seconds"].items()}
        return out

    def score(self, paths: list[str]) -> np.ndarray:
        """Click probabilities for every (good) row of ``paths`` with the current model."""
        timer = {"input": 0.0, "train": 0.0}
        out = [self.model.predict(self.graph.process(raw))
               for raw in self._batches([os.fspath(p) for p in paths], None, timer)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # ---- windows and checkpoints (see recs_core/train/checkpointing.py) ------------------

    def _start_window(self, point: ckpt.ResumePoint | None,
                      window: dict[str, Any]) -> ProgressiveMetrics:
        """The progressive metrics of this pass: a resumed window's, or a new window's."""
        self.window = dict(window)
        prog = ProgressiveMetrics()
        if point is None:  # a new window starts where the last one ended
            self.base_step += self.window_steps
            self.window_steps = 0
            self._run_skip = 0
            self._clear_touched()
        else:
            self.window_steps = self._run_skip = point.steps
            prog.add(point.labels, point.probs)
        self.progressive = prog
        return prog

    def _clear_touched(self) -> None:
        for _, emb in ckpt.embedding_sets(self.model):
            emb.optimizer.clear_touched()
            emb.dynamic.clear_touched()

    def _end_dynamic_window(self) -> dict[str, Any]:
        """End the window of every dynamic table (eviction, see
        ``recs_core.embedding.dynamic_store``); their figures summed over the ranks:
        ``{set/field: {rows, admitted, evicted, bytes}}``."""
        names = [n for n, _ in self.spec.sparse_fields]
        out: dict[str, Any] = {}
        for prefix, emb in ckpt.embedding_sets(self.model):
            if not emb.dynamic.tables:
                continue
            emb.dynamic.end_window()
            figs = emb.dynamic.figures()
            local = np.array([figs[t] for t in sorted(figs)], dtype=np.int64)
            total = self.world.comm.allreduce(local) if self.world.size > 1 else local
            for t, row in zip(sorted(figs), total.tolist()):
                out[f"{prefix}/{names[t]}"] = dict(zip(("rows", "admitted", "evicted",
                                                        "bytes"), row))
        return out

    def checkpoint_hook(self, root: str | os.PathLike, every: int,
                        keep: int | None = 3) -> StepHook:
        """A :class:`StepHook` for :meth:`run` that writes ``root/step-<N>`` every
        ``every`` global steps (collective), keeping the newest ``keep``."""
        if every < 1:
            raise RecsError(f"checkpoint interval must be >= 1 step, got {every}")

        def fn(steps_done: int) -> None:
            if self._run_skip + steps_done != self.window_steps:  # the pass and record agree
                raise RuntimeError(f"step count {self._run_skip + steps_done} != "
                                   f"{self.window_steps}")
            ckpt.save_checkpoint(self, root=os.fspath(root), keep=keep)

        return StepHook(every, fn)

    def save(self, path: str | os.PathLike, done: bool = True) -> str:
        """Write the model, optimizer and window state as a sharded checkpoint directory
        at ``path`` (collective; atomic: the manifest last, then one rename)."""
        return ckpt.save_checkpoint(self, os.fspath(path), done=done)

    def save_step(self, root: str | os.PathLike, keep: int | None = None,
                  done: bool = True) -> str:
        """:meth:`save` to ``root/step-<global step>``, keeping the newest ``keep``."""
        return ckpt.save_checkpoint(self, root=os.fspath(root), keep=keep, done=done)

    def load(self, path: str | os.PathLike) -> str:
        """Start from a checkpoint (``--init-from``): a checkpoint directory or a directory
        of ``step-*`` ones (the newest complete), written by any number of ranks. Checks
        the feature spec, hash version and model; the next :meth:`run` is a new window.
        Returns the checkpoint loaded."""
        found, m, _ = ckpt.load_checkpoint(self, path)
        self.base_step, self.window_steps, self._resume = int(m.meta.get("step", 0)), 0, None
        self._run_skip = 0
        self.progressive = ProgressiveMetrics()
        self._clear_touched()
        return found

    def resume(self, path: str | os.PathLike) -> str:
        """Continue an interrupted window (``--resume``) from a checkpoint written by the
        same number of ranks with the same config: the next :meth:`run`, given the same
        data arguments, skips the steps already done and ends with the model an
        uninterrupted run would have. Returns the checkpoint loaded."""
        found, m, point = ckpt.load_checkpoint(self, path, resume=True)
        assert point is not None
        window = m.meta.get("window") or {}
        self.base_step = int(window.get("base_step", 0))
        self.window_steps = self._run_skip = point.steps
        self.progressive = ProgressiveMetrics()
        self.progressive.add(point.labels, point.probs)
        self._resume = point
        return found

    def export_delta(self, path: str | os.PathLike) -> str:
        """Write the embedding rows this window changed and the dense parameters as a
        delta directory (collective; see ``recs_core.checkpoint.delta``)."""
        return ckpt.export_window_delta(self, os.fspath(path))

    def checkpoint_report(self) -> dict[str, Any]:
        """Checkpoint figures of this job: loads, skipped steps, saves and their time."""
        out = dict(self.checkpoint_figures)
        if "save_seconds" in out:
            out["save_seconds"] = round(self.world.allreduce_max(out["save_seconds"]), 4)
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
