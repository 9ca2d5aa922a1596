"""Arguments several ``recs`` commands share: the data, the bad-row policy, the deadline."""

from __future__ import annotations

import argparse

from recs_core.errors import RecsError

DATA_HELP = ("input: files, directories (read recursively, Hive partitions such as "
              "dt=.../hour=... in partition order, then file name; names starting with . or "
              "_ skipped) and globs (quote them; ** for any depth); text plain, .gz or .zst, "
              "or Parquet (.parquet, or input.format = \"parquet\")")



def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=("skip", "fail"),
                   help="bad input lines: skip and count them, or stop at the first "
                   "(default: the config's input.on_error)")
    p.add_argument("--max-bad-fraction", type=float,
                   help="with skip: stop if more than this share of lines is bad "
                   "(default: the config's input.max_bad_fraction, 0.05)")


def add_comm_timeout(p: argparse.ArgumentParser) -> None:
    from recs_core.comm.pending import DEFAULT_TIMEOUT_S

    p.add_argument("--comm-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="under MPI, end the job when a rank has waited this long on the "
                   "others (a rank died, stopped or hung) (default "
                   f"{DEFAULT_TIMEOUT_S:g})")


def set_comm_timeout_arg(a: argparse.Namespace) -> None:
    from recs_core.comm.pending import set_comm_timeout

    try:
        set_comm_timeout(a.comm_timeout)
    except ValueError:
        raise RecsError(f"--comm-timeout must be a positive number of seconds, got "
                        f"{a.comm_timeout:g}") from None


def bad_row_policy(a: argparse.Namespace, spec):  # noqa: ANN001, ANN202
    from recs_core.data.bad_rows import BadRowPolicy

    try:
        return BadRowPolicy(a.on_error or spec.policy.on_error,
                            spec.policy.max_bad_fraction if a.max_bad_fraction is None
                            else a.max_bad_fraction)
    except ValueError as e:
        raise RecsError(str(e)) from None
