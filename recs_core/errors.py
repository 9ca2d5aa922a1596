"""Exceptions the engine raises for bad user input (never a traceback for these)."""

from __future__ import annotations


class RecsError(Exception):
    """Base class: an error the user can fix; the CLI prints it without a traceback."""


class ConfigError(RecsError):
    """An invalid feature spec or config; the message names the key and what is wrong."""


class DataError(RecsError):
    """Bad input data; the message names the file, the 1-based line and the reason."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.reason = reason


# ``recs train``'s exit status when it stopped on SIGTERM/SIGINT at a step boundary and wrote
# a checkpoint: the window is resumable (``--resume``, any number of ranks); 75 is
# EX_TEMPFAIL ("temporary failure; the user is invited to retry")
EXIT_PREEMPTED = 75
