"""A mode (``recs train --mode``) as a policy over the one task loop of a training pass.

Every policy runs the same tasks on the same stages, so every policy computes the same
model; they differ only in what may run while an exchange is in flight and in what is
prepared ahead. A pass turns its policy into its components' settings once; what the
schedule guard switches at a step boundary is a :class:`Schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from recs_core.errors import RecsError
from recs_core.sched.guard import GuardSettings

REPLAN_EVERY = 16  # steps between cost agreements (a tiny allreduce); also at step 2
CHUNK_MS = 20.0  # row-chunk cost of long feature chains (docs/BENCHMARKS.md: the fastest)
LOOKAHEAD = 4  # batches admitted ahead (docs/BENCHMARKS.md: faster than 2)


@dataclass(frozen=True)
class Schedule:
    """What a pass switches at a step boundary: ``overlap``, ``fill`` and ``early`` as in
    :class:`Policy`; ``staged``: batches are admitted with their operators still to run
    (rather than prepared whole)."""

    overlap: bool
    fill: bool
    early: bool
    staged: bool


# what the schedule guard falls back to: every exchange waited on
BLOCKING_SCHEDULE = Schedule(overlap=False, fill=False, early=False, staged=False)


@dataclass(frozen=True)
class Policy:
    """How the task loop runs a pass.

    ``overlap``: ready tasks run while exchanges are in flight (off: only a step's other
    lookups, as a blocking lookup of every pipeline posts them together; every other
    exchange is waited on before any other work, as a blocking trainer does); ``fill``: the filler
    runs operators of upcoming batches that fit the exchange windows, on row chunks of
    at most ``chunk_ms`` (intra-pipeline prefetch); ``early``: step t+1's lookups start
    while step t trains; ``priority``: pipelines in Johnson's order on costs agreed across
    ranks (inter-pipeline priority); ``prefetch_thread``: a thread prepares whole batches
    ahead (tf.data's prefetch); ``lookahead``: batches prepared ahead; ``workers``: operator
    worker threads; ``progress_thread``: "on", "off" or "auto" (a thread pokes MPI during
    long tasks when messages cross a network and the rank has a spare core); ``guard``:
    an overlapping policy measures itself against the blocking schedule and runs the
    faster (``sched.guard``; None: never).
    """

    name: str
    overlap: bool = True
    fill: bool = True
    early: bool = True
    priority: bool = True
    prefetch_thread: bool = False
    lookahead: int = LOOKAHEAD
    chunk_ms: float = CHUNK_MS
    workers: int = 0
    progress_thread: str = "auto"
    replan_every: int = REPLAN_EVERY
    guard: GuardSettings | None = GuardSettings()

    def __post_init__(self) -> None:
        if self.progress_thread not in ("auto", "on", "off"):
            raise RecsError(f"progress_thread must be auto, on or off, not "
                            f"{self.progress_thread!r}")
        if self.lookahead < 1:
            raise RecsError(f"lookahead must be at least 1, got {self.lookahead}")
        if not self.chunk_ms >= 0:
            raise RecsError(f"chunk_ms must be >= 0, got {self.chunk_ms}")

    def schedule(self) -> Schedule:
        """The schedule this policy runs (a prefetch thread prepares batches whole)."""
        return Schedule(self.overlap, self.fill, self.early,
                        staged=self.overlap and not self.prefetch_thread)

    @property
    def chunk_seconds(self) -> float:
        """Row-chunk cost of long feature chains (only the filler chunks: 0 otherwise)."""
        return self.chunk_ms / 1e3 if self.fill else 0.0


_BLOCKING = {"overlap": False, "fill": False, "early": False, "priority": False,
             "workers": 0, "progress_thread": "off", "guard": None}
_MODES = {
    "sequential": _BLOCKING,  # features, lookups, train: each exchange waited on
    "prefetch": {**_BLOCKING, "prefetch_thread": True},
    "recs": {},
    "recs-intra": {"early": False, "priority": False},
    "recs-inter": {"fill": False},
}
MODES = tuple(_MODES)


def policy(mode: str, **options: object) -> Policy:
    """The policy of ``mode`` with ``options`` (Policy's fields, None: the default;
    ``guard`` may be True or False: the default guard or none). A blocking mode keeps no
    workers, no progress thread and no guard."""
    if mode not in _MODES:
        raise RecsError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("guard"), bool):
        given["guard"] = GuardSettings() if given["guard"] else None
    return replace(Policy(mode, **given), **_MODES[mode])  # type: ignore[arg-type]
