"""The feature spec: a TOML file loaded into validated, printable dataclasses.

Layout (see ``configs/criteo_dlrm.toml``)::

    [input]                      # raw columns in file order, and the bad-input policy
    columns = [{ name = "label", type = "label" },
               { names = "I1..I13", type = "int" },
               { names = "C1..C26", type = "str", max_bytes = 64 }]
    on_error = "skip"            # or "fail"
    max_bad_fraction = 0.05
    batch_size = 2048

Column types: ``label`` (the bytes 0 or 1), ``int``, ``float`` (NaN or empty: missing),
``str``. Text layout keys of ``[input]`` (defaults: the old layout, by extension)::

    format = "csv"               # "csv": comma, RFC 4180 quotes; "tsv": tab, no quotes;
                                 # default by file extension (.csv, else tsv)
    sep = ";"                    # or any one-byte separator (instead of format)
    quoting = true               # quoted fields (default: on unless sep is a tab)
    header = true                # line 1 of every file names the columns: the spec's
                                 # columns are picked by name, in any order; the rest
                                 # are ignored ({ name = "user", from = "user_id:token" }
                                 # reads a column under another header name)
    label = "rating >= 4"        # the label from a numeric column: "click" (0/1) or
                                 # COLUMN OP NUMBER, OP in >= > <= < == != (instead of a
                                 # column of type "label")

    [[pipeline]]                 # a feature group with its own embedding exchange
    name = "categorical"
      [[pipeline.feature]]       # one operator chain over one or more columns
      name = "cat"
      inputs = ["C1..C26"]       # "X1..X9" expands to X1, X2, ..., X9
      ops = [{ op = "hash_bucket", buckets = 262144 }]
      embedding = { dim = 16 }   # rows default to the chain's id cardinality

A feature's output is ``"dense"`` (float columns for the MLP) or sparse (its
``embedding`` table: one field per column for single-valued ids, one pooled
field for a list). Crosses take ``inputs`` as groups: ``[["C1", "C2"], ...]`` or
``{ all_pairs = "C1..C8" }``. Every error names the key and what is wrong.
Other top-level tables (``model``, ``train``, ...) are kept for the trainer.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from recs_core.data.bad_rows import BadRowPolicy
from recs_core.data.labels import OP_LABEL_BYTES, LabelRule
from recs_core.data.parse import (
    COL_FLOAT,
    COL_INT,
    COL_LABEL,
    COL_LIST_STR,
    COL_STR,
    ColumnSchema,
    TextFormat,
)
from recs_core.errors import ConfigError
from recs_core.features.ops import Operator, VType, make_operator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_KINDS = {"label": COL_LABEL, "int": COL_INT, "str": COL_STR, "float": COL_FLOAT,
          "list_str": COL_LIST_STR}
_DEFAULT_MAX_BYTES = {"label": 8, "int": 24, "str": 256, "float": 32, "list_str": 256}
_FORMATS = {"csv": ",", "tsv": "\t"}
PARQUET = "parquet"  # input.format of Parquet files (else by a .parquet name)
_RANGE = re.compile(r"^([A-Za-z_][A-Za-z_]*?)(\d+)\.\.([A-Za-z_][A-Za-z_]*?)(\d+)$")
TOP_LEVEL_FOR_TRAINER = ("model", "train", "optimizer")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str  # label | int | float | str | list_str (max_bytes: of a list, per token)
    max_bytes: int
    source: str | None = None  # the header name it is read from (default: name)


DYNAMIC_ID_LIMIT = 1 << 52  # ids of a dynamic table must lie in [0, 2**52)


@dataclass(frozen=True)
class DynamicSpec:
    """A hash-keyed table's options (``embedding = { dim = 16, dynamic = { ... } }``):
    a row per admitted id (see ``recs_core.embedding.dynamic``)."""

    admit_after: int = 1  # sightings (unique ids per global batch) before a row
    row_budget: int | None = None  # live rows per table (over all ranks' shards: each
    # shard keeps row_budget / world_size rounded up)
    evict_after_windows: int | None = None  # evict rows unseen for more windows
    sketch_width: int = 1 << 20  # count-min counters per sketch row (power of two)
    sketch_depth: int = 4


@dataclass(frozen=True)
class TableSpec:
    """An embedding table: rows, dimension, and pooling for multi-valued fields.

    A dynamic table (``dynamic`` set) stores a row per admitted id instead of ``rows``
    rows: ``rows`` is then the id range (``DYNAMIC_ID_LIMIT`` or the chain's cardinality)
    and :attr:`fixed_rows` is 0."""

    rows: int
    dim: int
    pooling: str | None = None  # "sum" | "mean" for list fields
    dynamic: DynamicSpec | None = None

    @property
    def fixed_rows(self) -> int:
        """Rows allocated up front: ``rows``, or 0 for a dynamic table."""
        return 0 if self.dynamic is not None else self.rows


@dataclass(frozen=True)
class FeatureSpec:
    """One operator chain over ``inputs`` and what it outputs."""

    name: str
    pipeline: str
    inputs: tuple[str, ...]  # flattened; crosses list each group's columns in order
    arity: int  # columns per output field (2+ for crosses, else 1)
    ops: tuple[Operator, ...] = field(compare=False)
    out_type: VType
    output: str  # "dense" | "sparse"
    table: TableSpec | None
    field_names: tuple[str, ...]  # one per output field


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    features: tuple[FeatureSpec, ...]


@dataclass(frozen=True)
class Spec:
    """A validated feature spec."""

    columns: tuple[ColumnSpec, ...]
    pipelines: tuple[PipelineSpec, ...]
    policy: BadRowPolicy
    batch_size: int
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    label: LabelRule | None = None  # where the label comes from (None: no label column)
    text: TextFormat = field(default_factory=TextFormat)
    format: str | None = None  # "parquet", or None: by file extension

    @property
    def schema(self) -> ColumnSchema:
        """The raw-column schema for the parser (the label's column is its COL_LABEL)."""
        lab = self.label.column if self.label else None
        return ColumnSchema(tuple(c.name for c in self.columns),
                            tuple(COL_LABEL if c.name == lab else _KINDS[c.type]
                                  for c in self.columns),
                            tuple(c.max_bytes for c in self.columns), self.label, self.text,
                            tuple(c.source or c.name for c in self.columns)
                            if self.text.header else ())

    @property
    def features(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for p in self.pipelines for f in p.features)

    @property
    def dense_width(self) -> int:
        return sum(f.out_type.width for f in self.features if f.output == "dense")

    @property
    def sparse_fields(self) -> tuple[tuple[str, TableSpec], ...]:
        """(field name, table) of every sparse field, in spec order."""
        return tuple((n, f.table) for f in self.features if f.output == "sparse"
                     for n in f.field_names)

    def describe(self) -> str:
        """A readable summary: pipelines, features, chains and tables."""
        lines = [f"spec {self.path or '<memory>'}: {len(self.columns)} columns, "
                 f"{len(self.sparse_fields)} sparse fields, {self.dense_width} dense values"]
        t = self.text
        sep = ("separator by file extension (.csv: comma, else tab)" if t.sep is None else
               {"\t": "tab", ",": "comma"}.get(t.sep, repr(t.sep)) + "-separated")
        quoting = {None: "", True: ", quoted fields", False: ", no quoting"}[t.quoting]
        lines.append(f"input: {sep}{quoting}, "
                     + ("a header line naming the columns" if t.header else "columns in order")
                     + (f"; label: {self.label}" if self.label else ""))
        for p in self.pipelines:
            lines.append(f"pipeline {p.name}:")
            for f in p.features:
                chain = " -> ".join(repr(o) for o in f.ops)
                out = "dense" if f.output == "dense" else (
                    f"{len(f.field_names)} x table(rows={f.table.rows}, dim={f.table.dim}"
                    + (f", pooling={f.table.pooling}" if f.table.pooling else "") + ")")
                lines.append(f"  {f.name}: {len(f.inputs)} input(s) : {chain} => {out}")
        return "\n".join(lines)


def expand_names(item: str, where: str) -> list[str]:
    """"C1..C26" → ["C1", ..., "C26"]; a plain name → [name]."""
    m = _RANGE.match(item)
    if not m:
        return [item]
    p1, a, p2, b = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
    if p1 != p2 or b < a:
        raise ConfigError(f"{where}: bad range {item!r} (expected like \"C1..C26\")")
    return [f"{p1}{i}" for i in range(a, b + 1)]


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _typed(table: dict, key: str, kind: type | tuple, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}: is required")
        return default
    v = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}.{key}: expected {names}, got {v!r}")
    return v


def _load_columns(inp: dict, header: bool) -> tuple[ColumnSpec, ...]:
    cols_raw = _typed(inp, "columns", list, "input")
    cols: list[ColumnSpec] = []
    for i, c in enumerate(cols_raw):
        where = f"input.columns[{i}]"
        if not isinstance(c, dict):
            raise ConfigError(f"{where}: expected a table like {{ name = \"x\", type = \"int\" }}")
        _check_keys(c, {"name", "names", "type", "max_bytes", "from"}, where)
        ctype = _typed(c, "type", str, where)
        if ctype not in _KINDS:
            raise ConfigError(f"{where}.type: must be one of {', '.join(_KINDS)}; "
                              f"got {ctype!r}")
        source = _typed(c, "from", str, where, None)
        if source is not None and not header:
            raise ConfigError(f"{where}.from: names a header column; set input.header = true")
        if source is not None and "name" not in c:
            raise ConfigError(f"{where}.from: goes with name (one column), not names")
        if ("name" in c) == ("names" in c):
            raise ConfigError(f"{where}: give exactly one of name or names")
        names = ([_typed(c, "name", str, where)] if "name" in c
                 else expand_names(_typed(c, "names", str, where), f"{where}.names"))
        mb = _typed(c, "max_bytes", int, where, _DEFAULT_MAX_BYTES[ctype])
        if mb < 1:
            raise ConfigError(f"{where}.max_bytes: must be >= 1")
        cols.extend(ColumnSpec(n, ctype, mb, source) for n in names)
    seen: set[str] = set()
    for c in cols:
        if c.name in seen:
            raise ConfigError(f"input.columns: duplicate column {c.name!r}")
        seen.add(c.name)
    sources = [c.source or c.name for c in cols]
    dup = next((s for s in sources if sources.count(s) > 1), None)
    if dup is not None:
        raise ConfigError(f"input.columns: two columns are read from header column {dup!r}")
    return tuple(cols)


def _load_label(inp: dict, columns: tuple[ColumnSpec, ...]) -> LabelRule:
    """The label: a column of type "label", or ``input.label`` (a 0/1 column or a rule)."""
    typed = [c.name for c in columns if c.type == "label"]
    if "label" not in inp:
        if len(typed) != 1:
            raise ConfigError("input.columns: need exactly one column of type \"label\" (or "
                              "input.label = \"click\" / \"rating >= 4\" naming a numeric "
                              "column)")
        return LabelRule(typed[0], OP_LABEL_BYTES)
    if typed:
        raise ConfigError(f"input.label: the column {typed[0]!r} has type \"label\" already; "
                          "give one of the two")
    rule = LabelRule.parse(inp["label"])
    col = next((c for c in columns if c.name == rule.column), None)
    if col is None:
        raise ConfigError(f"input.label: unknown column {rule.column!r} (declare it in "
                          "input.columns with type int or float)")
    if col.type not in ("int", "float"):
        raise ConfigError(f"input.label: the rule {str(rule)!r} needs a numeric column; "
                          f"{rule.column!r} has type {col.type} (make it int or float)")
    return rule


def _load_text(inp: dict) -> TextFormat:
    """``format`` / ``sep``, ``quoting`` and ``header`` of ``[input]``."""
    fmt = _typed(inp, "format", str, "input", None)
    sep = _typed(inp, "sep", str, "input", None)
    if fmt is not None and sep is not None:
        raise ConfigError("input.sep: give format or sep, not both")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise ConfigError(f"input.format: must be \"csv\", \"tsv\" or \"parquet\", got "
                              f"{fmt!r} (or give sep)")
        sep = _FORMATS[fmt]
    if sep is not None and (len(sep.encode("utf-8")) != 1 or sep in "\"\r\n"):
        raise ConfigError(f"input.sep: must be one ASCII byte other than a quote or line "
                          f"break, got {sep!r}")
    quoting = _typed(inp, "quoting", bool, "input", None)
    return TextFormat(sep, quoting, _typed(inp, "header", bool, "input", False))


def _feature_inputs(raw: Any, where: str, columns: dict[str, ColumnSpec], label: str) -> tuple[
        tuple[str, ...], int]:
    """Flattened input columns and the arity (columns per output field)."""
    groups: list[list[str]]
    if isinstance(raw, dict):
        _check_keys(raw, {"all_pairs"}, where)
        names = expand_names(_typed(raw, "all_pairs", str, where), f"{where}.all_pairs")
        groups = [list(p) for p in itertools.combinations(names, 2)]
    elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
        groups = [[n for x in g for n in expand_names(x, where)] for g in raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        groups = [[n] for x in raw for n in expand_names(x, where)]
    else:
        raise ConfigError(f"{where}: expected a non-empty list of column names, a list of "
                          "column groups, or { all_pairs = \"C1..C8\" }")
    arity = len(groups[0])
    if any(len(g) != arity for g in groups):
        raise ConfigError(f"{where}: all groups need the same number of columns")
    flat = tuple(n for g in groups for n in g)
    types = set()
    for n in flat:
        if n not in columns:
            raise ConfigError(f"{where}: unknown column {n!r}")
        if columns[n].type == "label" or n == label:
            raise ConfigError(f"{where}: the label column {n!r} cannot be a feature input")
        types.add(columns[n].type)
    if len(types) > 1:
        raise ConfigError(f"{where}: inputs mix {' and '.join(sorted(types))} columns; use "
                          "separate features")
    if types == {"list_str"} and len(flat) != 1:
        raise ConfigError(f"{where}: a list_str column is one multi-valued field: give one "
                          "input column per feature")
    return flat, arity


def _with_base_dir(op: Any, base_dir: str) -> Any:
    """A vocab ``file`` given relative to the config file, made usable from any cwd."""
    if (isinstance(op, dict) and op.get("op") == "vocab" and isinstance(op.get("file"), str)
            and not os.path.isabs(op["file"])):
        return {**op, "file": os.path.join(base_dir, op["file"])}
    return op


def _load_feature(raw: Any, where: str, pipeline: str,
                  columns: dict[str, ColumnSpec], base_dir: str, label: str) -> FeatureSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(raw, {"name", "inputs", "ops", "output", "embedding"}, where)
    name = _typed(raw, "name", str, where)
    inputs, arity = _feature_inputs(raw.get("inputs"), f"{where}.inputs", columns, label)
    ops_raw = _typed(raw, "ops", list, where)
    if not ops_raw:
        raise ConfigError(f"{where}.ops: needs at least one operator")
    t = VType(columns[inputs[0]].type, len(inputs), True)
    ops = []
    for i, o in enumerate(ops_raw):
        op = make_operator(_with_base_dir(o, base_dir), f"{where}.ops[{i}]", arity)
        op.check_input(t)
        t = op.out_type(t)
        ops.append(op)
    if arity > 1 and not any(o.name == "hash_cross" for o in ops):
        raise ConfigError(f"{where}.inputs: column groups are only for hash_cross features")
    output = _typed(raw, "output", str, where, "sparse")
    if output not in ("dense", "sparse"):
        raise ConfigError(f"{where}.output: must be \"dense\" or \"sparse\", got {output!r}")
    if output == "dense":
        if "embedding" in raw:
            raise ConfigError(f"{where}.embedding: a dense output has no embedding table")
        if t.kind != "float":
            raise ConfigError(f"{where}.output: dense output needs float values, the chain "
                              f"ends in {t.kind}")
        if t.missing:
            raise ConfigError(f"{where}.output: dense values may be missing; add "
                              "{ op = \"fill_missing\" } to the chain")
        fields = tuple(f"{name}:{c}" for c in inputs)
        return FeatureSpec(name, pipeline, inputs, arity, tuple(ops), t, output, None, fields)
    if t.kind not in ("id", "list_id"):
        raise ConfigError(f"{where}.ops: a sparse feature must end in ids (e.g. hash_bucket), "
                          f"the chain ends in {t.kind}; or set output = \"dense\"")
    emb = _typed(raw, "embedding", dict, where)
    _check_keys(emb, {"rows", "dim", "pooling", "dynamic"}, f"{where}.embedding")
    dynamic = _load_dynamic(emb, f"{where}.embedding", t.cardinality)
    if dynamic is not None and "rows" in emb:
        raise ConfigError(f"{where}.embedding.rows: a dynamic table has no fixed rows (it "
                          "grows a row per admitted id; bound it with dynamic.row_budget)")
    rows = (_typed(emb, "rows", int, f"{where}.embedding", t.cardinality) if dynamic is None
            else t.cardinality or DYNAMIC_ID_LIMIT)
    if rows is None:
        raise ConfigError(f"{where}.embedding.rows: is required (the operator chain does not "
                          "bound its ids)")
    if t.cardinality is not None and rows < t.cardinality:
        raise ConfigError(f"{where}.embedding.rows: {rows} is below the {t.cardinality} ids "
                          "the operator chain can produce")
    dim = _typed(emb, "dim", int, f"{where}.embedding")
    if dim < 1:
        raise ConfigError(f"{where}.embedding.dim: must be >= 1")
    pooling = _typed(emb, "pooling", str, f"{where}.embedding", None)
    if t.kind == "list_id":
        pooling = pooling or "sum"
        if pooling not in ("sum", "mean"):
            raise ConfigError(f"{where}.embedding.pooling: must be \"sum\" or \"mean\"")
    elif pooling is not None:
        raise ConfigError(f"{where}.embedding.pooling: only multi-valued (list) features pool")
    if arity > 1:
        fields = tuple(f"{name}:" + "x".join(inputs[g * arity:(g + 1) * arity])
                       for g in range(len(inputs) // arity))
    elif t.kind == "list_id":
        fields = (name,)
    else:
        fields = tuple(f"{name}:{c}" for c in inputs)
    return FeatureSpec(name, pipeline, inputs, arity, tuple(ops), t, output,
                       TableSpec(rows, dim, pooling, dynamic), fields)


def _load_dynamic(emb: dict, where: str, cardinality: int | None) -> DynamicSpec | None:
    """``embedding.dynamic``: a table of options (``{}`` or ``true`` for the defaults)."""
    raw = emb.get("dynamic")
    if raw is None or raw is False:
        return None
    where = f"{where}.dynamic"
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table such as {{ admit_after = 2, "
                          f"row_budget = 100000, evict_after_windows = 3 }}, got {raw!r}")
    _check_keys(raw, {"admit_after", "row_budget", "evict_after_windows", "sketch_width",
                      "sketch_depth"}, where)
    d = DynamicSpec()
    vals = {}
    for key, low in (("admit_after", 1), ("row_budget", 1), ("evict_after_windows", 0),
                     ("sketch_width", 1), ("sketch_depth", 1)):
        v = _typed(raw, key, int, where, getattr(d, key))
        if v is not None and v < low:
            raise ConfigError(f"{where}.{key}: must be >= {low}, got {v}")
        vals[key] = v
    w = vals["sketch_width"]
    if w & (w - 1):
        raise ConfigError(f"{where}.sketch_width: must be a power of two, got {w}")
    if cardinality is not None and cardinality > DYNAMIC_ID_LIMIT:
        raise ConfigError(f"{where}: the operator chain gives ids up to {cardinality}; a "
                          f"dynamic table takes ids below 2**52")
    return DynamicSpec(**vals)


def parse_spec(data: dict[str, Any], path: str = "") -> Spec:
    """Validate a spec given as the dict a TOML file loads into (``path``: the file it came
    from; relative vocabulary files are found next to it)."""
    allowed = {"input", "pipeline", *TOP_LEVEL_FOR_TRAINER}
    _check_keys(data, allowed, "spec")
    inp = _typed(data, "input", dict, "spec")
    _check_keys(inp, {"columns", "on_error", "max_bad_fraction", "batch_size", "format", "sep",
                      "quoting", "header", "label"}, "input")
    fmt = PARQUET if inp.get("format") == PARQUET else None
    text = _load_text({k: v for k, v in inp.items() if not (k == "format" and fmt)})
    columns = _load_columns(inp, text.header)
    label = _load_label(inp, columns)
    on_error = _typed(inp, "on_error", str, "input", "skip")
    if on_error not in ("skip", "fail"):
        raise ConfigError(f"input.on_error: must be \"skip\" or \"fail\", got {on_error!r}")
    frac = float(_typed(inp, "max_bad_fraction", (int, float), "input", 0.05))
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"input.max_bad_fraction: must be between 0 and 1, got {frac}")
    batch = _typed(inp, "batch_size", int, "input", 2048)
    if batch < 1:
        raise ConfigError(f"input.batch_size: must be >= 1, got {batch}")
    by_name = {c.name: c for c in columns}
    pipes_raw = _typed(data, "pipeline", list, "spec")
    if not pipes_raw:
        raise ConfigError("pipeline: at least one [[pipeline]] is needed")
    pipelines, pnames, fnames = [], set(), set()
    for i, p in enumerate(pipes_raw):
        where = f"pipeline[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a table")
        _check_keys(p, {"name", "feature"}, where)
        pname = _typed(p, "name", str, where)
        if pname in pnames:
            raise ConfigError(f"{where}.name: duplicate pipeline {pname!r}")
        pnames.add(pname)
        feats_raw = _typed(p, "feature", list, where)
        if not feats_raw:
            raise ConfigError(f"{where}.feature: needs at least one [[pipeline.feature]]")
        feats = []
        for j, f in enumerate(feats_raw):
            fs = _load_feature(f, f"{where}.feature[{j}]", pname, by_name,
                               os.path.dirname(os.path.abspath(path)) if path else os.getcwd(),
                               label.column)
            if fs.name in fnames:
                raise ConfigError(f"{where}.feature[{j}].name: duplicate feature {fs.name!r}")
            fnames.add(fs.name)
            feats.append(fs)
        pipelines.append(PipelineSpec(pname, tuple(feats)))
    extra = {k: data[k] for k in TOP_LEVEL_FOR_TRAINER if k in data}
    return Spec(columns, tuple(pipelines), BadRowPolicy(on_error, frac), batch, path, extra,
                label, text, fmt)


def load_spec(path: str | os.PathLike) -> Spec:
    """Load and validate a feature spec TOML file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        return parse_spec(data, path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
