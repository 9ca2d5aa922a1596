"""Checkpoint save / load time and size for the canonical model on 1 rank: 47 tables x
2^18 rows x 16 float32, a row-wise Adagrad accumulator (one float32 per row) per table
and a small dense part, against writing / reading the same bytes as one file with plain
``numpy.save`` / ``numpy.load``.

Both writers fsync before the clock stops (``numpy.save`` to an open file, then flush and
fsync). The checkpoint also hashes every byte (sha256), writes each file atomically
(temp file, fsync, rename, directory fsync) and writes the manifest. Loads are timed
"warm" (files in the page cache, after one untimed read: CPU cost) and "cold" (after
``posix_fadvise(DONTNEED)`` evicts the files from this kernel's page cache). Checkpoint
loads are timed with sha256 verification (the default) and without; the checkpoint
writes / reads ``--workers`` files at once. Each figure is the
median of ``--reps`` runs. Everything is written under a temp dir (``--dir``) and removed.

``--resume-rows N`` (default 200,000; 0 skips it) adds the trainer's figures for the
canonical config on one rank (``"trainer"`` in the JSON): a job trains on N synthetic
rows with one periodic checkpoint half-way (``Job.checkpoint_hook``) and writes its final
checkpoint (``Job.save_step``): save time and size of the whole training state (tables,
row-wise accumulators, touched-row bits, dense parameters and optimizer state,
progressive scores). Then a fresh job resumes from the half-way checkpoint, its files
evicted from the page cache first (cold): the resume overhead is the load (read, sha256
verify, place the rows) plus re-reading the steps already done without training them,
also given in median training steps of the uninterrupted job. The resumed job's final
checkpoint is checked bit-identical to the uninterrupted one's.

    python bench/bench_checkpoint.py --reps 3          # one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recs_core.checkpoint import load_manifest, read_rank, save  # noqa: E402
from recs_core.checkpoint.store import WORKERS  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "criteo_dlrm.toml"

DENSE = [(13, 512), (512,), (512, 256), (256,), (256, 16), (16,),
         (367, 512), (512,), (512, 256), (256,), (256, 1), (1,)]


def model(tables: int, rows: int, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for t in range(tables):
        arrays[f"t{t}.values"] = rng.random((rows, dim), dtype=np.float32)
        arrays[f"t{t}.acc"] = rng.random(rows, dtype=np.float32)
    for i, shape in enumerate(DENSE):
        arrays[f"dense.{i}"] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def evict(path: Path) -> None:
    """Drop ``path``'s (clean, fsynced) pages from the page cache; a dir: every file."""
    for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def numpy_save_fsync(path: Path, flat: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, flat)
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Callable[..., object], *args, **kw) -> float:
    t0 = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t0


def one_rep(work: Path, rep: int, arrays: dict[str, np.ndarray], flat: np.ndarray,
            times: dict[str, list[float]], workers: int) -> dict[str, int]:
    """Save both ways, load both ways (warm, then cold); return the on-disk sizes.
    Odd reps run numpy first (the machine's state drifts as files are written)."""
    ck, npf = work / f"ck{rep}", work / f"flat{rep}.npy"

    def save_ck() -> None:
        times["save_checkpoint"].append(timed(save, ck, arrays, {"rep": rep}, workers=workers))

    def load_ck(tag: str) -> None:
        if tag == "warm":
            read_rank(ck, 0, verify=False)  # untimed: page cache and process memory warm
        for verify in (True, False):
            if tag == "cold":
                evict(ck)
            key = f"load_checkpoint_{tag}" + ("" if verify else "_noverify")
            times[key].append(timed(read_rank, ck, 0, verify=verify, workers=workers))

    def save_np() -> None:
        times["save_numpy"].append(timed(numpy_save_fsync, npf, flat))

    def load_np(tag: str) -> None:
        if tag == "cold":
            evict(npf)
        else:
            np.load(npf)  # untimed warm-up
        times[f"load_numpy_{tag}"].append(timed(np.load, npf))

    first, second = ((save_ck, load_ck), (save_np, load_np))[::1 if rep % 2 == 0 else -1]
    first[0]()
    second[0]()
    for tag in ("warm", "cold"):
        first[1](tag)
        second[1](tag)
    ck_files = [p for p in ck.rglob("*") if p.is_file()]
    sizes = {"checkpoint_bytes": sum(p.stat().st_size for p in ck_files),
             "checkpoint_files": len(ck_files), "numpy_file_bytes": npf.stat().st_size}
    shutil.rmtree(ck)
    npf.unlink()
    return sizes


def run(tables: int, rows: int, dim: int, reps: int, base: str | None, workers: int) -> dict:
    arrays = model(tables, rows, dim)
    payload = sum(a.nbytes for a in arrays.values())
    flat = np.concatenate([a.reshape(-1) for a in arrays.values()])  # same bytes, one array
    times: dict[str, list[float]] = {k: [] for k in (
        "save_checkpoint", "save_numpy", "load_checkpoint_warm", "load_checkpoint_warm_noverify",
        "load_numpy_warm", "load_checkpoint_cold", "load_checkpoint_cold_noverify",
        "load_numpy_cold")}
    work = Path(tempfile.mkdtemp(prefix="bench_checkpoint.", dir=base))
    try:
        for rep in range(reps):
            sizes = one_rep(work, rep, arrays, flat, times, workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    return {
        "model": {"tables": tables, "rows": rows, "dim": dim, "accumulator": "float32 per row",
                  "dense_params": len(DENSE)}, "ranks": 1, "checkpoint_workers": workers,
        "payload_bytes": payload, **sizes, "reps": reps, "seconds_median": med,
        "save_GBps": {k: round(payload / med[f"save_{k}"] / 1e9, 3)
                      for k in ("checkpoint", "numpy")},
        "save_ratio_checkpoint_over_numpy": round(med["save_checkpoint"] / med["save_numpy"], 3),
        "note": "both writers fsync before the clock stops; the checkpoint also sha256-hashes "
                "every byte, renames each file into place with a directory fsync, and writes "
                "a manifest. warm = files in the page cache; cold = after "
                "posix_fadvise(DONTNEED). checkpoint loads verify sha256 unless _noverify.",
    }


def trainer_resume(rows: int, base: str | None) -> dict:
    """Save and resume figures of the real trainer (see the module docstring)."""
    from recs_core.data.synth import generate
    from recs_core.train.job import Job

    work = Path(tempfile.mkdtemp(prefix="bench_checkpoint_resume.", dir=base))
    try:
        data = work / "window.txt"
        generate(data, rows, seed=1)
        job = Job.from_config(CONFIG)
        steps = -(-rows // job.spec.batch_size)
        every = max(1, steps // 2)
        out = job.run([data], hook=job.checkpoint_hook(work / "ck", every, keep=None))
        periodic = job.checkpoint_figures["save_seconds"]
        t0 = time.perf_counter()
        final = job.save_step(work / "ck")
        save_s = time.perf_counter() - t0
        step_ms = out["step"]["wall_ms"]
        del job
        mid = work / "ck" / f"step-{every:09d}"
        evict(mid)
        t0 = time.perf_counter()
        resumed = Job.from_config(CONFIG)
        build_s = time.perf_counter() - t0
        resumed.resume(mid)
        again = resumed.run([data])
        fig = again["checkpoint"]
        same = ({e.path: e.sha256 for e in load_manifest(resumed.save_step(work / "again")).files}
                == {e.path: e.sha256 for e in load_manifest(final).files})
        size = sum(p.stat().st_size for p in Path(final).rglob("*") if p.is_file())
        overhead = fig["load_seconds"] + fig["skip_seconds"]
        return {
            "config": "configs/criteo_dlrm.toml", "ranks": 1, "rows": rows, "steps": steps,
            "checkpoint_bytes": size, "checkpoint_files": len(load_manifest(final).files),
            "save_seconds_final": round(save_s, 3),
            "save_seconds_periodic": round(periodic, 3),
            "resumed_at_step": fig["resumed_at_step"],
            "job_build_seconds": round(build_s, 3),
            "load_seconds_cold": fig["load_seconds"], "skip_seconds": fig["skip_seconds"],
            "resume_overhead_seconds": round(overhead, 3),
            "step_wall_ms_median": step_ms,
            "resume_overhead_in_steps": round(overhead / (step_ms / 1e3), 1) if step_ms else None,
            "bit_identical": same,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="runs per figure (median; default 3)")
    ap.add_argument("--tables", type=int, default=47)
    ap.add_argument("--rows", type=int, default=1 << 18)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--workers", type=int, default=WORKERS,
                    help=f"checkpoint files written / read at once (default {WORKERS})")
    ap.add_argument("--dir", default=None, help="where the temp dir goes (default: $TMPDIR "
                                                "or /tmp)")
    ap.add_argument("--resume-rows", type=int, default=200_000,
                    help="synthetic rows of the trainer's save / resume run (0: skip it)")
    a = ap.parse_args(argv)
    if a.reps < 1:
        ap.error("--reps must be >= 1")
    out = run(a.tables, a.rows, a.dim, a.reps, a.dir, a.workers)
    if a.resume_rows > 0:
        out["trainer"] = trainer_resume(a.resume_rows, a.dir)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
