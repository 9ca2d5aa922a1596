"""Periodic checkpoints as increments: the rows changed since the last checkpoint plus the
dense state, a whole one every K; a chain reads as the whole checkpoint would, resumes
bit-identical, is pruned as a unit, and is never loaded when a link is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint import load_manifest, prune, read_rank, save_step
from recs_core.checkpoint.store import RowPatch
from recs_core.errors import RecsError
from recs_core.train.job import Job
from recs_core.train.merge_tools import merged_checkpoint
from tests.conftest import small_test_spec


def hashes(ckpt: str | Path) -> dict[str, str]:
    return {e.path: e.sha256 for e in load_manifest(ckpt).files}


def steps(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"))


@pytest.fixture(scope="module")
def runs(two_windows: tuple[Path, Path], tmp_path_factory) -> dict:
    """One window (11 steps) checkpointed every 2 steps twice: as increments (a whole one
    every 3 saves) and whole every time (the reference), and its final checkpoint."""
    d = tmp_path_factory.mktemp("increments")
    out = {}
    for name, full_every in (("inc", 3), ("full", 1)):
        job = Job(small_test_spec(dynamic=None))
        job.run([two_windows[0]], eval_fraction=0.1,
                hook=job.checkpoint_hook(d / name, 2, keep=100, full_every=full_every))
        out[name] = d / name
        out[f"{name}_final"] = job.save_step(d / f"{name}-final")
    out["window"] = two_windows[0]
    return out


def test_every_third_save_is_whole_and_the_rest_are_small(runs: dict) -> None:
    inc = steps(runs["inc"])
    assert [p.name for p in inc] == [p.name for p in steps(runs["full"])]
    bases = [load_manifest(p).base for p in inc]
    assert bases == [None, inc[0].name, inc[1].name, None, inc[3].name]
    for p, base in zip(inc, bases):
        size = sum(e.bytes for e in load_manifest(p).files)
        whole = sum(e.bytes for e in load_manifest(runs["full"] / p.name).files)
        if base is None:
            assert size == whole
        else:  # 101-row batches touch a few hundred of 26 x 1024 rows
            assert size < whole / 2, (p.name, size, whole)


def test_a_chain_reads_as_the_whole_checkpoint(runs: dict) -> None:
    for p in steps(runs["inc"]):
        got = read_rank(p, 0)
        want = read_rank(runs["full"] / p.name, 0)
        assert sorted(got) == sorted(want), p.name
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (p, k)
        tables, dense, _ = merged_checkpoint(p)
        ref_tables, ref_dense, _ = merged_checkpoint(runs["full"] / p.name)
        assert all(np.array_equal(tables[k], ref_tables[k]) for k in ref_tables)


def test_resuming_from_each_increment_is_bit_identical(runs: dict, tmp_path: Path) -> None:
    want = hashes(runs["full_final"])
    for p in steps(runs["inc"])[1:3]:  # two increments deep in a chain
        job = Job(small_test_spec(dynamic=None))
        job.resume(p)
        job.run([runs["window"]], eval_fraction=0.1)
        assert hashes(job.save_step(tmp_path / p.name)) == want, p.name


def test_a_chain_with_a_missing_link_is_never_loaded(runs: dict, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(runs["inc"], root)
    links = steps(root)
    shutil.rmtree(links[1])  # the base of links[2]
    with pytest.raises(RecsError, match="the base step-000000004 of step-000000006 is "
                                        "missing: the chain of increments is incomplete"):
        load_manifest(links[2])
    job = Job(small_test_spec(dynamic=None))
    with pytest.raises(RecsError, match="chain of increments is incomplete"):  # named
        job.resume(links[2])
    victim = next((links[3] / "rank00000-of-00001").glob("emb.cat.C1.values.npy"))
    victim.write_bytes(victim.read_bytes()[:-8])  # the whole base of the newest chain
    with pytest.raises(RecsError, match=f"{links[-1]} is damaged"):
        Job(small_test_spec(dynamic=None)).resume(root)


def test_prune_keeps_the_chains_of_the_kept_checkpoints(runs: dict, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(runs["inc"], root)
    links = steps(root)
    prune(root, 1)  # the newest (10) is an increment over 8 (whole)
    assert steps(root) == links[3:]
    prune(root, 1)
    assert steps(root) == links[3:]
    read_rank(links[-1], 0)


def test_a_patch_must_fit_its_base(tmp_path: Path) -> None:
    a = {"x": np.arange(12, dtype=np.float32).reshape(4, 3)}
    save_step(tmp_path, 1, a, {})
    with pytest.raises(RecsError, match="step-000000009: incomplete or not a checkpoint"):
        save_step(tmp_path, 10, {"x": RowPatch(np.array([1]), a["x"][1:2], 4)}, {},
                  base="step-000000009")
    patch = RowPatch(np.array([1, 3]), np.full((2, 3), 7, np.float32), 4)
    save_step(tmp_path, 2, {"x": patch}, {}, base="step-000000001")
    got = read_rank(tmp_path / "step-000000002", 0)["x"]
    assert got[1].tolist() == [7, 7, 7] and got[0].tolist() == [0, 1, 2]
    bad = RowPatch(np.array([5]), np.zeros((1, 3), np.float32), 4)
    save_step(tmp_path, 3, {"x": bad}, {}, base="step-000000002")
    with pytest.raises(RecsError, match="the patch of 'x' does not fit its base"):
        read_rank(tmp_path / "step-000000003", 0)


def test_an_increments_pack_is_checked_blob_by_blob(tmp_path: Path) -> None:
    """An increment's arrays are one file per rank; truncated, too long or corrupt, it is
    refused naming the file (and for a corrupt blob, which array), as separate files are."""
    a = {"x": np.arange(12, dtype=np.float32).reshape(4, 3), "y": np.ones(5)}
    save_step(tmp_path, 1, a, {})
    inc = {"x": RowPatch(np.array([2]), np.full((1, 3), 9, np.float32), 4), "y": np.zeros(5)}
    path = Path(save_step(tmp_path, 2, inc, {}, base="step-000000001"))
    entries = load_manifest(path).files
    pack = path / "rank00000-of-00001" / "arrays.pack"
    assert {e.path for e in entries} == {"rank00000-of-00001/arrays.pack"}
    assert min(e.offset for e in entries) == 0
    assert pack.stat().st_size == sum(e.bytes for e in entries)
    got = read_rank(path, 0)
    assert got["x"][2].tolist() == [9, 9, 9] and got["x"][1].tolist() == [3, 4, 5]
    assert got["y"].tolist() == [0] * 5
    good = pack.read_bytes()
    for damage, message in ((good[:-1], "arrays.pack: truncated"),
                            (good + b"\0", "arrays.pack: too long")):
        pack.write_bytes(damage)
        with pytest.raises(RecsError, match=message):
            load_manifest(path)
    last = max(entries, key=lambda e: e.offset)
    corrupt = bytearray(good)
    corrupt[-1] ^= 1
    pack.write_bytes(bytes(corrupt))
    load_manifest(path)  # structurally whole
    with pytest.raises(RecsError, match=f"arrays.pack \\(array {last.name}\\): sha256 mismatch"):
        read_rank(path, 0)
    first = min(entries, key=lambda e: e.offset)
    assert read_rank(path, 0, verify=False)[first.name.removesuffix(".patch-rows")] is not None
