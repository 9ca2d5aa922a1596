"""A PNG of a few steps of Chrome traces (one per mode) side by side: per rank, the CPU
tasks, the prefetch thread, blocked waits and the exchanges in flight (needs matplotlib)."""

from __future__ import annotations

import json
from typing import Any

from recs_core.errors import RecsError

COLORS = {"features": "#e8a33d", "train": "#d4553a", "lookup": "#6a9fd4", "apply": "#7cb562",
          "dense": "#9c6ad4", "exchange": "#5a5a5a", "wait": "#c8c8c8", "other": "#a0a0a0"}
TRACKS = ((0, "cpu"), (2, "prefetch thread"), (3, "blocked"), (1, "comm"))


def kind(name: str, cat: str) -> str:
    """The legend group of a span."""
    if cat == "comm":
        return "exchange"
    for prefix, k in (("wait", "wait"), ("prefetch", "features"), ("features", "features"),
                      ("read", "features"), ("train", "train"), ("lookup", "lookup"),
                      ("apply", "apply"), ("dense", "dense")):
        if name.startswith(prefix):
            return k
    return "other"


def _load(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    except (OSError, ValueError, KeyError) as e:
        raise RecsError(f"{path}: not a Chrome trace written by recs train --trace ({e})") \
            from None


def _window(events: list[dict[str, Any]], first: int, steps: int) -> tuple[float, float]:
    """Start and end (µs) of steps first..first+steps-1, from rank 0's train tasks (one
    "train step" span per step in modes sequential/prefetch, "train t" segments else)."""
    spans = sorted((e for e in events if e["pid"] == 0 and e["tid"] == 0
                    and e["name"].startswith("train")), key=lambda e: e["ts"])
    ends: dict[int, float] = {}
    for i, e in enumerate(spans):
        tail = e["name"][6:]
        step = int(tail) if tail.isdigit() else i
        ends[step] = max(ends.get(step, 0.0), e["ts"] + e["dur"])
    if not ends:
        raise RecsError("the trace has no train tasks on rank 0")
    order = [ends[k] for k in sorted(ends)]
    first = max(0, min(first, len(order) - steps))
    last = min(len(order) - 1, first + steps - 1)
    return (order[first - 1] if first else 0.0), order[last]


def render(traces: list[str], labels: list[str], out: str, first: int = 5,
           steps: int = 3) -> None:
    """Draw ``steps`` steps (from step ``first``) of each trace, one panel per trace."""
    try:
        import matplotlib
    except ImportError:
        raise RecsError("rendering a timeline needs matplotlib (pip install matplotlib)") \
            from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    loaded = [_load(p) for p in traces]
    fig, axes = plt.subplots(len(traces), 1, figsize=(12, 1.6 + 1.5 * len(traces)),
                             squeeze=False)
    for ax, events, label in zip(axes[:, 0], loaded, labels):
        a, b = _window(events, first, steps)
        ranks = sorted({e["pid"] for e in events})
        rows = [(r, tid, f"rank {r} {name}") for r in ranks for tid, name in TRACKS]
        for y, (r, tid, _) in enumerate(rows):
            for e in events:
                if e["pid"] != r or e["tid"] != tid or e["ts"] + e["dur"] < a or e["ts"] > b:
                    continue
                ax.broken_barh([((e["ts"] - a) / 1e3, e["dur"] / 1e3)], (y - 0.4, 0.8),
                               color=COLORS[kind(e["name"], e.get("cat", ""))], linewidth=0)
        ax.set_yticks(range(len(rows)), [name for *_, name in rows], fontsize=7)
        ax.set_xlim(0, (b - a) / 1e3)
        ax.set_title(f"{label}: {steps} steps in {(b - a) / 1e3:.0f} ms", fontsize=9)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("ms")
    fig.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()],
               loc="upper center", ncol=len(COLORS), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
