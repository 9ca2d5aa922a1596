"""The ``recs`` command: a thin layer over the library (see ``recs --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from recs_core.cli_args import (
    DATA_HELP,
    add_comm_timeout,
    add_policy_args,
    bad_row_policy,
    set_comm_timeout_arg,
)
from recs_core.errors import RecsError


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


def _add_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="read, parse and process features (no training)",
                       description="Run reading, parsing and every feature operator of the "
                       "config over the data, without training. Under mpiexec each rank "
                       "processes its shard; rank 0 prints the global figures as one JSON line.")
    p.add_argument("--config", required=True,
                   help="feature spec TOML (e.g. configs/criteo_dlrm.toml)")
    p.add_argument("--data", required=True, nargs="+", help=DATA_HELP)
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the config's)")
    add_policy_args(p)
    add_comm_timeout(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_features)


def _cmd_features(a: argparse.Namespace) -> int:
    from recs_core.comm.world import mpi_world
    from recs_core.features.feature_pass import run_features
    from recs_core.features.spec import load_spec

    set_comm_timeout_arg(a)
    spec = load_spec(a.config)
    world = mpi_world()
    stats = run_features(spec, a.data, world, policy=bad_row_policy(a, spec),
                         batch_rows=a.batch_size, quiet=a.quiet)
    if world.rank == 0:
        for w in stats.warnings:
            print(f"recs: warning: {w}", file=sys.stderr)
        if stats.bad_rows:
            print(f"recs: skipped {sum(stats.bad_rows.values())} bad line(s): "
                  + ", ".join(f"{k}={v}" for k, v in sorted(stats.bad_rows.items())),
                  file=sys.stderr)
        print(json.dumps(stats.as_json()), flush=True)
    return 0


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
    p.add_argument("--data", required=True, nargs="+", help=DATA_HELP)
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
    add_policy_args(p)
    add_comm_timeout(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a: argparse.Namespace) -> int:
    from recs_core.comm.world import mpi_world
    from recs_core.data.sources import expand_sources
    from recs_core.features.spec import load_spec
    from recs_core.train.job import Job
    from recs_core.train.saving import find_checkpoint
    from recs_core.train.scores import check_id_column, check_output, write_scores

    set_comm_timeout_arg(a)
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
    scores = job.score_rows(a.data, id_column=a.id_column, policy=bad_row_policy(a, spec))
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
    add_policy_args(p)
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
    st = convert_to_parquet(a.inputs, spec.schema, a.out, policy=bad_row_policy(a, spec),
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
    from recs_core.train.command import add_train, add_worker

    add_train(sub)
    add_worker(sub)
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
        if args.command in ("train", "worker"):  # for machines (recs follow): the last line
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
