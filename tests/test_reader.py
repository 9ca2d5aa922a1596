"""Sharded streaming reader: every row exactly once for any number of ranks, chunk and
range boundaries, gzip, bad-input policy with file and line, bounded memory."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import COL_INT, COL_LABEL, COL_STR, ColumnSchema
from recs_core.data.reader import ShardReader, count_lines_before
from recs_core.data.shards import plan_shards
from recs_core.errors import DataError

SCHEMA = ColumnSchema(("label", "n", "s"), (COL_LABEL, COL_INT, COL_STR), (8, 24, 64))


def write_rows(path: Path, ids: range, *, gz: bool = False, crlf: bool = False) -> Path:
    """Rows 'label<TAB>id<TAB>tag-of-varying-length': ids identify rows."""
    end = "\r\n" if crlf else "\n"
    text = "".join(f"{i % 2}\t{i}\t{'x' * (i % 37)}{end}" for i in ids).encode()
    if gz:
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


def read_ids(paths, world: int, rank: int, chunk: int = 256, batch: int = 7,
             check: bool = True, **kw) -> list[int]:
    reader = ShardReader([str(p) for p in paths], SCHEMA, rank=rank, world=world,
                         batch_rows=batch, chunk_bytes=chunk, **kw)
    out = []
    for b in reader:
        assert 1 <= len(b) <= batch
        if check:  # rows as write_rows writes them
            assert np.array_equal(b.labels, b.ints[:, 0] % 2)
            assert b.str_len[:, 0].tolist() == (b.ints[:, 0] % 37).tolist()
        out.extend(b.ints[:, 0].tolist())
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("chunk", [64, 300, 1 << 16])
def test_every_row_exactly_once_in_order(tmp_path: Path, world: int, chunk: int) -> None:
    files = [write_rows(tmp_path / "a.txt", range(0, 401)),
             write_rows(tmp_path / "b.txt.gz", range(401, 650), gz=True),
             write_rows(tmp_path / "c.txt", range(650, 660)),
             write_rows(tmp_path / "d.txt", range(660, 662))]  # fewer lines than ranks
    got = [read_ids(files, world, r, chunk=chunk) for r in range(world)]
    flat = sorted(i for part in got for i in part)
    assert flat == list(range(662))
    for part in got:  # each rank's rows keep file order within each file
        for lo, hi in ((0, 401), (401, 650), (650, 660)):
            sub = [i for i in part if lo <= i < hi]
            assert sub == sorted(sub)


def test_batches_are_full_except_the_last(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "a.txt", range(100))
    reader = ShardReader([str(f)], SCHEMA, batch_rows=16, chunk_bytes=128)
    sizes = [len(b) for b in reader]
    assert sizes == [16] * 6 + [4]


def test_plan_gives_gz_whole_files_and_plain_ranges(tmp_path: Path) -> None:
    a = write_rows(tmp_path / "a.txt", range(100))
    g1 = write_rows(tmp_path / "g1.gz", range(1000), gz=True)
    g2 = write_rows(tmp_path / "g2.gz", range(10), gz=True)
    plan = plan_shards([str(a), str(g1), str(g2)], 2)
    gz_owners = {s.path: r for r, spans in enumerate(plan) for s in spans if s.gz}
    assert set(gz_owners) == {str(g1), str(g2)} and gz_owners[str(g1)] != gz_owners[str(g2)]
    ranges = sorted((s.start, s.end) for spans in plan for s in spans if not s.gz)
    assert ranges[0][0] == 0 and ranges[-1][1] == a.stat().st_size
    assert ranges[0][1] == ranges[1][0]


def test_crlf_file(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "a.txt", range(50), crlf=True)
    assert sorted(read_ids([f], 2, 0) + read_ids([f], 2, 1)) == list(range(50))


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt: data file not found"):
        read_ids([tmp_path / "nope.txt"], 1, 0)
    with pytest.raises(DataError, match="is a directory"):
        read_ids([tmp_path], 1, 0)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert read_ids([empty], 1, 0) == []
    assert read_ids([empty, write_rows(tmp_path / "a.txt", range(5))], 2, 1) + read_ids(
        [empty, tmp_path / "a.txt"], 2, 0) != []


def bad_file(tmp_path: Path) -> Path:
    lines = [f"{i % 2}\t{i}\tok" for i in range(200)]
    lines[10] = "1\tnot-a-number\tok"
    lines[150] = "1\t3"
    lines[199] = "7\t199\tok"
    p = tmp_path / "bad.txt"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_fail_policy_names_file_line_and_reason(tmp_path: Path) -> None:
    p = bad_file(tmp_path)
    with pytest.raises(DataError, match=rf"{p}:11: bad_int in column n"):
        read_ids([p], 1, 0, check=False, policy=BadRowPolicy("fail"))
    # rank 1 of 2 starts mid-file and must still report the absolute line number
    with pytest.raises(DataError, match=rf"{p}:151: field_count"):
        read_ids([p], 2, 1, check=False, policy=BadRowPolicy("fail"))


def test_skip_policy_counts_each_reason(tmp_path: Path) -> None:
    p = bad_file(tmp_path)
    reader = ShardReader([str(p)], SCHEMA, chunk_bytes=200, batch_rows=64,
                         policy=BadRowPolicy("skip", 0.05))
    rows = sum(len(b) for b in reader)
    assert rows == 197
    assert reader.counter.lines == 200
    assert reader.counter.by_reason == {"bad_int": 1, "field_count": 1, "bad_label": 1}


def test_skip_policy_stops_past_the_bad_fraction(tmp_path: Path) -> None:
    p = bad_file(tmp_path)
    with pytest.raises(DataError, match=r"too many bad lines: 3 of 200 \(1.5%\)"):
        read_ids([p], 1, 0, check=False, policy=BadRowPolicy("skip", 0.01))


def test_line_longer_than_the_chunk_is_counted(tmp_path: Path) -> None:
    p = tmp_path / "long.txt"
    p.write_text("1\t1\ta\n" + "0\t2\t" + "y" * 5000 + "\n" + "1\t3\tb\n")
    reader = ShardReader([str(p)], SCHEMA, chunk_bytes=256, policy=BadRowPolicy("skip", 0.5))
    ids = [i for b in reader for i in b.ints[:, 0].tolist()]
    assert ids == [1, 3]
    assert reader.counter.by_reason == {"line_too_long": 1}
    with pytest.raises(DataError, match=rf"{p}:2: line_too_long"):
        read_ids([p], 1, 0, check=False, policy=BadRowPolicy("fail"))


def test_binary_garbage_and_truncated_last_line(tmp_path: Path) -> None:
    p = tmp_path / "g.txt"
    rng = np.random.default_rng(0)
    p.write_bytes(b"1\t1\ta\n" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
                  + b"\n0\t2\tb\n1\t3")
    reader = ShardReader([str(p)], SCHEMA, chunk_bytes=1024, policy=BadRowPolicy("skip", 1.0))
    ids = [i for b in reader for i in b.ints[:, 0].tolist()]
    assert ids == [1, 2]
    assert reader.counter.by_reason.get("truncated_last_line") == 1
    assert reader.counter.bad == reader.counter.lines - 2


def test_truncated_gzip_is_a_clear_error(tmp_path: Path) -> None:
    g = write_rows(tmp_path / "a.gz", range(5000), gz=True)
    g.write_bytes(g.read_bytes()[:-200])
    with pytest.raises(DataError, match="a.gz: corrupt or truncated gzip"):
        read_ids([g], 1, 0)


def test_count_lines_before(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "a.txt", range(30))
    data = f.read_bytes()
    for off in (0, 5, len(data) // 2, len(data)):
        assert count_lines_before(str(f), off) == data[:off].count(b"\n")


def test_memory_stays_bounded_by_the_buffer_pool(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "big.txt", range(300_000))  # ~7 MB
    chunk = 64 << 10
    tracemalloc.start()
    n = 0
    for b in ShardReader([str(f)], SCHEMA, chunk_bytes=chunk, batch_rows=512):
        n += len(b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 300_000
    assert peak < 20 * chunk  # pool + one parsed chunk, not the file


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_holdout_splits_each_rank_shard(tmp_path: Path, world: int) -> None:
    """With ``holdout``, iterating gives a prefix of each rank's rows and ``held_out()`` the
    rest (more in tests/test_holdout.py)."""
    files = [write_rows(tmp_path / "a.txt", range(0, 301)),
             write_rows(tmp_path / "b.gz", range(301, 400), gz=True)]
    (tmp_path / "c.txt").write_bytes(b"1\t401\tx\n0\t400\t")  # no final newline
    files.append(tmp_path / "c.txt")
    paths = [str(f) for f in files]
    every = []
    for r in range(world):
        whole = read_ids(paths, world, r, check=False)
        for h in (0.0, 0.25, 0.9, 1.0):
            reader = ShardReader(paths, SCHEMA, rank=r, world=world, batch_rows=7,
                                 chunk_bytes=128, holdout=h)
            train = [i for b in reader for i in b.ints[:, 0].tolist()]
            held = [i for b in reader.held_out() for i in b.ints[:, 0].tolist()]
            assert train + held == whole
            assert reader.counter.lines == len(whole)
            assert (h == 0) <= (held == []) and (h == 1) <= (train == [])
        every += whole
    assert sorted(every) == list(range(402))
