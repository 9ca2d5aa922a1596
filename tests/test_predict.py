"""``recs predict`` and ``Job.score_rows``: the scores of a checkpoint's model against the
library's own (``Job.score``, and the model's forward on single rows parsed here), the
positions and ids against the input files' lines, and N ranks against 1 rank."""

from __future__ import annotations

import csv
import errno
import gzip
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import N_RANK_ATOL, assert_n_ranks_close, run_mpi
from tests.test_cli import last_json, recs, small_config
from tests.test_sources import zst

PARTS = ["dt=1/hour=9/a.txt", "dt=1/hour=10/b.gz", "dt=1/hour=10/c.zst", "dt=2/hour=0/d.txt"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_1200: Path) -> dict:
    """A model trained on the sample (config with small tables), and a window of the same
    rows with I1 replaced by the row's number (an id), in Hive partitions: plain, .gz, .zst."""
    d = tmp_path_factory.mktemp("predict")
    cfg = small_config(d)
    r = recs("train", "--config", str(cfg), "--data", str(sample_1200), "--save", str(d / "m"),
             "--mode", "sequential", "--quiet")
    assert r.returncode == 0, r.stderr
    lines = []
    for i, line in enumerate(sample_1200.read_text().splitlines()):
        f = line.split("\t")
        f[1] = str(i)
        lines.append("\t".join(f) + "\n")
    per = -(-len(lines) // len(PARTS))
    for k, rel in enumerate(PARTS):
        data = "".join(lines[k * per:(k + 1) * per]).encode()
        p = d / "w" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(gzip.compress(data) if rel.endswith(".gz") else
                      zst(data) if rel.endswith(".zst") else data)
    (d / "w" / "_SUCCESS").write_text("")
    return {"dir": d, "cfg": cfg, "model": d / "m", "window": d / "w", "lines": lines}


def read_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keys = np.array([r[0] for r in rows[1:]])
    return rows[0], keys, np.array([r[1] for r in rows[1:]], dtype=np.float32)


def predict(setup: dict, *args: str, n: int = 1, data: Path | None = None):  # noqa: ANN201
    argv = ["-m", "recs_core", "predict", "--config", str(setup["cfg"]), "--model",
            str(setup["model"]), "--data", str(data or setup["window"]), *args]
    return run_mpi(n, argv, timeout=300)


# The library's scores, in a process of its own with the threads run_mpi gives (BLAS
# threads change float32 summation order, so the reference runs under the same setting).
REFERENCE = """
import sys
import numpy as np
from recs_core.data.parse import ChunkParser
from recs_core.features.spec import load_spec
from recs_core.train.job import Job

cfg, model, out, how, *paths = sys.argv[1:]
job = Job(load_spec(cfg))
job.load(model)
if how == "score":
    np.save(out, job.score(paths))
else:  # the model's forward on each line of the file alone
    parser = ChunkParser(job.spec.schema)
    probs = []
    for line in open(paths[0], "rb"):
        row = np.frombuffer(line, np.uint8)
        probs += list(job.model.predict(job.graph.process(
            parser.parse(row, len(row), True).batch)))
    np.save(out, np.array(probs, np.float32))
"""


def reference(setup: dict, how: str, *paths: Path) -> np.ndarray:
    out = setup["dir"] / "reference.npy"
    r = run_mpi(1, ["-c", REFERENCE, str(setup["cfg"]), str(setup["model"]), str(out), how,
                    *map(str, paths)], timeout=300)
    assert r.returncode == 0, r.stderr
    return np.load(out)


def test_scores_are_job_score_in_row_order(setup: dict) -> None:
    out = setup["dir"] / "p.csv"
    r = predict(setup, "--out", str(out))
    assert r.returncode == 0, r.stderr
    figs = last_json(r.stdout)
    assert figs["rows"] == 1200 and figs["model"].endswith("step-000000012")
    header, pos, probs = read_csv(out)
    assert header == ["position", "probability"]
    assert np.array_equal(pos.astype(np.int64), np.arange(1200))
    want = reference(setup, "score", setup["window"])
    assert want.dtype == np.float32 and np.array_equal(probs, want)
    # the window's files in partition order are the sample's rows in order
    assert np.array_equal(reference(setup, "score", *(setup["window"] / p for p in PARTS)),
                          want)


def test_positions_line_up_with_the_input_rows(setup: dict, tmp_path: Path) -> None:
    """Bad lines (skipped) keep their numbers: position p is line p of the input, and its
    score is the model's forward on that line alone."""
    lines = list(setup["lines"][:300])
    bad = {0, 17, 150, 299}
    for k in bad:
        lines[k] = "1\tnot-an-int\n"
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines[:100]))
    b.write_text("".join(lines[100:]))
    out = tmp_path / "p.parquet"
    r = predict(setup, "--out", str(out), data=tmp_path)
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["bad_rows"] == {"field_count": 4}
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.column_names == ["position", "probability"]
    pos = t.column("position").to_numpy()
    assert pos.tolist() == [i for i in range(300) if i not in bad]
    some = tmp_path.parent / "some_rows.txt"  # every 7th scored row
    some.write_text("".join(lines[p] for p in pos[::7]))
    want = reference(setup, "rows", some)  # one row at a time: a few ulps off the batch's
    assert_n_ranks_close(t.column("probability").to_numpy()[::7], want, "rows alone")
    assert np.abs(np.diff(want)).max() > 100 * N_RANK_ATOL  # a shifted row would show


def test_ids_and_parquet(setup: dict) -> None:
    out = setup["dir"] / "ids.parquet"
    r = predict(setup, "--out", str(out), "--id-column", "I1")
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.column_names == ["I1", "probability"]
    assert t.column("I1").to_pylist() == list(range(1200))
    assert np.array_equal(t.column("probability").to_numpy(),
                          reference(setup, "score", setup["window"]))
    # a string id column: the values as written in the file, a missing one empty
    out = setup["dir"] / "ids.csv"
    assert predict(setup, "--out", str(out), "--id-column", "C3").returncode == 0
    header, ids, _ = read_csv(out)
    assert header == ["C3", "probability"]
    assert ids.tolist() == [line.split("\t")[16] for line in setup["lines"]]


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_several_ranks_give_the_one_rank_scores(setup: dict, n: int) -> None:
    """Every row exactly once (the ids, a checksum of the rows, in order) and the 1-rank
    scores, over a partitioned window of plain, .gz and .zst files."""
    one = setup["dir"] / "one.csv"
    if not one.exists():
        assert predict(setup, "--out", str(one), "--id-column", "I1").returncode == 0
    out = setup["dir"] / f"n{n}.csv"
    r = predict(setup, "--out", str(out), "--id-column", "I1", n=n)
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout)["world_size"] == n
    _, ids1, p1 = read_csv(one)
    _, ids, probs = read_csv(out)
    assert ids.astype(np.int64).tolist() == list(range(1200))
    assert np.array_equal(ids, ids1)
    assert_n_ranks_close(probs, p1, f"scores on {n} ranks")
    # one compressed file: shared by the ranks
    r = predict(setup, "--out", str(out), "--id-column", "I1", "--overwrite", n=n,
                data=setup["window"] / PARTS[2])
    assert r.returncode == 0, r.stderr
    _, ids, probs = read_csv(out)
    assert ids.astype(np.int64).tolist() == list(range(600, 900))
    assert_n_ranks_close(probs, p1[600:900], f"one file's scores on {n} ranks")


@pytest.mark.parametrize("case", ["no model", "not a checkpoint", "id column", "out dir",
                                  "out in a file", "out name"])
def test_bad_arguments_are_one_line(setup: dict, tmp_path: Path, case: str) -> None:
    out = str(tmp_path / "p.csv")
    (tmp_path / "f.txt").write_text("x")
    args = {"no model": ["--model", str(tmp_path / "nope"), "--out", out],
            "not a checkpoint": ["--model", str(tmp_path), "--out", out],
            "id column": ["--id-column", "user", "--out", out],
            "out dir": ["--out", str(tmp_path)],
            "out in a file": ["--out", str(tmp_path / "f.txt" / "p.csv")],
            "out name": ["--out", str(tmp_path / "p.json")]}[case]
    want = {"no model": f"--model {tmp_path / 'nope'}: no such directory",
            "not a checkpoint": f"--model {tmp_path}: no complete checkpoint there",
            "id column": "--id-column user: not a column of the spec's [input] (columns: "
                         "label, I1,",
            "out dir": f"--out {tmp_path}: give a .csv or .parquet file name",
            "out in a file": f"--out {tmp_path / 'f.txt' / 'p.csv'}: no directory "
                             f"{tmp_path / 'f.txt'}",
            "out name": f"--out {tmp_path / 'p.json'}: give a .csv or .parquet file name"}[case]
    base = ["predict", "--config", str(setup["cfg"]), "--model", str(setup["model"]),
            "--data", str(setup["window"])]
    r = recs(*base, *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"recs: error: {want}"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_an_output_that_is_an_input_or_exists_is_refused_before_the_work(
        setup: dict, tmp_path: Path) -> None:
    """--out naming one of the inputs (as given, found in a --data directory, or a second
    name of it) is refused, even with --overwrite; an existing file is replaced only with
    --overwrite. Refused at once (no model loaded, nothing scored), the files unchanged."""
    text = tmp_path / "d" / "w.csv"
    text.parent.mkdir()
    text.write_text("".join(setup["lines"][:50]))
    (tmp_path / "alias.csv").symlink_to(text)
    before = text.read_bytes()
    base = ["predict", "--config", str(setup["cfg"]), "--model", str(tmp_path / "no-model")]
    for data, out in ((text, text), (text.parent, text), (text, tmp_path / "alias.csv")):
        for more in ((), ("--overwrite",)):
            r = recs(*base, "--data", str(data), "--out", str(out), *more)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            assert r.stderr.startswith(f"recs: error: --out {out}: is one of the inputs "
                                       f"({text}): writing it would destroy them"), r.stderr
    assert text.read_bytes() == before
    old = tmp_path / "old.csv"
    old.write_text("old\n")
    r = recs(*base, "--data", str(text), "--out", str(old))
    assert r.returncode == 2 and r.stderr.strip() == (
        f"recs: error: --out {old}: exists: give a new file name, or --overwrite to replace it")
    assert old.read_text() == "old\n"
    rows = tmp_path / "rows.txt"  # (a .csv name reads as commas)
    rows.write_bytes(before)
    r = predict(setup, "--out", str(old), "--overwrite", data=rows)
    assert r.returncode == 0, r.stderr
    assert read_csv(old)[1].astype(np.int64).tolist() == list(range(50))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.csv", "d", "old.csv",
                                                          "rows.txt"]


def test_a_failed_write_is_one_line_and_keeps_the_old_file(
        setup: dict, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from recs_core.cli import main
    from recs_core.train import scores

    out = tmp_path / "p.csv"
    out.write_text("old\n")
    real = scores.atomic_write

    def full_disk(path, chunks):  # noqa: ANN001, ANN202
        def failing():  # noqa: ANN202
            yield next(iter(chunks))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, failing())

    monkeypatch.setattr(scores, "atomic_write", full_disk)
    args = ["predict", "--config", str(setup["cfg"]), "--model", str(setup["model"]),
            "--data", str(setup["window"]), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (f"recs: error: --out {out}: cannot write: No "
                                               f"space left on device")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["p.csv"]


def parquet_copy(setup: dict, text: Path, out: Path) -> Path:
    """``text``'s rows as a Parquet file of 128-row groups (``recs_core.data.convert``)."""
    from recs_core.data.convert import convert_to_parquet
    from recs_core.features.spec import load_spec

    convert_to_parquet([str(text)], load_spec(setup["cfg"]).schema, str(out), row_group_rows=128)
    return out


@pytest.fixture(scope="module")
def mixed(setup: dict) -> Path:
    """The window's rows (I1: the row number) as a mixed window, text and Parquet files
    alternating in partition order: p=0 text, p=1 Parquet, p=2 text, p=3 Parquet."""
    d = setup["dir"] / "mixed"
    for k in range(4):
        (d / f"p={k}").mkdir(parents=True)
        rows = "".join(setup["lines"][k * 300:(k + 1) * 300])
        if k % 2:
            tmp = setup["dir"] / f"rows{k}.txt"
            tmp.write_text(rows)
            parquet_copy(setup, tmp, d / f"p={k}" / "part.parquet")
        else:
            (d / f"p={k}" / "part.txt").write_text(rows)
    return d


def test_parquet_scores_and_positions_are_the_texts(setup: dict, tmp_path: Path) -> None:
    text = tmp_path / "w.txt"
    text.write_text("".join(setup["lines"]))
    data = parquet_copy(setup, text, tmp_path / "w.parquet")
    outs = []
    for src in (text, data):
        out = tmp_path / f"{src.suffix[1:]}.csv"
        r = predict(setup, "--out", str(out), data=src)
        assert r.returncode == 0, r.stderr
        outs.append(read_csv(out))
    (_, pt, st), (_, pp, sp) = outs
    assert np.array_equal(pt.astype(np.int64), np.arange(1200))
    assert np.array_equal(pp, pt) and np.array_equal(sp, st)
    assert np.array_equal(sp, reference(setup, "score", data))


@pytest.mark.mpi
@pytest.mark.parametrize("n", [1, 2])
def test_a_mixed_window_is_scored_in_window_order(setup: dict, mixed: Path, n: int) -> None:
    """Text and Parquet files alternating: every row once, in the window's order (ids and
    positions), with the text window's scores, on 1 and 2 ranks."""
    one = setup["dir"] / "mixed-text.csv"
    if not one.exists():
        assert predict(setup, "--out", str(one), "--id-column", "I1").returncode == 0
    out = setup["dir"] / f"mixed{n}.csv"
    r = predict(setup, "--out", str(out), "--id-column", "I1", n=n, data=mixed)
    assert r.returncode == 0, r.stderr
    _, ids1, p1 = read_csv(one)
    _, ids, probs = read_csv(out)
    assert ids.astype(np.int64).tolist() == list(range(1200))
    assert_n_ranks_close(probs, p1, f"mixed window's scores on {n} ranks")
    r = predict(setup, "--out", str(out), "--overwrite", n=n, data=mixed)
    assert r.returncode == 0, r.stderr
    _, pos, _ = read_csv(out)
    assert pos.astype(np.int64).tolist() == list(range(1200))


def test_a_float_column_gives_float_ids(tmp_path: Path) -> None:
    """--id-column on a float column: its values as float64, a missing one null (the
    reference: Python's csv module on the same file)."""
    import tomllib

    from recs_core.data.reader import ShardReader
    from recs_core.features.spec import parse_spec
    from recs_core.train.scores import check_id_column, column_array
    from tests.conftest import CONFIGS

    data = tomllib.loads((CONFIGS / "movielens.toml").read_text())
    data["input"]["columns"].append({"name": "ts", "type": "float", "from": "timestamp:float"})
    schema = parse_spec(data).schema
    check_id_column(schema, "ts")
    src = Path(__file__).parent.parent / "data/samples/ml100k/ratings_train.inter"
    rows = src.read_text().splitlines()[:201]
    rows[5] = "\t".join(rows[5].split("\t")[:3] + [""])  # a missing timestamp
    p = tmp_path / "r.inter"
    p.write_text("\n".join(rows) + "\n")
    got = [v for b in ShardReader([str(p)], schema)
           for v in column_array(b, schema, "ts").to_pylist()]
    with open(p, newline="") as f:
        want = [float(r[3]) if r[3] else None for r in list(csv.reader(f, delimiter="\t"))[1:]]
    assert got == want and got[4] is None and len(got) == 200
