"""Windows are never silently skipped or retrained: ``--init-from`` a periodic checkpoint
of an unfinished window, and training the files the loaded checkpoint's finished window
already trained, are each refused with one line whose advice works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recs_core.cli import main
from recs_core.errors import RecsError
from recs_core.train.job import Job
from tests.conftest import CONFIGS, small_test_spec


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    c = tmp_path / "c.toml"
    c.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                 .replace("buckets = 262144", "buckets = 1024")
                 .replace("batch_size = 2048", "batch_size = 256"))
    return c


def last_json(capsys) -> dict:  # noqa: ANN001
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def one_error(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_init_from_an_unfinished_window_is_refused_and_the_advice_works(
        two_windows: tuple[Path, Path], cfg: Path, tmp_path: Path, capsys) -> None:
    """7909061 loaded step 4 of a 5-step window without a word and trained the next
    window: the window's last step was never trained, rc 0."""
    w1, w2 = two_windows
    args = ["train", "--config", str(cfg), "--quiet"]
    ref = tmp_path / "ref"
    assert main(args + ["--data", str(w1), "--save", str(ref)]) == 0  # uninterrupted
    want = last_json(capsys)
    root = tmp_path / "r"
    assert main(args + ["--data", str(w1), "--save", str(root), "--checkpoint-every", "4"]) == 0
    capsys.readouterr()
    (root / "step-000000005").rename(tmp_path / "final-moved-away")  # the job was killed
    code = main(args + ["--data", str(w2), "--init-from", str(root), "--save",
                        str(tmp_path / "next")])
    err = one_error(capsys)
    assert code == 2
    assert err.startswith(f"recs: error: --init-from {root / 'step-000000004'}: a periodic "
                          "checkpoint of a window that did not finish (4 of its steps "
                          "trained, the rest never)")
    assert f"--data {w1} --resume {root}` (any number of ranks)" in err
    assert not (tmp_path / "next").exists() or not any((tmp_path / "next").iterdir())
    # the advice: resume the window, which ends as the uninterrupted run did
    assert main(args + ["--data", str(w1), "--resume", str(root)]) == 0
    got = last_json(capsys)
    assert got["checkpoint"]["resumed_at_step"] == 4
    assert {k: got[k] for k in ("train_rows", "progressive_auc", "global_step")} == {
        k: want[k] for k in ("train_rows", "progressive_auc", "global_step")}
    # or accept the loss explicitly
    (root / "step-000000005").rename(tmp_path / "again-moved-away")
    assert main(args + ["--data", str(w2), "--init-from", str(root), "--accept-unfinished"]) == 0
    assert last_json(capsys)["global_step"] == 4 + want["window_steps"]


def test_the_same_window_again_from_its_own_checkpoint_is_refused(
        two_windows: tuple[Path, Path], cfg: Path, tmp_path: Path, capsys) -> None:
    """7909061 trained a retried window a second time from the checkpoint that had already
    trained exactly its files: rc 0, its rows counted twice."""
    w1, w2 = two_windows
    args = ["train", "--config", str(cfg), "--quiet"]
    assert main(args + ["--data", str(w1), "--save", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    code = main(args + ["--data", str(w1), "--init-from", str(tmp_path / "a"), "--save",
                        str(tmp_path / "b")])
    err = one_error(capsys)
    assert code == 2 and "its window already trained exactly these files" in err
    assert f"--data {w1}, same sizes" in err and "add --retrain" in err
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("step-*"))
    # the next window is fine; so is the same one when asked for
    assert main(args + ["--data", str(w2), "--init-from", str(tmp_path / "a")]) == 0
    assert main(args + ["--data", str(w1), "--init-from", str(tmp_path / "a"), "--retrain"]) == 0


def test_the_library_refuses_the_same_cases(two_windows: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    w1, _ = two_windows
    job = Job(small_test_spec())
    job.run([w1], hook=job.checkpoint_hook(tmp_path / "p", 5))
    job.save_step(tmp_path / "done")
    with pytest.raises(RecsError, match="a periodic checkpoint of a window that did not"):
        Job(small_test_spec()).load(tmp_path / "p")
    Job(small_test_spec()).load(tmp_path / "p", unfinished=True)
    again = Job(small_test_spec())
    again.load(tmp_path / "done")
    with pytest.raises(RecsError, match="already trained exactly these files"):
        again.run([w1])
    again.run([w1], retrain=True)


@pytest.mark.parametrize("cap", [None, 100])
@pytest.mark.parametrize("baseline", ["start", "other"])
def test_compare_with_scores_held_out_and_guard_rows_with_another_model(
        two_windows: tuple[Path, Path], cfg: Path, tmp_path: Path, capsys, monkeypatch,
        baseline: str, cap: int | None) -> None:
    """--compare-with: the held-out (and --compare-data guard) rows scored by the baseline
    equal what that model alone gives them, and the trained model's figures on the same
    rows what it alone gives them; the baseline is the checkpoint the window started from
    (scored before the pass) or another one (loaded beside). With more held-out rows than
    COMPARED_ROWS, both models are compared on the first ones (of both sets); the trained
    model's eval figures still cover all held-out rows."""
    from recs_core.metrics.auc import auc, logloss
    from recs_core.train import comparison

    if cap is not None:
        monkeypatch.setattr(comparison, "COMPARED_ROWS", cap)
    w1, w2 = two_windows
    args = ["train", "--config", str(cfg), "--quiet"]
    assert main(args + ["--data", str(w1), "--save", str(tmp_path / "a"),
                        "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    base = (tmp_path / "a" if baseline == "start" else
            tmp_path / "a" / "step-000000002")
    assert main(args + ["--data", str(w2), "--init-from", str(tmp_path / "a"),
                        "--eval-fraction", "0.2", "--compare-with", str(base),
                        "--compare-data", str(w1), "--save", str(tmp_path / "b")]) == 0
    got = last_json(capsys)
    assert got["finite"] is True

    def scored(path: Path | str, data: Path, rows: int | None) -> tuple:
        ref = Job.from_config(cfg)
        ref.load(path, unfinished=True)
        held = ref.open_reader([data], 0.2).held_out()
        y, p, _, _ = ref._evaluate(held if rows is None else comparison.capped(held, rows))
        return y, p

    def figures(yp: tuple) -> tuple[float, float]:
        return round(auc(*yp), 6), round(logloss(*yp), 6)

    ey, gy = scored(base, w2, cap), scored(base, w1, cap)
    b = got["baseline"]
    assert b["rows"] == len(ey[0]) == (cap or got["eval_rows"])
    assert (b["eval_auc"], b["eval_logloss"]) == figures(ey)
    trained = got["saved"]
    assert (b["trained_auc"], b["trained_logloss"]) == figures(scored(trained, w2, cap))
    assert (got["eval_auc"], got["eval_logloss"]) == figures(scored(trained, w2, None))
    assert b["guard"]["rows"] == len(gy[0]) > 0
    assert (b["guard"]["baseline_auc"], b["guard"]["baseline_logloss"]) == figures(gy)
    assert (b["guard"]["auc"], b["guard"]["logloss"]) == figures(scored(trained, w1, cap))
    assert got["eval_logloss"] != b["eval_logloss"]
    assert b["guard"]["logloss"] != b["guard"]["baseline_logloss"]


def test_a_failed_train_ends_stdout_with_an_error_json(two_windows, cfg: Path, tmp_path: Path,
                                                      capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("x\ty\n" * 200)
    code = main(["train", "--config", str(cfg), "--quiet", "--data", str(bad)])
    assert code == 2
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["data_error"] is True and out["reason"] == "too_many_bad_lines"
    assert out["error"].startswith("too many bad lines")
