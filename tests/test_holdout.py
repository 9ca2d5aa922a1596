"""The reader's streaming hold-out: ``ShardReader(..., holdout=h)`` yields the lines before
the cut, ``held_out()`` the lines from it, checked against a reference computed here from
the file bytes and the spans' sizes (cut = floor((1 - h) * shard bytes))."""

from __future__ import annotations

import gzip
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from recs_core.data import decompress, shards
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import COL_INT, COL_LABEL, COL_STR, ColumnSchema
from recs_core.data.reader import ShardReader
from recs_core.data.shards import plan_shards
from recs_core.errors import DataError

SCHEMA = ColumnSchema(("label", "n", "s"), (COL_LABEL, COL_INT, COL_STR), (8, 24, 64))
HOLDOUTS = [0.0, 0.05, 0.3, 0.5, 0.9, 0.99, 0.999, 1.0]


def rows_text(ids: range, seed: int = 0) -> bytes:
    """'label<TAB>id<TAB>tag': tags of random letters (poorly compressible), length id % 37."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
    out = []
    for i in ids:
        tag = letters[rng.integers(0, len(letters), i % 37)].tobytes().decode()
        out.append(f"{i % 2}\t{i}\t{tag}\n")
    return "".join(out).encode()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def ids_of(batches, batch_rows: int) -> list[int]:
    out: list[int] = []
    sizes = []
    for b in batches:
        sizes.append(len(b))
        assert np.array_equal(b.labels, b.ints[:, 0] % 2)
        assert b.str_len[:, 0].tolist() == (b.ints[:, 0] % 37).tolist()
        out.extend(b.ints[:, 0].tolist())
    assert all(s == batch_rows for s in sizes[:-1]) and all(1 <= s <= batch_rows for s in sizes)
    return out


def read_both(paths, world: int, rank: int, holdout: float, *, chunk: int = 256,
              batch: int = 7, **kw) -> tuple[list[int], list[int], ShardReader]:
    r = ShardReader([str(p) for p in paths], SCHEMA, rank=rank, world=world, batch_rows=batch,
                    chunk_bytes=chunk, holdout=holdout, **kw)
    train = ids_of(r, batch)
    held = ids_of(r.held_out(), batch)
    assert (r.rows, r.held_rows) == (len(train), len(held))
    return train, held, r


def reference(paths, world: int, rank: int, holdout: float) -> tuple[list[int], list[int]]:
    """Ids of this rank's training and held-out lines, from the bytes alone (plain files):
    a line belongs to the span its first byte lies in; its shard position is the bytes of
    the spans before plus its offset in its span; held out iff position >= cut."""
    spans = plan_shards([str(p) for p in paths], world)[rank]
    total = sum(s.end - s.start for s in spans)
    cut = math.floor((1.0 - holdout) * total)
    train, held, off = [], [], 0
    for s in spans:
        data = Path(s.path).read_bytes()
        starts = [0] + [i + 1 for i in range(len(data) - 1) if data[i] == 10]
        for p in starts:
            if s.start <= p < s.end:
                line_id = int(data[p:data.index(b"\n", p)].split(b"\t")[1])
                (held if off + p - s.start >= cut else train).append(line_id)
        off += s.end - s.start
    return train, held


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("chunk", [64, 300, 1 << 16])
def test_plain_files_match_the_byte_reference(tmp_path: Path, world: int, chunk: int) -> None:
    files = [write(tmp_path / "a.txt", rows_text(range(0, 300))),
             write(tmp_path / "e.txt", b""),
             write(tmp_path / "b.txt", rows_text(range(300, 320), seed=1)),
             write(tmp_path / "c.txt", rows_text(range(320, 322), seed=2))]  # < ranks lines
    for h in HOLDOUTS:
        every = []
        for r in range(world):
            train, held, _ = read_both(files, world, r, h, chunk=chunk)
            assert (train, held) == reference(files, world, r, h), (h, r)
            every += train + held
            if h == 0:
                assert held == []
            if h == 1:
                assert train == []
        assert sorted(every) == list(range(322))


@pytest.mark.parametrize("world", [1, 2])
def test_cut_at_every_line_start_and_next_to_it(tmp_path: Path, world: int) -> None:
    """The cut placed on each line start and one byte either side of it."""
    data = rows_text(range(40))
    files = [write(tmp_path / "a.txt", data)]
    for r in range(world):
        spans = plan_shards([str(files[0])], world)[r]
        total = sum(s.end - s.start for s in spans)
        starts = [0] + [i + 1 - spans[0].start for i in range(len(data) - 1) if data[i] == 10]
        targets = sorted({t + d for t in starts for d in (-1, 0, 1)} & set(range(total + 1)))
        for target in targets:
            h = 1.0 - (target + 0.5) / total  # floor((1 - h) * total) == target
            assert math.floor((1.0 - h) * total) == target
            train, held, rd = read_both(files, world, r, h, chunk=64)
            assert rd.cut == target
            assert (train, held) == reference(files, world, r, h), (r, target)


@pytest.mark.parametrize("block", [None, 700])
def test_gz_split_is_a_prefix_and_a_suffix(tmp_path: Path, block: int | None,
                                           monkeypatch) -> None:  # noqa: ANN001
    """.gz positions are approximate, so: train + held = the rank's rows in order, for
    every fraction, chunk size and zlib schedule, with the same split on every call; with
    a file in one range per rank, or in ranges of 700 bytes dealt to the ranks in turn."""
    if block is not None:
        monkeypatch.setattr(shards, "COMPRESSED_BLOCK", block)
    files = [write(tmp_path / "a.txt", rows_text(range(0, 200))),
             write(tmp_path / "g1.gz", rows_text(range(200, 1200), seed=1), gz=True),
             write(tmp_path / "g2.gz", rows_text(range(1200, 1500), seed=2), gz=True),
             write(tmp_path / "e.gz", b"")]
    for sched in ((64 << 10, 256 << 10), (64, 256), (1000, 77)):
        monkeypatch.setattr(decompress, "Z_READ", sched[0])
        monkeypatch.setattr(decompress, "Z_OUT", sched[1])
        for world in (1, 2, 3, 4):
            whole = [read_both(files, world, r, 0.0)[0] for r in range(world)]
            assert sorted(i for w in whole for i in w) == list(range(1500))
            for h in HOLDOUTS:
                for r in range(world):
                    train, held, _ = read_both(files, world, r, h)
                    assert train + held == whole[r], (sched, world, h, r)
                    again = [read_both(files, world, r, h, chunk=c, batch=b)[:2]
                             for c, b in ((64, 1), (1 << 16, 1000))]
                    assert again == [(train, held)] * 2
                    if h == 1:
                        assert train == []


def test_gz_held_fraction_is_close_to_the_bytes_fraction(tmp_path: Path,
                                                         monkeypatch) -> None:  # noqa: ANN001
    g = write(tmp_path / "g.gz", rows_text(range(40_000), seed=3), gz=True)
    for sched in ((64 << 10, 256 << 10), (64, 256)):
        monkeypatch.setattr(decompress, "Z_READ", sched[0])
        monkeypatch.setattr(decompress, "Z_OUT", sched[1])
        for h in (0.1, 0.5, 0.9):
            train, held, r = read_both([g], 1, 0, h, chunk=1 << 16, batch=4096)
            assert r.shard_bytes == g.stat().st_size
            assert r.cut == math.floor((1 - h) * r.shard_bytes)
            assert train + held == list(range(40_000))
            assert abs(len(held) / 40_000 - h) < 0.02, (sched, h, len(held))


def test_gz_cut_does_not_depend_on_how_the_stream_is_read(tmp_path: Path) -> None:
    data = rows_text(range(3000), seed=4)
    g = write(tmp_path / "g.gz", data, gz=True)
    cut = g.stat().st_size // 3
    found = set()
    for step in (1, 7, 4096, 1 << 20):
        with open(g, "rb") as f:
            s = decompress.Decompressed(f, "gzip", [cut])
            buf = bytearray(step)
            out = bytearray()
            while n := (s.readline(step) if step == 7 else s.readinto(memoryview(buf))):
                out += n if step == 7 else buf[:n]
            assert bytes(out) == data
            found.add(s.offset_of(cut))
    assert len(found) == 1 and 0 < (at := found.pop()) < len(data)
    with open(g, "rb") as f:  # skip_to lands on the first line at or after offset_of(cut)
        s = decompress.Decompressed(f, "gzip", [cut])
        lfs, pos = s.skip_to(cut)
        assert pos >= at and data[pos - 1] == 10 and data[:pos].count(b"\n") == lfs
        assert data[at - 1:pos].count(b"\n") <= 1
        line = s.readline()  # bytes given back are read again, then the stream goes on
        s.unread(line[5:])
        s.unread(line[:5])
        assert s.readline() == line and s.tell() == pos + len(line)
        assert s.skip_to(cut) == (0, s.tell())  # a cut already passed: nothing to skip


def bad_lines_file(tmp_path: Path, gz: bool) -> Path:
    lines = rows_text(range(200)).decode().splitlines()
    for k, bad in ((10, "1\tnot-a-number\tok"), (99, "1\t3"), (100, "7\t100\t"),
                   (101, "1\tx\ty"), (150, "1\t3"), (199, "0\t1\t2\t3")):
        lines[k] = bad
    return write(tmp_path / ("bad.gz" if gz else "bad.txt"), ("\n".join(lines) + "\n").encode(),
                 gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_lines_are_counted_once(tmp_path: Path, gz: bool, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(decompress, "Z_READ", 64)
    monkeypatch.setattr(decompress, "Z_OUT", 256)
    monkeypatch.setattr(shards, "COMPRESSED_BLOCK", 300)  # several ranges a rank
    p = bad_lines_file(tmp_path, gz)
    for world in (1, 2, 3, 4):
        for h in HOLDOUTS:
            lines, bad, ids = 0, {}, []
            for r in range(world):
                rd = ShardReader([str(p)], SCHEMA, rank=r, world=world, batch_rows=5,
                                 chunk_bytes=128, holdout=h, policy=BadRowPolicy("skip", 0.5))
                ids += [i for b in rd for i in b.ints[:, 0].tolist()]
                ids += [i for b in rd.held_out() for i in b.ints[:, 0].tolist()]
                lines += rd.counter.lines
                for k, v in rd.counter.by_reason.items():
                    bad[k] = bad.get(k, 0) + v
            assert lines == 200, (world, h)
            assert bad == {"bad_int": 2, "field_count": 3, "bad_label": 1}, (world, h)
            assert sorted(ids) == sorted(set(range(200)) - {10, 99, 100, 101, 150, 199})


@pytest.mark.parametrize("gz", [False, True])
def test_fail_policy_raises_in_the_stream_holding_the_line(tmp_path: Path, gz: bool,
                                                           monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(decompress, "Z_READ", 64)
    monkeypatch.setattr(decompress, "Z_OUT", 256)
    lines = rows_text(range(200)).decode().splitlines()
    lines[189] = "1\t3"
    p = write(tmp_path / ("f.gz" if gz else "f.txt"), ("\n".join(lines) + "\n").encode(), gz=gz)
    rd = ShardReader([str(p)], SCHEMA, batch_rows=8, chunk_bytes=128, holdout=0.5,
                     policy=BadRowPolicy("fail"))
    assert len(ids_of(rd, 8)) > 50  # the bad line is well after the cut
    with pytest.raises(DataError, match=rf"{p}:190: field_count"):
        list(rd.held_out())
    rd = ShardReader([str(p)], SCHEMA, batch_rows=8, chunk_bytes=128, holdout=0.02,
                     policy=BadRowPolicy("fail"))
    with pytest.raises(DataError, match=rf"{p}:190: field_count"):
        list(rd)


@pytest.mark.parametrize("chunk", [256, 1 << 16])
def test_long_line_crossing_the_cut(tmp_path: Path, chunk: int) -> None:
    """A line that starts before the cut and ends after it is a training line (here longer
    than the chunk: counted once as line_too_long); the line after it is held out."""
    head = rows_text(range(20))
    long = b"0\t20\t" + b"y" * 5000 + b"\n"
    data = head + long + rows_text(range(21, 40), seed=1)
    p = write(tmp_path / "long.txt", data)
    h = 1 - (len(head) + 2000) / len(data)  # the cut falls inside the long line
    rd = ShardReader([str(p)], SCHEMA, batch_rows=4, chunk_bytes=chunk, holdout=h,
                     policy=BadRowPolicy("skip", 0.5))
    assert len(head) < rd.cut < len(head) + len(long)
    train = [i for b in rd for i in b.ints[:, 0].tolist()]
    held = [i for b in rd.held_out() for i in b.ints[:, 0].tolist()]
    assert held == list(range(21, 40))
    if chunk == 256:
        assert train == list(range(20))
        assert rd.counter.by_reason == {"line_too_long": 1}
    else:  # fits the chunk: 5000 > the column's 64 bytes
        assert train == list(range(20)) and sum(rd.counter.by_reason.values()) == 1
    assert rd.counter.lines == 40


def test_long_line_crossing_a_rank_boundary_is_read_once(tmp_path: Path) -> None:
    data = rows_text(range(10)) + b"0\t10\t" + b"y" * 5000 + b"\n" + rows_text(range(11, 20))
    p = write(tmp_path / "long.txt", data)
    for world in (2, 3):
        ids, lines = [], 0
        for r in range(world):
            rd = ShardReader([str(p)], SCHEMA, rank=r, world=world, chunk_bytes=256,
                             policy=BadRowPolicy("skip", 0.5))
            ids += [i for b in rd for i in b.ints[:, 0].tolist()]
            lines += rd.counter.lines
        assert sorted(ids) == [i for i in range(20) if i != 10] and lines == 20


def test_empty_and_wholly_held_out_shards(tmp_path: Path) -> None:
    empty = write(tmp_path / "e.txt", b"")
    for h in HOLDOUTS:
        assert read_both([empty], 1, 0, h)[:2] == ([], [])
    empty_gz = write(tmp_path / "e.gz", b"", gz=True)
    assert read_both([empty_gz], 1, 0, 0.5)[:2] == ([], [])
    a = write(tmp_path / "a.txt", rows_text(range(100)))
    b = write(tmp_path / "b.txt", rows_text(range(100, 110), seed=1))
    # the whole shard held out
    assert read_both([a, b], 2, 1, 1.0)[:2] == ([], reference([a, b], 2, 1, 1.0)[1])
    # b.txt lies wholly past the cut: every one of its lines is held out
    train, held, _ = read_both([a, b], 1, 0, 1 - a.stat().st_size / (a.stat().st_size
                                                                  + b.stat().st_size))
    assert train == list(range(100)) and held == list(range(100, 110))
    # a one-line file (5 bytes): the line starts at 0, held out only when the cut is 0
    one = write(tmp_path / "one.txt", rows_text(range(1)))
    assert read_both([one], 1, 0, 0.5)[:2] == ([0], [])  # cut floor(2.5) = 2
    assert read_both([one], 1, 0, 0.9)[:2] == ([], [0])  # cut floor(0.5) = 0


def test_gzip_members_padding_and_truncation(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(decompress, "Z_READ", 100)
    g = tmp_path / "m.gz"
    g.write_bytes(gzip.compress(rows_text(range(300))) + b"\0" * 300
                  + gzip.compress(rows_text(range(300, 500), seed=1)))
    for h in (0.0, 0.3, 0.8):
        train, held, _ = read_both([g], 1, 0, h)
        assert train + held == list(range(500))
    t = write(tmp_path / "t.gz", rows_text(range(3000)), gz=True)
    t.write_bytes(t.read_bytes()[:-200])
    for h in (0.2, 0.9):
        r = ShardReader([str(t)], SCHEMA, holdout=h)
        with pytest.raises(DataError, match="t.gz: corrupt or truncated gzip"):
            list(r)
            list(r.held_out())


def test_holdout_must_be_a_fraction(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", rows_text(range(5)))
    for h in (-0.1, 1.5):
        with pytest.raises(ValueError, match="holdout"):
            ShardReader([str(a)], SCHEMA, holdout=h)


def test_held_out_memory_stays_bounded(tmp_path: Path) -> None:
    f = write(tmp_path / "big.txt", rows_text(range(200_000)))  # ~5 MB
    chunk = 64 << 10
    for gz in (False, True):
        if gz:
            f = write(tmp_path / "big.gz", f.read_bytes(), gz=True)
        r = ShardReader([str(f)], SCHEMA, chunk_bytes=chunk, batch_rows=512, holdout=0.5)
        n = sum(len(b) for b in r)
        tracemalloc.start()
        m = sum(len(b) for b in r.held_out())
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert n + m == 200_000 and abs(m / 200_000 - 0.5) < 0.02
        assert peak < 20 * chunk + 4 * decompress.Z_OUT, (gz, peak)
