"""The ``recs`` command: a thin layer over the library (see ``recs --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING

from recs_core.errors import RecsError

_T0 = time.perf_counter()  # the command's start (its imports included), for its JSON

if TYPE_CHECKING:
    from recs_core.checkpoint.outdir import SaveLock
    from recs_core.comm.world import World
    from recs_core.features.spec import Spec
    from recs_core.stop_signals import StopSignals
    from recs_core.train.job import Job


_DATA_HELP = ("input: files, directories (read recursively, Hive partitions such as "
              "dt=.../hour=... in partition order, then file name; names starting with . or "
              "_ skipped) and globs (quote them; ** for any depth); text plain, .gz or .zst, "
              "or Parquet (.parquet, or input.format = \"parquet\")")


def _add_gen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gen", help="write a synthetic Criteo-format file",
                       description="Write deterministic synthetic Criteo-format TSV data "
                       "(see docs/WORKLOAD.md): Zipf categoricals, missing values, heavy-tailed "
                       "ints, labels from a hidden logistic model.")
    p.add_argument("--rows", type=int, required=True, help="number of rows")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output file (.gz for gzip)")
    p.add_argument("--heavy", action="store_true",
                   help="add the H1 (item history) and H2 (tags) multi-valued columns")
    p.add_argument("--max-history", type=int, metavar="N",
                   help="with --heavy: longest H1 item history (default 200); every history "
                   "length scales by N/200, so larger N means more feature work per row "
                   "(labels keep their distribution)")
    p.add_argument("--probs-out", help="also write the true click probability of each row")
    p.add_argument("--window", type=int, default=0,
                   help="time window index, for drift across consecutive windows (default 0)")
    p.add_argument("--drift", type=float, default=0.0,
                   help="how much later windows shift the hidden model and popular ids (0..1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_gen)


def _cmd_gen(a: argparse.Namespace) -> int:
    from recs_core.data.synth import MAX_HISTORY, MAX_HISTORY_LIMIT, generate
    from recs_core.progress_bar import ProgressBar

    if a.max_history is not None:
        if not a.heavy:
            raise RecsError("--max-history applies to --heavy files only (H1 history)")
        if not 1 <= a.max_history <= MAX_HISTORY_LIMIT:
            raise RecsError(f"--max-history must be in 1..{MAX_HISTORY_LIMIT}, "
                            f"got {a.max_history}")
    prog = ProgressBar("gen", a.rows, quiet=a.quiet)
    stats = generate(a.out, a.rows, a.seed, heavy=a.heavy, probs_out=a.probs_out,
                     window=a.window, drift=a.drift, progress=prog.update,
                     max_history=MAX_HISTORY if a.max_history is None else a.max_history)
    prog.close()
    print(json.dumps({"rows": stats.rows, "bytes": stats.bytes_written,
                      "seconds": round(stats.seconds, 4),
                      "rows_per_sec": round(stats.rows / max(stats.seconds, 1e-9), 1),
                      "positives": stats.positives, "out": os.fspath(a.out)}))
    return 0


def _add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("skip", "fail"),
                   help="bad input lines: skip and count them, or stop at the first "
                   "(default: the config's input.on_error)")
    p.add_argument("--max-bad-fraction", type=float,
                   help="with skip: stop if more than this share of lines is bad "
                   "(default: the config's input.max_bad_fraction, 0.05)")


def _add_comm_timeout(p: argparse.ArgumentParser) -> None:
    from recs_core.comm.pending import DEFAULT_TIMEOUT_S

    p.add_argument("--comm-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under MPI, end the job when a rank has waited this long on the "
                   "others (a rank died, stopped or hung) (default "
                   f"{DEFAULT_TIMEOUT_S:g})")


def _set_comm_timeout(a: argparse.Namespace) -> None:
    from recs_core.comm.pending import set_comm_timeout

    try:
        set_comm_timeout(a.comm_timeout)
    except ValueError:
        raise RecsError(f"--comm-timeout must be a positive number of seconds, got "
                        f"{a.comm_timeout:g}") from None


def _policy(a: argparse.Namespace, spec):  # noqa: ANN001, ANN202
    from recs_core.data.bad_rows import BadRowPolicy

    try:
        return BadRowPolicy(a.on_error or spec.policy.on_error,
                            spec.policy.max_bad_fraction if a.max_bad_fraction is None
                            else a.max_bad_fraction)
    except ValueError as e:
        raise RecsError(str(e)) from None


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="read, parse and process features (no training)",
                       description="Run reading, parsing and every feature operator of the "
                       "config over the data, without training. Under mpiexec each rank "
                       "processes its shard; rank 0 prints the global figures as one JSON line.")
    p.add_argument("--config", required=True,
                   help="feature spec TOML (e.g. configs/criteo_dlrm.toml)")
    p.add_argument("--data", required=True, nargs="+", help=_DATA_HELP)
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the config's)")
    _add_policy_args(p)
    _add_comm_timeout(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_features)


def _cmd_features(a: argparse.Namespace) -> int:
    from recs_core.comm.world import mpi_world
    from recs_core.features.feature_pass import run_features
    from recs_core.features.spec import load_spec

    _set_comm_timeout(a)
    spec = load_spec(a.config)
    world = mpi_world()
    stats = run_features(spec, a.data, world, policy=_policy(a, spec), batch_rows=a.batch_size,
                         quiet=a.quiet)
    if world.rank == 0:
        for w in stats.warnings:
            print(f"recs: warning: {w}", file=sys.stderr)
        if stats.bad_rows:
            print(f"recs: skipped {sum(stats.bad_rows.values())} bad line(s): "
                  + ", ".join(f"{k}={v}" for k, v in sorted(stats.bad_rows.items())),
                  file=sys.stderr)
        print(json.dumps(stats.as_json()), flush=True)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one test-then-train pass over a window of logs",
                       description="Train the config's model with one pass over the data: "
                       "every batch is scored before the model updates on it (progressive "
                       "AUC/logloss); with --eval-fraction the last rows are held out and "
                       "scored after the pass. The last stdout line is one JSON object.")
    p.add_argument("--config", required=True,
                   help="config TOML with the feature spec and [model]/[optimizer]/[train]")
    p.add_argument("--data", required=True, nargs="+", help=_DATA_HELP)
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
                   help="also score the held-out rows (--eval-fraction) with this model (a "
                   "checkpoint or a published version PUBLISH/<n>): its eval_auc and "
                   "eval_logloss under 'baseline' in the JSON (for a quality gate)")
    p.add_argument("--compare-data", nargs="+", metavar="DATA",
                   help="with --compare-with: also score the held-out rows of this data (the "
                   "same --eval-fraction; e.g. the last good window, whose labels a gate "
                   "trusted) with both models: 'baseline.guard' in the JSON")
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
                   help="in modes recs*, measure the schedule against the blocking one now "
                   "and then (a few steps of each) and run the faster (default: on)")
    _add_comm_timeout(p)
    _add_policy_args(p)
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


def _claim_and_train(a: argparse.Namespace, stop: StopSignals) -> int:
    """``recs train``: its arguments checked and its outputs claimed, then the training."""
    from recs_core.checkpoint.manifest import MANIFEST
    from recs_core.checkpoint.outdir import claim_outputs
    from recs_core.comm.world import mpi_world
    from recs_core.features.spec import load_spec

    _set_comm_timeout(a)
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
        return _train(a, spec, world, save_root, lock, stop)
    finally:
        if lock is not None:
            lock.release()


def _train(a: argparse.Namespace, spec: Spec, world: World, save_root: str | None,
           lock: SaveLock | None, stop: StopSignals) -> int:
    """The training of ``recs train`` once its outputs are claimed (``lock``: rank 0's
    lock of the save directory)."""
    from recs_core.train.job import Job, config_text

    job = Job(spec, world=world)
    stop.attach(job.request_stop)
    job.config_text = config_text(a.config)
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
        job.load(a.init_from, unfinished=a.accept_unfinished)
    if a.compare_data and not a.compare_with:
        raise RecsError("--compare-data needs --compare-with")
    if a.compare_with:
        job.compare_with(a.compare_with, a.compare_data)
    steps, seconds = a.checkpoint_every or (None, None)
    hook = (job.checkpoint_hook(save_root, steps, a.keep_checkpoints, a.full_checkpoint_every,
                                seconds=seconds) if a.checkpoint_every else None)
    out = job.run(a.data, eval_fraction=a.eval_fraction, policy=_policy(a, spec),
                  quiet=a.quiet or world.rank != 0, mode=a.mode, trace=a.trace,
                  lookahead=a.lookahead, workers=a.workers, hook=hook,
                  progress_thread=a.progress_thread, chunk_ms=a.chunk_ms,
                  guard=a.guard == "on", retrain=a.retrain)
    if out["preempted"]:
        return _preempted(a, job, out, save_root, stop)
    if save_root:
        out["saved"] = job.save_step(save_root, keep=a.keep_checkpoints)
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
    out["command_seconds"] = round(time.perf_counter() - _T0, 4)
    if world.rank == 0:
        for w in out["warnings"]:
            print(f"recs: warning: {w}", file=sys.stderr)
        print(json.dumps(out), flush=True)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score a window's rows with a checkpoint",
                       description="Score every row of the data with a checkpoint's model "
                       "and write the click probabilities, in the data's row order, with each "
                       "row's id or position, as CSV or Parquet. Any number of ranks gives the "
                       "same file. The last stdout line is one JSON object.")
    p.add_argument("--config", required=True, help="the config the model was trained with")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a checkpoint: a --save directory (its newest complete checkpoint; "
                   "refused when that one is damaged) or one step-N checkpoint in it")
    p.add_argument("--data", required=True, nargs="+", help=_DATA_HELP)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="FILE.csv or FILE.parquet: the rows' ids or positions and their "
                   "'probability'; written by rank 0, aside then renamed; refused when it is "
                   "one of the inputs, or exists (unless --overwrite), checked first")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (never one of the inputs)")
    p.add_argument("--id-column", metavar="NAME",
                   help="a column of the spec's [input] to write with each score (default: "
                   "'position', the row's 0-based index in the data: files in --data order, "
                   "lines in file order, a skipped bad line keeping its number)")
    _add_policy_args(p)
    _add_comm_timeout(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a: argparse.Namespace) -> int:
    from recs_core.comm.world import mpi_world
    from recs_core.data.sources import expand_sources
    from recs_core.features.spec import load_spec
    from recs_core.train.job import Job
    from recs_core.train.saving import find_checkpoint
    from recs_core.train.scores import check_id_column, check_output, write_scores

    _set_comm_timeout(a)
    spec = load_spec(a.config)
    world = mpi_world()
    world.everyone(lambda: check_output(a.out, expand_sources(a.data), a.overwrite)
                   if world.rank == 0 else None)
    if a.id_column is not None:
        check_id_column(spec.schema, a.id_column)
    from recs_core.follow.publish import is_version_dir

    job = Job(spec, world=world)
    if is_version_dir(a.model):  # a published version: its full model and deltas
        found = job.load_published(a.model)
    else:
        found = find_checkpoint(a.model, world, "--model")
        if found is None:
            there = ("no complete checkpoint there" if os.path.isdir(a.model)
                     else "no such directory")
            raise RecsError(f"--model {a.model}: {there}")
        job.load(found, unfinished=True, flag="--model")  # scoring trains nothing
    t0 = time.perf_counter()
    scores = job.score_rows(a.data, id_column=a.id_column, policy=_policy(a, spec))
    seconds = time.perf_counter() - t0  # reading, scoring and gathering the rows
    size = world.everyone(lambda: write_scores(scores, a.out) if scores is not None else 0)
    if world.rank == 0:
        assert scores is not None
        for w in scores.warnings:
            print(f"recs: warning: {w}", file=sys.stderr)
        if scores.bad_rows:
            print(f"recs: skipped {sum(scores.bad_rows.values())} bad line(s): "
                  + ", ".join(f"{k}={v}" for k, v in sorted(scores.bad_rows.items())),
                  file=sys.stderr)
        print(json.dumps({"rows": len(scores), "out": a.out, "bytes": size, "model": found,
                          **scores.quality(),
                          "seconds": round(seconds, 4),
                          "rows_per_sec": round(len(scores) / seconds, 1) if seconds else 0.0,
                          "bad_rows": scores.bad_rows, "world_size": world.size,
                          "warnings": scores.warnings}), flush=True)
    return 0


def _add_timeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("timeline", help="render a few steps of traces as a PNG, side by side",
                       description="Draw a few steps of Chrome traces written by "
                       "`recs train --trace` (e.g. one per --mode), one panel per trace: per "
                       "rank the CPU tasks, the prefetch thread, blocked waits and the "
                       "exchanges in flight. Needs matplotlib.")
    p.add_argument("traces", nargs="+", help="trace JSON files (LABEL=FILE to name a panel)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--first", type=int, default=5, help="first step drawn (default 5)")
    p.add_argument("--steps", type=int, default=3, help="steps drawn (default 3)")
    p.set_defaults(func=_cmd_timeline)


def _cmd_timeline(a: argparse.Namespace) -> int:
    from recs_core.sched.plot import render

    if a.steps < 1 or a.first < 0:
        raise RecsError("--steps must be >= 1 and --first >= 0")
    pairs = [t.split("=", 1) if "=" in t else [os.path.basename(t), t] for t in a.traces]
    render([f for _, f in pairs], [name for name, _ in pairs], a.out, a.first, a.steps)
    print(f"wrote {a.out}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from recs_core.data.convert import DEFAULT_ROW_GROUP_ROWS

    p = sub.add_parser("convert", help="text logs to a Parquet file with the spec's schema",
                       description="Read text files in the layout the config's [input] "
                       "describes (bad lines per its policy) and write their rows to one "
                       "Parquet file with the spec's columns and types (label int8, int int64, "
                       "str string; missing values as nulls; snappy). Reading it with the same "
                       "config gives the same rows and features.")
    p.add_argument("config", help="feature spec TOML describing the text input")
    p.add_argument("inputs", nargs="+", help="text input files (plain, .gz or .zst)")
    p.add_argument("-o", "--out", required=True,
                   help="Parquet file to write (aside, then renamed); refused when it is one "
                   "of the inputs, or exists (unless --overwrite), checked first")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file (never one of the inputs)")
    p.add_argument("--row-group-rows", type=int, default=DEFAULT_ROW_GROUP_ROWS, metavar="N",
                   help=f"rows per row group (default {DEFAULT_ROW_GROUP_ROWS})")
    _add_policy_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(a: argparse.Namespace) -> int:
    from recs_core.data.convert import convert_to_parquet
    from recs_core.data.parquet import is_parquet
    from recs_core.features.spec import load_spec

    spec = load_spec(a.config)
    parquet = [p for p in a.inputs if is_parquet(p, spec.format)]
    if parquet:
        raise RecsError(f"{parquet[0]}: is Parquet input already; recs convert reads text")
    st = convert_to_parquet(a.inputs, spec.schema, a.out, policy=_policy(a, spec),
                            row_group_rows=a.row_group_rows, overwrite=a.overwrite)
    if st.bad_rows:
        print(f"recs: skipped {sum(st.bad_rows.values())} bad line(s): "
              + ", ".join(f"{k}={v}" for k, v in sorted(st.bad_rows.items())), file=sys.stderr)
    print(json.dumps({"rows": st.rows, "lines": st.lines, "bad_rows": st.bad_rows,
                      "row_groups": st.row_groups, "bytes": st.bytes,
                      "seconds": round(st.seconds, 4), "out": a.out}), flush=True)
    return 0


def _add_spec(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spec", help="validate a feature spec and print its operator graph",
                       description="Load and validate a feature spec TOML file and print its "
                       "pipelines, operator chains and embedding tables.")
    p.add_argument("config", help="feature spec TOML")
    p.add_argument("--nodes", action="store_true", help="also list the operator-graph nodes")
    p.set_defaults(func=_cmd_spec)


def _cmd_spec(a: argparse.Namespace) -> int:
    from recs_core.features.graph import FeatureGraph
    from recs_core.features.spec import load_spec

    spec = load_spec(a.config)
    print(spec.describe())
    if a.nodes:
        for node in FeatureGraph(spec).nodes():
            print(f"  node {node.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``recs`` command."""
    parser = argparse.ArgumentParser(
        prog="recs", description="RECS: incremental training of recommendation models on CPU "
        "clusters. Launch multi-rank jobs with mpi_launch.sh -n N recs ...")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_gen(sub)
    _add_features(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_timeline(sub)
    _add_spec(sub)
    _add_convert(sub)
    from recs_core.follow.commands import add_follow, add_report

    add_follow(sub)
    add_report(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors print one line, no traceback. Under
    MPI any error or Ctrl-C on one rank ends every rank, with that rank's message."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecsError as e:
        if args.command == "train":  # for machines (recs follow): the last stdout line
            from recs_core.errors import DataError

            print(json.dumps({"error": str(e), "data_error": isinstance(e, DataError),
                              "reason": getattr(e, "reason", None)}), flush=True)
        return _fail(2, f"recs: error: {e}")
    except KeyboardInterrupt as e:  # (recs train: a second stop signal, stop_signals)
        return _fail(getattr(e, "code", 130), "recs: interrupted")
    except Exception as e:  # a bug, or the system's (out of memory, I/O): ends every rank too
        if _world_size() == 1:
            raise
        traceback.print_exc()
        return _fail(1, f"recs: error: {type(e).__name__}: {e}")


def _world_size() -> int:
    """The number of ranks of this job: MPI's when started, else the launcher's (a rank
    failing before MPI starts must still end the others, which would wait in MPI_Init)."""
    from recs_core.comm.world import launched_ranks

    if "mpi4py.MPI" not in sys.modules and launched_ranks() == 1:
        return 1
    from recs_core.comm.world import mpi_world

    return mpi_world().size


def _fail(code: int, message: str) -> int:
    """Print ``message`` and return ``code``; with several ranks, end every rank with it
    instead (a rank left running would wait on this one until its deadline)."""
    if _world_size() > 1:
        from recs_core.comm.world import mpi_world

        world = mpi_world()
        world.abort(code, f"{message} (rank {world.rank})")
    print(message, file=sys.stderr)
    return code
