"""Sharded embeddings across real MPI ranks equal full 1-rank tables (lookup and update)."""

from __future__ import annotations

import numpy as np
import pytest

from recs_core.embedding.sharded import ShardedTables, owners
from tests.conftest import ROOT, run_mpi


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("placement", ["row", "table"])
def test_sharded_lookup_and_update_match_one_rank(n: int, placement: str) -> None:
    r = run_mpi(n, [str(ROOT / "tests" / "mpi" / "sharded_lookup_check.py"), placement],
                timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.split("\n")[:-1]) == [f"OK rank {i}" for i in range(n)]


def test_row_placement_spreads_rows_and_partitions_them() -> None:
    world = 3
    owner = owners(5, np.arange(30000), world, "row")
    counts = np.bincount(owner, minlength=world)
    assert counts.min() > 9000  # roughly even
    parts = [ShardedTables([100], 2, 0, r, world).owned_rows(0) for r in range(world)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
