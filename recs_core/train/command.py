"""``recs train``: its arguments, the job's outputs claimed, the pass, the checkpoint on
preemption, and the figures printed (``recs_core.cli`` registers it)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recs_core.cli_args import (
    DATA_HELP,
    add_comm_timeout,
    add_policy_args,
    bad_row_policy,
    set_comm_timeout_arg,
)
from recs_core.errors import RecsError

if TYPE_CHECKING:
    from recs_core.checkpoint.outdir import SaveLock
    from recs_core.comm.world import World
    from recs_core.features.spec import Spec
    from recs_core.stop_signals import StopSignals
    from recs_core.train.job import Job

# the command's start (its imports included), or a worker's window's: for its JSON
_START = [time.perf_counter()]


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one test-then-train pass over a window of logs",
                       description="Train the config's model with one pass over the data: "
                       "every batch is scored before the model updates on it (progressive "
                       "AUC/logloss); with --eval-fraction the last rows are held out and "
                       "scored after the pass. The last stdout line is one JSON object.")
    p.add_argument("--config", required=True,
                   help="config TOML with the feature spec and [model]/[optimizer]/[train]")
    p.add_argument("--data", required=True, nargs="+", help=DATA_HELP)
    p.add_argument("--eval-fraction", type=float,
                   help="hold out the rows in this last share of each rank's shard (by "
                   "bytes; approximate in rows for .gz/.zst), scored after the pass (default: "
                   "train.eval_fraction, 0)")
    p.add_argument("--init-from", metavar="DIR",
                   help="start from a checkpoint: a --save directory (its newest "
                   "checkpoint; refused when that one is damaged) or one step-N checkpoint "
                   "in it; written by any number of ranks (rows are resharded); the feature "
                   "spec, hash and model must match")
    p.add_argument("--accept-unfinished", action="store_true",
                   help="let --init-from take a periodic checkpoint of a window that did not "
                   "finish (refused by default: the rest of that window would never be "
                   "trained; --resume it instead)")
    p.add_argument("--retrain", action="store_true",
                   help="train the data even though the --init-from checkpoint's window "
                   "already trained exactly these files (refused by default: a retried job "
                   "would count them twice)")
    p.add_argument("--save", metavar="DIR",
                   help="write checkpoints under DIR as step-N directories (N: global steps "
                   "since the first window): the final one at the end of the pass, and with "
                   "--checkpoint-every periodic ones; sharded (each rank its rows), atomic, "
                   "verified by the manifest. DIR must be new, empty or hold only checkpoints "
                   "(checked before the pass); the job locks it (DIR/.recs-save.lock)")
    p.add_argument("--checkpoint-every", metavar="STEPS|DURATION",
                   help="also write a checkpoint every STEPS steps (an integer), or every "
                   "DURATION (300s, 5m, 1h: by rank 0's clock, at a step every rank agrees "
                   "on) (needs --save or --resume)")
    from recs_core.train.saving import FULL_EVERY

    p.add_argument("--full-checkpoint-every", type=int, default=FULL_EVERY, metavar="SAVES",
                   help="every SAVES-th periodic checkpoint is whole; the others are "
                   "increments over the one before (the rows changed since and the dense "
                   f"state; a chain loads as one checkpoint) (default {FULL_EVERY}; 1: every "
                   "one whole)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K",
                   help="keep the newest K checkpoints in the save directory (default 3)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue an interrupted pass from the newest complete checkpoint in "
                   "DIR (same config, data arguments and number of ranks): the result is "
                   "the uninterrupted run's; checkpoints go on into DIR (unless --save "
                   "says otherwise; into its parent when DIR is one step-N checkpoint). With "
                   "no checkpoint in DIR yet the pass starts over (from --init-from when "
                   "given); a damaged newest checkpoint is refused")
    p.add_argument("--compare-with", metavar="MODEL",
                   help="also score the first 50,000 held-out rows (--eval-fraction) with "
                   "this model (a checkpoint or a published version PUBLISH/<n>): both "
                   "models' AUC and logloss on them under 'baseline' in the JSON (for a "
                   "quality gate)")
    p.add_argument("--compare-data", nargs="+", metavar="DATA",
                   help="with --compare-with: also score the first 50,000 held-out rows of "
                   "this data (the same --eval-fraction; e.g. the last good window, whose "
                   "labels a gate trusted) with both models: 'baseline.guard' in the JSON")
    p.add_argument("--export-delta", metavar="DIR",
                   help="at the end, write the embedding rows this window changed and the "
                   "dense parameters to DIR (a delta for serving copies; format: "
                   "docs/CHECKPOINT_FORMAT.md). DIR must be new, empty or an earlier delta, "
                   "which it replaces (checked before the pass)")
    from recs_core.sched import MODES
    from recs_core.sched.policy import CHUNK_MS, LOOKAHEAD

    p.add_argument("--mode", default="recs", choices=MODES,
                   help="schedule: sequential (features, lookup, train, all blocking), "
                   "prefetch (a thread prepares batches ahead, the trainer blocks on its "
                   "exchanges), recs (operators of upcoming batches fill exchange windows + "
                   "pipeline priority), recs-intra / recs-inter (one of the two). All modes "
                   "compute the same model (default: recs)")
    p.add_argument("--lookahead", type=int, default=LOOKAHEAD,
                   help="batches prepared ahead in modes prefetch and recs* (default "
                   f"{LOOKAHEAD})")
    p.add_argument("--chunk-ms", type=float, default=CHUNK_MS,
                   help="in modes recs and recs-intra, a feature chain that takes longer on "
                   "a batch runs on row chunks of at most this cost, so it fits exchange "
                   f"windows (0: never; default {CHUNK_MS:g})")
    p.add_argument("--trace", help="write a Chrome trace (JSON, one track per rank) here")
    p.add_argument("--workers", type=int,
                   help="operator worker threads per rank in modes recs* (default: the "
                   "rank's cores - 1, from mpi_launch.sh --threads)")
    p.add_argument("--progress-thread", choices=("auto", "on", "off"), default="auto",
                   help="in modes recs*, a thread that lets MPI progress every ms during "
                   "long tasks; auto: when messages cross a network (several nodes, or MPI "
                   "forced over TCP) and the rank has a spare core (--threads >= 2)")
    p.add_argument("--guard", choices=("on", "off"), default="on",
                   help="in modes recs*, now and then run a few steps of each of the "
                   "schedule and the blocking one, and overlap only while the idle time it "
                   "hides exceeds the CPU it adds (the choice carries over to the next "
                   "window through the checkpoint; default: on)")
    add_comm_timeout(p)
    add_policy_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def checkpoint_interval(text: str) -> tuple[int | None, float | None]:
    """``--checkpoint-every``: (steps, None) for an integer, (None, seconds) for a
    duration such as 300s, 5m or 1.5h."""
    t = text.strip().lower()
    try:
        if t.isdigit():
            steps = int(t)
            if steps >= 1:
                return steps, None
        elif t[-1:] in _DURATION_UNITS:
            seconds = float(t[:-1]) * _DURATION_UNITS[t[-1]]
            if 0 < seconds < float("inf"):
                return None, seconds
    except ValueError:
        pass
    raise RecsError(f"--checkpoint-every takes a number of steps >= 1 (200) or a duration "
                    f"(300s, 5m, 1h), got {text!r}")


def _cmd_train(a: argparse.Namespace) -> int:
    from recs_core.stop_signals import StopSignals

    stop = StopSignals().install()  # first: a signal while setting up stops the job too
    try:
        return _claim_and_train(a, stop)
    finally:
        stop.restore()


def _claim_and_train(a: argparse.Namespace, stop: StopSignals,
                     kept: Kept | None = None) -> int:
    """``recs train``: its arguments checked and its outputs claimed, then the training
    (``kept``: a worker's job, reused when this window starts from its last save)."""
    from recs_core.checkpoint.manifest import MANIFEST
    from recs_core.checkpoint.outdir import claim_outputs
    from recs_core.comm.world import mpi_world
    from recs_core.features.spec import load_spec

    set_comm_timeout_arg(a)
    spec = load_spec(a.config)
    world = mpi_world()
    save_root = a.save or a.resume
    for flag, path in (("--save", a.save), ("--resume", a.resume)):
        if path and path.endswith(".npz"):
            raise RecsError(f"{flag} {path}: models are checkpoint directories now (sharded, "
                            f"with a manifest), not .npz files; give a directory")
    if a.checkpoint_every is not None:
        a.checkpoint_every = checkpoint_interval(a.checkpoint_every)
        if not save_root:
            raise RecsError("--checkpoint-every needs --save or --resume")
    if a.full_checkpoint_every < 1:
        raise RecsError(f"--full-checkpoint-every must be at least 1, got "
                        f"{a.full_checkpoint_every}")
    if a.keep_checkpoints < 1:
        raise RecsError(f"--keep-checkpoints must be at least 1, got {a.keep_checkpoints}")
    if a.lookahead < 1:
        raise RecsError(f"--lookahead must be at least 1, got {a.lookahead}")
    if not a.chunk_ms >= 0:
        raise RecsError(f"--chunk-ms must be >= 0, got {a.chunk_ms}")
    if a.resume and not a.save and os.path.isfile(os.path.join(a.resume, MANIFEST)):
        save_root = os.path.dirname(os.path.normpath(a.resume)) or "."  # one step-N given
    # every output location checked, and the save directory locked, before the pass
    lock = world.everyone(lambda: claim_outputs(
        save_root, a.export_delta, "--save" if a.save else "--resume")
        if world.rank == 0 else None)
    try:
        return _train(a, spec, world, save_root, lock, stop, kept)
    finally:
        if lock is not None:
            lock.release()


@dataclass
class Kept:
    """What ``recs worker`` keeps between windows: the job, and its last final checkpoint."""

    job: Job | None = None
    saved: str | None = None


def _train(a: argparse.Namespace, spec: Spec, world: World, save_root: str | None,
           lock: SaveLock | None, stop: StopSignals, kept: Kept | None = None) -> int:
    """The training of ``recs train`` once its outputs are claimed (``lock``: rank 0's
    lock of the save directory)."""
    from recs_core.train.comparison import same_checkpoint
    from recs_core.train.job import Job, config_text

    text = config_text(a.config)
    keep = (kept is not None and kept.job is not None and kept.saved is not None
            and kept.job.config_text == text and bool(a.init_from)
            and same_checkpoint(a.init_from, kept.saved, world)
            and not _has_checkpoint(a.resume, world))
    job = kept.job if keep and kept is not None and kept.job is not None else Job(spec,
                                                                                   world=world)
    in_memory = kept.saved if keep and kept is not None else None
    stop.attach(job.request_stop)
    job.config_text = text
    if kept is not None:
        kept.job, kept.saved = job, None
    if save_root:
        job.claim_save_root(save_root, lock)
    resumed = None
    if a.resume:
        from recs_core.train.saving import find_checkpoint

        found = find_checkpoint(a.resume, world, "--resume")
        if found is not None:
            resumed = job.resume(found)
        elif world.rank == 0:
            start = f"from {a.init_from}" if a.init_from else "from the config's initial model"
            print(f"recs: no complete checkpoint in {a.resume} yet: the pass starts over {start}",
                  file=sys.stderr)
    if a.init_from and resumed is None:
        if in_memory is not None:  # a worker's job already holds the model it saved last
            job.continue_from(in_memory)
        else:
            job.load(a.init_from, unfinished=a.accept_unfinished)
    if a.compare_data and not a.compare_with:
        raise RecsError("--compare-data needs --compare-with")
    if a.compare_with:
        job.compare_with(a.compare_with, a.compare_data)
    steps, seconds = a.checkpoint_every or (None, None)
    hook = (job.checkpoint_hook(save_root, steps, a.keep_checkpoints, a.full_checkpoint_every,
                                seconds=seconds) if a.checkpoint_every else None)
    out = job.run(a.data, eval_fraction=a.eval_fraction, policy=bad_row_policy(a, spec),
                  quiet=a.quiet or world.rank != 0, mode=a.mode, trace=a.trace,
                  lookahead=a.lookahead, workers=a.workers, hook=hook,
                  progress_thread=a.progress_thread, chunk_ms=a.chunk_ms,
                  guard=a.guard == "on", retrain=a.retrain)
    if out["preempted"]:
        return _preempted(a, job, out, save_root, stop)
    if save_root:
        out["saved"] = job.save_step(save_root, keep=a.keep_checkpoints)
        if kept is not None:
            kept.saved = out["saved"]
    if a.export_delta:
        t0 = time.perf_counter()
        out["delta"] = job.export_delta(a.export_delta)
        out["delta_seconds"] = round(time.perf_counter() - t0, 4)
    if job.checkpoint_figures:
        out["checkpoint"] = job.checkpoint_report()
    _report(world, out)
    return 0


def _preempted(a: argparse.Namespace, job: Job, out: dict, save_root: str | None,
               stop: StopSignals) -> int:
    """After a pass stopped on a signal: a checkpoint of the unfinished window in the save
    root and EXIT_PREEMPTED (resumable); without a save root nothing can be kept: 128 +
    the signal's number, as if it had ended the job."""
    import signal

    from recs_core.errors import EXIT_PREEMPTED

    if save_root:
        out["saved"] = job.checkpoint(save_root, a.keep_checkpoints, a.full_checkpoint_every)
        code = EXIT_PREEMPTED
        if a.export_delta:
            out["warnings"].append(f"preempted: no delta written to {a.export_delta} (the "
                                   f"window is unfinished; --resume it to write one)")
    else:
        code = 128 + (stop.signum or signal.SIGTERM)
        out["warnings"].append("preempted without --save or --resume: nothing was saved; the "
                               "window must be trained again from its start")
    if job.checkpoint_figures:
        out["checkpoint"] = job.checkpoint_report()
    _report(job.world, out)
    return code


def _report(world: World, out: dict) -> None:
    """Rank 0 prints the warnings on stderr and the figures as the last stdout line."""
    out["command_seconds"] = round(time.perf_counter() - _START[0], 4)
    if world.rank == 0:
        for w in out["warnings"]:
            print(f"recs: warning: {w}", file=sys.stderr)
        print(json.dumps(out), flush=True)


def _has_checkpoint(path: str | None, world: World) -> bool:
    """Whether ``--resume``'s directory holds a checkpoint to resume from."""
    if not path:
        return False
    from recs_core.train.saving import find_checkpoint

    return find_checkpoint(path, world, "--resume") is not None


def add_worker(sub: argparse._SubParsersAction) -> None:
    """The ``recs worker`` subcommand."""
    p = sub.add_parser("worker", help="train windows read from stdin, the ranks kept up",
                       description="The ranks of a chain kept up between windows (recs "
                       "follow launches it): reads one JSON object per line on stdin, "
                       '{"args": [recs train arguments]}, trains each window in turn and '
                       "prints each one's JSON (recs train's) on stdout. A window whose "
                       "--init-from is the checkpoint the previous window saved starts from "
                       "the model in memory (nothing is loaded). Ends at the end of its "
                       "input (0), when a window fails (its status, every rank) or is "
                       "preempted (75).")
    add_comm_timeout(p)
    p.set_defaults(func=_cmd_worker)


def _cmd_worker(a: argparse.Namespace) -> int:
    from recs_core.cli import build_parser
    from recs_core.comm.world import mpi_world
    from recs_core.stop_signals import StopSignals

    set_comm_timeout_arg(a)
    stop = StopSignals().install()
    try:
        world = mpi_world()
        kept = Kept()
        while True:
            line = world.bcast(sys.stdin.readline() if world.rank == 0 else None,
                               "the next window's arguments")
            if not line.strip():
                return 0
            try:
                args = json.loads(line)["args"]
                if not isinstance(args, list) or not all(isinstance(x, str) for x in args):
                    raise ValueError("args must be a list of strings")
            except (ValueError, KeyError, TypeError) as e:
                raise RecsError(f"recs worker: not a window's arguments ({e}): "
                                f"{line.strip()[:200]}") from None
            _START[0] = time.perf_counter()
            code = _claim_and_train(build_parser().parse_args(["train", *args]), stop, kept)
            if code != 0:
                return code
    finally:
        stop.restore()
