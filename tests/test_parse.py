"""The compiled TSV parser against a pure-Python reference, and every bad-line reason."""

from __future__ import annotations

import numpy as np
import pytest

from recs_core.data.labels import LabelRule
from recs_core.data.parse import (
    COL_FLOAT,
    COL_INT,
    COL_LABEL,
    COL_STR,
    REASONS,
    ChunkParser,
    ColumnSchema,
)
from recs_core.errors import ConfigError

SCHEMA = ColumnSchema(("label", "i1", "i2", "s1", "s2"),
                      (COL_LABEL, COL_INT, COL_INT, COL_STR, COL_STR), (8, 24, 24, 16, 16))


def parse(text: bytes, at_eof: bool = True, schema: ColumnSchema = SCHEMA):
    buf = np.frombuffer(text, dtype=np.uint8) if text else np.zeros(0, dtype=np.uint8)
    return ChunkParser(schema).parse(buf, len(text), at_eof)


def reasons(text: bytes, at_eof: bool = True) -> list[tuple[int, str, int]]:
    c = parse(text, at_eof)
    return [(int(li), REASONS[r], int(col)) for li, r, col in
            zip(c.bad_line, c.bad_reason, c.bad_col)]


def ref_parse_line(line: bytes, schema: ColumnSchema):
    """Reference: split on tabs, convert with Python's int()."""
    fields = line.rstrip(b"\r").split(b"\t")
    assert len(fields) == len(schema.names)
    label, ints, miss, strs = None, [], [], []
    for f, k in zip(fields, schema.kinds):
        if k == COL_LABEL:
            label = int(f)
        elif k == COL_INT:
            ints.append(int(f) if f else 0)
            miss.append(not f)
        else:
            strs.append(f.decode())
    return label, ints, miss, strs


def test_real_criteo_sample_matches_reference(criteo_sample) -> None:
    from recs_core.features.spec import load_spec
    from tests.conftest import CONFIGS

    schema = load_spec(CONFIGS / "criteo_dlrm.toml").schema
    data = criteo_sample.read_bytes()
    c = parse(data, schema=schema)
    lines = data.rstrip(b"\n").split(b"\n")
    assert c.n_lines == len(lines) and len(c.batch) == len(lines) and len(c.bad_line) == 0
    b = c.batch
    for i in range(0, len(lines), 97):
        label, ints, miss, strs = ref_parse_line(lines[i], schema)
        assert b.labels[i] == label
        assert b.ints[i].tolist() == ints
        assert b.int_missing[i].tolist() == miss
        assert [bytes(b.arena[s:s + n]).decode() for s, n in
                zip(b.str_start[i], b.str_len[i])] == strs


def test_random_valid_lines_match_reference() -> None:
    rng = np.random.default_rng(3)
    lines = []
    for _ in range(500):
        ints = [("" if rng.random() < 0.3 else str(int(rng.integers(-10**18, 10**18))))
                for _ in range(2)]
        strs = ["".join(rng.choice(list("abcdef0123456789é"), size=rng.integers(0, 6)))
                for _ in range(2)]
        lines.append("\t".join([str(rng.integers(0, 2)), *ints, *strs]).encode())
    text = b"\n".join(lines) + b"\n"
    c = parse(text)
    assert len(c.batch) == 500
    for i, line in enumerate(lines):
        label, ints, miss, strs = ref_parse_line(line, SCHEMA)
        assert c.batch.labels[i] == label
        assert c.batch.ints[i].tolist() == ints and c.batch.int_missing[i].tolist() == miss
        assert c.batch.str_values(0)[i] == strs[0] and c.batch.str_values(1)[i] == strs[1]


def test_int64_bounds_and_signs() -> None:
    text = (b"1\t9223372036854775807\t-9223372036854775808\ta\tb\n"
            b"0\t+5\t-0\ta\tb\n")
    c = parse(text)
    assert c.batch.ints.tolist() == [[2**63 - 1, -2**63], [5, 0]]
    assert reasons(b"1\t9223372036854775808\t1\ta\tb\n") == [(0, "int_overflow", 1)]
    assert reasons(b"1\t1\t-9223372036854775809\ta\tb\n") == [(0, "int_overflow", 2)]
    assert reasons(b"1\t99999999999999999999999\t1\ta\tb\n") == [(0, "int_overflow", 1)]


@pytest.mark.parametrize("field", [b"1e3", b" 5", b"5 ", b"-", b"+", b"0x10", b"1.5", b"--1"])
def test_non_integers_are_bad_int(field: bytes) -> None:
    assert reasons(b"1\t" + field + b"\t1\ta\tb\n") == [(0, "bad_int", 1)]


@pytest.mark.parametrize("line,reason,col", [
    (b"1\t1\t1\ta\n", "field_count", -1),
    (b"1\t1\t1\ta\tb\tc\n", "field_count", -1),
    (b"2\t1\t1\ta\tb\n", "bad_label", 0),
    (b"\t1\t1\ta\tb\n", "bad_label", 0),
    (b"10\t1\t1\ta\tb\n", "bad_label", 0),
    (b"1\t1\t1\t" + b"x" * 17 + b"\tb\n", "field_too_long", 3),
    (b"1\t1\t1\ta\xff\tb\n", "invalid_utf8", 3),
    (b"1\t1\t1\ta\xc3\tb\n", "invalid_utf8", 3),  # truncated sequence
    (b"1\t1\t1\t\xc0\x80\tb\n", "invalid_utf8", 3),  # overlong encoding
    (b"1\t1\t1\t\xed\xa0\x80\tb\n", "invalid_utf8", 3),  # surrogate
    (b"1\t1\t1\ta\x00b\tb\n", "binary", 3),
    (b"1\t1\t1\ta\tb\x01\n", "binary", 4),
    (b"1\t1\x00\t1\ta\tb\n", "binary", 1),
    (b"\n", "empty_line", -1),
    (b"\r\n", "empty_line", -1),
])
def test_bad_line_reasons(line: bytes, reason: str, col: int) -> None:
    good = b"0\t1\t2\tx\ty\n"
    got = reasons(good + line + good)
    assert got == [(1, reason, col)]
    assert len(parse(good + line + good).batch) == 2  # the good lines around it survive


def test_valid_utf8_is_accepted() -> None:
    text = "1\t1\t1\té€\t𝄞\n".encode()
    c = parse(text)
    assert c.batch.str_values(0) == ["é€"] and c.batch.str_values(1) == ["𝄞"]


def test_crlf_line_ends_are_accepted() -> None:
    c = parse(b"1\t1\t2\ta\tb\r\n0\t\t-3\t\tz\r\n")
    assert len(c.bad_line) == 0
    assert c.batch.ints.tolist() == [[1, 2], [0, -3]]
    assert c.batch.int_missing.tolist() == [[False, False], [True, False]]
    assert c.batch.str_values(0) == ["a", ""] and c.batch.str_values(1) == ["b", "z"]


def test_last_line_without_newline() -> None:
    ok = parse(b"1\t1\t2\ta\tb\n0\t3\t4\tc\td")
    assert len(ok.batch) == 2 and len(ok.bad_line) == 0
    assert reasons(b"1\t1\t2\ta\tb\n0\t3\t4\tc") == [(1, "truncated_last_line", -1)]
    # the same short line in the middle of a file is a field-count error
    assert reasons(b"0\t3\t4\tc\n1\t1\t2\ta\tb\n") == [(0, "field_count", -1)]


def test_empty_chunk() -> None:
    c = parse(b"")
    assert c.n_lines == 0 and len(c.batch) == 0


FLOATS = ColumnSchema(("y", "x", "s"), (COL_LABEL, COL_FLOAT, COL_STR), (32, 32, 16),
                      LabelRule.parse("y >= 4"))


def float_chunk(lines: list[str]):
    text = "".join(f"{ln}\n" for ln in lines).encode()
    return ChunkParser(FLOATS).parse(np.frombuffer(text, dtype=np.uint8), len(text), True)


def test_float_column_matches_python_float() -> None:
    """Float fields against Python's float(): exact up to 15 significant digits and
    decimal exponents within 22, within two units in the last place beyond."""
    rng = np.random.default_rng(5)
    short = ["1", "-2.5", ".5", "5.", "+7", "1e5", "3E-4", "-0", "0.000001234", "1e-310",
             "1e400", "-1e400", "nan", "NaN", "-inf", "Infinity", "0", "123456789012345"]
    short += [f"{v:.6f}" for v in rng.uniform(-1e4, 1e4, 300)]
    short += [f"{v:.9g}" for v in rng.uniform(-1, 1, 300) * 10.0 ** rng.integers(-12, 20, 300)]
    long = [repr(float(v)) for v in rng.uniform(-1, 1, 500) * 10.0 ** rng.integers(-40, 40, 500)]
    long += ["123456789012345678901234", "0.30000000000000004", "9007199254740993"]
    c = float_chunk([f"4\t{v}\ts" for v in short + long])
    assert len(c.bad_line) == 0
    got = c.batch.floats[:, 0]
    ref = np.array([float(v) for v in short + long])
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    assert same[:len(short)].all(), [v for v, ok in zip(short, same) if not ok]
    tail_got, tail_ref = got[len(short):], ref[len(short):]
    assert np.all(np.abs(tail_got - tail_ref) <= 2 * np.spacing(np.abs(tail_ref)))
    assert np.signbit(got[short.index("-0")])


def test_empty_float_is_missing_and_bad_floats_are_counted() -> None:
    c = float_chunk(["4\t\ts", "4\t1x\ts", "4\t-\ts", "4\t.\ts", "4\t1e\ts", "4\t1..2\ts",
                     "4\tnana\ts", "4\t 1\ts", "4\t" + "1" * 33 + "\ts"])
    assert len(c.batch) == 1 and np.isnan(c.batch.floats[0, 0])
    assert [REASONS[r] for r in c.bad_reason] == ["bad_float"] * 7 + ["field_too_long"]
    assert c.bad_col.tolist() == [1] * 8


def test_label_rule_and_its_bad_values() -> None:
    c = float_chunk(["3.9\t0\ta", "4\t0\tb", "5\t0\tc", "\t0\td", "nan\t0\te", "x\t0\tf",
                     "-4\t0\tg"])
    assert c.batch.labels.tolist() == [0, 1, 1, 0]
    assert c.batch.str_values(0) == ["a", "b", "c", "g"]
    assert [(int(i), REASONS[r], int(k)) for i, r, k in
            zip(c.bad_line, c.bad_reason, c.bad_col)] == [
        (3, "missing_label", 0), (4, "missing_label", 0), (5, "bad_label", 0)]


@pytest.mark.parametrize("rule,labels", [
    ("r >= 2", [0, 0, 1, 1]), ("r > 2", [0, 0, 0, 1]), ("r <= 1", [1, 1, 0, 0]),
    ("r < 1", [1, 0, 0, 0]), ("r == 2", [0, 0, 1, 0]), ("r != 2", [1, 1, 0, 1]),
    ("r>=2.5", [0, 0, 0, 1]), ("r >= -1e1", [1, 1, 1, 1]),
])
def test_label_rule_operators(rule: str, labels: list[int]) -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    got, why = LabelRule.parse(rule).labels(x)
    assert got.tolist() == labels and not why.any()
    # the text kernel gives the same labels (one scalar function serves both)
    schema = ColumnSchema(("r",), (COL_LABEL,), (8,), LabelRule.parse(rule))
    text = b"0\n1\n2.0\n3\n"
    c = ChunkParser(schema).parse(np.frombuffer(text, dtype=np.uint8), len(text), True)
    assert c.batch.labels.tolist() == labels


def test_numeric_01_label_and_columnar_reasons() -> None:
    rule = LabelRule.parse("click")
    got, why = rule.labels(np.array([0.0, 1.0, np.nan, 2.0, 0.5]))
    assert got[:2].tolist() == [0, 1]
    assert [REASONS[r] for r in why] == ["ok", "ok", "missing_label", "bad_label", "bad_label"]
    assert str(LabelRule.parse(" rating>=4 ")) == "rating >= 4" and str(rule) == "click"


@pytest.mark.parametrize("text,message", [
    ("rating >= four", "expected a finite number"), ("rating >= nan", "finite number"),
    ("rating => 4", "cannot read the rule"), ("a b", "cannot read the rule"), ("", "expected"),
])
def test_label_rule_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LabelRule.parse(text)
