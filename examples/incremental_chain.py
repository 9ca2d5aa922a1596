"""An incremental chain: three consecutive windows, each `recs train` job starting from
the previous window's checkpoint, against a model trained on the latest window alone.

    python examples/incremental_chain.py --ranks 2 --rows 200000        # synthetic, drifting
    python examples/incremental_chain.py --ranks 2 --criteo data/samples/criteo/train.txt

Synthetic: `recs gen --window w --drift D` writes window w (the hidden model and the
popular ids move from window to window). Real: consecutive thirds of a time-ordered
Criteo file. Every job holds out the last --eval-fraction of its window; the chained and
the window-alone model of the last window are scored on the same held-out rows. Prints a
line per window and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def recs(ranks: int, *args: str) -> dict:
    """Run `recs ...` on ``ranks`` ranks; its last JSON line."""
    cmd = [str(ROOT / "mpi_launch.sh"), "-n", str(ranks), str(BIN / "recs"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"incremental_chain: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def synthetic_windows(work: Path, n: int, rows: int, drift: float, seed: int) -> list[Path]:
    out = []
    for w in range(n):
        path = work / f"window{w}.txt"
        subprocess.run([str(BIN / "recs"), "gen", "--rows", str(rows), "--seed", str(seed + w),
                        "--window", str(w), "--drift", str(drift), "--out", str(path),
                        "--quiet"], check=True, capture_output=True)
        out.append(path)
    return out


def criteo_windows(work: Path, n: int, source: Path) -> list[Path]:
    lines = source.read_text().splitlines(keepends=True)
    size = len(lines) // n
    out = []
    for w in range(n):
        path = work / f"criteo{w}.txt"
        path.write_text("".join(lines[w * size:(w + 1) * size]))
        out.append(path)
    return out


def chain(windows: list[Path], config: str, ranks: int, work: Path, frac: float) -> dict:
    """Train the chain and the last window alone; per-window figures and the comparison."""
    figures, previous = [], None
    for w, data in enumerate(windows):
        save = work / f"model{w}"
        args = ["train", "--config", config, "--data", str(data), "--eval-fraction", str(frac),
                "--save", str(save), "--quiet"]
        out = recs(ranks, *args, *(["--init-from", str(previous)] if previous else []))
        figures.append({"window": w, "progressive_auc": out["progressive_auc"],
                        "train_logloss": out["train_logloss"], "eval_auc": out["eval_auc"],
                        "eval_logloss": out["eval_logloss"]})
        print(f"window {w}: progressive AUC {out['progressive_auc']:.4f}, logloss "
              f"{out['train_logloss']:.4f}; held-out AUC {out['eval_auc']:.4f}, logloss "
              f"{out['eval_logloss']:.4f}", flush=True)
        previous = save
    alone = recs(ranks, "train", "--config", config, "--data", str(windows[-1]),
                 "--eval-fraction", str(frac), "--quiet")
    print(f"last window alone: progressive AUC {alone['progressive_auc']:.4f}; held-out AUC "
          f"{alone['eval_auc']:.4f}, logloss {alone['eval_logloss']:.4f}", flush=True)
    last = figures[-1]
    return {"windows": figures,
            "last_window_alone": {k: alone[k] for k in ("progressive_auc", "train_logloss",
                                                          "eval_auc", "eval_logloss")},
            "chained_beats_alone": last["eval_auc"] > alone["eval_auc"]
            and last["eval_logloss"] < alone["eval_logloss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200_000, help="rows per synthetic window")
    ap.add_argument("--drift", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--criteo", help="a time-ordered Criteo TSV: windows are its thirds")
    ap.add_argument("--config", default=str(ROOT / "configs" / "criteo_dlrm.toml"))
    ap.add_argument("--eval-fraction", type=float, default=0.1)
    ap.add_argument("--workdir", help="keep data and checkpoints here (default: a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        windows = (criteo_windows(work, a.windows, Path(a.criteo)) if a.criteo
                   else synthetic_windows(work, a.windows, a.rows, a.drift, a.seed))
        result = chain(windows, a.config, a.ranks, work, a.eval_fraction)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
