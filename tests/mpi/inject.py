"""Test tool: run the ``recs`` command (``recs_core.cli.main``) on every rank of an mpiexec
job, with a failure or a slow checkpoint write injected by patching the library here
(the library itself has no such hook). Usage::

    python tests/mpi/inject.py [--raise R:KIND:N] [--slow-save R:SECONDS] [--marks DIR] \\
        -- train --config ...

``--raise R:KIND:N``: rank R raises ``KIND`` (RuntimeError, MemoryError, OSError) when
its reader is asked for batch N (0-based), mid-pass. ``--slow-save R:SECONDS``: rank R
sleeps SECONDS before writing each file of its checkpoint shard. ``--marks DIR``: every
rank writes its pid to ``DIR/rank<R>.pid`` at start and ``DIR/rank<R>.saving`` when it
begins a checkpoint save (what a test waits for before signalling a rank).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mpi4py import MPI

RANK = MPI.COMM_WORLD.Get_rank()


def _inject_raise(rank: int, kind: str, n: int) -> None:
    from recs_core.data.reader import ShardReader

    error = {"RuntimeError": RuntimeError, "MemoryError": MemoryError, "OSError": OSError}[kind]
    def failing(original):  # noqa: ANN001, ANN202
        def batches(self):  # noqa: ANN001, ANN202
            for i, batch in enumerate(original(self)):
                if i == n and RANK == rank:
                    raise error(f"injected {kind} on rank {rank} at batch {n}")
                yield batch
        return batches

    # a training pass reads with origins (the rows' files and lines), other reads plainly
    ShardReader.__iter__ = failing(ShardReader.__iter__)
    ShardReader.with_origins = failing(ShardReader.with_origins)


def _inject_slow_save(rank: int, seconds: float) -> None:
    from recs_core.checkpoint import manifest

    original = manifest.write_array

    def write_array(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        if RANK == rank:
            time.sleep(seconds)
        return original(*args, **kw)

    manifest.write_array = write_array


def _mark_saves(marks: Path) -> None:
    from recs_core.checkpoint import store

    original = store.save

    def save(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        (marks / f"rank{RANK}.saving").write_text(str(os.getpid()))
        return original(*args, **kw)

    store.save = save


def main() -> int:
    args = sys.argv[1:]
    cut = args.index("--")
    opts, cli_args = args[:cut], args[cut + 1:]
    for flag, value in zip(opts[::2], opts[1::2]):
        if flag == "--raise":
            r, kind, n = value.split(":")
            _inject_raise(int(r), kind, int(n))
        elif flag == "--slow-save":
            r, seconds = value.split(":")
            _inject_slow_save(int(r), float(seconds))
        elif flag == "--marks":
            marks = Path(value)
            (marks / f"rank{RANK}.pid").write_text(str(os.getpid()))
            _mark_saves(marks)
        else:
            raise SystemExit(f"inject.py: unknown option {flag}")
    from recs_core.cli import main as recs_main

    return recs_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
