"""The commands' output files (``recs predict --out``, ``recs convert -o``): checked
before the work, so that nothing is computed for an output that would be refused, and
written aside, then renamed (:func:`~recs_core.checkpoint.files.written_aside`)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from recs_core.errors import RecsError


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_file(path: str | os.PathLike, flag: str, inputs: Iterable[str] = (),
                      overwrite: bool = False) -> None:
    """RecsError (one line, starting with ``flag`` and ``path``) unless ``path`` may take a
    new file: not a directory, in an existing directory this process may write in, not
    one of ``inputs`` (the same file under any name), and no existing file unless
    ``overwrite``."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise RecsError(f"{flag} {p}: is a directory: give a file name")
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        raise RecsError(f"{flag} {p}: no directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RecsError(f"{flag} {p}: {parent} is not writable")
    if not os.path.lexists(p):
        return
    for i in inputs:
        if _same_file(p, os.fspath(i)):
            raise RecsError(f"{flag} {p}: is one of the inputs ({os.fspath(i)}): writing it "
                            f"would destroy them; give another file name")
    if not overwrite:
        raise RecsError(f"{flag} {p}: exists: give a new file name, or --overwrite to "
                        f"replace it")
