"""Checkpoint store: round trips, atomicity under a simulated crash, detection of
corrupt / truncated / missing files, meta checks, pruning, multi-rank saves under
mpiexec, resharding row-wise tables to other world sizes, and delta export / apply."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint import (
    apply_delta,
    export_delta,
    files,
    latest_complete,
    load_manifest,
    prune,
    read_all,
    read_delta,
    read_rank,
    reshard_rows,
    rows_changed,
    save,
    save_step,
    step_path,
)
from recs_core.embedding.sharded import owners
from recs_core.embedding.table import init_table
from recs_core.errors import RecsError
from tests.conftest import ROOT, run_mpi

CHECK = str(ROOT / "tests" / "mpi" / "checkpoint_check.py")
META = {"feature_spec": "[[pipeline]] ...", "hash_version": 2, "model": {"dim": 4},
        "step": 3}


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"emb.ids": np.array([9, 2, 5], dtype=np.int64),
            "emb.values": rng.standard_normal((3, 4)).astype(np.float32),
            "emb.acc": rng.random(3).astype(np.float32),
            "dense.w": np.asfortranarray(rng.standard_normal((5, 2))),
            "empty": np.zeros((0, 4), dtype=np.float32),
            "scalar": np.array(7, dtype=np.int32)}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def shard_file(path: str, name: str) -> Path:
    return Path(path) / "rank00000-of-00001" / f"{name}.npy"


# --- round trip and manifest ---------------------------------------------------------


def test_save_and_read_back(tmp_path: Path) -> None:
    arrays = sample_arrays()
    path = save(tmp_path / "ck", arrays, META, rank_meta={"position": [3, 1200]})
    assert_same(read_rank(path, 0), arrays)
    assert_same(read_rank(path, 0, verify=False), arrays)
    assert_same(read_rank(path, 0, workers=1), arrays)
    assert_same(read_all(path)[0], arrays)
    assert np.array_equal(np.load(shard_file(path, "emb.values")), arrays["emb.values"])
    m = load_manifest(path, full=True)
    assert (m.format, m.kind, m.world_size, m.meta) == (1, "checkpoint", 1, META)
    assert m.rank_meta == [{"position": [3, 1200]}]
    for e in m.files:
        data = (Path(path) / e.path).read_bytes()
        assert e.bytes == len(data) and e.sha256 == hashlib.sha256(data).hexdigest()
        assert (e.shape, e.dtype) == (arrays[e.name].shape, arrays[e.name].dtype.str)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no staging left
    assert not list(Path(path).rglob(".*"))  # no temp files left


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(RecsError, match="checkpoint meta"):
        save(tmp_path / "ck", {}, {"bad": object()})
    assert latest_complete(tmp_path) is None
    ok = save(tmp_path / "ck", {}, {"n": np.int64(3), "t": (1, 2), "a": np.ones(2)})
    assert load_manifest(ok).meta == {"n": 3, "t": [1, 2], "a": [1.0, 1.0]}


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "sp ace"])
def test_bad_array_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RecsError, match="checkpoint array name"):
        save(tmp_path / "ck", {name: np.ones(2)}, {})


def test_check_meta_names_the_key(tmp_path: Path) -> None:
    m = load_manifest(save(tmp_path / "ck", {}, META))
    m.check_meta({"hash_version": 2, "feature_spec": "[[pipeline]] ...", "model": {"dim": 4}})
    with pytest.raises(RecsError, match="'hash_version' differs.*has 2, this job has 3"):
        m.check_meta({"hash_version": 3})
    with pytest.raises(RecsError, match="'feature_spec' differs"):
        m.check_meta({"feature_spec": "x" * 500})
    with pytest.raises(RecsError, match="no 'vocab'"):
        m.check_meta({"vocab": 1})


# --- atomicity -------------------------------------------------------------------------


def crash_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Make the ``calls``-th file write from now on (an array's or the manifest's) raise
    (a simulated crash)."""
    seen = []

    def flaky(real):  # noqa: ANN001, ANN202
        def write(path, chunks):  # noqa: ANN001, ANN202
            seen.append(path)
            if len(seen) == calls:
                raise OSError("simulated crash")
            return real(path, chunks)
        return write

    monkeypatch.setattr(files, "atomic_write", flaky(files.atomic_write))
    monkeypatch.setattr(files, "staged_write", flaky(files.staged_write))


@pytest.mark.parametrize("calls", [1, 3, 7])  # first file, mid-shard, the manifest
def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path: Path, calls: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = save_step(tmp_path, 1, sample_arrays(1), META)
    crash_after(monkeypatch, calls)
    with pytest.raises(RecsError, match="step-000000002 not saved: rank 0: simulated crash"):
        save_step(tmp_path, 2, sample_arrays(2), META)
    monkeypatch.undo()
    # the failed save removed its staging directory: only the previous checkpoint is left
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001"]
    assert latest_complete(tmp_path) == first
    assert_same(read_rank(first, 0), sample_arrays(1))
    assert prune(tmp_path, keep=1) == []


def test_crash_mid_file_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(arr):
        yield files.npy_header(arr)
        raise OSError("disk full")

    monkeypatch.setattr(files, "npy_chunks", broken)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(tmp_path / "x.npy", files.npy_chunks(np.ones(3)))
    assert list(tmp_path.iterdir()) == []  # neither x.npy nor its temp file
    with pytest.raises(RecsError, match="ck not saved: rank 0: disk full"):
        save(tmp_path / "ck", {"x": np.ones(3)}, {})
    assert list(tmp_path.iterdir()) == []  # nor the staging directory


@pytest.mark.parametrize("exchange", [True, False])
def test_saving_a_step_again_replaces_it(tmp_path: Path, exchange: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    save_step(tmp_path, 5, sample_arrays(1), META)
    path = save_step(tmp_path, 5, sample_arrays(2), dict(META, step=5))
    assert_same(read_rank(path, 0), sample_arrays(2))
    assert load_manifest(path).meta["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000005"]
    crash_after(monkeypatch, 2)  # a crash while writing it a third time
    with pytest.raises(RecsError):
        save_step(tmp_path, 5, sample_arrays(3), META)
    assert latest_complete(tmp_path) == path
    assert_same(read_rank(path, 0), sample_arrays(2))


# --- latest / prune ----------------------------------------------------------------------


def test_latest_complete_and_prune(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "nothing") is None
    assert latest_complete(tmp_path) is None
    for step in (1, 2, 10, 3):
        save_step(tmp_path, step, sample_arrays(step), dict(META, step=step))
    assert latest_complete(tmp_path) == str(step_path(tmp_path, 10))
    # newer but broken: no manifest at all, and a manifest whose file is missing
    (step_path(tmp_path, 12) / "rank00000-of-00001").mkdir(parents=True)
    broken = save_step(tmp_path, 11, sample_arrays(), META)
    shard_file(broken, "emb.acc").unlink()
    assert latest_complete(tmp_path) == str(step_path(tmp_path, 10))
    save_step(tmp_path, 20, sample_arrays(), META, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["step-000000010", "step-000000011", "step-000000012", "step-000000020"]
    assert latest_complete(tmp_path) == str(step_path(tmp_path, 20))
    with pytest.raises(ValueError):
        prune(tmp_path, 0)
    with pytest.raises(ValueError, match="keep >= 1"):
        save_step(tmp_path, 21, {}, {}, keep=0)
    assert latest_complete(tmp_path) == str(step_path(tmp_path, 20))


# --- verification ---------------------------------------------------------------------


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = save(tmp_path / "ck", sample_arrays(), META)
    f = shard_file(path, "emb.values")
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(RecsError, match=r"rank00000-of-00001/emb.values.npy: sha256 mismatch"):
        read_rank(path, 0)
    with pytest.raises(RecsError, match="emb.values.npy: sha256"):
        load_manifest(path, full=True)
    load_manifest(path)  # sizes still match: structural check passes


def test_truncated_and_missing_files_are_detected(tmp_path: Path) -> None:
    path = save_step(tmp_path, 1, sample_arrays(), META)
    f = shard_file(path, "emb.acc")
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(RecsError, match=r"emb.acc.npy: truncated: \d+ bytes, the manifest"):
        read_rank(path, 0)
    assert latest_complete(tmp_path) is None
    f.unlink()
    with pytest.raises(RecsError, match="emb.acc.npy: missing"):
        load_manifest(path)


def test_header_not_matching_the_manifest(tmp_path: Path) -> None:
    path = save(tmp_path / "ck", {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}, {})
    np.save(shard_file(path, "x"), np.arange(12, dtype=np.float32).reshape(4, 3))
    with pytest.raises(RecsError, match=r"x.npy: holds \(4, 3\) <f4, the manifest lists"):
        read_rank(path, 0, verify=False)
    f = shard_file(path, "x")
    f.write_bytes(b"not an npy file at all".ljust(f.stat().st_size))  # right size
    with pytest.raises(RecsError, match="x.npy: not a valid .npy file"):
        read_rank(path, 0, verify=False)


def test_wrong_world_size_and_rank(tmp_path: Path) -> None:
    path = save(tmp_path / "ck", sample_arrays(), META)
    with pytest.raises(RecsError, match="written by 1 ranks, this job has 2"):
        read_rank(path, 0, world=2)
    with pytest.raises(RecsError, match="no rank 1"):
        read_rank(path, 1)


def test_bad_manifests(tmp_path: Path) -> None:
    path = Path(save(tmp_path / "ck", sample_arrays(), META))
    good = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(RecsError, match="malformed manifest"):
        load_manifest(path)
    (path / "manifest.json").write_text(json.dumps(dict(good, format=99)))
    with pytest.raises(RecsError, match="format 99 is not supported"):
        load_manifest(path)
    good["files"][0]["path"] = "../../etc/passwd"
    (path / "manifest.json").write_text(json.dumps(good))
    with pytest.raises(RecsError, match="bad entry"):
        load_manifest(path)
    fresh = json.loads((Path(save(tmp_path / "ck2", sample_arrays(), META))
                        / "manifest.json").read_text())
    for world, rank_meta in ((10**9, [{}]), (0, []), (2, [{}])):  # a crafted world size
        (path / "manifest.json").write_text(json.dumps(dict(fresh, world_size=world,
                                                            rank_meta=rank_meta)))
        with pytest.raises(RecsError, match=rf"malformed manifest: world_size {world}, but "
                                            rf"rank_meta for {len(rank_meta)} rank"):
            load_manifest(path)


# --- multi-rank --------------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("n,placement", [(2, "row"), (3, "table"), (3, "row")])
def test_multi_rank_save_read_and_reshard(tmp_path: Path, n: int, placement: str) -> None:
    r = run_mpi(n, [CHECK, str(tmp_path / "ckpts"), placement], timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.split("\n")[:-1]) == [f"OK rank {i}" for i in range(n)]


# --- resharding --------------------------------------------------------------------------

ROWS, DIM = [50, 7, 1000], 4


def split(t: int, full: np.ndarray, acc: np.ndarray, world: int,
          placement: str) -> list[dict[str, np.ndarray]]:
    own = owners(t, np.arange(len(full)), world, placement)
    return [{"ids": (ids := np.flatnonzero(own == r)), "values": full[ids], "acc": acc[ids]}
            for r in range(world)]


@pytest.mark.parametrize("placement", ["row", "table"])
@pytest.mark.parametrize("old,new", [(2, 3), (3, 1), (1, 2), (3, 2)])
def test_reshard_rows(placement: str, old: int, new: int) -> None:
    for t, n in enumerate(ROWS):
        full = init_table(n, DIM, 1, t)
        acc = np.random.default_rng(t).random(n).astype(np.float32)
        shards = split(t, full, acc, old, placement)
        got = [reshard_rows(shards[::-1], lambda ids, t=t: owners(t, ids, new, placement), r)
               for r in range(new)]
        for g, want in zip(got, split(t, full, acc, new, placement)):
            assert_same(g, want)
        merged = reshard_rows(got, lambda ids: np.zeros(len(ids), np.int64), 0)
        assert_same(merged, {"ids": np.arange(n), "values": full, "acc": acc})


def test_reshard_refuses_inconsistent_shards() -> None:
    a = {"ids": np.array([1, 2]), "values": np.ones((2, 4), np.float32)}
    with pytest.raises(RecsError, match="held by more than one shard"):
        reshard_rows([a, a], lambda ids: np.zeros(len(ids), np.int64), 0)
    with pytest.raises(RecsError, match="shard 1 has keys"):
        reshard_rows([a, {"ids": a["ids"]}], lambda ids: np.zeros(len(ids), np.int64), 0)
    with pytest.raises(RecsError, match="one row per id"):
        reshard_rows([dict(a, values=a["values"][:1])], lambda ids: ids * 0, 0)


# --- delta export ------------------------------------------------------------------------


def model(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    tables = {f"t{t}": init_table(n, DIM, seed, t) for t, n in enumerate(ROWS)}
    rng = np.random.default_rng(seed)
    return tables, {"w": rng.standard_normal((8, 4)).astype(np.float32),
                    "b": rng.standard_normal(4)}


def test_delta_round_trip(tmp_path: Path) -> None:
    before, dense_before = model(0)
    after = {k: v.copy() for k, v in before.items()}
    rng = np.random.default_rng(1)
    for tab in after.values():
        rows = rng.choice(len(tab), size=min(20, len(tab)), replace=False)
        tab[rows[:-1]] += rng.standard_normal((len(rows) - 1, DIM)).astype(np.float32)
        tab[rows[-1]] = tab[rows[-1]]  # touched but equal: not exported
    after["t0"][3, 0] = -0.0 if before["t0"][3, 0] == 0 else 0.0
    after["t0"][4, 1] = -after["t0"][4, 1]
    dense_after = {"w": dense_before["w"] * 2, "b": dense_before["b"]}

    deltas = {}
    for name in before:
        ids = rows_changed(before[name], after[name])
        shuffled = rng.permutation(ids)  # export sorts them
        deltas[name] = (shuffled, after[name][shuffled])
    assert {3, 4} <= set(deltas["t0"][0].tolist())
    path = export_delta(tmp_path / "d1", deltas, {"w": dense_after["w"]}, {"step": 9})

    ids = np.load(Path(path) / "tables" / "t2" / "ids.npy")
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0) and len(ids) == 19
    assert np.load(Path(path) / "tables" / "t2" / "values.npy").dtype == np.float32
    assert (Path(path) / "dense" / "w.npy").exists() and (Path(path) / "manifest.json").exists()

    meta = apply_delta(before, dense_before, path)
    assert meta == {"step": 9}
    for name in after:
        assert before[name].view(np.uint32).tobytes() == after[name].view(np.uint32).tobytes()
    assert_same(dense_before, dense_after)


def test_bad_deltas_change_nothing(tmp_path: Path) -> None:
    tables, dense = model(0)
    ref = {k: v.copy() for k, v in tables.items()}
    vals = np.ones((2, DIM), np.float32)
    bad = export_delta(tmp_path / "d", {"t0": ([1, 2], vals), "zz": ([0, 1], vals)}, {}, {})
    with pytest.raises(RecsError, match="table 'zz' is not in the model"):
        apply_delta(tables, dense, bad)
    out = export_delta(tmp_path / "d2", {"t1": ([1, 7], vals)}, {}, {})
    with pytest.raises(RecsError, match="'t1'.*do not fit"):
        apply_delta(tables, dense, out)
    wrong = export_delta(tmp_path / "d3", {}, {"w": np.zeros((8, 4))}, {})
    with pytest.raises(RecsError, match="dense 'w'"):
        apply_delta(tables, dense, wrong)
    assert_same(tables, ref)
    with pytest.raises(RecsError, match="repeated row ids"):
        export_delta(tmp_path / "d4", {"t0": ([1, 1], vals)}, {}, {})
    with pytest.raises(RecsError, match="float32"):
        export_delta(tmp_path / "d4", {"t0": ([1, 2], vals.astype(np.float64))}, {}, {})
    with pytest.raises(RecsError, match="not a delta"):
        read_delta(save(tmp_path / "ck", {}, {}))
    f = Path(bad) / "tables" / "t0" / "values.npy"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    with pytest.raises(RecsError, match="t0/values.npy: sha256 mismatch"):
        read_delta(bad)
