"""Feature spec validation: every invalid spec names the key and what is wrong;
the compiled operator graph has one node per operator per pipeline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from recs_core.errors import ConfigError
from recs_core.features.graph import FeatureGraph
from recs_core.features.spec import expand_names, load_spec, parse_spec

BASE = {
    "input": {"columns": [{"name": "label", "type": "label"},
                          {"names": "I1..I3", "type": "int"},
                          {"names": "C1..C4", "type": "str"}]},
    "pipeline": [
        {"name": "dense", "feature": [{"name": "d", "inputs": ["I1..I3"], "output": "dense",
                                       "ops": [{"op": "fill_missing"}, {"op": "log1p"}]}]},
        {"name": "cat", "feature": [
            {"name": "c", "inputs": ["C1..C4"], "ops": [{"op": "hash_bucket", "buckets": 100}],
             "embedding": {"dim": 8}},
            {"name": "x", "inputs": [["C1", "C2"], ["C3", "C4"]],
             "ops": [{"op": "hash_cross", "buckets": 50}], "embedding": {"dim": 4}}]},
    ],
}


def with_change(path: str, value) -> dict:
    """BASE with the value at a dotted path (list indices as numbers) replaced or deleted."""
    d = copy.deepcopy(BASE)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = d
    for k in keys[:-1]:
        target = target[k]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return d


DELETE = object()


def test_base_spec_compiles() -> None:
    spec = parse_spec(BASE)
    assert [n for n, _ in spec.sparse_fields] == ["c:C1", "c:C2", "c:C3", "c:C4",
                                                  "x:C1xC2", "x:C3xC4"]
    assert spec.dense_width == 3
    assert "pipeline cat" in spec.describe()


def test_graph_has_one_node_per_operator_per_pipeline() -> None:
    g = FeatureGraph(parse_spec(BASE))
    assert [n.name for n in g.nodes("dense")] == ["dense/0/0:fill_missing", "dense/0/1:log1p"]
    assert [n.op.name for n in g.nodes("cat")] == ["hash_bucket", "hash_cross"]
    assert len(g.nodes()) == 4
    assert [n.last for n in g.nodes("dense")] == [False, True]


@pytest.mark.parametrize("path,value,message", [
    ("input.columns.1.type", "double", r"input.columns\[1\].type: must be one of"),
    ("input.columns.1.names", "I3..I1", r"input.columns\[1\].names: bad range"),
    ("input.on_error", "ignore", r"input.on_error: must be \"skip\" or \"fail\""),
    ("input.max_bad_fraction", 2, r"input.max_bad_fraction: must be between 0 and 1"),
    ("input.batch_size", 0, r"input.batch_size: must be >= 1"),
    ("input.bogus", 1, r"input: unknown key\(s\) bogus"),
    ("pipeline.0.feature.0.inputs", ["I9"], r"pipeline\[0\].feature\[0\].inputs: unknown column"),
    ("pipeline.0.feature.0.inputs", ["label"], r"label column"),
    ("pipeline.0.feature.0.inputs", ["I1", "C1"], r"mix int and str"),
    ("pipeline.0.feature.0.ops", [{"op": "log1p"}],
     r"pipeline\[0\].feature\[0\].output: dense values may be missing; add"),
    ("pipeline.0.feature.0.ops", [{"op": "nope"}],
     r"pipeline\[0\].feature\[0\].ops\[0\].op: unknown operator 'nope'"),
    ("pipeline.0.feature.0.ops", [{"op": "clip"}],
     r"pipeline\[0\].feature\[0\].ops\[0\]: clip needs min or max"),
    ("pipeline.0.feature.0.ops", [{"op": "fill_missing", "value": "zero"}],
     r"pipeline\[0\].feature\[0\].ops\[0\].value: expected a number"),
    ("pipeline.0.feature.0.ops", [{"op": "fill_missing", "valu": 0}],
     r"pipeline\[0\].feature\[0\].ops\[0\]: unknown parameter\(s\) valu"),
    ("pipeline.0.feature.0.ops", [{"op": "hash_bucket", "buckets": 10}],
     r"ops\[0\]: hash_bucket takes str or list_str input, got int"),
    ("pipeline.0.feature.0.ops", [], r"pipeline\[0\].feature\[0\].ops: needs at least one"),
    ("pipeline.1.feature.0.ops", [{"op": "hash_bucket", "buckets": 1}],
     r"ops\[0\].buckets: must be an integer in \[2, 2\*\*32\]"),
    ("pipeline.1.feature.0.embedding", {"dim": 8, "rows": 50},
     r"pipeline\[1\].feature\[0\].embedding.rows: 50 is below the 100 ids"),
    ("pipeline.1.feature.0.embedding", {"rows": 100},
     r"pipeline\[1\].feature\[0\].embedding.dim: is required"),
    ("pipeline.1.feature.0.embedding", {"dim": 8, "pooling": "mean"},
     r"embedding.pooling: only multi-valued"),
    ("pipeline.1.feature.0.embedding", DELETE, r"pipeline\[1\].feature\[0\].embedding: is req"),
    ("pipeline.1.feature.1.inputs", [["C1", "C2"], ["C3"]], r"same number of columns"),
    ("pipeline.1.feature.1.ops", [{"op": "hash_bucket", "buckets": 9}],
     r"column groups are only for hash_cross"),
    ("pipeline.1.name", "dense", r"pipeline\[1\].name: duplicate pipeline 'dense'"),
    ("pipeline.1.feature.1.name", "c", r"duplicate feature 'c'"),
    ("pipeline", [], r"pipeline: at least one"),
])
def test_invalid_specs_name_the_key(path: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(with_change(path, value))


def test_unknown_top_level_and_missing_label() -> None:
    with pytest.raises(ConfigError, match=r"spec: unknown key\(s\) pipelines"):
        parse_spec({**BASE, "pipelines": []})
    d = copy.deepcopy(BASE)
    d["input"]["columns"] = d["input"]["columns"][1:]
    with pytest.raises(ConfigError, match="exactly one column of type \"label\""):
        parse_spec(d)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_spec(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[input\ncolumns = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_spec(bad)
    bad.write_text("[input]\ncolumns = 1\n[[pipeline]]\nname='x'\n")
    with pytest.raises(ConfigError, match=r"bad.toml: input.columns: expected list"):
        load_spec(bad)
    bad.write_bytes(b"[input]\n# caf\xe9 (Latin-1)\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_spec(bad)
    with pytest.raises(ConfigError, match=r": is a directory, expected a TOML config file"):
        load_spec(tmp_path)


def test_expand_names() -> None:
    assert expand_names("C1..C3", "w") == ["C1", "C2", "C3"]
    assert expand_names("plain", "w") == ["plain"]
    with pytest.raises(ConfigError):
        expand_names("A1..B3", "w")


def test_vocab_file_is_relative_to_the_config(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "words.txt").write_text("a\nb\n")
    cfg = tmp_path / "spec.toml"
    cfg.write_text('''
[input]
columns = [{ name = "label", type = "label" }, { name = "w", type = "str" }]
[[pipeline]]
name = "p"
  [[pipeline.feature]]
  name = "w"
  inputs = ["w"]
  ops = [{ op = "vocab", file = "words.txt", oov_buckets = 2 }]
  embedding = { dim = 4 }
''')
    monkeypatch.chdir("/")
    spec = load_spec(cfg)
    assert spec.sparse_fields[0][1].rows == 1 + 2 + 2


RATINGS = {
    "input": {"label": "rating >= 4",
              "columns": [{"name": "user", "type": "str"}, {"name": "rating", "type": "float"},
                          {"name": "age", "type": "float"}]},
    "pipeline": [{"name": "p", "feature": [
        {"name": "u", "inputs": ["user"], "ops": [{"op": "hash_bucket", "buckets": 64}],
         "embedding": {"dim": 4}},
        {"name": "a", "inputs": ["age"], "output": "dense",
         "ops": [{"op": "fill_missing", "value": 0}, {"op": "log1p"}]}]}],
}


def test_float_column_and_label_rule_run_through_the_graph() -> None:
    import numpy as np

    from recs_core.data.parse import ChunkParser

    spec = parse_spec(RATINGS)
    assert str(spec.label) == "rating >= 4" and spec.schema.float_names == ("age",)
    text = b"a\t4.5\t30\nb\t3\t\nc\t5\t0.5\n"
    raw = ChunkParser(spec.schema).parse(np.frombuffer(text, np.uint8), len(text), True).batch
    fb = FeatureGraph(spec).process(raw)
    assert fb.labels.tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_allclose(fb.dense[:, 0], np.log1p([30.0, 0.0, 0.5]).astype(np.float32))


@pytest.mark.parametrize("change,message", [
    ({"label": "user >= 4"}, r"input.label: the rule 'user >= 4' needs a numeric column; "
                             r"'user' has type str"),
    ({"label": "score > 1"}, r"input.label: unknown column 'score'"),
    ({"label": "rating >= x"}, r"input.label: .*finite number"),
    ({"format": "json"}, r"input.format: must be \"csv\", \"tsv\" or \"parquet\""),
    ({"format": "csv", "sep": ","}, r"input.sep: give format or sep, not both"),
    ({"sep": "::"}, r"input.sep: must be one ASCII byte"),
    ({"sep": '"'}, r"input.sep: must be one ASCII byte other than a quote"),
    ({"header": "yes"}, r"input.header: expected bool"),
    ({"quoting": 1}, r"input.quoting: expected bool"),
])
def test_text_layout_and_label_errors(change: dict, message: str) -> None:
    d = copy.deepcopy(RATINGS)
    d["input"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_spec(d)


def test_label_column_rules() -> None:
    d = copy.deepcopy(RATINGS)
    d["pipeline"][0]["feature"][1]["inputs"] = ["rating"]
    with pytest.raises(ConfigError, match=r"the label column 'rating' cannot be a feature"):
        parse_spec(d)
    d = copy.deepcopy(RATINGS)
    d["input"]["columns"].append({"name": "click", "type": "label"})
    with pytest.raises(ConfigError, match=r"input.label: the column 'click' has type \"label\""):
        parse_spec(d)
    d = copy.deepcopy(RATINGS)
    d["input"]["columns"][0]["from"] = "user_id:token"
    with pytest.raises(ConfigError, match=r"input.columns\[0\].from: .*set input.header = true"):
        parse_spec(d)
    d["input"]["header"] = True
    assert parse_spec(d).schema.sources == ("user_id:token", "rating", "age")
    d["input"]["columns"][1]["from"] = "user_id:token"
    with pytest.raises(ConfigError, match=r"two columns are read from header column"):
        parse_spec(d)
    d = copy.deepcopy(RATINGS)
    d["pipeline"][0]["feature"][1]["inputs"] = ["age", "user"]
    with pytest.raises(ConfigError, match=r"inputs mix float and str columns"):
        parse_spec(d)
