"""Delimited text of any layout: RFC 4180 quoting against Python's csv module, columns
picked by header name in any order (the same batches as the positional file), and
byte-range shards over files with headers reading every row exactly once."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import tomllib

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import (
    COL_FLOAT,
    COL_INT,
    COL_LABEL,
    COL_STR,
    REASONS,
    ChunkParser,
    ColumnSchema,
    RawBatch,
    TextFormat,
)
from recs_core.data.reader import ShardReader
from recs_core.errors import DataError
from recs_core.features.graph import FeatureGraph
from recs_core.features.spec import parse_spec
from tests.conftest import CONFIGS
from tests.test_sources import zst

CSV = ColumnSchema(("y", "i", "s1", "s2", "f"), (COL_LABEL, COL_INT, COL_STR, COL_STR, COL_FLOAT),
                   (8, 24, 64, 64, 32), text=TextFormat(","))


def parse_csv(text: bytes, schema: ColumnSchema = CSV, at_eof: bool = True):
    buf = np.frombuffer(text, dtype=np.uint8)
    return ChunkParser(schema).parse(buf, len(text), at_eof, fields=schema.field_map())


def random_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    alphabet = list("ab,\" ;xé'") + ["\"\""]
    rows = []
    for _ in range(n):
        s = ["".join(rng.choice(alphabet, size=rng.integers(0, 7))) for _ in range(2)]
        i = "" if rng.random() < 0.2 else str(int(rng.integers(-10**12, 10**12)))
        f = "" if rng.random() < 0.2 else str(round(float(rng.normal(0, 100)), 3))
        rows.append([str(rng.integers(0, 2)), i, *s, f])
    return rows


@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_quoting_matches_python_csv(quoting: int, eol: str) -> None:
    rows = random_rows(400, seed=quoting * 10 + len(eol))
    out = io.StringIO()
    csv.writer(out, quoting=quoting, lineterminator=eol).writerows(rows)
    text = out.getvalue().encode()
    assert b'""' in text and b'","' in text or quoting == csv.QUOTE_ALL
    c = parse_csv(text)
    ref = list(csv.reader(io.StringIO(out.getvalue(), newline=""), strict=True))
    assert len(c.bad_line) == 0 and len(c.batch) == len(ref) == 400 and c.n_lines == 400
    b = c.batch
    assert b.labels.tolist() == [int(r[0]) for r in ref]
    assert b.ints[:, 0].tolist() == [int(r[1]) if r[1] else 0 for r in ref]
    assert b.int_missing[:, 0].tolist() == [not r[1] for r in ref]
    assert b.str_values(0) == [r[2] for r in ref] and b.str_values(1) == [r[3] for r in ref]
    np.testing.assert_array_equal(b.floats[:, 0], [float(r[4]) if r[4] else np.nan for r in ref])


@pytest.mark.parametrize("line,reason,col", [
    (b'1,2,"ab,3,4.5\n', "unterminated_quote", 2),
    (b'1,2,"ab""\n', "unterminated_quote", 2),
    (b'1,2,"ab"x,c,4.5\n', "bad_quote", 2),
    (b'1,2,a,b,4.5,extra\n', "field_count", -1),
    (b'1,2,a,b\n', "field_count", -1),
    (b'1,"2,0",a,b,1\n', "bad_int", 1),
    (b'1,2,a,b,"1,5"\n', "bad_float", 4),
    (b'"",2,a,b,1\n', "bad_label", 0),
    (b'1,2,"a\x01",b,1\n', "binary", 2),
])
def test_csv_bad_lines(line: bytes, reason: str, col: int) -> None:
    good = b'0,1,"x,y",z,2\n'
    c = parse_csv(good + line + good)
    assert [(int(i), REASONS[r], int(k)) for i, r, k in
            zip(c.bad_line, c.bad_reason, c.bad_col)] == [(1, reason, col)]
    assert c.batch.str_values(0) == ["x,y", "x,y"]


def test_quoted_fields_of_every_kind_and_tsv_has_no_quoting() -> None:
    c = parse_csv(b'"1","-7","a""b","",""\n')
    assert len(c.batch) == 1 and c.batch.ints.tolist() == [[-7]]
    assert c.batch.str_values(0) == ['a"b'] and c.batch.str_values(1) == [""]
    assert np.isnan(c.batch.floats[0, 0])
    # the old layout: a tab-separated file keeps a quote as a plain byte
    tsv = ColumnSchema(("y", "s"), (COL_LABEL, COL_STR), (8, 16))
    text = b'1\t"a\tb"\n'
    assert REASONS[ChunkParser(tsv).parse(np.frombuffer(text, np.uint8), len(text),
                                          True).bad_reason[0]] == "field_count"
    text = b'1\t"a"\n'
    assert ChunkParser(tsv).parse(np.frombuffer(text, np.uint8), len(text),
                                  True).batch.str_values(0) == ['"a"']


@pytest.mark.parametrize("fmt,path,expected", [
    (TextFormat(), "x.csv", (44, True)), (TextFormat(), "x.CSV.gz", (44, True)),
    (TextFormat(), "x.tsv", (9, False)), (TextFormat(), "x.txt", (9, False)),
    (TextFormat(";"), "x.csv", (59, True)), (TextFormat("\t", True), "x", (9, True)),
    (TextFormat(",", False), "x", (44, False)),
])
def test_separator_by_format_or_extension(fmt: TextFormat, path: str, expected) -> None:
    assert fmt.resolve(path) == expected


# ---- header selection --------------------------------------------------------------------

def canonical(header: bool):
    data = tomllib.loads((CONFIGS / "criteo_dlrm.toml").read_text())
    if header:
        data["input"]["header"] = True
    return parse_spec(data)


def write_shuffled_csv(src: Path, dst: Path, seed: int = 0) -> list[str]:
    """The rows of a Criteo TSV as a CSV with a header: the columns in a random order,
    plus a row id and a text column needing quotes. Returns the header."""
    names = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
    rng = np.random.default_rng(seed)
    header = [*names, "row_id", "note"]
    order = [int(i) for i in rng.permutation(len(header))]
    with open(dst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([header[i] for i in order])
        for k, line in enumerate(src.read_text().splitlines()):
            fields = [*line.split("\t"), str(k), f'say "hi", {k}']
            w.writerow([fields[i] for i in order])
    return [header[i] for i in order]


def batches_equal(a: RawBatch, b: RawBatch) -> None:
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.ints, b.ints)
    assert np.array_equal(a.int_missing, b.int_missing)
    for j in range(a.str_start.shape[1]):
        assert a.str_values(j) == b.str_values(j)


def test_header_columns_in_any_order_give_the_positional_batches(sample_1200,
                                                                 tmp_path: Path) -> None:
    p = tmp_path / "shuffled.csv"
    write_shuffled_csv(sample_1200, p)
    pos_spec, hdr_spec = canonical(False), canonical(True)
    pos = list(ShardReader([sample_1200], pos_spec.schema, batch_rows=500))
    hdr = list(ShardReader([p], hdr_spec.schema, batch_rows=500, chunk_bytes=1 << 16))
    assert [len(b) for b in pos] == [len(b) for b in hdr] == [500, 500, 200]
    for a, b in zip(pos, hdr):
        batches_equal(a, b)
        fa, fb = FeatureGraph(pos_spec).process(a), FeatureGraph(hdr_spec).process(b)
        assert np.array_equal(fa.labels, fb.labels) and np.array_equal(fa.dense, fb.dense)
        for name in fa.sparse:
            for x, y in zip(fa.sparse[name], fb.sparse[name]):
                assert x.names == y.names and np.array_equal(x.ids, y.ids)


def rid_spec(**inp):
    return parse_spec({"input": {"header": True, **inp,
                                 "columns": [{"name": "click", "type": "label"},
                                             {"name": "rid", "type": "int"},
                                             {"name": "txt", "type": "str"}]},
                       "pipeline": [{"name": "p", "feature": [
                           {"name": "t", "inputs": ["txt"], "embedding": {"dim": 4},
                            "ops": [{"op": "hash_bucket", "buckets": 16}]}]}]})


def write_rid_file(path: Path, ids: range, header: str = "txt,rid,extra,click",
                   bad_at: int | None = None) -> None:
    lines = [header]
    for i in ids:
        lines.append(f'"u,nbalanced ""q"" {i}",{i},x,{i % 2}' if i != bad_at
                     else f'"unterminated,{i},x,1')
    data = ("\r\n".join(lines) + "\r\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_with_headers_read_every_row_once(tmp_path: Path, world: int) -> None:
    files = [tmp_path / "a.csv", tmp_path / "b.csv.gz", tmp_path / "c.csv", tmp_path / "d.csv"]
    write_rid_file(files[0], range(0, 3000))
    write_rid_file(files[1], range(3000, 4000))
    write_rid_file(files[2], range(0))  # a header and no rows
    write_rid_file(files[3], range(4000, 4003))  # fewer lines than ranks' ranges
    spec = rid_spec()
    seen: list[int] = []
    for holdout in (0.0, 0.3):
        ids: list[int] = []
        for rank in range(world):
            r = ShardReader(files, spec.schema, rank=rank, world=world, batch_rows=97,
                            chunk_bytes=4096, holdout=holdout)
            for b in [*r, *r.held_out()]:
                ids += b.ints[:, 0].tolist()
                assert b.str_values(0) == [f'u,nbalanced "q" {i}' for i in b.ints[:, 0]]
                assert b.labels.tolist() == [i % 2 for i in b.ints[:, 0]]
            assert r.counter.bad == 0
            assert r.header_warnings == [f"{files[2]}: a header line and no rows (0 rows read)"]
        assert sorted(ids) == list(range(4003))
        seen += ids
    assert len(seen) == 2 * 4003


@pytest.mark.parametrize("layout", ["csv", "tsv", "semicolon"])
@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_compressed_files_of_every_layout(tmp_path: Path, layout: str, suffix: str,
                                          monkeypatch) -> None:  # noqa: ANN001
    """A compressed file in each layout (CSV with quoted separators, quotes and a header;
    TSV with a header; ``;`` without one) gives the plain file's rows on 1, 2 and 3
    ranks, each row once (ranges of 2 kB dealt to the ranks in turn)."""
    from recs_core.data import shards

    monkeypatch.setattr(shards, "COMPRESSED_BLOCK", 2000)
    sep, header = {"csv": (",", True), "tsv": ("\t", True), "semicolon": (";", False)}[layout]
    spec = rid_spec(sep=sep) if header else parse_spec({"input": {"sep": sep, "columns": [
        {"name": "txt", "type": "str"}, {"name": "rid", "type": "int"},
        {"name": "extra", "type": "str"}, {"name": "click", "type": "label"}]},
        "pipeline": [{"name": "p", "feature": [{"name": "t", "inputs": ["txt"],
                                                 "embedding": {"dim": 4},
                                                 "ops": [{"op": "hash_bucket",
                                                          "buckets": 16}]}]}]})
    plain = tmp_path / "a.txt"
    if layout == "csv":  # quoted fields holding separators and quotes, CRLF line ends
        write_rid_file(plain, range(3000))
    else:
        head = [sep.join(("txt", "rid", "extra", "click"))] if header else []
        plain.write_text("\n".join(head + [sep.join((f"u{i}", str(i), "x", str(i % 2)))
                                           for i in range(3000)]) + "\n")
    text = plain.read_bytes()
    packed = tmp_path / f"a.txt{suffix}"
    packed.write_bytes(gzip.compress(text) if suffix == ".gz" else zst(text, 3))
    want = [(b.ints[:, 0].tolist(), b.str_values(0), b.labels.tolist())
            for b in ShardReader([plain], spec.schema, batch_rows=10_000)]
    assert len(want[0][0]) == 3000
    for world in (1, 2, 3):
        got: list[tuple[int, str, int]] = []
        for rank in range(world):
            r = ShardReader([packed], spec.schema, rank=rank, world=world, batch_rows=97,
                            chunk_bytes=4096)
            for b in r:
                got += zip(b.ints[:, 0].tolist(), b.str_values(0), b.labels.tolist())
            assert r.counter.bad == 0
        assert sorted(got) == sorted(zip(*want[0])), (world, layout)


def test_bad_line_numbers_count_the_header(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    write_rid_file(p, range(100), bad_at=41)
    schema = rid_spec().schema
    for world in (1, 2):
        rows, bad = 0, 0
        for rank in range(world):
            r = ShardReader([p], schema, rank=rank, world=world, chunk_bytes=512,
                            policy=BadRowPolicy("skip", 1.0))
            rows += sum(len(b) for b in r)
            bad += r.counter.bad
            if r.counter.bad:
                assert r.counter.first == f"{p}:43: unterminated_quote in column txt"
        assert (rows, bad) == (99, 1)
    with pytest.raises(DataError, match=r"a.csv:43: unterminated_quote in column txt"):
        list(ShardReader([p], schema, policy=BadRowPolicy("fail")))


@pytest.mark.parametrize("second,message", [
    ("rid,txt,extra,click", r"b.csv: its header differs from .*a.csv's: column 1 is 'rid' "
                            r"here, 'txt' there"),
    ("txt,rid,extra", r"b.csv: its header differs .*: 3 columns here, 4 there"),
])
def test_files_with_different_headers_are_refused(tmp_path: Path, second: str,
                                                  message: str) -> None:
    write_rid_file(tmp_path / "a.csv", range(5))
    write_rid_file(tmp_path / "b.csv", range(5), header=second)
    with pytest.raises(DataError, match=message):
        ShardReader([tmp_path / "a.csv", tmp_path / "b.csv"], rid_spec().schema)


def test_header_lacking_a_column_names_file_and_column(tmp_path: Path) -> None:
    write_rid_file(tmp_path / "a.csv", range(5), header="txt,row,extra,click")
    with pytest.raises(DataError, match=r"a.csv: the header lacks column 'rid' \(header: txt, "
                                        r"row, extra, click\)"):
        ShardReader([tmp_path / "a.csv"], rid_spec().schema)
    write_rid_file(tmp_path / "b.csv", range(5), header="txt,rid,rid,click")
    with pytest.raises(DataError, match=r"b.csv: the header names column 'rid' more than once"):
        ShardReader([tmp_path / "b.csv"], rid_spec().schema)


def test_header_with_bom_quotes_and_renamed_columns(tmp_path: Path) -> None:
    p = tmp_path / "r.tsv"
    p.write_bytes(b'\xef\xbb\xbfuser_id:token\trating:float\tts\nu1\t4.5\t9\nu2\t\t9\nu3\t2\t9\n')
    spec = parse_spec({"input": {"header": True, "label": "rating >= 4", "columns": [
        {"name": "user", "type": "str", "from": "user_id:token"},
        {"name": "rating", "type": "float", "from": "rating:float"}]},
        "pipeline": [{"name": "p", "feature": [
            {"name": "u", "inputs": ["user"], "embedding": {"dim": 4},
             "ops": [{"op": "hash_bucket", "buckets": 16}]}]}]})
    r = ShardReader([p], spec.schema, policy=BadRowPolicy("skip", 1.0))
    (b,) = list(r)
    assert b.str_values(0) == ["u1", "u3"] and b.labels.tolist() == [1, 0]
    assert r.counter.by_reason == {"missing_label": 1}
    assert r.counter.first == f"{p}:3: missing_label in column rating:float"
    q = tmp_path / "q.csv"
    q.write_text('"click","r,id","txt"\n1,5,a\n')
    s2 = parse_spec({"input": {"header": True, "columns": [
        {"name": "click", "type": "label"}, {"name": "rid", "type": "int", "from": "r,id"},
        {"name": "txt", "type": "str"}]}, "pipeline": [{"name": "p", "feature": [
            {"name": "t", "inputs": ["txt"], "embedding": {"dim": 4},
             "ops": [{"op": "hash_bucket", "buckets": 16}]}]}]})
    (b,) = list(ShardReader([q], s2.schema))
    assert b.ints.tolist() == [[5]] and b.str_values(0) == ["a"]
