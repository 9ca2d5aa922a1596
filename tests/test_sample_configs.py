"""configs/avazu.toml and configs/movielens.toml on the real samples (row counts against
Python's csv module, training on 1 and 2 ranks), and every bad text input of issue 16
as a one-line error (rc 2, no traceback) or a counted skip."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tomllib

from tests.conftest import CONFIGS, SAMPLES, run_mpi
from tests.test_cli import last_json, recs
from tests.test_sources import zst

AVAZU = SAMPLES / "avazu" / "train.csv"
ML = SAMPLES / "ml100k" / "ratings_train.inter"


def csv_rows(path: Path, delimiter: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_samples_read_fully() -> None:
    """The independent counts the tests below compare with."""
    av, ml = csv_rows(AVAZU, ","), csv_rows(ML, "\t")
    assert len(av) == 8087 and sum(r["click"] == "1" for r in av) == 1397
    assert len(ml) == 79999 and sum(float(r["rating:float"]) >= 4 for r in ml) == 27507 + 16565


@pytest.mark.parametrize("config,data,rows", [("avazu.toml", AVAZU, 8087),
                                              ("movielens.toml", ML, 79999)])
def test_features_on_the_samples(config: str, data: Path, rows: int) -> None:
    r = recs("features", "--config", str(CONFIGS / config), "--data", str(data), "--quiet")
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["rows"] == out["lines"] == rows and out["bad_rows"] == {}
    assert out["warnings"] == []
    r = recs("spec", str(CONFIGS / config))
    assert r.returncode == 0 and "header" in r.stdout


@pytest.mark.parametrize("config,data", [("avazu.toml", AVAZU), ("movielens.toml", ML)])
def test_train_on_the_samples(config: str, data: Path) -> None:
    r = recs("train", "--config", str(CONFIGS / config), "--data", str(data),
             "--eval-fraction", "0.2", "--quiet", timeout=300)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["train_rows"] + out["eval_rows"] == len(csv_rows(data, "," if data == AVAZU
                                                                 else "\t"))
    assert out["eval_auc"] > 0.6 and out["progressive_auc"] > 0.55, out


@pytest.mark.mpi
@pytest.mark.parametrize("config,data,rows", [("avazu.toml", AVAZU, 8087),
                                              ("movielens.toml", ML, 79999)])
def test_two_ranks_on_the_samples(config: str, data: Path, rows: int) -> None:
    cfg = str(CONFIGS / config)
    r = run_mpi(2, ["-m", "recs_core", "features", "--config", cfg, "--data", str(data),
                    "--quiet"])
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["rows"] == rows
    r = run_mpi(2, ["-m", "recs_core", "train", "--config", cfg, "--data", str(data),
                    "--eval-fraction", "0.2", "--quiet"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["world_size"] == 2 and out["train_rows"] + out["eval_rows"] == rows
    assert out["eval_auc"] > 0.6, out


# the figures of a pass that depend on every row and its order (not on timing)
SAME = ("rows", "train_rows", "eval_rows", "train_logloss", "progressive_auc", "bad_rows",
        "window_steps", "global_step")


@pytest.mark.parametrize("config,data,rows", [("avazu.toml", AVAZU, 8087),
                                              ("movielens.toml", ML, 10_000)])
def test_compressed_samples_with_headers_read_like_the_plain_files(
        tmp_path: Path, config: str, data: Path, rows: int) -> None:
    """.gz and .zst copies of a sample (a header line; Avazu's CSV layout, MovieLens' TSV
    with a label rule) in every command: `train` gives the plain file's figures (one
    rank, no hold-out: the same rows in the same order), `features` its counts,
    `predict` its scores file byte for byte, `convert` its Parquet table."""
    cfg = str(CONFIGS / config)
    lines = data.read_bytes().splitlines(keepends=True)[:rows + 1]
    plain = tmp_path / data.name
    plain.write_bytes(b"".join(lines))
    files = {".zst": zst(plain.read_bytes(), 2), ".gz": gzip.compress(plain.read_bytes())}
    for suffix, content in files.items():
        (tmp_path / (data.name + suffix)).write_bytes(content)

    def run_all(path: Path, tag: str) -> tuple[dict, dict, bytes, object]:
        model = tmp_path / "model"
        r = recs("train", "--config", cfg, "--data", str(path), "--quiet",
                 *(("--save", str(model)) if tag == "plain" else ()), timeout=300)
        assert r.returncode == 0, (tag, r.stderr)
        trained = last_json(r.stdout)
        r = recs("features", "--config", cfg, "--data", str(path), "--quiet")
        assert r.returncode == 0, (tag, r.stderr)
        feats = last_json(r.stdout)
        scores = tmp_path / f"scores-{tag}.csv"
        r = recs("predict", "--config", cfg, "--model", str(model), "--data", str(path),
                 "--out", str(scores))
        assert r.returncode == 0, (tag, r.stderr)
        table = tmp_path / f"{tag}.parquet"
        r = recs("convert", cfg, str(path), "-o", str(table))
        assert r.returncode == 0, (tag, r.stderr)
        return trained, feats, scores.read_bytes(), pq.read_table(table)

    want = run_all(plain, "plain")
    assert want[0]["rows"] == want[1]["rows"] == rows and want[0]["bad_rows"] == {}
    for suffix in files:
        got = run_all(tmp_path / (data.name + suffix), suffix[1:])
        assert {k: got[0][k] for k in SAME} == {k: want[0][k] for k in SAME}, suffix
        assert len(got[0]["decompression"]["decompressed_mb"]) == 1
        assert {k: got[1][k] for k in ("rows", "lines", "bad_rows")} == {
            k: want[1][k] for k in ("rows", "lines", "bad_rows")}
        assert got[2] == want[2] and got[3].equals(want[3]), suffix


# ---- bad input ---------------------------------------------------------------------------

def avazu_copy(tmp_path: Path, name: str = "a.csv", header=None, edit=None) -> Path:
    lines = AVAZU.read_text().splitlines(keepends=True)
    if header is not None:
        lines[0] = header(lines[0])
    if edit is not None:
        edit(lines)
    p = tmp_path / name
    p.write_text("".join(lines))
    return p


def one_line_error(r, *parts: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("recs: error: ")]
    assert len(err) == 1 and all(p in err[0] for p in parts), r.stderr


def features(cfg: Path | str, *data: Path, flags: tuple[str, ...] = ()):
    return recs("features", "--config", str(cfg), "--data", *map(str, data), "--quiet", *flags)


def test_header_lacking_a_column(tmp_path: Path) -> None:
    p = avazu_copy(tmp_path, header=lambda h: h.replace("site_id", "site"))
    one_line_error(features(CONFIGS / "avazu.toml", p),
                   f"{p}: the header lacks column 'site_id'")


def test_files_with_different_headers(tmp_path: Path) -> None:
    p = avazu_copy(tmp_path, "b.csv", header=lambda h: h.replace("id,click", "click,id"))
    one_line_error(features(CONFIGS / "avazu.toml", AVAZU, p),
                   f"{p}: its header differs from {AVAZU}'s: column 1 is 'click' here")


def test_unterminated_quote_and_ragged_row(tmp_path: Path) -> None:
    def edit(lines: list[str]) -> None:
        lines[10] = lines[10].replace(",1fbe01fe,", ',"1fbe01fe,', 1)
        lines[20] = lines[20].rstrip("\n") + ",extra\n"
    p = avazu_copy(tmp_path, edit=edit)
    assert ',"1fbe01fe,' in p.read_text()
    r = features(CONFIGS / "avazu.toml", p)
    assert r.returncode == 0, r.stderr
    out = last_json(r.stdout)
    assert out["rows"] == 8085 and out["bad_rows"] == {"field_count": 1,
                                                       "unterminated_quote": 1}
    one_line_error(features(CONFIGS / "avazu.toml", p, flags=("--on-error", "fail")),
                   f"{p}:11: unterminated_quote in column site_id")


def test_header_only_file_is_said_plainly(tmp_path: Path) -> None:
    p = avazu_copy(tmp_path, "h.csv", edit=lambda lines: lines.__delitem__(slice(1, None)))
    r = features(CONFIGS / "avazu.toml", p)
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["rows"] == 0
    assert f"recs: warning: {p}: a header line and no rows (0 rows read)" in r.stderr


def movielens(tmp_path: Path, label: str) -> Path:
    text = (CONFIGS / "movielens.toml").read_text()
    data = tomllib.loads(text)
    assert data["input"]["label"] == "rating >= 4"
    p = tmp_path / "ml.toml"
    p.write_text(text.replace('label = "rating >= 4"', f"label = {json.dumps(label)}"))
    return p


def test_label_rule_on_a_non_numeric_column(tmp_path: Path) -> None:
    cfg = movielens(tmp_path, "user_id >= 4")
    one_line_error(features(cfg, ML), "input.label: the rule 'user_id >= 4' needs a numeric "
                   "column; 'user_id' has type str")


def test_nulls_in_the_label(tmp_path: Path) -> None:
    lines = ML.read_text().splitlines(keepends=True)
    fields = lines[5].split("\t")
    lines[5] = "\t".join([fields[0], fields[1], "", fields[3]])
    p = tmp_path / "ml.inter"
    p.write_text("".join(lines))
    r = features(CONFIGS / "movielens.toml", p)
    assert r.returncode == 0 and last_json(r.stdout)["bad_rows"] == {"missing_label": 1}
    one_line_error(features(CONFIGS / "movielens.toml", p, flags=("--on-error", "fail")),
                   f"{p}:6: missing_label in column rating:float")
