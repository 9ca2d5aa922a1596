"""``recs report STATE_DIR``: a chain's ledger as a table and a picture.

The table has one line per window (its final state, or the state it is in): status,
attempts, preemptions, ranks, rows, rows/s, progressive and held-out AUC / logloss, the
last published model's held-out logloss (the gate's reference), the published version and
the gate's reason. The PNG (matplotlib) draws, per window in chain order, progressive and
held-out AUC and logloss, rows/s and rows, and marks withheld, quarantined and failed
windows and preemptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recs_core.errors import RecsError
from recs_core.follow.ledger import Ledger, WindowState

COLUMNS = ("window", "status", "tries", "preempt", "ranks", "rows", "rows/s", "prog_auc",
           "prog_ll", "eval_auc", "eval_ll", "base_ll", "version", "gate")


def rows_of(state: str | Path) -> list[dict[str, Any]]:
    """One dict per window (its folded ledger records), in chain order."""
    if not (Path(state) / "ledger.jsonl").exists():
        raise RecsError(f"{state}: no ledger.jsonl (not a recs follow state directory)")
    return [_row(w) for w in Ledger(state).windows().values()]


def _row(w: WindowState) -> dict[str, Any]:
    f = w.fields
    base = f.get("baseline") or {}
    gate = f.get("gate") or {}
    return {"window": w.id, "status": w.status, "tries": w.attempts, "preempt": w.preemptions,
            "ranks": f.get("ranks"), "rows": f.get("rows"), "rows/s": f.get("samples_per_sec"),
            "prog_auc": f.get("progressive_auc"), "prog_ll": f.get("progressive_logloss"),
            "eval_auc": f.get("eval_auc"), "eval_ll": f.get("eval_logloss"),
            "base_ll": base.get("eval_logloss"), "version": f.get("version"),
            "gate": gate.get("why") or f.get("error") or f.get("reason") or "",
            "parts": f.get("parts")}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (the gate's reason last, unpadded)."""
    cells = [[_cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


_MARK = {"withheld": ("tab:orange", "withheld"), "quarantined": ("tab:purple", "quarantined"),
         "failed": ("tab:red", "failed")}


def plot(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> None:
    """Draw the chain (see the module docstring) to ``out`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RecsError("recs report --png needs matplotlib (pip install matplotlib)") from None
    x = list(range(len(rows)))
    names = [r["window"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(max(7.0, 0.7 * len(rows) + 3), 9), sharex=True)

    def series(key: str) -> list[float]:
        return [float("nan") if r[key] is None else float(r[key]) for r in rows]

    ax = axes[0]
    ax.plot(x, series("prog_auc"), "o-", label="progressive AUC")
    ax.plot(x, series("eval_auc"), "s-", label="held-out AUC")
    ax.set_ylabel("AUC")
    ax = axes[1]
    ax.plot(x, series("prog_ll"), "o-", label="progressive logloss")
    ax.plot(x, series("eval_ll"), "s-", label="held-out logloss")
    ax.plot(x, series("base_ll"), "x--", label="last published, same rows (gate)")
    ax.set_ylabel("logloss")
    ax = axes[2]
    ax.bar(x, [r["rows"] or 0 for r in rows], color="lightgray", label="rows")
    ax.set_ylabel("rows per window")
    ax2 = ax.twinx()
    ax2.plot(x, series("rows/s"), "d-", color="tab:green", label="rows/s")
    ax2.set_ylabel("rows/s")
    for i, r in enumerate(rows):
        color, label = _MARK.get(r["status"], (None, None))
        for a in axes:
            if color:
                a.axvspan(i - 0.4, i + 0.4, color=color, alpha=0.15, lw=0)
            if r["preempt"]:
                a.axvline(i, color="tab:red", ls=":", lw=1)
        if color:
            axes[0].annotate(label, (i, 0.02), xycoords=("data", "axes fraction"),
                             ha="center", fontsize=8, color=color)
        if r["preempt"]:
            axes[0].annotate(f"preempted x{r['preempt']}", (i, 0.9),
                             xycoords=("data", "axes fraction"), ha="center", fontsize=7,
                             color="tab:red")
    for a in axes[:2]:
        a.legend(fontsize=8, loc="best")
        a.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper right")
    axes[2].set_xticks(x)
    axes[2].set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(title or "recs follow: the chain")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
