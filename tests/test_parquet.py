"""Parquet and Arrow input: the same rows give the same feature batches as the text path;
sharding reads every row once; hold-out; bad input; ``recs convert``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.convert import convert_to_parquet, to_record_batch
from recs_core.data.parquet import ParquetInput, ParquetReader
from recs_core.data.parse import RawBatch
from recs_core.data.reader import ShardReader
from recs_core.data.sources import ArrowSource, open_input
from recs_core.errors import DataError, RecsError
from recs_core.features.graph import FeatureBatch, FeatureGraph
from recs_core.features.spec import load_spec, parse_spec
from tests.conftest import CONFIGS, ROOT, run_mpi

SPEC = CONFIGS / "criteo_dlrm.toml"


def recs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recs_core", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def assert_same_features(a: FeatureBatch, b: FeatureBatch) -> None:
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.dense, b.dense)
    assert a.sparse.keys() == b.sparse.keys()
    for p in a.sparse:
        for x, y in zip(a.sparse[p], b.sparse[p], strict=True):
            assert x.names == y.names
            assert np.array_equal(x.ids, y.ids), (p, x.names)
            if x.offsets is not None:
                assert np.array_equal(x.offsets, y.offsets)


def features(spec, batches) -> list[FeatureBatch]:  # noqa: ANN001
    g = FeatureGraph(spec)
    return [g.process(b) for b in batches]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """3,000 synthetic rows (missing ints and strings), as text."""
    p = tmp_path_factory.mktemp("synth") / "s.txt"
    r = recs("gen", "--rows", "3000", "--seed", "3", "--out", str(p), "--quiet")
    assert r.returncode == 0, r.stderr
    return p


@pytest.mark.parametrize("which", ["criteo", "synth"])
@pytest.mark.parametrize("group_rows", [700, 1 << 20])
def test_parquet_gives_the_text_feature_batches(tmp_path: Path, criteo_sample, synth,
                                                which: str, group_rows: int) -> None:
    spec = load_spec(SPEC)
    src = str(criteo_sample if which == "criteo" else synth)
    out = str(tmp_path / "x.parquet")
    st = convert_to_parquet([src], spec.schema, out, row_group_rows=group_rows)
    n = 5760 if which == "criteo" else 3000
    assert st.rows == n and st.row_groups == -(-n // group_rows)
    assert pq.ParquetFile(out).metadata.num_rows == n
    text = list(ShardReader([src], spec.schema, batch_rows=333))
    par = list(ParquetReader([out], spec.schema, batch_rows=333))
    assert [len(b) for b in text] == [len(b) for b in par]
    for a, b in zip(features(spec, text), features(spec, par)):
        assert_same_features(a, b)


@pytest.mark.parametrize("config, sample", [
    ("avazu.toml", "avazu/train.csv"), ("movielens.toml", "ml100k/ratings_train.inter")])
def test_csv_with_header_and_label_rule_converted_give_the_same_batches(
        tmp_path: Path, config: str, sample: str) -> None:
    spec = load_spec(CONFIGS / config)
    src = str(ROOT / "data" / "samples" / sample)
    out = str(tmp_path / "x.parquet")
    st = convert_to_parquet([src], spec.schema, out, row_group_rows=3000)
    text = list(ShardReader([src], spec.schema, batch_rows=500))
    par = list(ParquetReader([out], spec.schema, batch_rows=500))
    assert st.rows == sum(len(b) for b in text) == sum(len(b) for b in par) > 1000
    for a, b in zip(features(spec, text), features(spec, par), strict=True):
        assert_same_features(a, b)
    if config == "movielens.toml":  # the rating is kept, the rule applies when read
        assert pq.ParquetFile(out).schema_arrow.field("rating").type == pa.float64()
        assert 0.4 < np.mean(np.concatenate([b.labels for b in par])) < 0.7


def table_of(spec, path: Path) -> pa.Table:  # noqa: ANN001
    """The file's rows as one Arrow table with the spec's column types."""
    batches = [to_record_batch(b, spec.schema) for b in ShardReader([str(path)], spec.schema)]
    return pa.Table.from_batches(batches)


def test_dictionary_large_binary_and_sliced_strings_give_the_same_ids(synth: Path) -> None:
    spec = load_spec(SPEC)
    table = table_of(spec, synth)
    cols = []
    for i, name in enumerate(table.column_names):
        c = table.column(name).combine_chunks()
        if name.startswith("C"):
            c = [c.dictionary_encode(), c.cast(pa.large_string()), c.cast(pa.binary()),
                 c][i % 4]
        cols.append(c)
    mixed = pa.table(cols, names=table.column_names)
    want = features(spec, ShardReader([str(synth)], spec.schema, batch_rows=500))
    # record batches with array offsets (slices), from a generator
    pieces = (mixed.slice(a, 250).to_batches()[0] for a in range(0, mixed.num_rows, 250))
    got = features(spec, ArrowSource(pieces, spec.schema, batch_rows=500))
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert_same_features(a, b)


def test_dictionary_columns_with_any_index_under_nulls_give_the_same_ids(
        synth: Path) -> None:
    """Every string column dictionary-encoded: batches sharing a dictionary, an equal copy
    of it, and other dictionaries (an unused entry first, and indices under nulls that
    point anywhere: Arrow leaves them undefined); ids as from the text."""
    spec = load_spec(SPEC)
    table = table_of(spec, synth)

    def encoded(t: pa.Table, shift: int) -> pa.Table:
        cols = []
        for name in t.column_names:
            c = t.column(name).combine_chunks()
            if name.startswith("C"):
                c = c.dictionary_encode()
                if shift:  # an unused first entry: every index moves by one
                    idx = pa.array(c.indices.to_numpy(zero_copy_only=False) + 1,
                                   pa.int32(), mask=c.is_null().to_numpy(zero_copy_only=False))
                    d = pa.concat_arrays([pa.array(["unused"]), c.dictionary])
                    c = pa.DictionaryArray.from_arrays(idx, d)
                elif shift == 0 and name == "C2":  # an equal copy of the dictionary
                    c = pa.DictionaryArray.from_arrays(c.indices,
                                                       pa.array(c.dictionary.to_pylist()))
            cols.append(c)
        return pa.table(cols, names=t.column_names)

    half = table.num_rows // 2
    whole = encoded(table.slice(0, half), 0)  # its slices share one dictionary per column
    pieces = [whole.slice(a, 250).to_batches()[0] for a in range(0, half, 250)]
    pieces.append(encoded(table.slice(half), 1).to_batches()[0])  # other dictionaries
    want = features(spec, ShardReader([str(synth)], spec.schema, batch_rows=500))
    got = features(spec, ArrowSource(pieces, spec.schema, batch_rows=500))
    assert len(got) == len(want)
    for a, b in zip(want, got):
        assert_same_features(a, b)


def test_dictionary_chunks_and_fallen_back_chunks_give_the_text_ids(tmp_path: Path,
                                                                     synth: Path) -> None:
    """A file whose string chunks stay dictionary-encoded is read as dictionaries, with
    every row's hash known from its entry; one whose dictionaries filled up (a tiny
    dictionary page limit) is read plain. Both give the text path's features, and so
    does reading the fallen-back chunks as dictionaries anyway (pyarrow then hands each
    batch a dictionary that grows: entries hashed before are kept, the new ones hashed)."""
    from recs_core.data.parquet import dictionary_columns

    spec = load_spec(SPEC)
    table = table_of(spec, synth)
    full, small = tmp_path / "dict.parquet", tmp_path / "fallback.parquet"
    pq.write_table(table, full, compression="snappy")
    pq.write_table(table, small, compression="snappy", dictionary_pagesize_limit=2048)
    strs = [n for n in table.column_names if n.startswith("C")]
    assert dictionary_columns(pq.ParquetFile(full).metadata.row_group(0), spec.schema) == strs
    fallen = set(strs) - set(dictionary_columns(pq.ParquetFile(small).metadata.row_group(0),
                                                spec.schema))
    assert {"C3", "C4", "C12"} <= fallen
    want = features(spec, ShardReader([str(synth)], spec.schema, batch_rows=500))
    par = list(ParquetReader([str(full)], spec.schema, batch_rows=500))
    assert all(b.hashes is not None and b.hashes.known.all() for b in par)
    growing = ArrowSource(pq.ParquetFile(small, read_dictionary=strs).iter_batches(
        batch_size=700), spec.schema, batch_rows=500)
    for got in (par, ParquetReader([str(small)], spec.schema, batch_rows=500), growing):
        got = features(spec, got)
        assert len(got) == len(want)
        for a, b in zip(want, got):
            assert_same_features(a, b)


def test_nulls_and_empty_strings_are_missing() -> None:
    spec = load_spec(SPEC)
    names = spec.schema.names
    cols = {n: pa.array([1, 0, 1], pa.int8()) if n == "label" else
            pa.array([5, None, 7], pa.int64()) if n.startswith("I") else
            pa.array(["ab", None, ""], pa.string()) for n in names}
    b = next(iter(ArrowSource(pa.table(cols), spec.schema)))
    assert b.int_missing[:, 0].tolist() == [False, True, False]
    assert b.str_len[:, 0].tolist() == [2, 0, 0]
    assert b.str_values(0) == ["ab", "", ""]


LIST_SPEC = """
[input]
columns = [{ name = "label", type = "label" }, { name = "tags", type = "%s" }]
[[pipeline]]
name = "p"
  [[pipeline.feature]]
  name = "tags"
  inputs = ["tags"]
  ops = [%s{ op = "hash_bucket", buckets = 1000 }]
  embedding = { dim = 4 }
"""


def test_list_of_strings_column_equals_text_split(tmp_path: Path) -> None:
    import tomllib

    rows = [["a", "bb", "c"], [], None, ["x"], ["", "yy"], ["long" * 3]]
    text_spec = parse_spec(tomllib.loads(LIST_SPEC % (
        "str", '{ op = "split", sep = "|", max_len = 10 }, ')))
    list_spec = parse_spec(tomllib.loads(LIST_SPEC % ("list_str", "")))
    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i % 2}\t{'|'.join(r or [])}\n" for i, r in enumerate(rows)))
    want = features(text_spec, ShardReader([str(path)], text_spec.schema))
    table = pa.table({"label": pa.array([i % 2 for i in range(len(rows))], pa.int64()),
                      "tags": pa.array(rows, pa.list_(pa.string()))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    got = features(list_spec, ParquetReader([str(tmp_path / "t.parquet")], list_spec.schema))
    (a,), (b,) = want, got
    out_a, out_b = a.sparse["p"][0], b.sparse["p"][0]
    # split drops empty tokens; Arrow keeps an empty item, hashed to id 0 (missing)
    keep = np.repeat(np.arange(len(rows)), np.diff(out_b.offsets))
    nz = out_b.ids != 0
    assert out_b.ids[nz].tolist() == out_a.ids.tolist()
    assert np.bincount(keep[nz], minlength=len(rows)).tolist() == np.diff(out_a.offsets).tolist()
    # a too-long token is a bad row under the spec's byte limit
    small = parse_spec(tomllib.loads((LIST_SPEC % ("list_str", "")).replace(
        'type = "list_str"', 'type = "list_str", max_bytes = 8')))
    r = ParquetReader([str(tmp_path / "t.parquet")], small.schema,
                      policy=BadRowPolicy("skip", 0.5))
    assert sum(len(b) for b in r) == len(rows) - 1
    assert r.counter.by_reason == {"field_too_long": 1}
    assert "row 6 (row group 1)" in r.counter.first and "column tags" in r.counter.first


def write_groups(path: Path, sizes: list[int], start: int) -> None:
    """A file whose column ``I1`` numbers its rows from ``start``, in row groups of ``sizes``."""
    spec = load_spec(SPEC)
    with pq.ParquetWriter(path, pa.schema([(n, pa.int64() if n.startswith(("I", "label"))
                                           else pa.string()) for n in spec.schema.names])) as w:
        at = start
        for n in sizes:
            ids = np.arange(at, at + n)
            cols = [ids % 2 if c == "label" else ids if c == "I1" else
                    (ids % 7 if c.startswith("I") else pa.array((ids % 5).astype(str)))
                    for c in spec.schema.names]
            w.write_table(pa.table(cols, names=list(spec.schema.names)))
            at += n


@pytest.fixture(scope="module")
def shard_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("shards")
    layout = [[1000], [300, 300, 300, 100], [5], [2000, 10, 990]]
    paths, at = [], 0
    for i, sizes in enumerate(layout):
        write_groups(d / f"f{i}.parquet", sizes, at)
        paths.append(str(d / f"f{i}.parquet"))
        at += sum(sizes)
    return paths


def row_ids(batches) -> list[int]:  # noqa: ANN001
    return [int(x) for b in batches for x in b.ints[:, 0]]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_row_once_balanced_by_rows(shard_files: list[str], world: int) -> None:
    spec = load_spec(SPEC)
    total = 5005
    ids, counts = [], []
    for r in range(world):
        got = row_ids(ParquetReader(shard_files, spec.schema, rank=r, world=world,
                                    batch_rows=97))
        ids += got
        counts.append(len(got))
    assert sorted(ids) == list(range(total)) and ids == sorted(ids)
    assert max(counts) - min(counts) <= total / world / 4 + 1, counts


def test_an_empty_parquet_file_is_warned_about_as_an_empty_text_file_is(tmp_path: Path) -> None:
    write_groups(tmp_path / "e.parquet", [], 0)  # a valid file of no rows
    write_groups(tmp_path / "f.parquet", [10], 0)
    (tmp_path / "e.txt").write_bytes(b"")
    schema = load_spec(SPEC).schema
    for world in (1, 2):
        for rank in range(world):
            reader, warnings = open_input([tmp_path / "e.parquet", tmp_path / "f.parquet",
                                           tmp_path / "e.txt"], schema, rank=rank, world=world)
            assert warnings == [f"{tmp_path / 'e.txt'}: empty file (0 bytes)",
                                f"{tmp_path / 'e.parquet'}: a Parquet file with no rows (0 "
                                f"rows read)"]


def test_fewer_row_groups_than_ranks_splits_by_rows(tmp_path: Path) -> None:
    write_groups(tmp_path / "one.parquet", [1000], 0)
    plan = ParquetInput.scan([str(tmp_path / "one.parquet")], load_spec(SPEC).schema).plan(3)
    assert [[(p.group, p.lo, p.hi) for p in parts] for parts in plan] == [
        [(0, 0, 333)], [(0, 333, 666)], [(0, 666, 1000)]]


def test_many_small_row_groups_open_each_file_once_per_pass(tmp_path: Path,
                                                             monkeypatch) -> None:  # noqa: ANN001
    """2,000 one-row row groups (a streaming writer's file), and a file of larger ones: a
    pass opens each file once (opening parses the whole footer: once per row group made
    the reading quadratic in row groups), and reads every row once. The time against
    pyarrow's own read: bench/bench_parquet.py --row-groups."""
    write_groups(tmp_path / "small.parquet", [1] * 2000, 0)
    write_groups(tmp_path / "big.parquet", [500, 500], 2000)
    paths = [str(tmp_path / "small.parquet"), str(tmp_path / "big.parquet")]
    opened: list[str] = []

    class Counted(pq.ParquetFile):
        def __init__(self, source, *args, **kw) -> None:  # noqa: ANN001
            assert str(source) not in opened, f"{source} opened again in one pass"
            opened.append(str(source))
            super().__init__(source, *args, **kw)

    schema = load_spec(SPEC).schema
    for world in (1, 2):
        ids = []
        for rank in range(world):
            r = ParquetReader(paths, schema, rank=rank, world=world, batch_rows=64,
                              holdout=0.25)
            monkeypatch.setattr(pq, "ParquetFile", Counted)
            for stream in (r, r.held_out()):
                ids += row_ids(stream)
                opened.clear()
            monkeypatch.undo()
        assert sorted(ids) == list(range(3000))


@pytest.mark.parametrize("holdout", [0.1, 0.5])
def test_holdout_is_the_last_rows_of_each_shard(shard_files: list[str], holdout: float) -> None:
    spec = load_spec(SPEC)
    train, held = [], []
    for r in range(3):
        reader = ParquetReader(shard_files, spec.schema, rank=r, world=3, holdout=holdout)
        t, h = row_ids(reader), row_ids(reader.held_out())
        n = len(t) + len(h)
        assert len(t) == int((1 - holdout) * n) and t + h == sorted(t + h)
        assert reader.rows == len(t) and reader.held_rows == len(h)
        train += t
        held += h
    assert sorted(train + held) == list(range(5005))


CHECK = """
import sys
import numpy as np
from recs_core.comm.world import mpi_world
from recs_core.data.sources import open_input
from recs_core.features.spec import load_spec
world = mpi_world()
spec = load_spec(sys.argv[1])
reader, _ = open_input(sys.argv[2:], spec.schema, rank=world.rank, world=world.size,
                     batch_rows=64, holdout=0.2)
ids = [int(x) for part in (reader, reader.held_out()) for b in part for x in b.ints[:, 0]]
every = world.comm.allgather(ids) if world.size > 1 else [ids]
if world.rank == 0:
    flat = sorted(x for part in every for x in part)
    print("ROWS", len(flat), sum((x + 1) * 2654435761 % (1 << 32) for x in flat), flat[:3])
"""


@pytest.mark.mpi
def test_mpi_ranks_read_every_row_once(tmp_path: Path, shard_files: list[str]) -> None:
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    want = None
    for n in (1, 2, 3):
        r = run_mpi(n, [str(script), str(SPEC), *shard_files], timeout=300)
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("ROWS"))
        want = want or line
        assert line == want and line.startswith("ROWS 5005 ")
    ref = sum((x + 1) * 2654435761 % (1 << 32) for x in range(5005))
    assert want.split()[2] == str(ref)


def test_cli_features_on_2_and_3_ranks(shard_files: list[str]) -> None:
    for n in (2, 3):
        r = run_mpi(n, ["-m", "recs_core", "features", "--config", str(SPEC), "--data",
                        *shard_files, "--quiet"], timeout=300)
        assert r.returncode == 0, r.stderr
        assert '"rows": 5005' in r.stdout.splitlines()[-1]


# ---- bad input ----------------------------------------------------------------------


def features_error(*paths: Path, extra: tuple[str, ...] = ()) -> str:
    r = recs("features", "--config", str(SPEC), "--data", *map(str, paths), "--quiet", *extra)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recs: error: "), r.stderr
    return lines[0]


def test_not_parquet_truncated_and_wrong_types(tmp_path: Path, shard_files: list[str]) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("label\tI1\n")
    msg = features_error(fake)
    assert "fake.parquet: not a Parquet file, or truncated" in msg
    data = Path(shard_files[0]).read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[:len(data) // 2])
    assert "cut.parquet: not a Parquet file, or truncated" in features_error(cut)
    spec = load_spec(SPEC)
    t = pq.read_table(shard_files[0])
    bad = t.set_column(t.schema.get_field_index("I3"), "I3", t.column("I3").cast(pa.float64()))
    pq.write_table(bad, tmp_path / "float.parquet")
    msg = features_error(tmp_path / "float.parquet")
    assert "float.parquet: column 'I3' has type double (float)" in msg and "integer" in msg
    pq.write_table(t.drop_columns(["C9"]), tmp_path / "nocol.parquet")
    assert "nocol.parquet: lacks column 'C9'" in features_error(tmp_path / "nocol.parquet")
    boolean = t.set_column(0, "label", t.column("label").cast(pa.bool_()))
    pq.write_table(boolean, tmp_path / "bool.parquet")
    assert len(row_ids(ParquetReader([str(tmp_path / "bool.parquet")], spec.schema))) == 1000
    msg = features_error(Path(shard_files[0]), tmp_path / "bool.parquet")
    assert ("bool.parquet: column 'label' is boolean here but integer in "
            f"{shard_files[0]}: the files of one input need one schema") in msg


def test_null_labels_are_counted_or_stop_the_job(tmp_path: Path, shard_files: list[str]) -> None:
    t = pq.read_table(shard_files[0])
    labels = pa.array([None if i % 100 == 7 else i % 2 for i in range(t.num_rows)], pa.int64())
    pq.write_table(t.set_column(0, "label", labels), tmp_path / "nl.parquet",
                   row_group_size=400)
    spec = load_spec(SPEC)
    r = ParquetReader([str(tmp_path / "nl.parquet")], spec.schema)
    assert sum(len(b) for b in r) == t.num_rows - 10
    assert r.counter.by_reason == {"missing_label": 10} and r.counter.lines == t.num_rows
    msg = features_error(tmp_path / "nl.parquet", extra=("--on-error", "fail"))
    assert "nl.parquet:row 8 (row group 0): missing_label in column label" in msg
    msg = features_error(tmp_path / "nl.parquet", extra=("--max-bad-fraction", "0.001"))
    assert "too many bad lines: 10 of 1000" in msg


def test_arrow_source_type_checks_and_hold_out() -> None:
    spec = load_spec(SPEC)
    with pytest.raises(DataError, match="arrow source item 0: lacks column 'label'"):
        list(ArrowSource(pa.table({"x": [1]}), spec.schema))
    with pytest.raises(DataError, match="expected a pyarrow.RecordBatch"):
        list(ArrowSource([{"label": 1}], spec.schema))
    with pytest.raises(RecsError, match="hold-out"):
        open_input(iter([]), spec.schema, holdout=0.1)


def test_pandas_data_frames_through_arrow(synth: Path) -> None:
    pd = pytest.importorskip("pandas")
    spec = load_spec(SPEC)
    df = table_of(spec, synth).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    want = features(spec, ShardReader([str(synth)], spec.schema, batch_rows=1000))
    got = features(spec, ArrowSource([df.iloc[:1500], df.iloc[1500:]], spec.schema,
                                     batch_rows=1000))
    for a, b in zip(want, got, strict=True):
        assert_same_features(a, b)


# ---- the library and the command line -------------------------------------------------


def test_job_trains_the_same_on_batches_from_a_generator(sample_1200: Path,
                                                         tmp_path: Path) -> None:
    from recs_core.train.job import Job
    from tests.conftest import small_test_spec

    spec = small_test_spec()
    table = table_of(spec, sample_1200)
    a, b = Job(small_test_spec()), Job(small_test_spec())
    ma = a.run([str(sample_1200)])
    mb = b.run(rb for rb in table.to_batches(max_chunksize=250))
    assert ma["rows"] == mb["rows"] == 1200
    assert ma["train_logloss"] == mb["train_logloss"]
    assert np.array_equal(np.concatenate(a.step_probs), np.concatenate(b.step_probs))
    pq.write_table(table, tmp_path / "w.parquet", row_group_size=500)
    assert np.array_equal(a.score([str(tmp_path / "w.parquet")]), a.score(table))
    assert np.array_equal(a.score(rb for rb in table.to_batches(max_chunksize=250)),
                          a.score([str(sample_1200)]))


def test_format_key_reads_any_name_as_parquet(tmp_path: Path, shard_files: list[str]) -> None:
    import shutil

    import tomllib

    data = tomllib.loads(SPEC.read_text())
    data["input"]["format"] = "parquet"
    spec = parse_spec(data)
    dat = tmp_path / "part-0000.dat"
    shutil.copy(shard_files[0], dat)
    assert len(row_ids(open_input([str(dat)], spec.schema, spec.format)[0])) == 1000
    data["input"]["format"] = "orc"
    with pytest.raises(RecsError, match="input.format: must be \"csv\", \"tsv\" or \"parquet\""):
        parse_spec(data)


def test_mixed_text_and_parquet(criteo_sample, tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    out = tmp_path / "c.parquet"
    convert_to_parquet([str(criteo_sample)], spec.schema, str(out), row_group_rows=1000)
    both = list(open_input([str(out), str(criteo_sample)], spec.schema, batch_rows=1000)[0])
    one = list(ShardReader([str(criteo_sample)], spec.schema, batch_rows=1000))
    assert sum(len(b) for b in both) == 2 * 5760
    whole = RawBatch.concat(both)
    ref = RawBatch.concat(one + one)
    assert np.array_equal(whole.ints, ref.ints) and np.array_equal(whole.labels, ref.labels)


def test_recs_convert_command(tmp_path: Path, sample_1200: Path) -> None:
    bad = tmp_path / "bad.txt"
    lines = sample_1200.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:600]) + "x\ty\n" + "".join(lines[600:]))
    out = tmp_path / "o.parquet"
    r = recs("convert", str(SPEC), str(bad), "-o", str(out), "--row-group-rows", "500")
    assert r.returncode == 0, r.stderr
    assert "skipped 1 bad line(s): field_count=1" in r.stderr
    assert '"rows": 1200' in r.stdout and '"row_groups": 3' in r.stdout
    md = pq.ParquetFile(out).metadata
    assert [md.row_group(g).num_rows for g in range(3)] == [500, 500, 200]
    assert pq.ParquetFile(out).schema_arrow.field("I1").type == pa.int64()
    kept = out.read_bytes()
    r = recs("convert", str(SPEC), str(bad), "-o", str(out), "--on-error", "fail",
             "--overwrite")
    assert r.returncode == 2 and "bad.txt:601: field_count" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == kept  # written aside: the old file stays whole
    r = recs("features", "--config", str(SPEC), "--data", str(out), "--quiet")
    assert r.returncode == 0 and '"rows": 1200' in r.stdout



def test_recs_convert_refuses_its_inputs_existing_files_and_directories_first(
        tmp_path: Path, sample_1200: Path) -> None:
    """-o naming an input (also under another name), an existing file without
    --overwrite, or a directory: one line, rc 2, before any row is read (the input a
    bad file that --on-error fail would stop at), nothing written; --overwrite replaces a
    file with the whole new one and leaves no temporary file."""
    text = tmp_path / "logs.txt"
    text.write_bytes(sample_1200.read_bytes())
    bad = tmp_path / "bad.txt"
    bad.write_text("not\ta\trow\n")
    (tmp_path / "alias.txt").symlink_to(text)
    old = tmp_path / "old.parquet"
    old.write_bytes(b"old")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {str(text): f"-o {text}: is one of the inputs ({text}): writing it would "
                        f"destroy them; give another file name",
             str(tmp_path / "alias.txt"): f"-o {tmp_path / 'alias.txt'}: is one of the "
                                          f"inputs ({text}): writing",
             str(old): f"-o {old}: exists: give a new file name, or --overwrite to replace it",
             str(tmp_path): f"-o {tmp_path}: is a directory: give a file name"}
    for out, want in cases.items():
        for more in ((), ("--overwrite",)):
            if more and out == str(old):
                continue
            r = recs("convert", str(SPEC), str(bad), str(text), "-o", out, "--on-error",
                     "fail", *more)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            assert r.stderr.startswith(f"recs: error: {want}"), r.stderr
    assert text.read_bytes() == sample_1200.read_bytes() and old.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    r = recs("convert", str(SPEC), str(text), "-o", str(old), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(old).num_rows == 1200
    assert sorted(p.name for p in tmp_path.iterdir()) == before
