"""recs predict reports AUC and logloss of its scores against the rows' labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv

from recs_core.cli import main
from recs_core.metrics.auc import auc, logloss
from tests.conftest import CONFIGS


def test_predict_reports_auc_and_logloss_of_labelled_rows(sample_1200: Path, tmp_path: Path,
                                                          capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text((CONFIGS / "criteo_dlrm.toml").read_text()
                   .replace("buckets = 262144", "buckets = 1024")
                   .replace("batch_size = 2048", "batch_size = 128"))
    assert main(["train", "--config", str(cfg), "--data", str(sample_1200), "--quiet",
                 "--save", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    out = tmp_path / "s.csv"
    assert main(["predict", "--config", str(cfg), "--model", str(tmp_path / "m"), "--data",
                 str(sample_1200), "--out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    probs = pcsv.read_csv(out).column("probability").to_numpy()
    labels = np.array([float(ln.split("\t", 1)[0]) for ln in sample_1200.read_text().splitlines()])
    assert got["auc"] == round(auc(labels, probs), 6)
    assert abs(got["logloss"] - logloss(labels, probs)) < 1e-6
