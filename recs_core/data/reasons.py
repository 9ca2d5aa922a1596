"""Why an input row is bad: the reason codes every reader reports (text and columnar)."""

from __future__ import annotations

# Index into REASONS; the parse kernels return these codes.
REASONS = (
    "ok",
    "field_count",
    "bad_int",
    "int_overflow",
    "bad_label",
    "field_too_long",
    "invalid_utf8",
    "binary",
    "truncated_last_line",
    "empty_line",
    "line_too_long",
    "unterminated_quote",
    "bad_quote",
    "bad_float",
    "missing_label",
)
R_FIELD_COUNT = 1
R_BAD_INT = 2
R_INT_OVERFLOW = 3
R_BAD_LABEL = 4
R_FIELD_TOO_LONG = 5
R_INVALID_UTF8 = 6
R_BINARY = 7
R_TRUNCATED = 8
R_EMPTY_LINE = 9
R_LINE_TOO_LONG = 10
R_UNTERMINATED_QUOTE = 11  # a quoted field whose closing quote is not on its line
R_BAD_QUOTE = 12  # text between a closing quote and the next separator
R_BAD_FLOAT = 13
R_MISSING_LABEL = 14  # the label's column is empty (null) or NaN

# reasons that concern the whole line, not one column
LINE_REASONS = frozenset({R_FIELD_COUNT, R_TRUNCATED, R_EMPTY_LINE, R_LINE_TOO_LONG})
