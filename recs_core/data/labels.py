"""The label of a row from a numeric column: the value itself (0 or 1), or a rule such
as ``rating >= 4``. One scalar kernel serves the text parser (inlined, per row) and
columnar readers (:func:`labels_from_numbers`, per array).

Spec keys (``[input]``): a column of ``type = "label"`` (text: the bytes ``0`` or ``1``),
or ``label = "click"`` (a numeric column holding 0 or 1), or ``label = "rating >= 4"``
(operators ``>= > <= < == !=`` against a number). An empty (null) or NaN value is a
``missing_label`` row, any other value a rule cannot map is a ``bad_label`` row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from numba import njit

from recs_core.data.reasons import R_BAD_LABEL, R_MISSING_LABEL
from recs_core.errors import ConfigError

# Rule codes. OP_LABEL_BYTES is the text-only ``type = "label"`` column: exactly "0" or "1".
OP_LABEL_BYTES = 0
OP_01 = 1
OPS = {">=": 2, ">": 3, "<=": 4, "<": 5, "==": 6, "!=": 7}
LABEL_MISSING = -1  # what rule_label returns for NaN
LABEL_BAD = -2  # ... and for a value that is no label (OP_01: not 0 or 1)
_RULE = re.compile(r"^\s*(\S+?)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class LabelRule:
    """How the label comes from column ``column``: ``op`` a code above, ``value`` the
    number a comparison is against."""

    column: str
    op: int = OP_01
    value: float = 0.0

    @staticmethod
    def parse(text: str, where: str = "input.label") -> LabelRule:
        """``"click"`` (0/1 values) or ``"rating >= 4"``; ConfigError naming ``where``."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: expected a column name (\"click\") or a rule "
                              f"(\"rating >= 4\"), got {text!r}")
        m = _RULE.match(text)
        if m is None:
            if any(c in text for c in "<>=!") or len(text.split()) != 1:
                raise ConfigError(f"{where}: cannot read the rule {text!r}; expected COLUMN OP "
                                  f"NUMBER with OP one of {' '.join(OPS)}, e.g. \"rating >= 4\"")
            return LabelRule(text.strip(), OP_01)
        col, op, num = m.groups()
        try:
            value = float(num)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ConfigError(f"{where}: the rule {text!r} compares with {num!r}; expected a "
                              "finite number")
        return LabelRule(col, OPS[op], value)

    def __str__(self) -> str:
        if self.op in (OP_01, OP_LABEL_BYTES):
            return self.column
        op = next(k for k, v in OPS.items() if v == self.op)
        return f"{self.column} {op} {self.value:g}"

    def labels(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels int8, reason codes int8: 0 ok, else missing_label / bad_label) of a
        numeric column (nulls as NaN)."""
        return labels_from_numbers(np.asarray(values, dtype=np.float64), self.op, self.value)


@njit(nogil=True, cache=True, inline="always")
def rule_label(x: float, op: int, value: float) -> int:
    """0 or 1 for value ``x`` under rule (op, value); LABEL_MISSING for NaN; LABEL_BAD
    for a value that is no label."""
    if x != x:
        return LABEL_MISSING
    if op <= OP_01:
        if x == 0.0:
            return 0
        return 1 if x == 1.0 else LABEL_BAD
    if op == 2:
        return 1 if x >= value else 0
    if op == 3:
        return 1 if x > value else 0
    if op == 4:
        return 1 if x <= value else 0
    if op == 5:
        return 1 if x < value else 0
    if op == 6:
        return 1 if x == value else 0
    return 1 if x != value else 0


@njit(nogil=True, cache=True)
def labels_from_numbers(x: np.ndarray, op: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels of float64 values ``x`` (NaN: null) and a reason code per value (0 ok)."""
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int8)
    why = np.zeros(n, dtype=np.int8)
    for i in range(n):
        lab = rule_label(x[i], op, value)
        if lab >= 0:
            out[i] = lab
        elif lab == LABEL_MISSING:
            why[i] = R_MISSING_LABEL
        else:
            why[i] = R_BAD_LABEL
    return out, why
