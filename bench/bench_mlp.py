"""Dense-model microbenchmarks on the canonical DLRM shapes (batch 2048, docs/WORKLOAD.md).

- MLP: bottom 13→64→16 (ReLU after each) + top 1144→256→128→1 (ReLU between), forward +
  backward through ``MLP``, against exactly their GEMMs alone (same shapes, preallocated:
  per layer the forward GEMM and the two backward ones, dW = x^T dy and dx = dy W^T).
  GEMM efficiency = gemm time / layer time (1.0 = no overhead beyond BLAS; target >= 0.70).
- Interaction, n=2048, F=48, d=16, forward + backward: fused Numba kernels vs NumPy batched
  matmul + upper-triangle gather / scatter.
- The whole DLRM forward + backward (for scale).

    PYTHONPATH=. python -m pytest bench/bench_mlp.py --benchmark-only -q \\
        --benchmark-columns=median
    python bench/bench_mlp.py [--reps 30]     # one JSON line with the medians
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from recs_core.dense.interaction import (
    interact,
    interact_backward,
    interact_backward_numpy,
    interact_numpy,
)
from recs_core.dense.layers import MLP
from recs_core.dense.presets import DLRM

N = 2048
BOTTOM = [13, 64, 16]
TOP = [1144, 256, 128, 1]
F, D = 48, 16

_rng = np.random.default_rng(0)
_BOTTOM_MLP = MLP(BOTTOM, _rng, relu_last=True)
_TOP_MLP = MLP(TOP, _rng)
_DENSE = np.log1p(_rng.exponential(3.0, (N, BOTTOM[0]))).astype(np.float32)
_TOP_IN = np.maximum(_rng.standard_normal((N, TOP[0])), 0).astype(np.float32)
_DY_TOP = (_rng.standard_normal((N, 1)) / N).astype(np.float32)
_DY_BOTTOM = (_rng.standard_normal((N, BOTTOM[-1])) / N).astype(np.float32)


def mlp_step() -> None:
    """Forward + backward of the bottom and the top MLP, as the model runs them."""
    _BOTTOM_MLP.forward(_DENSE)
    _TOP_MLP.forward(_TOP_IN)
    _TOP_MLP.backward(_DY_TOP)
    _BOTTOM_MLP.backward(_DY_BOTTOM)


def _gemm_buffers(sizes: list[int]) -> list[tuple[np.ndarray, ...]]:
    out = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        out.append(tuple(_rng.standard_normal(s).astype(np.float32) for s in
                         [(N, i), (i, o), (N, o), (N, o), (i, o), (N, i)]))
    return out


_GEMMS = _gemm_buffers(BOTTOM) + _gemm_buffers(TOP)


def gemms_only() -> None:
    """The same GEMMs with nothing else: y = x W, dW = x^T dy, dx = dy W^T per layer."""
    for x, w, y, dy, dw, dx in _GEMMS:
        np.matmul(x, w, out=y)
        np.matmul(x.T, dy, out=dw)
        np.matmul(dy, w.T, out=dx)


_Z = _rng.standard_normal((N, F, D)).astype(np.float32)
_DT = (_rng.standard_normal((N, F * (F - 1) // 2)) / N).astype(np.float32)


def interaction_numba() -> None:
    interact(_Z)
    interact_backward(_Z, _DT)


def interaction_numpy() -> None:
    interact_numpy(_Z)
    interact_backward_numpy(_Z, _DT)


_DLRM = DLRM(13, F - 1, D, BOTTOM[1:], TOP[1:-1], seed=0)
_EMB = np.ascontiguousarray(_Z[:, 1:])
_DLOGITS = _DY_TOP[:, 0].copy()


def dlrm_step() -> None:
    _DLRM.forward(_DENSE, _EMB)
    _DLRM.backward(_DLOGITS)


def check() -> None:
    """The two interaction versions agree (also compiles / warms up outside the timing)."""
    np.testing.assert_allclose(interact(_Z), interact_numpy(_Z), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(interact_backward(_Z, _DT), interact_backward_numpy(_Z, _DT),
                               rtol=1e-4, atol=1e-5)
    mlp_step()
    gemms_only()
    dlrm_step()


def test_references_agree() -> None:
    check()


def test_mlp_layers(benchmark) -> None:
    check()
    benchmark.group = "mlp"
    benchmark(mlp_step)


def test_mlp_gemms_only(benchmark) -> None:
    check()
    benchmark.group = "mlp"
    benchmark(gemms_only)


def test_interaction_numba(benchmark) -> None:
    check()
    benchmark.group = "interaction"
    benchmark(interaction_numba)


def test_interaction_numpy(benchmark) -> None:
    check()
    benchmark.group = "interaction"
    benchmark(interaction_numpy)


def test_dlrm_step(benchmark) -> None:
    check()
    benchmark.group = "dlrm"
    benchmark(dlrm_step)


def _interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each fn, run round-robin so that machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    check()
    med = _interleaved({"mlp": mlp_step, "gemm": gemms_only, "inter_numba": interaction_numba,
                        "inter_numpy": interaction_numpy, "dlrm": dlrm_step}, a.reps)
    ms = {k: round(v * 1e3, 3) for k, v in med.items()}
    print(json.dumps({
        "batch": N, "reps": a.reps, "cpus": os.cpu_count(),
        "mlp_fwd_bwd_ms": ms["mlp"], "gemm_only_ms": ms["gemm"],
        "gemm_efficiency": round(med["gemm"] / med["mlp"], 3),
        "interaction_fwd_bwd_ms": {"numba": ms["inter_numba"], "numpy": ms["inter_numpy"]},
        "interaction_speedup": round(med["inter_numpy"] / med["inter_numba"], 2),
        "dlrm_fwd_bwd_ms": ms["dlrm"],
    }))


if __name__ == "__main__":
    main()
