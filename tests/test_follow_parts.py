"""The parts of recs follow, each on its own: windows and their completeness, the ledger
and its pointer, published versions and their retention, the gate's decision, the
launcher template, and recs report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from recs_core.errors import RecsError
from recs_core.follow.launch import check_template, job_command
from recs_core.follow.ledger import Ledger
from recs_core.follow.publish import publish, retain, version_chain, versions
from recs_core.follow.report import rows_of, table
from recs_core.follow.supervisor import Gate, gate
from recs_core.follow.windows import Landing


def touch(p: Path, text: str = "x\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_windows_are_leaf_partitions_in_partition_order(tmp_path: Path) -> None:
    land = tmp_path / "land"
    for h in (10, 2, 9):
        touch(land / "dt=2026-12-01" / f"hour={h}" / "part-0.csv")
    touch(land / "dt=2026-12-01" / "hour=2" / "_SUCCESS", "")
    touch(land / "dt=2026-12-01" / "hour=9" / "part-1.csv.tmp")  # an upload in progress
    touch(land / "dt=2026-12-01" / "hour=9" / "_temporary" / "0" / "part-2.csv")
    touch(land / "dt=2026-12-01" / "hour=9" / ".part-0.csv.crc")
    (land / "dt=2026-12-01" / "hour=11").mkdir()  # empty: not a window
    found = Landing(str(land)).windows()
    assert [w.id for w in found] == ["dt=2026-12-01/hour=2", "dt=2026-12-01/hour=9",
                                     "dt=2026-12-01/hour=10"]
    nine = found[1]
    assert [Path(f).name for f, _, _ in nine.files] == ["part-0.csv"]
    assert nine.signature == [["part-0.csv", 2]]
    land_m = Landing(str(land))
    assert [land_m.complete(w) for w in found] == [True, False, False]


def test_without_markers_a_window_is_complete_once_it_settles(tmp_path: Path) -> None:
    land = tmp_path / "land"
    f = touch(land / "day=1" / "a.csv")
    landing = Landing(str(land), settle=30)
    (w,) = landing.windows()
    t = time.time()
    assert not landing.complete(w, now=t)
    assert not landing.complete(w, now=t + 29)
    assert landing.complete(w, now=t + 31)
    f.write_text("x\ny\n")  # it changed: the clock starts again
    (w,) = landing.windows()
    assert not landing.complete(w, now=t + 32)
    assert landing.complete(w, now=t + 63)


def test_a_glob_names_windows_and_a_gone_landing_is_one_line(tmp_path: Path) -> None:
    for d in ("2026-12-02", "2026-12-01"):
        touch(tmp_path / "logs" / d / "part.csv")
    found = Landing(str(tmp_path / "logs" / "2026-*")).windows()
    assert [w.id for w in found] == ["2026-12-01", "2026-12-02"]
    with pytest.raises(RecsError, match="no such directory"):
        Landing(str(tmp_path / "gone")).windows()


def test_the_ledger_folds_records_and_refuses_a_corrupt_line(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("w1", "running", attempt=1)
    led.append("w1", "error", error="boom")
    led.append("w1", "running", attempt=2)
    led.append("w1", "published", checkpoint="/c1", version=1)
    led.append("w2", "running", attempt=1)
    again = Ledger(tmp_path)
    states = again.windows()
    assert states["w1"].status == "published" and states["w1"].attempts == 2
    assert states["w2"].status == "running" and not states["w2"].final
    assert again.good() == {"window": "w1", "checkpoint": "/c1", "version": 1}
    # a supervisor killed while appending: its unfinished last line is dropped
    with open(tmp_path / "ledger.jsonl", "ab") as f:
        f.write(b'{"window": "w2", "sta')
    cut = Ledger(tmp_path)
    assert len(cut.records) == 5 and "unfinished last line" in cut.warnings[0]
    assert (tmp_path / "ledger.jsonl").read_bytes().endswith(b"}\n")
    # a damaged line in the middle is refused with its line number
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (tmp_path / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecsError, match=r"ledger.jsonl:3: corrupt ledger line"):
        Ledger(tmp_path)


def test_the_pointer_is_rebuilt_from_the_ledger(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("w1", "accepted", checkpoint="/c1")
    led.write_pointer()
    assert json.loads((tmp_path / "current.json").read_text())["checkpoint"] == "/c1"
    (tmp_path / "current.json").write_text("{not json")
    led = Ledger(tmp_path)
    assert led.read_pointer()["checkpoint"] == "/c1"
    assert "unreadable" in led.warnings[0]
    assert json.loads((tmp_path / "current.json").read_text())["checkpoint"] == "/c1"


def test_versions_are_numbered_atomic_and_retained_with_their_bases(tmp_path: Path) -> None:
    ck, de = touch(tmp_path / "ck" / "manifest.json", "{}").parent, \
        touch(tmp_path / "de" / "manifest.json", "{}").parent
    pub = tmp_path / "pub"
    kinds = ["full", "delta", "delta", "full", "delta", "delta"]
    for i, k in enumerate(kinds, 1):
        n = publish(pub, window=f"w{i}", step=i, checkpoint=str(ck),
                    delta=str(de) if k == "delta" else None,
                    base=i - 1 if k == "delta" else None, extra={})
        assert n == i
    assert versions(pub) == [1, 2, 3, 4, 5, 6]
    full, deltas = version_chain(pub / "6")
    assert full == pub / "4" / "model" and deltas == [pub / "5" / "delta", pub / "6" / "delta"]
    assert retain(pub, 2) == [1, 2, 3]  # 5 and 6 need 4
    assert versions(pub) == [4, 5, 6]
    (pub / ".7.partial-abc").mkdir()  # left by a killed supervisor
    retain(pub, 2)
    assert not (pub / ".7.partial-abc").exists()
    import shutil
    shutil.rmtree(pub / "4")
    with pytest.raises(RecsError, match="base version 4 is missing"):
        version_chain(pub / "6")


GOOD = {"finite": True, "eval_logloss": 0.470, "eval_auc": 0.76,
        "baseline": {"eval_logloss": 0.475, "eval_auc": 0.75,
                     "guard": {"logloss": 0.46, "auc": 0.77, "baseline_logloss": 0.465,
                               "baseline_auc": 0.765}}}


def test_the_gate_on_recorded_figures() -> None:
    assert gate(GOOD, Gate())[0]
    assert gate({**GOOD, "finite": False}, Gate()) == (False, "a parameter or the loss is "
                                                       "not finite")
    worse = {**GOOD, "eval_logloss": 0.49}
    ok, why = gate(worse, Gate())
    assert not ok and why.startswith("held-out logloss 0.49000 > 0.47500")
    assert gate(worse, Gate(logloss_margin=0.02))[0]
    shuffled = {**GOOD, "baseline": {**GOOD["baseline"], "guard": {
        "logloss": 0.52, "auc": 0.60, "baseline_logloss": 0.465, "baseline_auc": 0.765}}}
    drifted = {**GOOD, "baseline": {**GOOD["baseline"], "guard": {  # measured: 2 windows on
        "logloss": 0.530, "auc": 0.661, "baseline_logloss": 0.518, "baseline_auc": 0.687}}}
    assert gate(drifted, Gate())[0]  # a little worse on older rows: drift, not broken
    assert not gate(drifted, Gate(guard_auc_margin=0.02))[0]
    broken = {**GOOD, "eval_logloss": 0.50, "baseline": {  # measured: shuffled labels
        "eval_logloss": 0.62, "eval_auc": 0.503, "guard": {
            "logloss": 0.530, "auc": 0.67, "baseline_logloss": 0.518, "baseline_auc": 0.687}}}
    ok, why = gate(broken, Gate())
    assert not ok and why.startswith("the window's labels look broken: the last published "
                                     "model's AUC is 0.50300 on its held-out rows, 0.68700")
    ok, why = gate(shuffled, Gate())
    assert not ok and why.startswith("guard (last good window's held-out) logloss 0.52000")
    # measured, 2M-row windows: what a model learns of new rows it forgets of older ones
    followed = {"finite": True, "eval_logloss": 0.450986, "eval_auc": 0.7945, "baseline": {
        "eval_logloss": 0.490576, "eval_auc": 0.7492, "guard": {
            "logloss": 0.467861, "auc": 0.7758, "baseline_logloss": 0.44586,
            "baseline_auc": 0.8013}}}
    assert gate(followed, Gate())[0]
    ok, why = gate({**followed, "eval_logloss": 0.495}, Gate())  # learnt nothing: withheld
    assert not ok and why == ("guard (last good window's held-out) logloss 0.46786 > "
                              "0.44586 (last published) + 0.02")
    assert not gate({**GOOD, "eval_auc": 0.70}, Gate(auc_margin=0.01))[0]
    assert gate({"finite": True}, Gate())[0]  # the first window: nothing to compare with
    # the trained model is judged on the rows the baseline scored (the first
    # COMPARED_ROWS), not on all held-out rows
    capped = {**GOOD, "baseline": {**GOOD["baseline"], "trained_logloss": 0.49,
                                   "trained_auc": 0.74}}
    ok, why = gate(capped, Gate())
    assert not ok and why.startswith("held-out logloss 0.49000 > 0.47500")
    assert not gate(capped, Gate(logloss_margin=0.02, auc_margin=0.005))[0]
    assert gate({**capped, "eval_logloss": 0.49, "baseline": {
        **capped["baseline"], "trained_logloss": 0.471, "trained_auc": 0.76}}, Gate())[0]


def test_the_launcher_template() -> None:
    with pytest.raises(RecsError, match="must contain {ranks}"):
        check_template("mpiexec -n 2")
    with pytest.raises(RecsError, match="fields"):
        check_template("mpiexec -n {ranks} {oops}")
    cmd = job_command("mpiexec -f hosts -n {ranks}", 3, ["--config", "c.toml"])
    assert cmd[:5] == ["mpiexec", "-f", "hosts", "-n", "3"]
    assert cmd[-5:] == ["-m", "recs_core", "train", "--config", "c.toml"]
    assert os.path.basename(job_command("{mpi_launch} -n {ranks}", 2, [])[0]) == "mpi_launch.sh"


def test_report_table_of_a_ledger(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("w1", "running", attempt=1, ranks=2)
    led.append("w1", "preempted")
    led.append("w1", "running", attempt=1, ranks=3)
    led.append("w1", "published", rows=1000, samples_per_sec=5000.0, progressive_auc=0.7,
               eval_logloss=0.47, baseline={"eval_logloss": 0.48}, version=1,
               gate={"passed": True, "why": "within"})
    led.append("w2", "quarantined", error="too many bad lines: 90 of 100")
    rows = rows_of(tmp_path)
    assert [(r["window"], r["status"], r["preempt"], r["ranks"]) for r in rows] == [
        ("w1", "published", 1, 3), ("w2", "quarantined", 0, None)]
    text = table(rows).splitlines()
    assert text[0].split()[:3] == ["window", "status", "tries"]
    assert "too many bad lines" in text[2] and "0.4800" in text[1]
    with pytest.raises(RecsError, match="not a recs follow state directory"):
        rows_of(tmp_path / "nothing")
