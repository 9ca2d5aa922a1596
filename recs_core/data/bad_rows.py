"""The bad-input policy: skip and count each reason, or fail at the first bad line."""

from __future__ import annotations

from dataclasses import dataclass, field

from recs_core.data.parse import REASONS
from recs_core.errors import DataError

# The bad fraction is checked during the pass only after this many lines, so that
# a few bad lines at the very start do not stop a job that is mostly clean.
MIN_LINES_FOR_EARLY_CHECK = 10_000


@dataclass
class BadRowPolicy:
    """on_error "skip" counts bad lines (stopping past max_bad_fraction); "fail" stops at one."""

    on_error: str = "skip"
    max_bad_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', not {self.on_error!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], not {self.max_bad_fraction}")


@dataclass
class BadRowCounter:
    """Counts lines and bad lines by reason, and applies a :class:`BadRowPolicy`."""

    policy: BadRowPolicy
    lines: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    first: str | None = None  # "file:line: reason" of the first bad line seen

    @property
    def bad(self) -> int:
        return sum(self.by_reason.values())

    def record(self, path: str, line_of, reason_code: int, column: str | None) -> None:
        """Count one bad line; ``line_of()`` gives its 1-based line number (computed lazily)."""
        reason = REASONS[reason_code]
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if self.first is None or self.policy.on_error == "fail":
            where = f" in column {column}" if column else ""
            msg = f"{path}:{line_of()}: {reason}{where}"
            if self.first is None:
                self.first = msg
            if self.policy.on_error == "fail":
                raise DataError(f"bad input: {msg} (use --on-error skip to skip bad lines)",
                                path=path, line=line_of(), reason=reason)

    def check(self, final: bool) -> None:
        """Stop with a clear error if the bad fraction is over the limit."""
        if self.lines == 0 or (not final and self.lines < MIN_LINES_FOR_EARLY_CHECK):
            return
        frac = self.bad / self.lines
        if frac > self.policy.max_bad_fraction:
            raise DataError(
                f"too many bad lines: {self.bad} of {self.lines} ({frac:.1%}) exceed "
                f"max_bad_fraction {self.policy.max_bad_fraction:.1%}; by reason: "
                f"{self.summary()}; first: {self.first}", reason="too_many_bad_lines")

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.by_reason.items())) or "none"
