"""``--data`` as files, directories and globs (``recs_core.data.sources``), and ``.zst``
text next to ``.gz``: the expanded order against lists written out by hand, and the rows
read against the files' own lines (every row once over 1, 2 and 3 ranks)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from recs_core.data import decompress
from recs_core.data.parse import COL_FLOAT, COL_INT, COL_LABEL, COL_STR, ColumnSchema
from recs_core.data.reader import ShardReader
from recs_core.data.sources import expand_sources, open_input
from recs_core.errors import DataError
from tests.conftest import CONFIGS, run_mpi

SCHEMA = ColumnSchema(("label", "n", "s"), (COL_LABEL, COL_INT, COL_STR), (8, 24, 64))


def rows_text(ids: range) -> bytes:
    return "".join(f"{i % 2}\t{i}\tt{i * 7 % 13}\n" for i in ids).encode()


def zst(data: bytes, frames: int = 1) -> bytes:
    """``data`` as zstd, in ``frames`` concatenated frames (what `zstd` of parts gives)."""
    import pyarrow as pa

    out = []
    cuts = np.linspace(0, len(data), frames + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as s:
            s.write(data[a:b])
        out.append(sink.getvalue().to_pybytes())
    return b"".join(out)


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else
                     zst(data) if path.suffix == ".zst" else data)
    return path


def ids_of(batches) -> list[int]:  # noqa: ANN001
    return [int(x) for b in batches for x in b.ints[:, 0]]


@pytest.fixture
def window(tmp_path: Path) -> tuple[Path, list[str]]:
    """A Hive-partitioned window (with the debris such trees carry) and its files in the
    expected order: dt, then hour numerically (2 before 10), then file name."""
    root = tmp_path / "logs"
    order = ["dt=2026-11-30/hour=23/part-0.txt",
             "dt=2026-12-01/hour=2/part-0.gz",
             "dt=2026-12-01/hour=2/part-1.txt",
             "dt=2026-12-01/hour=10/part-0.zst",
             "dt=2026-12-01/hour=10/part-00.txt"]
    for k, rel in enumerate(order):
        put(root / rel, rows_text(range(k * 100, k * 100 + 97 + k)))
    for debris in ("_SUCCESS", "dt=2026-12-01/hour=2/.part-0.txt.crc",
                   "dt=2026-12-01/_temporary/part-9.txt", ".staging/hour=1/x.txt",
                   "dt=2026-12-01/hour=10/_committed_123"):
        put(root / debris, b"not data\n")
    return root, [str(root / rel) for rel in order]


def test_a_directory_is_read_in_partition_order(window) -> None:  # noqa: ANN001
    root, want = window
    assert expand_sources([root]) == want
    assert expand_sources([str(root) + "/"]) == want
    # arguments keep their order; a file is taken as given
    assert expand_sources([want[3], root / "dt=2026-11-30"]) == [want[3], want[0]]


def test_partition_values_compare_as_numbers_only_when_both_are(tmp_path: Path) -> None:
    for v in ("10", "9", "-1", "x", "09a", "b"):
        put(tmp_path / f"k={v}" / "f.txt", b"1\t1\ta\n")
    got = [Path(p).parent.name for p in expand_sources([tmp_path])]
    assert got == ["k=-1", "k=9", "k=10", "k=09a", "k=b", "k=x"]


def test_globs(window, monkeypatch) -> None:  # noqa: ANN001
    root, want = window
    assert expand_sources([f"{root}/dt=*/hour=*/part-*"]) == want
    assert expand_sources([f"{root}/dt=2026-12-01/hour=*/*.txt"]) == [want[2], want[4]]
    assert expand_sources([f"{root}/**/*.txt"]) == [want[0], want[2], want[4]]
    assert expand_sources([f"{root}/dt=2026-12-01/hour=*"]) == want[1:]  # dirs are walked
    monkeypatch.chdir(root)
    assert expand_sources(["dt=*/hour=1?"]) == [os.path.relpath(w, root) for w in want[3:]]


def test_files_being_written_are_skipped_with_a_warning(tmp_path: Path) -> None:
    """In a walked directory or a glob's matches, files still being written (an upload's
    ``.tmp`` cut mid-line, ``.inprogress``, an HDFS copy's ``._COPYING_``) are skipped and
    named in one warning, checksums (``part-0.crc``) silently; a file named on its own
    is read."""
    root = tmp_path / "w"
    put(root / "part-0.txt", rows_text(range(100)))
    cut = put(root / "part-1.txt.tmp", rows_text(range(100, 200))[:-5])
    put(root / "hour=2" / "part-2.txt.inprogress", rows_text(range(200, 300)))
    put(root / "part-3.txt._COPYING_", rows_text(range(300, 400)))
    put(root / "part-0.crc", b"\x00\x01 checksum")
    for arg in (root, f"{root}/**/part-*"):
        reader, warnings = open_input([arg], SCHEMA)
        assert reader.paths == [str(root / "part-0.txt")]
        assert ids_of(reader) == list(range(100)) and reader.counter.bad == 0
        assert warnings == [f"{root}/hour=2/part-2.txt.inprogress and 2 more: skipped: still "
                            f"being written (a .tmp, .inprogress, ._COPYING_ name)"]
    reader, warnings = open_input([cut], SCHEMA)  # named: read (its cut line counted)
    assert ids_of(reader) == list(range(100, 199)) and warnings == []
    assert reader.counter.by_reason == {"truncated_last_line": 1}


def test_a_glob_enters_each_directory_once(tmp_path: Path) -> None:
    """``**`` through a symbolic link loop, and a second name of a directory: each
    directory is entered once, so each file is found once (no "given more than once")."""
    root = tmp_path / "w"
    put(root / "a" / "x.txt", rows_text(range(10)))
    put(root / "b" / "y.txt", rows_text(range(10, 20)))
    (root / "a" / "loop").symlink_to(root)
    (root / "c").symlink_to(root / "b")
    pattern = f"{root}/**/*.txt"
    assert expand_sources([pattern]) == [str(root / "a" / "x.txt"), str(root / "b" / "y.txt")]
    reader, warnings = open_input([pattern], SCHEMA)
    assert ids_of(reader) == list(range(20)) and warnings == []
    assert expand_sources([f"{root}/c/*.txt"]) == [str(root / "c" / "y.txt")]


def test_nothing_to_read_is_one_clear_error(window, tmp_path: Path) -> None:  # noqa: ANN001
    root, _ = window
    with pytest.raises(DataError, match=r"logs/nope-\*: no data file matches this pattern"):
        expand_sources([root / "nope-*"])
    (tmp_path / "empty" / "_temporary").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no data file in this directory \(names "):
        expand_sources([tmp_path / "empty"])
    # a missing plain path is kept: the reader names it
    with pytest.raises(DataError, match="missing.txt: data file not found"):
        open_input([tmp_path / "missing.txt"], SCHEMA)


def test_cli_glob_without_match_is_one_line(tmp_path: Path) -> None:
    r = run_mpi(1, ["-m", "recs_core", "features", "--config",
                    str(CONFIGS / "criteo_dlrm.toml"), "--data", str(tmp_path / "*.txt")])
    assert r.returncode == 2
    assert r.stderr.strip() == f"recs: error: {tmp_path}/*.txt: no data file matches this pattern"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_of_a_window_once_in_order(window, world: int) -> None:  # noqa: ANN001
    """Plain, .gz and .zst files of a partitioned window (one named twice, read once) over
    ``world`` ranks: every row exactly once; on one rank, in the window's order."""
    root, files = window
    want = []
    for k in range(len(files)):
        want += list(range(k * 100, k * 100 + 97 + k))
    got, warned = [], set()
    for r in range(world):
        reader, warnings = open_input([root, files[2]], SCHEMA, rank=r, world=world,
                                      batch_rows=17)
        assert reader.paths == files
        warned.update(warnings)
        got += ids_of(reader)
    assert warned == {f"{files[2]}: given more than once: read once"}
    assert sorted(got) == want and len(got) == len(want)
    if world == 1:
        assert got == want


@pytest.mark.mpi
def test_features_over_a_directory_on_two_ranks(tmp_path: Path, sample_1200: Path) -> None:
    """`recs features --data DIR` on 2 ranks over real rows in partitions (plain, .gz,
    .zst): every line read, none bad."""
    lines = sample_1200.read_bytes().splitlines(keepends=True)
    for k, rel in enumerate(["hour=2/a.txt", "hour=2/b.gz", "hour=10/a.zst", "hour=11/a.txt"]):
        put(tmp_path / "w" / rel, b"".join(lines[k * 300:(k + 1) * 300]))
    r = run_mpi(2, ["-m", "recs_core", "features", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", str(tmp_path / "w"), "--quiet"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rows"] == out["lines"] == 1200
    assert out["bad_rows_total"] == 0 and out["world_size"] == 2


def test_zst_reads_the_rows_of_the_plain_text(tmp_path: Path) -> None:
    data = rows_text(range(20_000))
    plain = put(tmp_path / "a.txt", data)
    want = ids_of(ShardReader([str(plain)], SCHEMA, batch_rows=999))
    for frames in (1, 3):
        z = tmp_path / f"a{frames}.zst"
        z.write_bytes(zst(data, frames))
        r = ShardReader([str(z)], SCHEMA, batch_rows=999, chunk_bytes=4096)
        got = list(r)
        assert ids_of(got) == want
        assert [b.str_values(0) for b in got] == [b.str_values(0) for b in ShardReader(
            [str(plain)], SCHEMA, batch_rows=999)]
        assert r.spans[0].codec == "zstd"
    empty = tmp_path / "e.zst"
    empty.write_bytes(b"")
    assert ids_of(ShardReader([str(empty)], SCHEMA)) == []


@pytest.mark.parametrize("h", [0.1, 0.5, 0.9])
def test_zst_hold_out_splits_the_rows_once(tmp_path: Path, h: float, monkeypatch) -> None:  # noqa: ANN001
    """A .zst hold-out cut (by compressed position, like .gz): train + held = every row
    in order, the held share near ``h``; the same on every read."""
    monkeypatch.setattr(decompress, "ZSTD_READ", 4096)
    rng = np.random.default_rng(0)
    data = "".join(f"{i % 2}\t{i}\t{rng.integers(1 << 40):x}\n" for i in range(40_000)).encode()
    z = put(tmp_path / "a.zst", data)
    r = ShardReader([str(z)], SCHEMA, batch_rows=4096, holdout=h)
    train, held = ids_of(r), ids_of(r.held_out())
    assert train + held == list(range(40_000))
    assert abs(len(held) / 40_000 - h) < 0.03, len(held)
    assert ids_of(r) == train


def test_corrupt_or_truncated_zst_is_one_clear_error(tmp_path: Path) -> None:
    good = zst(rows_text(range(5000)))
    cases = {"trunc.zst": good[:len(good) // 2], "header.zst": good[:4] + b"\xff" * 20 + good[24:],
             "tail.zst": good + b"garbage", "magic.zst": b"1\t2\tplain text named .zst\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"{name}: corrupt or truncated zstd input: ") as e:
            list(ShardReader([str(tmp_path / name)], SCHEMA))
        assert "\n" not in str(e.value)
    r = run_mpi(1, ["-m", "recs_core", "features", "--config", str(CONFIGS / "criteo_dlrm.toml"),
                    "--data", str(tmp_path / "trunc.zst")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "trunc.zst: corrupt or truncated zstd input: Truncated" in r.stderr


def test_a_mixed_window_needs_one_schema_across_its_runs(tmp_path: Path) -> None:
    """Parquet files split by a text file still need one schema (checked over the window,
    not only over a run of one format)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = ColumnSchema(("label", "x"), (COL_LABEL, COL_FLOAT), (8, 24))
    pq.write_table(pa.table({"label": [1, 0], "x": [1.5, 2.0]}), tmp_path / "a=0.parquet")
    (tmp_path / "a=1.txt").write_text("1\t3.5\n")
    pq.write_table(pa.table({"label": [1], "x": [4]}), tmp_path / "a=2.parquet")
    with pytest.raises(DataError, match="column 'x' is integer here but float in"):
        open_input([tmp_path], schema)
