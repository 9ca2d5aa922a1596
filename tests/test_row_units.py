"""Row identity and reading by line ranges (the data side of an elastic resume): every
reader gives each row its file and data line; today's plan stated as line ranges reads the
same rows in the same batches; ranges dealt over other numbers of ranks read every line of
the window once, the held-out rows staying the first job's."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recs_core.data import shards
from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.decompress import Decompressed
from recs_core.data.lines import count_lf, line_starts, nth_lf, scan_plain
from recs_core.data.parse import COL_INT, COL_LABEL, COL_STR, ColumnSchema, RawBatch, TextFormat
from recs_core.data.reader import ShardReader, text_units
from recs_core.data.sources import default_units, open_input
from recs_core.data.units import LineRange, RankUnits, redistribute
from recs_core.errors import DataError, RecsError
from tests.test_sources import zst

HEADER = "label\tn\ts\n"


def schema(header: bool) -> ColumnSchema:
    return ColumnSchema(("label", "n", "s"), (COL_LABEL, COL_INT, COL_STR), (8, 24, 64),
                        text=TextFormat(header=header))


def good_line(i: int, width: int | None = None) -> str:
    """Row id i's line (its id in column n); a too-long string (a bad row) now and then."""
    s = ("y" * 70) if i % 107 == 11 else "x" * (i % 37 if width is None else width)
    return f"{i % 2}\t{i}\t{s}\n"


def text_line(i: int, width: int | None = None) -> str:
    """Row id i's line, also bad in other ways than Parquet rows can be."""
    if i % 89 == 7:
        return "bad\n"  # field_count
    if i % 151 == 5:
        return "\n"  # empty_line
    return good_line(i, width)


def is_good(i: int, text: bool) -> bool:
    return i % 107 != 11 and not (text and (i % 89 == 7 or i % 151 == 5))


def write_text(path: Path, ids: range, header: bool, last_lf: bool = True,
               line=text_line) -> Path:  # noqa: ANN001
    text = (HEADER if header else "") + "".join(line(i) for i in ids)
    data = (text if last_lf else text[:-1]).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        data = zst(data, frames=2)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, ids: range, group: int) -> Path:
    """Row id i with a too-long string (a bad row) where its text line has one."""
    t = pa.table({"s": [("y" * 70) if i % 107 == 11 else "x" * (i % 37) for i in ids],
                  "n": pa.array(list(ids), pa.int64()),
                  "label": pa.array([i % 2 for i in ids], pa.int8())})
    pq.write_table(t, path, row_group_size=group)
    return path


# per window: (name, ids, kind) of its files; a file's line k is id ids[k]
FILES = {
    "a.txt": (range(0, 700), "text"),
    "b.txt.gz": (range(700, 3700), "text"),
    "c.zst": (range(3700, 8000), "text"),
    "d.txt": (range(8000, 8002), "text"),  # fewer lines than ranks
    "e.txt": (range(0), "text"),  # empty
    "f.txt": (range(8002, 8100), "text"),  # its last line has no line feed
    # read whole by Arrow (~7 kB) before its last lines (~270 kB) come out: the positions
    # of its last bytes are its size
    "g.zst": (range(8100, 12_100), "wide"),
    "p1.parquet": (range(20_000, 22_500), 300),
    "p2.parquet": (range(22_500, 22_600), 1000),
    "p3.parquet": (range(22_600, 24_000), 500),
}
WINDOWS = {"text": ["a.txt", "b.txt.gz", "c.zst", "d.txt", "e.txt", "f.txt", "g.zst"],
           "parquet": ["p1.parquet", "p2.parquet", "p3.parquet"],
           "mixed": ["a.txt", "p1.parquet", "p2.parquet", "b.txt.gz", "p3.parquet", "f.txt"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[bool, Path]:
    """The files, without and with a header line (the Parquet files alike)."""
    out = {}
    for header in (False, True):
        d = tmp_path_factory.mktemp(f"header{int(header)}")
        for name, (ids, kind) in FILES.items():
            if kind in ("text", "wide"):
                write_text(d / name, ids, header, last_lf=name != "f.txt",
                           line=lambda i, w=60 if kind == "wide" else None: text_line(i, w))
            else:
                write_parquet(d / name, ids, kind)
        out[header] = d
    return out


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch) -> None:  # noqa: ANN001
    """Compressed files in ranges of ~3 kB: several per rank."""
    monkeypatch.setattr(shards, "COMPRESSED_BLOCK", 3000)


def window(files: dict[bool, Path], name: str, header: bool) -> tuple[list[str], dict]:
    """(the window's paths, where each row id is: (file index, line))."""
    names = WINDOWS[name]
    where = {i: (f, k) for f, n in enumerate(names) for k, i in enumerate(FILES[n][0])}
    return [str(files[header] / n) for n in names], where


def content(b: RawBatch) -> list[tuple]:
    return list(zip(b.labels.tolist(), b.ints[:, 0].tolist(), b.str_values(0)))


def batches(reader) -> list[list[tuple]]:  # noqa: ANN001
    """Per batch: per row (file, line, label, id, string)."""
    return [[(f, k, *c) for f, k, c in zip(o.file.tolist(), o.file_line.tolist(), content(b))]
            for b, o in reader.with_origins()]


CASES = [("text", False), ("text", True), ("parquet", False), ("mixed", False),
         ("mixed", True)]


@pytest.mark.parametrize("holdout", [0.0, 0.3])
@pytest.mark.parametrize("name,header", CASES)
def test_default_units_read_what_each_rank_reads_today(files, name: str, header: bool,
                                                       holdout: float) -> None:
    """Reading rank r's default units gives rank r's rows in the same batches, with the
    same files and lines (each the line the row was written at), the same held-out
    rows and the same line and bad-line counts; on 1 to 4 ranks."""
    paths, where = window(files, name, header)
    sch = schema(header)
    for world in (1, 2, 3, 4):
        units = default_units(paths, sch, None, world, holdout)
        assert len(units) == world
        every = []
        for r in range(world):
            today, _ = open_input(paths, sch, rank=r, world=world, batch_rows=29,
                                  holdout=holdout)
            mine, _ = open_input(paths, sch, rank=(r + 1) % world, world=world + 1,
                                 holdout=0.5, batch_rows=29, units=units[r])
            a, b = batches(today), batches(mine)
            assert a == b, (world, r)
            for row in (x for batch in a for x in batch):
                assert where[row[3]] == row[:2]  # the line the row was written at
            ha = [content(x) for x in today.held_out()]
            assert ha == [content(x) for x in mine.held_out()]
            assert today.counter.lines == mine.counter.lines
            assert today.counter.by_reason == mine.counter.by_reason
            every += [x[3] for batch in a for x in batch] + [x[1] for h in ha for x in h]
        assert sorted(every) == sorted(i for i in where if is_good(i, i < 20_000))


@pytest.mark.parametrize("chunk", [76, 300, 1 << 16])
def test_ranges_of_text_across_chunk_boundaries(files, chunk: int) -> None:
    """Reading by lines with small chunks (lines longer than a chunk skipped and counted
    as today) gives today's rows and counts."""
    paths, _ = window(files, "text", True)
    sch = schema(True)
    for world, holdout in ((1, 0.0), (3, 0.25)):
        units = text_units(paths, True, world, holdout)
        for r in range(world):
            kw = dict(batch_rows=13, chunk_bytes=chunk)
            today = ShardReader(paths, sch, rank=r, world=world, holdout=holdout, **kw)
            mine = ShardReader(paths, sch, units=units[r], **kw)
            assert batches(today) == batches(mine)
            assert [content(x) for x in today.held_out()] == [
                content(x) for x in mine.held_out()]
            assert today.counter.by_reason == mine.counter.by_reason
            assert ("line_too_long" in today.counter.by_reason) == (chunk == 76)


def test_plain_files_are_scanned_once_and_only_for_origins(files, monkeypatch) -> None:  # noqa: ANN001
    """Iterating scans nothing; with_origins scans each plain file with a part that starts
    mid-file once (its first pass), and gives the rows iterating gives."""
    import recs_core.data.reader as reader_mod

    scanned: list[str] = []

    def counted(path: str, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        scanned.append(Path(path).name)
        return scan_plain(path, *a, **kw)
    monkeypatch.setattr(reader_mod, "scan_plain", counted)
    paths, _ = window(files, "mixed", True)
    a, _ = open_input(paths, schema(True), rank=1, world=3, batch_rows=50, holdout=0.2)
    rows_a = [content(x) for x in a]
    assert scanned == []
    b, _ = open_input(paths, schema(True), rank=1, world=3, batch_rows=50, holdout=0.2)
    assert rows_a == [content(x) for x, _ in b.with_origins()]
    assert sorted(scanned) == ["a.txt", "f.txt"]
    list(b.with_origins())
    assert len(scanned) == 2


def rows(reader) -> list[tuple]:  # noqa: ANN001
    return [row for batch in batches(reader) for row in batch]


@pytest.mark.parametrize("worlds", [(3, 2, 3), (2, 1), (3, 2), (2, 3), (1, 4, 2)])
@pytest.mark.parametrize("name,header", [("text", True), ("parquet", False), ("mixed", False)])
def test_every_line_once_over_changes_of_ranks(files, name: str, header: bool,
                                               worlds: tuple[int, ...]) -> None:
    """A window interrupted at arbitrary rows, its untrained lines redistributed over
    another number of ranks (and again): every row of the window is trained or held out
    exactly once, at its file and line (as one rank reading the whole window finds
    them), and every job holds out the first job's rows."""
    paths, where = window(files, name, header)
    sch = schema(header)
    reference, _ = open_input(paths, sch, batch_rows=100)
    whole = Counter(rows(reference))
    first = default_units(paths, sch, None, worlds[0], 0.2)
    held_first: Counter | None = None
    rng = np.random.default_rng(sum(worlds) * 7 + len(name))
    units, trained = first, Counter()
    for step, world in enumerate(worlds):
        consumed: list[tuple[int, int] | None] = []
        held: Counter = Counter()
        for r in range(world):
            reader, _ = open_input(paths, sch, batch_rows=17, units=units[r],
                                   policy=BadRowPolicy("skip", 0.5))  # (few lines left)
            got = rows(reader)
            k = len(got) if step == len(worlds) - 1 else int(rng.integers(0, len(got) + 1))
            if step == 0 and world >= 3 and r < 2:  # a rank that trained nothing, one all
                k = 0 if r == 0 else len(got)
            trained.update(got[:k])
            consumed.append(got[k - 1][:2] if k else None)
            held.update((*where[c[1]], *c) for h in reader.held_out() for c in content(h))
        held_first = held if held_first is None else held_first
        assert held == held_first and sum(held.values()) > 0
        if step < len(worlds) - 1:
            units = redistribute(units, consumed, worlds[step + 1])
    assert max(trained.values()) == 1
    assert trained + held_first == whole
    assert all(where[row[3]] == row[:2] for row in whole)


def test_units_with_origins_of_each_format_agree(files) -> None:
    """The same rows as plain text, .gz, .zst and Parquet: the same lines in each."""
    d = files[False]
    ids = range(30_000, 36_000)
    kinds = [write_text(d / f"same{s}", ids, False, line=good_line)
             for s in (".txt", ".txt.gz", ".zst")] + [write_parquet(d / "same.parquet", ids, 700)]
    ranges = RankUnits((LineRange(0, 4000, 5999), LineRange(0, 17, 1000)),
                       (LineRange(0, 3000, 3100),))
    seen = []
    for p in kinds:
        reader, _ = open_input([str(p)], schema(False), units=ranges, batch_rows=64)
        got = rows(reader)
        assert all(row[1] == row[3] - 30_000 for row in got)
        seen.append((got, [content(h) for h in reader.held_out()]))
    assert all(s == seen[0] for s in seen[1:])
    ids_read = [row[3] for row in seen[0][0]]
    assert ids_read[0] >= 34_000 and ids_read[-1] < 31_000  # in the ranges' order


# ---- errors ---------------------------------------------------------------------------

def test_ranges_that_do_not_fit_the_window(files) -> None:
    paths, _ = window(files, "mixed", False)
    sch = schema(False)
    with pytest.raises(RecsError, match=r"is of file 6, but the window has 6 files"):
        open_input(paths, sch, units=RankUnits((LineRange(6, 0, 1),)))
    with pytest.raises(RecsError, match="must come run by run"):
        open_input(paths, sch, units=RankUnits((LineRange(3, 0, 1), LineRange(0, 0, 1))))
    with pytest.raises(RecsError, match="need files"):
        open_input(pa.table({"n": [1]}), sch, units=RankUnits())
    for f, n in ((0, 700), (3, 3000), (5, 98), (1, 2500)):  # plain, .gz, no last LF, Parquet
        with pytest.raises(DataError, match=rf"^{re.escape(paths[f])}: .*changed since") as e:
            list(open_input(paths, sch, units=RankUnits((LineRange(f, n - 3, n + 1),)))[0])
        assert "\n" not in str(e.value) and e.value.reason == "file_changed"
        reader, _ = open_input(paths, sch, units=RankUnits((LineRange(f, n - 3, n),)))
        assert sum(len(b) for b in reader) <= 3


@pytest.mark.parametrize("name", ["a.txt", "b.txt.gz"])
def test_a_bad_line_in_a_range_names_its_file_line(files, name: str) -> None:
    """Under the fail policy a bad line read by lines is named as today (its line in the
    file, the header counted)."""
    p = [str(files[True] / name)]
    sch = schema(True)
    units = default_units(p, sch, None, 2, 0.0)
    msgs = []
    for u in (None, units[1]):
        reader, _ = open_input(p, sch, rank=1, world=2, units=u,
                               policy=BadRowPolicy("fail"))
        with pytest.raises(DataError) as e:
            list(reader)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    first_bad = next(i for i in FILES[name][0][units[1].train[0].first:] if not is_good(i, True))
    assert f"{p[0]}:{first_bad - FILES[name][0][0] + 2}: " in msgs[0]


# ---- line scans -----------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 1.0])
def test_line_feed_kernels_match_numpy(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    buf = np.where(rng.random(5000) < density, 10, rng.integers(11, 256, 5000)).astype(np.uint8)
    lf = np.flatnonzero(buf == 10)
    for a, b in ((0, 5000), (17, 4000), (300, 300), (4999, 5000), (3, 11), (5, 21), (8, 16)):
        inside = lf[(lf >= a) & (lf < b)]
        assert count_lf(buf, a, b) == len(inside)
        for k in (1, 2, 3, len(inside) // 2, len(inside) - 1, len(inside), len(inside) + 1):
            i, n, last = nth_lf(buf, a, b, k)
            if 1 <= k <= len(inside):
                assert (i, n, last) == (inside[k - 1], k, inside[k - 1])
            else:
                assert (i, n, last) == (-1, len(inside), inside[-1] if len(inside) else -1)


@pytest.mark.parametrize("text", [b"", b"\n", b"abc", b"a\nbb\n\nccc", b"a\nbb\n\nccc\n"])
def test_scan_plain_counts_as_a_reading_would(tmp_path: Path, text: bytes, monkeypatch) -> None:  # noqa: ANN001
    """Lines starting before each byte, and each line's offset, by one scan (in blocks of
    4 bytes here), against the lines split in Python."""
    import recs_core.data.lines as lines_mod

    monkeypatch.setattr(lines_mod, "SCAN_BYTES", 4)
    p = tmp_path / "t.txt"
    p.write_bytes(text)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == 10 and i + 1 < len(text)]
    cuts = list(range(-1, len(text) + 3))
    before, offsets = scan_plain(str(p), cuts, range(len(starts) + 3))
    assert before == {c: sum(s < c for s in starts) if text else 0 for c in cuts}
    assert offsets == (dict(enumerate(starts)) if text else {})
    assert line_starts(str(p), "", cuts) == before


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_decompressed_line_passes_and_counts(tmp_path: Path, suffix: str) -> None:
    """skip_lines passes lines as the plain text splits them; line_starts gives, per cut,
    the lines before its offset (0 at or before the start, every line past the end)."""
    text = "".join(f"{i}\t{'z' * (i % 300)}\n" for i in range(3000)) + "last"
    p = tmp_path / f"t{suffix}"
    p.write_bytes(gzip.compress(text.encode()) if suffix == ".gz" else zst(text.encode(), 3))
    lines = text.split("\n")
    size = p.stat().st_size
    codec = "gzip" if suffix == ".gz" else "zstd"
    with open(p, "rb") as f:
        z = Decompressed(f, codec)
        assert z.skip_lines(0) == 0 and z.skip_lines(1234) == 1234
        assert z.readline().decode() == lines[1234] + "\n"
        assert z.skip_lines(10_000) == 3001 - 1235
    cuts = [-5, 0, 1, size // 3, size // 2, size - 1, size, size + 10]
    got = line_starts(str(p), codec, cuts)
    assert got[-5] == got[0] == 0 and got[size] == got[size + 10] == 3001
    assert [got[c] for c in cuts] == sorted(got[c] for c in cuts)
    assert 0 < got[size // 3] < got[size // 2] < 3001
