"""The incremental job: checkpoints of the whole training state, exact resume (also after
``kill -9`` of a rank under mpiexec), loading on another number of ranks (resharding),
refusal of mismatched or corrupt checkpoints, and the delta of a window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recs_core.checkpoint import apply_delta, load_manifest, read_delta
from recs_core.cli import main
from recs_core.errors import RecsError
from recs_core.train.compat import table_stems
from recs_core.train.job import Job
from recs_core.train.merge_tools import merged_checkpoint
from tests.conftest import CONFIGS, ROOT, held_out_rows, mpiexec, run_mpi, small_test_spec

FIGURES = ("rows", "train_rows", "eval_rows", "progressive_auc", "train_logloss", "eval_auc",
           "eval_logloss", "window_steps", "global_step")


def spec(preset: str = "dlrm", buckets: int = 1 << 10, batch: int = 101, fitted: bool = True,
         optimizer: str = "adagrad", sparse: str = "adagrad"):
    """The small test spec (see tests/conftest.py), by default with a fitted standardize."""
    return small_test_spec(preset, buckets=buckets, batch=batch, fitted=fitted,
                           optimizer=optimizer, sparse=sparse)


@pytest.fixture(scope="module")
def head(two_windows: tuple[Path, Path]) -> tuple[Path, Path]:
    """Two windows of 1200 real rows each."""
    return two_windows


def hashes(ckpt: str | Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint, by path (what "bit-identical" means here)."""
    return {e.path: e.sha256 for e in load_manifest(ckpt).files}


@pytest.mark.parametrize("kind", ["dlrm", "wdl-sgd-adam"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(head, tmp_path: Path,
                                                        kind: str) -> None:
    make = ((lambda: spec()) if kind == "dlrm" else
            (lambda: spec("wdl", optimizer="adam", sparse="sgd")))
    full = Job(make())
    out = full.run([head[0]], eval_fraction=0.2, hook=full.checkpoint_hook(tmp_path / "a", 3,
                                                                            keep=10))
    final = full.save_step(tmp_path / "a")
    train = 1200 - held_out_rows(head[0], 0.2)
    n = -(-train // 101)  # global steps: the training rows in batches of 101
    steps = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert steps == [".recs-save.lock"] + [f"step-{s:09d}" for s in sorted({*range(3, n + 1, 3),
                                                                          n})]
    full.close()  # the job held its directory's lock (as --save does) until here
    assert out["window_steps"] == n and out["train_rows"] == train
    for at in (3, 9):
        job = Job(make())
        job.resume(tmp_path / "a" / f"step-{at:09d}")
        got = job.run([head[0]], eval_fraction=0.2)
        assert got["checkpoint"]["resumed_at_step"] == at
        assert len(job.step_probs) == n - at  # only the remaining steps were trained
        assert {k: got[k] for k in FIGURES} == {k: out[k] for k in FIGURES}
        assert np.array_equal(job.window.progressive.labels(), full.window.progressive.labels())
        assert np.array_equal(job.window.progressive.probs(), full.window.progressive.probs())
        again = job.save_step(tmp_path / f"b{at}")
        assert hashes(again) == hashes(final)
    m = load_manifest(final)
    assert m.meta["window"]["done"] and m.meta["step"] == n
    names = set(m.rank_files(0))
    assert {"progressive.labels", "dense.0", "emb.cat.C1.values", "emb.cat.C1.touched"} <= names
    if kind == "dlrm":
        assert {"emb.cat.C1.acc", "feat.1.3.mean", "feat.1.3.std", "dense_opt.acc.0"} <= names
    else:
        assert {"wide.cat.C1.values", "dense_opt.step", "dense_opt.m.0"} <= names
        assert "emb.cat.C1.acc" not in names  # sparse SGD keeps no state


def test_the_fitted_statistics_are_restored(head, tmp_path: Path) -> None:
    job = Job(spec())
    job.run([head[0]], hook=job.checkpoint_hook(tmp_path, 4))
    mean = next(op for f in job.spec.features for op in f.ops if op.name == "standardize").mean
    other = Job(spec())
    other.resume(tmp_path / "step-000000004")
    op = next(op for f in other.spec.features for op in f.ops if op.name == "standardize")
    assert np.array_equal(op.mean, mean)  # fitted on the first batch, not refitted


def test_resume_refuses_other_data(head, tmp_path: Path) -> None:
    job = Job(spec())
    job.run([head[0]], hook=job.checkpoint_hook(tmp_path / "a", 5))
    other = Job(spec())
    other.resume(tmp_path / "a")  # the newest complete one
    with pytest.raises(RecsError, match="same data arguments: data"):
        other.run([head[1]])
    with pytest.raises(RecsError, match="same data arguments: eval_fraction"):
        other.run([head[0]], eval_fraction=0.5)
    # same file name and size, one label changed in the steps already done
    lines = head[0].read_text().splitlines(keepends=True)
    lines[3] = ("1" if lines[3][0] == "0" else "0") + lines[3][1:]
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / head[0].name).write_text("".join(lines))
    other = Job(spec())
    other.resume(tmp_path / "a")
    point = other.window.resume_point
    point.window["data"][0][0] = str(moved / head[0].name)  # as if the file moved
    with pytest.raises(RecsError, match="the data differs from the checkpoint's"):
        other.run([moved / head[0].name])


def test_load_refuses_a_mismatched_spec_hash_or_model(head, tmp_path: Path) -> None:
    job = Job(spec())
    job.run([head[0]])
    path = job.save(tmp_path / "m")
    with pytest.raises(RecsError, match=r"feature spec differs.*'cat'.*buckets: the "
                                        r"checkpoint has 1024, this job has 2048"):
        Job(spec(buckets=2048)).load(path)
    with pytest.raises(RecsError, match="model differs from this job's: preset"):
        Job(spec("wdl")).load(path)
    with pytest.raises(RecsError, match="same config: batch_size"):
        Job(spec(batch=64)).resume(path)
    Job(spec(batch=64)).load(path)  # a new window may use another batch size
    manifest = tmp_path / "m" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["meta"]["hash"] = "recs-hash64-v0"
    manifest.write_text(json.dumps(m))
    with pytest.raises(RecsError, match="feature hash 'recs-hash64-v0'.*ids would not match"):
        Job(spec()).load(path)


def test_a_corrupt_shard_is_refused_with_one_line(head, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 256"))
    args = ["train", "--config", str(cfg), "--quiet"]
    assert main(args + ["--data", str(head[0]), "--save", str(tmp_path / "m")]) == 0
    path = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["saved"])
    victim = path / "rank00000-of-00001" / "emb.cat.C7.values.npy"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x40  # same size: only the sha256 can tell
    victim.write_bytes(bytes(data))
    code = main(args + ["--data", str(head[1]), "--init-from", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("recs: error: ") and "emb.cat.C7.values.npy: sha256 mismatch" in err[0]


def test_init_from_starts_a_new_window_and_its_delta_applies(head, tmp_path: Path) -> None:
    first = Job(spec("wdl"))
    first.run([head[0]])
    base = first.save_step(tmp_path / "m")
    job = Job(spec("wdl"))
    assert job.load(tmp_path / "m") == base
    out = job.run([head[1]], eval_fraction=0.1)
    n = -(-(1200 - held_out_rows(head[1], 0.1)) // 101)
    assert out["window_steps"] == n and out["global_step"] == 12 + n
    new = job.save_step(tmp_path / "m")
    assert new.endswith(f"step-{12 + n:09d}")
    delta = job.export_delta(tmp_path / "delta")
    tables, dense, meta = merged_checkpoint(base)
    new_tables, new_dense, _ = merged_checkpoint(new)
    changed, _, dmeta = read_delta(delta)
    assert dmeta["base_step"] == 12 and dmeta["step"] == 12 + n
    assert 0 < dmeta["rows"] < sum(len(t) for t in tables.values())
    assert "wide.cat.C1" in changed and dmeta["tables"]["emb.cross.C1xC2"] == "cross:C1xC2"
    apply_delta(tables, dense, delta)
    assert sorted(tables) == sorted(new_tables)
    for k in tables:
        assert tables[k].tobytes() == new_tables[k].tobytes(), k
    for k in dense:
        assert dense[k].tobytes() == new_dense[k].tobytes(), k


def test_cli_resume_without_a_checkpoint_starts_over(head, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 256"))
    args = ["train", "--config", str(cfg), "--data", str(head[0]), "--quiet"]
    assert main(args + ["--resume", str(tmp_path / "r"), "--checkpoint-every", "2"]) == 0
    captured = capsys.readouterr()
    assert "no complete checkpoint in" in captured.err
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["saved"].endswith("step-000000005") and out["checkpoint"]["saves"] == 3
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "step-000000002", "step-000000004", "step-000000005"]
    # resuming a finished window trains nothing and writes the same final checkpoint
    before = hashes(out["saved"])
    assert main(args + ["--resume", str(tmp_path / "r")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["checkpoint"]["resumed_at_step"] == 5 and again["train_rows"] == 1200
    assert hashes(again["saved"]) == before
    assert main(args + ["--save", str(tmp_path / "m.npz")]) == 2
    assert "not .npz files" in capsys.readouterr().err


def damaged_saves(head, tmp_path: Path, capsys, how: str) -> tuple[list[str], Path]:
    """A window saved at steps 2, 4 and 5 under tmp_path/r, step 5 then damaged ``how``;
    returns the train arguments (without --data) and the damaged checkpoint."""
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 256"))
    args = ["train", "--config", str(cfg), "--quiet"]
    assert main(args + ["--data", str(head[0]), "--save", str(tmp_path / "r"),
                        "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    newest = tmp_path / "r" / "step-000000005"
    if how == "no manifest":
        (newest / "manifest.json").unlink()
    elif how == "truncated shard":
        victim = newest / "rank00000-of-00001" / "emb.cat.C7.values.npy"
        victim.write_bytes(victim.read_bytes()[:-100])
    return args, newest


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("how", ["no manifest", "truncated shard"])
def test_resume_refuses_a_damaged_newest_checkpoint(head, tmp_path: Path, capsys,
                                                    how: str) -> None:
    """8196654 skipped a damaged step-*, resumed from the one before (or, with none,
    started over) and overwrote it, rc 0; now the job stops before training, names it and
    says to move it away; nothing in the directory changes."""
    args, newest = damaged_saves(head, tmp_path, capsys, how)
    before = files_of(tmp_path / "r")
    code = main(args + ["--data", str(head[0]), "--resume", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"recs: error: --resume {tmp_path / 'r'}: the checkpoint "
                             f"{newest} is damaged (")
    assert f"move it away (mv {newest} {newest}.damaged)" in err[0]
    assert files_of(tmp_path / "r") == before
    newest.rename(f"{newest}.damaged")  # as told: the run resumes from step 4
    assert main(args + ["--data", str(head[0]), "--resume", str(tmp_path / "r")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["checkpoint"]["resumed_at_step"] == 4 and out["saved"] == str(newest)


@pytest.mark.parametrize("how", ["no manifest", "truncated shard"])
def test_init_from_refuses_a_damaged_newest_checkpoint(head, tmp_path: Path, capsys,
                                                       how: str) -> None:
    """8196654 silently started from step 4 when step 5 was damaged; now the job stops
    and names the damaged one and the older one, which loads when named explicitly."""
    args, newest = damaged_saves(head, tmp_path, capsys, how)
    older = tmp_path / "r" / "step-000000004"
    code = main(args + ["--data", str(head[1]), "--init-from", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"recs: error: --init-from {tmp_path / 'r'}: the checkpoint "
                             f"{newest} is damaged (")
    assert f"name it (--init-from {older} --accept-unfinished: it is a periodic" in err[0]
    assert main(args + ["--data", str(head[1]), "--init-from", str(older),
                        "--accept-unfinished"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["checkpoint"]["loaded_from"] == str(older) and out["global_step"] > 4
    code = main(args + ["--data", str(head[1]), "--init-from", str(newest)])
    assert code == 2 and f"{newest}" in capsys.readouterr().err


def test_a_crafted_world_size_is_refused_at_once(head, tmp_path: Path, capsys) -> None:
    """A manifest claiming 10**9 ranks: one line before any loading (8196654 looped over
    the ranks for minutes, then a traceback)."""
    args, newest = damaged_saves(head, tmp_path, capsys, "none")
    older = tmp_path / "r" / "step-000000004"
    m = json.loads((older / "manifest.json").read_text())
    (older / "manifest.json").write_text(json.dumps(dict(m, world_size=10**9)))
    t0 = time.perf_counter()
    code = main(args + ["--data", str(head[1]), "--init-from", str(older),
                        "--accept-unfinished"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and time.perf_counter() - t0 < 30
    assert err[0] == (f"recs: error: {older / 'manifest.json'}: malformed manifest: "
                      f"world_size 1000000000, but rank_meta for 1 rank(s)")


# ---- several ranks, for real -------------------------------------------------------------

def small_config(tmp_path: Path, batch: int) -> Path:
    """The canonical config with small tables, as Wide&Deep: two sharded embedding sets
    (the deep one and the wide part's 1-dim one), both with row-wise Adagrad."""
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 4096")
                   .replace("batch_size = 2048", f"batch_size = {batch}")
                   .replace('preset = "dlrm"', 'preset = "wdl"\ndeep_mlp = [64, 32]'))
    return cfg


def train_cmd(cfg: Path, data: Path, *extra: str) -> list[str]:
    return ["-m", "recs_core", "train", "--config", str(cfg), "--data", str(data), "--quiet",
            *extra]


def last_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> dict:
    """An uninterrupted 2-rank window on synthetic data (the reference)."""
    from recs_core.data.synth import generate

    d = tmp_path_factory.mktemp("two_ranks")
    data = d / "window.txt"
    generate(data, 12_000, seed=3)
    cfg = small_config(d, 128)
    out = last_json(run_mpi(2, train_cmd(cfg, data, "--save", str(d / "ref"),
                                         "--eval-fraction", "0.1"), timeout=300))
    return {"dir": d, "data": data, "cfg": cfg, "out": out, "final": out["saved"]}


@pytest.mark.mpi
def test_a_job_killed_mid_window_resumes_bit_identical(two_rank_run: dict) -> None:
    d, ref = two_rank_run["dir"], two_rank_run["out"]
    root = d / "killed"
    cmd = train_cmd(two_rank_run["cfg"], two_rank_run["data"], "--save", str(root),
                    "--eval-fraction", "0.1", "--checkpoint-every", "30")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, *cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob("step-*/manifest.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before a rank could be killed"
        rank0 = rank_pid(str(root), 0)
        os.kill(rank0, signal.SIGKILL)  # rank 0 writes the manifests
        proc.wait(timeout=60)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(p.parent.name for p in root.glob("step-*/manifest.json"))
    assert done and done[-1] < Path(two_rank_run["final"]).name  # killed mid-window
    # continue (in another mode: every mode computes the same model)
    out = last_json(run_mpi(2, train_cmd(two_rank_run["cfg"], two_rank_run["data"],
                                         "--resume", str(root), "--eval-fraction", "0.1",
                                         "--checkpoint-every", "30", "--mode", "prefetch"),
                            timeout=300))
    assert out["checkpoint"]["resumed_at_step"] == int(done[-1].split("-")[1])
    assert {k: out[k] for k in FIGURES} == {k: ref[k] for k in FIGURES}
    assert out["train_rows"] + out["eval_rows"] == 12_000
    assert Path(out["saved"]).name == Path(two_rank_run["final"]).name
    assert hashes(out["saved"]) == hashes(two_rank_run["final"])


def rank_pid(marker: str, rank: int) -> int:
    """The pid of MPI rank ``rank`` of the job whose command line holds ``marker``."""
    found = subprocess.run(["pgrep", "-f", f"recs_core train .*{marker}"], capture_output=True,
                           text=True).stdout.split()
    for pid in map(int, found):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env or f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"rank {rank} of the job not found among {found}")


@pytest.mark.mpi
def test_checkpoints_load_on_other_world_sizes(two_rank_run: dict, head, tmp_path: Path) -> None:
    cfg, a = two_rank_run["cfg"], two_rank_run["final"]
    window = head[1]
    # 2 -> 3 ranks directly, with the window's delta
    direct = last_json(run_mpi(3, train_cmd(cfg, window, "--init-from", str(a), "--save",
                                            str(tmp_path / "b"), "--export-delta",
                                            str(tmp_path / "delta")), timeout=300))
    # the same state by another route: merged on 1 rank, saved, then loaded on 3 ranks
    one = Job.from_config(cfg)
    one.load(a)
    tables, dense, _ = merged_checkpoint(a)
    for t, stem in enumerate(table_stems(one.spec, "emb")):
        assert one.model.emb.rows_view(t).tobytes() == tables[stem].tobytes()
    merged = one.save(tmp_path / "merged")
    via = last_json(run_mpi(3, train_cmd(cfg, window, "--init-from", str(merged), "--save",
                                         str(tmp_path / "d")), timeout=300))
    assert direct["world_size"] == via["world_size"] == 3
    assert {k: direct[k] for k in FIGURES} == {k: via[k] for k in FIGURES}
    assert hashes(direct["saved"]) == hashes(via["saved"])
    # the delta turns the 2-rank checkpoint into the 3-rank one
    apply_delta(tables, dense, direct["delta"])
    new_tables, new_dense, meta = merged_checkpoint(direct["saved"])
    assert meta["step"] == two_rank_run["out"]["global_step"] + direct["window_steps"]
    assert all(tables[k].tobytes() == new_tables[k].tobytes() for k in new_tables)
    assert all(dense[k].tobytes() == new_dense[k].tobytes() for k in new_dense)
    # 3 -> 1 rank: every row, accumulator and dense value of the merged checkpoint
    back = Job.from_config(cfg)
    back.load(direct["saved"])
    one_rank = back.save(tmp_path / "one")
    for part in ("values", "acc"):
        got, got_dense, _ = merged_checkpoint(one_rank, part)
        want = merged_checkpoint(direct["saved"], part)[0]
        assert sorted(got) == sorted(want) and len(got) == 2 * 47  # emb.* and wide.*
        assert all(got[k].tobytes() == want[k].tobytes() for k in want)
        assert all(got_dense[k].tobytes() == new_dense[k].tobytes() for k in new_dense)
    three, one_r = load_manifest(direct["saved"]), load_manifest(one_rank)
    for name, e in three.rank_files(0).items():  # dense optimizer state: rank 0's
        if name.startswith("dense"):
            assert one_r.rank_files(0)[name].sha256 == e.sha256, name
    # --resume takes any world size (the rows left are dealt again: tests/test_elastic.py)
    assert Job.from_config(cfg).resume(direct["saved"]) == direct["saved"]



@pytest.mark.mpi
def test_damaged_checkpoints_are_refused_on_several_ranks(two_rank_run: dict,
                                                          tmp_path: Path) -> None:
    """Under mpiexec -n 2 and 3: --resume over a step-* without manifest, --init-from whose
    newest checkpoint lacks a shard file, and a manifest claiming 10**9 ranks each end
    every rank with the one-line error (rc != 0, no traceback, well within the limit)."""
    import shutil

    root = tmp_path / "ref"
    shutil.copytree(two_rank_run["dir"] / "ref", root)
    final = root / Path(two_rank_run["final"]).name
    older = root / "step-000000001"
    shutil.copytree(final, older)  # a complete older one the refusal must not fall back to
    (final / "manifest.json").unlink()
    cfg, data = two_rank_run["cfg"], two_rank_run["data"]
    before = sorted(p.name for p in final.rglob("*"))
    r = run_mpi(2, train_cmd(cfg, data, "--resume", str(root), "--eval-fraction", "0.1"),
                timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"--resume {root}: the checkpoint {final} is damaged" in r.stderr
    assert sorted(p.name for p in final.rglob("*")) == before  # not overwritten
    r = run_mpi(3, train_cmd(cfg, data, "--init-from", str(root)), timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"name it (--init-from {older})" in r.stderr
    m = json.loads((older / "manifest.json").read_text())
    (older / "manifest.json").write_text(json.dumps(dict(m, world_size=10**9)))
    r = run_mpi(3, train_cmd(cfg, data, "--init-from", str(older)), timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "malformed manifest: world_size 1000000000, but rank_meta for 2 rank(s)" in r.stderr


@pytest.mark.parametrize("n", [1, 2])
def test_the_next_window_starts_with_the_schedule_guards_decision(
        head: tuple[Path, Path], tmp_path: Path, n: int) -> None:
    script = str(ROOT / "tests" / "mpi" / "guard_carry_check.py")
    r = run_mpi(n, [script, str(head[0]), str(head[1]), str(tmp_path)], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("OK rank")]
    assert sorted(ln[2] for ln in lines) == [str(i) for i in range(n)], r.stdout
    assert len({ln[3] for ln in lines}) == 1, r.stdout  # one choice on every rank


def test_a_checkpoint_with_a_broken_schedule_guard_state_is_refused_in_one_line(
        head: tuple[Path, Path], tmp_path: Path) -> None:
    job = Job(spec())
    job.run([head[0]])
    saved = job.save(tmp_path / "w1")
    manifest = Path(saved) / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["meta"]["schedule_guard"] = {"choice": "fastest", "probes": []}
    manifest.write_text(json.dumps(doc))
    with pytest.raises(RecsError, match=r"meta.schedule_guard: not a schedule guard state"):
        Job(spec()).load(saved)
