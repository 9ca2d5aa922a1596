"""Sharded streaming reader: every row exactly once for any number of ranks, chunk and
range boundaries, gzip, bad-input policy with file and line, bounded memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recs_core.data import decompress, shards
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.parse import COL_INT, COL_LABEL, COL_STR, ColumnSchema, TextFormat
from recs_core.data.reader import ShardReader, count_lines_before
from recs_core.data.shards import plan_shards
from recs_core.errors import DataError
from tests.conftest import ROOT, run_mpi
from tests.test_sources import zst

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


def test_plan_cuts_every_file_into_ranges(tmp_path: Path) -> None:
    """Plain files: one byte range per rank; compressed ones: ranges of about ``block``
    compressed bytes dealt to the ranks in turn (block 0: one per rank). Together each
    file's ranges cover it once; one rank gets each file whole."""
    a = write_rows(tmp_path / "a.txt", range(100))
    g1 = write_rows(tmp_path / "g1.gz", range(3000), gz=True)
    g2 = write_rows(tmp_path / "g2.gz", range(10), gz=True)
    files = [str(a), str(g1), str(g2)]
    size = {p: Path(p).stat().st_size for p in files}
    for world in (1, 2, 3):
        for block in (0, 1000, 1 << 20):
            plan = plan_shards(files, world, block)
            for p in files:
                ranges = sorted((s.start, s.end, r) for r, spans in enumerate(plan)
                                for s in spans if s.path == p)
                assert ranges[0][0] == 0 and ranges[-1][1] == size[p]
                assert all(x[1] == y[0] and x[2] != y[2] for x, y in zip(ranges, ranges[1:]))
                blocks = 1 if p == str(a) or not block else -(-size[p] // (world * block))
                assert len(ranges) == min(world * blocks, size[p]) if world > 1 else 1
                if p == str(g1) and block == 1000 and world > 1:
                    assert size[p] > 3 * world * block  # several ranges per rank
                    assert max(e - s for s, e, _ in ranges) <= block + 1
            for spans in plan:  # in window order
                assert spans == sorted(spans, key=lambda s: (files.index(s.path), s.start))


def compressed(path: Path, text: bytes) -> Path:
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else zst(text, frames=2))
    return path


# (suffix, rows, block): a zstd position is only as fine as a zstd block (its output comes
# at once, after its compressed bytes were read) plus Arrow's read-ahead (~64 KiB): more
# rows and larger ranges for it, and a looser share
SHARED = [(".gz", 6000, 300, 0.1), (".zst", 60_000, 20_000, 0.35)]


@pytest.mark.parametrize("suffix,rows,small,share", SHARED)
@pytest.mark.parametrize("block", ["small", 0, None])
def test_compressed_files_are_shared_by_the_ranks(tmp_path: Path, suffix: str, rows: int,
                                                  small: int, share: float, block,  # noqa: ANN001
                                                  monkeypatch) -> None:  # noqa: ANN001
    """A compressed file is read by every rank, each its share of the rows (ranges of
    ``block`` compressed bytes dealt in turn; 0: one per rank; None: the default): the
    rows of the plain file, each once, in file order on each rank; every rank
    decompresses up to its last range and hands over only its own lines."""
    if suffix == ".gz":  # many pieces, each position range narrow
        monkeypatch.setattr(decompress, "Z_READ", 97)
        monkeypatch.setattr(decompress, "Z_OUT", 1000)
    if block is not None:
        monkeypatch.setattr(shards, "COMPRESSED_BLOCK", small if block == "small" else block)
    rng = np.random.default_rng(1)
    text = "".join(f"{i % 2}\t{i}\t{'x' * (i % 37)}{rng.integers(1 << 30):x}\n"
                   for i in range(rows)).encode()
    plain = tmp_path / "a.txt"
    plain.write_bytes(text)
    f = compressed(tmp_path / f"a{suffix}", text)
    want = read_ids([plain], 1, 0, check=False)
    for world in (2, 3, 4, 1):
        for chunk in (256, 1 << 16):
            got, spent = [], []
            for r in range(world):
                reader = ShardReader([str(f)], SCHEMA, rank=r, world=world, batch_rows=7,
                                     chunk_bytes=chunk)
                ids = [i for b in reader for i in b.ints[:, 0].tolist()]
                assert ids == sorted(ids) and reader.counter.lines == len(ids)
                assert abs(len(ids) - rows / world) <= share * rows / world, (world, r)
                got.append(ids)
                spent.append(reader.decompressed)
            assert sorted(i for ids in got for i in ids) == want
            assert sum(s["kept_bytes"] for s in spent) == len(text)
            assert spent[-1]["bytes"] == len(text)  # the last rank decompresses it all
            if block == "small" and world > 1:  # interleaved: every rank decompresses
                assert all(s["bytes"] > 0.8 * len(text) for s in spent)  # (nearly) all


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
@pytest.mark.parametrize("header", [False, True])
def test_bad_lines_of_a_shared_compressed_file_are_named(tmp_path: Path, suffix: str,
                                                         header: bool, monkeypatch) -> None:  # noqa: ANN001
    """On every rank, a bad line of a compressed file read in ranges is named by its line
    in the file (the header line counted), by the one rank that reads it."""
    monkeypatch.setattr(shards, "COMPRESSED_BLOCK", 200)
    schema = ColumnSchema(SCHEMA.names, SCHEMA.kinds, SCHEMA.max_bytes,
                          text=TextFormat(header=header))
    for bad in (0, 57, 640, 1999):
        lines = [f"{i % 2}\t{i}\t{'q' * (i % 11)}" for i in range(2000)]
        lines[bad] = f"1\t{bad}x\tbad"
        head = "label\tn\ts\n" if header else ""
        f = compressed(tmp_path / f"b{bad}{suffix}", (head + "\n".join(lines) + "\n").encode())
        raised = []
        for world in (2, 3):
            for r in range(world):
                reader = ShardReader([str(f)], schema, rank=r, world=world, chunk_bytes=512,
                                     policy=BadRowPolicy("fail"))
                try:
                    list(reader)
                except DataError as e:
                    raised.append(str(e))
        line = bad + 1 + header
        assert raised == [f"bad input: {f}:{line}: bad_int in column n (use --on-error skip "
                          f"to skip bad lines)"] * 2, (bad, raised)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,block", [(2, None), (3, 20_000)])
def test_a_compressed_window_on_n_ranks_trains_like_the_plain_file(
        tmp_path: Path, sample_1200: Path, ranks: int, block: int | None) -> None:
    """The 1,200 real rows as one plain, one .gz and one .zst file, on 2 ranks (a range
    per rank) and 3 (ranges of 20 kB dealt in turn): every row read once over the ranks
    (the rows' CRCs), the same steps of the configured global batch, the hold-out about
    the same, each rank's decompression reported, and the scores in row order."""
    text = sample_1200.read_bytes()
    files = [tmp_path / "w.txt", tmp_path / "w.txt.gz", tmp_path / "w.txt.zst"]
    files[0].write_bytes(text)
    files[1].write_bytes(gzip.compress(text))
    files[2].write_bytes(zst(text))
    size = str(shards.COMPRESSED_BLOCK if block is None else block)
    r = run_mpi(ranks, [str(ROOT / "tests" / "mpi" / "compressed_check.py"), size,
                        *map(str, files)], timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    plain = out[str(files[0])]
    assert len(plain["crcs"]) == 1200 and plain["decompression"] is None
    for f in files[1:]:
        got = out[str(f)]
        assert got["crcs"] == plain["crcs"]  # every row, once
        assert all(abs(n - 1200 / ranks) < 0.05 * 1200 for n in got["rows_per_rank"])
        steps = got["rows_per_step"]
        assert len(steps) == len(plain["rows_per_step"]) == got["figures"]["window_steps"]
        assert steps[:-1] == plain["rows_per_step"][:-1] == [101] * (len(steps) - 1)
        assert got["figures"]["rows"] == 1200 and got["figures"]["world_size"] == ranks
        assert abs(got["figures"]["eval_rows"] - plain["figures"]["eval_rows"]) <= 24
        spent = got["decompression"]
        assert len(spent["decompressed_mb"]) == ranks
        assert all(p < d for p, d in zip(spent["parsed_mb"], spent["decompressed_mb"]))
    assert max(plain["scores_differ"]) < 1e-5


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
    a = write_rows(tmp_path / "a.txt", range(5))
    for files in ([empty, a], [a, empty], [empty, a, empty]):
        parts = [read_ids(files, 2, r) for r in (0, 1)]
        assert sorted(parts[0] + parts[1]) == list(range(5)), files  # no row lost or doubled
        assert parts[0] == sorted(parts[0]) and parts[1] == sorted(parts[1])


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


# ---- the shard boundary rule for lines of any length ------------------------------------

WIDE = ColumnSchema(("label", "n", "s"), (COL_LABEL, COL_INT, COL_STR), (8, 24, 1 << 24))


def row(i: int, length: int) -> bytes:
    """Row ``i`` as exactly ``length`` bytes (newline included; length >= 16)."""
    head = f"{i % 2}\t{i}\t".encode()
    return head + b"z" * (length - len(head) - 1) + b"\n"


def expected_rows(data: bytes, chunk: int) -> tuple[Counter, int, int]:
    """(ids a reader must yield, lines, lines longer than the chunk), from the bytes."""
    ids: Counter = Counter()
    lines = data.splitlines(keepends=True)
    too_long = [len(x) > chunk for x in lines]
    for x, bad in zip(lines, too_long):
        if not bad:
            ids[int(x.split(b"\t")[1])] += 1
    return ids, len(lines), sum(too_long)


def read_all_ranks(path: Path, world: int, chunk: int) -> tuple[Counter, int, int]:
    ids: Counter = Counter()
    lines = bad = 0
    for r in range(world):
        rd = ShardReader([str(path)], WIDE, rank=r, world=world, batch_rows=5,
                         chunk_bytes=chunk, policy=BadRowPolicy("skip", 1.0))
        ids.update(i for b in rd for i in b.ints[:, 0].tolist())
        lines += rd.counter.lines
        bad += rd.counter.by_reason.get("line_too_long", 0)
    return ids, lines, bad


def padded(head: list[bytes], size: int, first_id: int) -> bytes:
    """``head`` then short rows, the last of a length that makes the file ``size`` bytes."""
    data = b"".join(head)
    i = first_id
    while size - len(data) > 80:
        data += row(i, 40 + i % 23)
        i += 1
    assert size - len(data) >= 16
    return data + row(i, size - len(data))


@pytest.mark.parametrize("chunk", [256, 1 << 14])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_a_shard_boundary_anywhere_in_a_long_line(tmp_path: Path, world: int,
                                                  chunk: int) -> None:
    """Every rank boundary k of ``world`` placed on a long line (longer than the 256-byte
    chunk; within the 16 KiB one): on its first byte, its second, its middle, its line
    feed, the byte after it. The rows read by all ranks are the file's rows, each once,
    and the lines counted are the file's lines."""
    head = [row(i, 30 + i % 17) for i in range(300)]
    a = sum(len(x) for x in head)  # > 3x the long line: boundary 3 of 4 can be on it
    long_len = 3000
    head.append(row(300, long_len))
    p = tmp_path / "long.txt"
    for k in range(1, world):
        for t in (a, a + 1, a + long_len // 2, a + long_len - 1, a + long_len):
            size = -(-t * world // k)  # the least size with size * k // world == t
            while size * k // world != t:
                size += 1
            data = padded(head, size, 301)
            p.write_bytes(data)
            assert len(data) * k // world == t
            want, lines, too_long = expected_rows(data, chunk)
            assert read_all_ranks(p, world, chunk) == (want, lines, too_long), (k, t)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_random_long_lines_each_row_once(tmp_path: Path, world: int) -> None:
    """Files of short lines and lines up to 8x the chunk, boundaries wherever they fall:
    the multiset of rows read over the ranks is the file's (rows are distinct ids, so a
    doubled or lost row shows), with every line counted once."""
    rng = np.random.default_rng(world)
    p = tmp_path / "mixed.txt"
    for _ in range(12):
        n = int(rng.integers(5, 40))
        lengths = np.where(rng.random(n) < 0.3, rng.integers(200, 2048, n),
                           rng.integers(16, 60, n))
        data = b"".join(row(i, int(m)) for i, m in enumerate(lengths))
        p.write_bytes(data)
        assert read_all_ranks(p, world, 256) == expected_rows(data, 256)


def test_lines_longer_than_the_default_chunk_at_boundaries(tmp_path: Path) -> None:
    """The real case: 5 MiB lines across the rank boundaries with the default 4 MiB chunk
    (8196654 read 10,001 rows on 2 ranks and 10,003 on 4 instead of 10,000)."""
    from recs_core.data.reader import DEFAULT_CHUNK_BYTES

    long_len = (5 << 20) + 1
    short = [[row(s * 2500 + i, 30 + i % 19) for i in range(2500)] for s in range(4)]
    parts = short[0]
    for s in range(1, 4):  # segments of equal size: each 4-rank boundary is in a long line
        parts = parts + [row(20000 + s, long_len)] + short[s]
    data = b"".join(parts)
    p = tmp_path / "long.txt"
    p.write_bytes(data)
    want = expected_rows(data, DEFAULT_CHUNK_BYTES)
    assert sum(want[0].values()) == 10000 and want[2] == 3
    for world in (1, 2, 3, 4):
        assert read_all_ranks(p, world, DEFAULT_CHUNK_BYTES) == want, world


def test_a_reader_left_early_stops_its_thread_at_once(tmp_path: Path) -> None:
    """A consumer that stops after one batch (the gate's first held-out rows, a preempted
    pass) ends the reading thread at once: it waited for a free chunk slot, and saw the
    stop only after its 0.5 s poll (0.4 s of every 25,000 compared rows)."""
    import threading
    import time

    f = write_rows(tmp_path / "a.txt", range(20_000))
    reader = ShardReader([str(f)], SCHEMA, batch_rows=16, chunk_bytes=256)
    it = iter(reader)
    next(it)
    time.sleep(0.05)  # the thread fills the free slots, then waits for one
    t0 = time.perf_counter()
    it.close()
    assert time.perf_counter() - t0 < 0.25
    assert not any(t.name == "recs-reader" and t.is_alive() for t in threading.enumerate())
