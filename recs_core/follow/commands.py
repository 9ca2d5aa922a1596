"""``recs follow`` and ``recs report``: their arguments (the work is in this package)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from recs_core.errors import RecsError


def add_follow(sub: argparse._SubParsersAction) -> None:
    """The ``recs follow`` subcommand."""
    from recs_core.follow.launch import DEFAULT_LAUNCHER

    p = sub.add_parser("follow", help="train every window that lands, forever (a chain)",
                       description="Watch a landing location (a directory of Hive partitions, "
                       "or a glob) and train each complete window, in partition order, from "
                       "the previous window's model: one `recs train` job per window through "
                       "a launcher, retried and resumed; each good window gated against the "
                       "last published model and published as a new version. State (ledger, "
                       "checkpoints, the newest good model) lives in --state. A window is "
                       "complete when its _SUCCESS marker exists, or with --settle after that "
                       "many seconds without change. Stops on SIGTERM after the job in flight "
                       "checkpointed (exit 75); a restart continues where it stopped.")
    p.add_argument("--config", required=True, help="the config every window trains with")
    p.add_argument("--watch", required=True, metavar="LANDING",
                   help="a directory of partitions (its leaf directories are the windows) "
                   "or a quoted glob (each match a window)")
    p.add_argument("--state", required=True, metavar="DIR",
                   help="the chain's state directory (ledger.jsonl, current.json, windows/)")
    p.add_argument("--publish", metavar="DIR",
                   help="publish each good window as a numbered version DIR/<n> (a delta, a "
                   "full model every --full-every windows)")
    p.add_argument("--ranks", default="1", metavar="N|@FILE",
                   help="ranks per job; @FILE: the number in FILE, read before each launch "
                   "(capacity that changes between windows and attempts) (default 1)")
    p.add_argument("--launcher", default=DEFAULT_LAUNCHER, metavar="TEMPLATE",
                   help="how a job is launched; must contain {ranks} ({mpi_launch}: this "
                   "checkout's mpi_launch.sh); e.g. 'mpiexec -f hosts -n {ranks}' or "
                   f"'srun -n {{ranks}}' (default {DEFAULT_LAUNCHER!r})")
    p.add_argument("--settle", type=float, metavar="SECONDS",
                   help="for sources without _SUCCESS markers: a window is complete after "
                   "this long without change")
    p.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                   help="how often to look for new windows (default 10)")
    p.add_argument("--once", action="store_true", help="stop when every complete window is done")
    p.add_argument("--init-from", metavar="DIR", help="the model the first window starts from")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="held-out share of each window, for its figures and the gate (0.1)")
    p.add_argument("--checkpoint-every", metavar="STEPS|TIME",
                   help="periodic checkpoints of each job (see recs train)")
    p.add_argument("--max-attempts", type=int, default=3,
                   help="attempts per window before the chain stops (default 3)")
    p.add_argument("--backoff", type=float, default=10.0, metavar="SECONDS",
                   help="wait before a retry, doubled each time (default 10)")
    p.add_argument("--full-every", type=int, default=6, metavar="K",
                   help="with --publish: a full model every K versions, deltas between (6)")
    p.add_argument("--keep-versions", type=int, default=10, metavar="N",
                   help="keep the newest N published versions (and their bases), and the "
                   "checkpoints of the newest N trained windows in --state (10)")
    p.add_argument("--gate-logloss", type=float, default=0.01, metavar="MARGIN",
                   help="withhold a window whose held-out logloss exceeds the last published "
                   "model's on the same rows by more than MARGIN (default 0.01)")
    p.add_argument("--gate-guard-logloss", type=float, default=0.02, metavar="MARGIN",
                   help="the logloss margin on the last good window's held-out rows, "
                   "plus the window's gain on its own (a model that follows drift does "
                   "worse there by about what it learnt; one trained on broken labels far "
                   "worse) (default 0.02)")
    p.add_argument("--gate-guard-auc", type=float, metavar="MARGIN",
                   help="also an AUC margin on those rows (default: none)")
    p.add_argument("--gate-label-drop", type=float, default=0.1, metavar="AUC",
                   help="withhold a window whose labels the last published model predicts "
                   "far worse than the last good window's: its AUC lower by more than this "
                   "on the window's held-out rows than on those (shuffled labels, shifted "
                   "columns) (default 0.1)")
    p.add_argument("--gate-auc", type=float, metavar="MARGIN",
                   help="also withhold when held-out AUC is lower by more than MARGIN")
    p.add_argument("--on-withheld", choices=("last-good", "trained"), default="last-good",
                   help="after a withheld window the chain continues from the last good "
                   "model (default) or from the withheld one")
    p.add_argument("--relaunch", action="store_true",
                   help="a job (launch, load, save) per window instead of one worker that "
                   "keeps its ranks and model up while windows are waiting (recs worker)")
    p.add_argument("--max-bad-fraction", type=float,
                   help="a window with a larger share of bad lines is quarantined (not "
                   "trained) (default: the config's input.max_bad_fraction)")
    p.add_argument("train_args", nargs="*", metavar="-- TRAIN_ARGS",
                   help="more recs train flags for every job (after --)")
    p.set_defaults(func=_cmd_follow)


def _cmd_follow(a: argparse.Namespace) -> int:
    import signal

    from recs_core.follow.launch import check_template
    from recs_core.follow.supervisor import FollowConfig, Gate, Supervisor

    check_template(a.launcher)
    for name, v, lo in (("--max-attempts", a.max_attempts, 1), ("--full-every", a.full_every, 1),
                        ("--keep-versions", a.keep_versions, 1)):
        if v < lo:
            raise RecsError(f"{name} must be at least {lo}, got {v}")
    if not 0.0 <= a.eval_fraction < 1.0:
        raise RecsError(f"--eval-fraction must be in [0, 1), got {a.eval_fraction}")
    if not os.path.isfile(a.config):
        raise RecsError(f"--config {a.config}: no such file")
    cfg = FollowConfig(
        config=os.path.abspath(a.config), watch=a.watch, state=a.state,
        publish=a.publish and os.path.abspath(a.publish), ranks=a.ranks, launcher=a.launcher,
        settle=a.settle, poll=a.poll, once=a.once,
        init_from=a.init_from and os.path.abspath(a.init_from), eval_fraction=a.eval_fraction,
        checkpoint_every=a.checkpoint_every, max_attempts=a.max_attempts, backoff=a.backoff,
        full_every=a.full_every, keep_versions=a.keep_versions,
        gate=Gate(a.gate_logloss, a.gate_auc, a.gate_guard_logloss, a.gate_guard_auc,
                  a.gate_label_drop),
        on_withheld=a.on_withheld,
        max_bad_fraction=a.max_bad_fraction, train_args=list(a.train_args),
        keep_ranks=not a.relaunch)
    sup = Supervisor(cfg)
    sup.ranks()  # a bad --ranks is refused before anything starts
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: sup.request_stop(s))
    code = sup.run()
    good = sup.ledger.good()
    print(json.dumps({"stopped": code != 0, "newest_good": good,
                      "windows": {k: v.status for k, v in sup.ledger.windows().items()}}),
          flush=True)
    return code


def add_report(sub: argparse._SubParsersAction) -> None:
    """The ``recs report`` subcommand."""
    p = sub.add_parser("report", help="a recs follow chain as a table (and a PNG)",
                       description="Print the ledger of a recs follow state directory as a "
                       "table, one line per window; with --png also draw it (needs "
                       "matplotlib).")
    p.add_argument("state", help="the state directory of recs follow")
    p.add_argument("--png", metavar="FILE", help="draw the chain here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    p.set_defaults(func=_cmd_report)


def _cmd_report(a: argparse.Namespace) -> int:
    from recs_core.follow.report import plot, rows_of, table

    rows = rows_of(a.state)
    print(json.dumps(rows) if a.json else table(rows))
    if a.png:
        plot(rows, a.png, title=f"recs follow: {a.state}")
        print(f"wrote {a.png}", file=sys.stderr)
    return 0
