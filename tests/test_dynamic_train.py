"""Dynamic (hash-keyed) embedding tables in training: spec option, 1-rank training,
exact resume, reload on other world sizes, and the delta by key (see
recs_core/embedding/dynamic_store.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib

from recs_core.errors import ConfigError
from recs_core.features.spec import DYNAMIC_ID_LIMIT, DynamicSpec, parse_spec
from recs_core.train.job import Job
from recs_core.train.merge_tools import apply_dynamic_delta, merged_dynamic
from tests.conftest import CONFIGS, ROOT, held_out_rows, run_mpi, small_test_spec


def spec(preset: str = "dlrm", dynamic: dict | None = None, sparse: str = "adagrad",
         batch: int = 101, placement: str = "row"):
    """The small test spec (see tests/conftest.py); with ``dynamic`` (options; {} for the
    defaults) the ``cat`` tables are dynamic, their ids hash_bucket into 2**32."""
    return small_test_spec(preset, batch=batch, optimizer="adagrad", sparse=sparse,
                           placement=placement, dynamic=dynamic)


DYN = {"admit_after": 2, "evict_after_windows": 0, "sketch_width": 1 << 16}


@pytest.fixture(scope="module")
def windows(two_windows: tuple[Path, Path]) -> tuple[Path, Path]:
    return two_windows


def test_spec_option_and_its_errors() -> None:
    s = spec(dynamic={"admit_after": 3, "row_budget": 1000, "evict_after_windows": 2})
    table = dict(s.sparse_fields)["cat:C1"]
    assert table.dynamic == DynamicSpec(3, 1000, 2)
    assert table.fixed_rows == 0 and table.rows == 1 << 32
    assert dict(s.sparse_fields)["cross:C1xC2"].dynamic is None
    assert spec(dynamic={}).sparse_fields[0][1].dynamic == DynamicSpec()
    for bad, msg in (({"admit_afte": 2}, "unknown key"), ({"admit_after": 0}, "admit_after"),
                     ({"sketch_width": 1000}, "power of two"),
                     ({"row_budget": "x"}, "row_budget"), (5, "expected a table")):
        with pytest.raises(ConfigError, match=msg):
            spec(dynamic=bad)
    data = tomllib.loads((CONFIGS / "criteo_dlrm.toml").read_text())
    data["pipeline"][1]["feature"][0]["embedding"] = {"dim": 16, "rows": 10, "dynamic": {}}
    with pytest.raises(ConfigError, match="embedding.rows: a dynamic table"):
        parse_spec(data)
    assert DYNAMIC_ID_LIMIT == 1 << 52


def _dyn_state(job: Job, prefix: str = "emb", t: int = 0) -> dict[str, np.ndarray]:
    sets = {"emb": job.model.emb, "wide": job.model.wide}
    return sets[prefix].dynamic.arrays(t)


def test_training_admits_evicts_and_reports(windows) -> None:
    job = Job(spec(dynamic=DYN))
    out = job.run([windows[0]], eval_fraction=0.2)
    fig = out["dynamic_tables"]["emb/cat:C1"]
    assert set(fig) == {"rows", "admitted", "evicted", "bytes"}
    assert fig["admitted"] > 0 and fig["rows"] == fig["admitted"] - fig["evicted"]
    assert len(out["dynamic_tables"]) == 26 and 0.5 < out["progressive_auc"] < 1
    st = _dyn_state(job)
    assert (st["last_seen"] == 0).all() and (st["freq"] >= 2).all()
    assert np.isfinite(st["values"]).all() and (st["acc"] > 0).any()
    out2 = job.run([windows[1]])
    fig2 = out2["dynamic_tables"]["emb/cat:C1"]
    # evict_after_windows = 0: rows not seen in window 1 are gone at its end
    assert fig2["evicted"] > 0 and (_dyn_state(job)["last_seen"] == 1).all()
    assert job.model.emb.dynamic.window == 2


def test_held_out_rows_do_not_count(windows, tmp_path: Path) -> None:
    """Holding out half the rows leaves the dynamic tables exactly as training on a file
    of the other half alone (a run without the held-out rows at all); scoring reads rows
    without counting them."""
    a = Job(spec(dynamic=DYN))
    a.run([windows[0]], eval_fraction=0.5)
    before = {k: v.copy() for k, v in _dyn_state(a).items()}
    a.score([windows[1]])  # scoring again reads rows only
    after = _dyn_state(a)
    for k in before:
        assert np.array_equal(before[k], after[k]), k
    lines = windows[0].read_bytes().splitlines(keepends=True)
    train_only = tmp_path / "train_only.txt"
    train_only.write_bytes(b"".join(lines[:len(lines) - held_out_rows(windows[0], 0.5)]))
    b = Job(spec(dynamic=DYN))
    b.run([train_only])
    for prefix, t in (("emb", 0), ("emb", 5), ("emb", 25)):
        want, got = _dyn_state(b, prefix, t), _dyn_state(a, prefix, t)
        for k in ("keys", "values", "freq", "last_seen", "acc"):
            if k in want:
                assert np.array_equal(got[k], want[k]), (prefix, t, k)
    c = Job(spec(dynamic=DYN))  # the check can fail: training on every row differs
    c.run([windows[0]])
    assert not np.array_equal(_dyn_state(c)["freq"], before["freq"])


def test_row_budget_keeps_the_most_frequent(windows) -> None:
    """At the end of the window each table keeps the 5 keys of highest frequency (ties:
    the larger key), the frequencies taken from the same pass without a budget; their
    rows are that pass's rows."""
    job = Job(spec(dynamic={"row_budget": 5}))
    out = job.run([windows[0]])
    free = Job(spec(dynamic={}))
    free.run([windows[0]])
    assert all(f["rows"] <= 5 for f in out["dynamic_tables"].values())
    assert out["dynamic_tables"]["emb/cat:C3"]["evicted"] > 0
    for t in job.model.emb.dynamic.tables:
        everything, kept = _dyn_state(free, "emb", t), _dyn_state(job, "emb", t)
        order = np.lexsort((-everything["keys"], -everything["freq"]))[:5]
        top = np.sort(everything["keys"][order])
        assert kept["keys"].tolist() == top.tolist(), t
        rows = {k: v for k, v in zip(everything["keys"].tolist(), everything["values"])}
        for k, v in zip(kept["keys"].tolist(), kept["values"]):
            assert v.tobytes() == rows[k].tobytes(), (t, k)


@pytest.mark.parametrize("kind", ["dlrm", "wdl-sgd"])
def test_resume_with_a_dynamic_table_is_bit_identical(windows, tmp_path: Path,
                                                      kind: str) -> None:
    from tests.test_incremental import hashes

    def make():
        return (spec(dynamic=DYN) if kind == "dlrm"
                else spec("wdl", dynamic=DYN, sparse="sgd"))

    full = Job(make())
    full.run([windows[0]])
    full.save_step(tmp_path / "base")
    full.run([windows[1]], eval_fraction=0.2,
             hook=full.checkpoint_hook(tmp_path / "a", 4, keep=10))
    final = full.save_step(tmp_path / "a")
    names = set(__import__("recs_core.checkpoint", fromlist=["x"]).load_manifest(final)
                .rank_files(0))
    assert {"emb.cat.C1.dyn.keys", "emb.cat.C1.dyn.sketch", "emb.dyn_window"} <= names
    assert ("emb.cat.C1.dyn.acc" in names) == (kind == "dlrm")
    job = Job(make())
    job.resume(tmp_path / "a" / "step-000000016")
    job.run([windows[1]], eval_fraction=0.2)
    assert hashes(job.save_step(tmp_path / "b")) == hashes(final)


def test_delta_by_key_reproduces_the_new_rows(windows, tmp_path: Path) -> None:
    first = Job(spec("wdl", dynamic=DYN))
    first.run([windows[0]])
    base = first.save_step(tmp_path / "m")
    job = Job(spec("wdl", dynamic=DYN))
    job.load(tmp_path / "m")
    out = job.run([windows[1]])
    assert out["dynamic_tables"]["emb/cat:C1"]["evicted"] > 0
    new = job.save_step(tmp_path / "m")
    delta = job.export_delta(tmp_path / "delta")
    tables = {k: dict(zip(v["keys"].tolist(), v["values"]))
              for k, v in merged_dynamic(base).items()}
    apply_dynamic_delta(tables, delta)
    want = merged_dynamic(new)
    assert sorted(tables) == sorted(want) and "wide.cat.C1.dyn" in want
    for k, v in want.items():
        assert sorted(tables[k]) == v["keys"].tolist(), k
        got = np.array([tables[k][key] for key in v["keys"].tolist()]).reshape(v["values"].shape)
        assert got.tobytes() == v["values"].tobytes(), k
    # the fixed tables and the dense parameters still apply with apply_delta
    from recs_core.checkpoint import apply_delta
    from recs_core.train.merge_tools import merged_checkpoint
    fixed, dense, _ = merged_checkpoint(base)
    new_fixed, new_dense, _ = merged_checkpoint(new)
    apply_delta(fixed, dense, delta)
    for k in fixed:
        assert fixed[k].tobytes() == new_fixed[k].tobytes(), k


def test_two_ranks_equal_one_and_reshard(windows, tmp_path: Path) -> None:
    """mpiexec -n 2 (one world of 2 ranks): training with a dynamic table equals 1 rank; a
    2-rank checkpoint loads on 1 rank with exactly the rows the 2 ranks held live (their
    shards joined here by key), and a 1-rank one on 2."""
    from recs_core.embedding.sharded import owners

    proc = run_mpi(2, [str(ROOT / "tests" / "mpi" / "dynamic_check.py"), str(windows[0]),
                       str(windows[1]), str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = sorted(ln for ln in proc.stdout.splitlines() if ln.startswith("OK rank"))
    assert ok == ["OK rank 0 of 2", "OK rank 1 of 2"], proc.stdout
    live = [np.load(tmp_path / f"live-rank{r}.npz") for r in (0, 1)]
    job = Job(spec("wdl", dynamic=DYN))
    job.load(tmp_path / "two")
    for prefix, emb in (("emb", job.model.emb), ("wide", job.model.wide)):
        assert emb.dynamic.tables and emb.dynamic.window == 1
        for t in emb.dynamic.tables:
            parts = [{k: f[f"{prefix}.{t}.{k}"] for k in ("keys", "values", "freq",
                                                          "last_seen", "acc")} for f in live]
            for r, part in enumerate(parts):  # each rank held the keys it owns
                assert (owners(t, part["keys"], 2, "row") == r).all()
            keys = np.concatenate([p["keys"] for p in parts])
            order = np.argsort(keys, kind="stable")
            a = emb.dynamic.arrays(t)
            assert a["keys"].tolist() == keys[order].tolist(), (prefix, t)
            for k in ("values", "freq", "last_seen", "acc"):
                want = np.concatenate([p[k] for p in parts])[order]
                assert a[k].tobytes() == want.tobytes(), (prefix, t, k)


@pytest.mark.parametrize("dynamic", [None, DYN])
def test_a_jobs_next_comparison_scores_the_guard_rows_as_a_fresh_load(
        windows, tmp_path: Path, dynamic: dict | None) -> None:
    """A job's next window compared with the model it holds (a worker's) takes the guard
    rows' baseline scores from its last pass's held-out scoring; they equal a fresh job's
    that loads the saved checkpoint, also with dynamic tables, whose window end evicts rows
    after that scoring (here the second window's end: rows only the first one saw)."""
    w1, w2 = windows
    job = Job(spec(dynamic=dynamic))
    job.run([str(w1)], eval_fraction=0.2)
    second = job.run([str(w2)], eval_fraction=0.2)
    if dynamic:
        assert sum(f["evicted"] for f in second["dynamic_tables"].values()) > 0
    saved = job.save_step(tmp_path / "a")
    job.continue_from(saved)
    job.compare_with(saved, [str(w2)])
    out = job.run([str(w1)], eval_fraction=0.2)
    fresh = Job(spec(dynamic=dynamic))
    fresh.load(saved)
    fresh.compare_with(saved, [str(w2)])
    ref = fresh.run([str(w1)], eval_fraction=0.2)
    assert out["baseline"]["guard"]["rows"] > 0
    assert out["baseline"] == ref["baseline"]
    assert (out["eval_auc"], out["eval_logloss"]) == (ref["eval_auc"], ref["eval_logloss"])
