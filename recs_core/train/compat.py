"""What a model is, for its checkpoints: file-name stems of its tables, the feature spec
and model as plain JSON, and the first difference between two such descriptions (a
checkpoint must match the job it loads into)."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from recs_core.checkpoint.manifest import Manifest, to_jsonable
from recs_core.errors import RecsError
from recs_core.features.graph import FeatureGraph
from recs_core.features.hashing import HASH_VERSION
from recs_core.features.ops import Operator, Standardize, Vocab
from recs_core.features.spec import Spec
from recs_core.train.config import TrainConfig

if TYPE_CHECKING:
    from recs_core.train.model import Model

TRAINER_FORMAT = "recs-model v1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def table_stems(spec: Spec, prefix: str) -> list[str]:
    """File-name stems of the tables of one embedding set (``emb`` / ``wide``)."""
    return stems([n for n, _ in spec.sparse_fields], prefix)


def stems(fields: list[str], prefix: str) -> list[str]:
    """File-name stems of tables named ``fields`` in the set ``prefix``."""
    names = [f"{prefix}.{_UNSAFE.sub('.', n)}" for n in fields]
    if len(set(names)) != len(names):  # two field names that differ only in odd chars
        names = [f"{prefix}.t{i:04d}" for i in range(len(names))]
    return names


def _plain(v: Any) -> Any:
    """An operator parameter as plain JSON (non-finite floats as strings)."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else str(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def _op_description(op: Operator) -> dict[str, Any]:
    d: dict[str, Any] = {"op": op.name}
    for k, v in vars(op).items():
        if k == "where" or k.startswith("_"):
            continue
        if isinstance(op, Standardize) and op.fit and k in ("mean", "std"):
            continue  # fitted state, not configuration
        d[k] = _plain(v)
    if isinstance(op, Vocab):  # the entries themselves (perhaps from a file)
        h = hashlib.sha256(op._arena.tobytes())
        h.update(op._len.tobytes())
        d["values_sha256"] = h.hexdigest()
    return d


def spec_description(spec: Spec) -> dict[str, Any]:
    """The feature spec as plain JSON: raw columns (name, type), and per pipeline its
    features' inputs, operator chains with every parameter, outputs and tables. Two specs
    that give the same ids and tables have equal descriptions."""
    return {
        "columns": [[c.name, c.type] for c in spec.columns],
        "pipelines": [{"name": p.name, "features": [{
            "name": f.name, "inputs": list(f.inputs), "arity": f.arity,
            "ops": [_op_description(o) for o in f.ops], "output": f.output,
            "fields": list(f.field_names),
            "table": None if f.table is None else [f.table.rows, f.table.dim, f.table.pooling]
            + ([] if f.table.dynamic is None else [asdict(f.table.dynamic)]),
        } for f in p.features]} for p in spec.pipelines],
    }


def model_description(model: Model) -> dict[str, Any]:
    """Architecture and optimizer names: what must match for a checkpoint to load."""
    cfg, spec = model.cfg, model.spec
    mlp = ({"bottom_mlp": list(cfg.bottom_mlp), "top_mlp": list(cfg.top_mlp)}
           if cfg.preset == "dlrm" else {"deep_mlp": list(cfg.deep_mlp)})
    return {"preset": cfg.preset, **mlp, "dense_width": spec.dense_width,
            "tables": [[n, t.fixed_rows, t.dim] for n, t in spec.sparse_fields],
            "wide": model.wide is not None,
            "dense_shapes": [list(p.shape) for p in model.dense_parameters()],
            "optimizer": cfg.optimizer, "sparse_optimizer": cfg.sparse_optimizer}


def train_description(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("extra", None)
    return d


def first_difference(got: Any, want: Any, where: str) -> str | None:
    """Where two JSON values first differ, as 'where: checkpoint X, this job Y'."""
    if isinstance(got, dict) and isinstance(want, dict):
        for k in list(want) + [k for k in got if k not in want]:
            sub = f"{where}.{k}" if where else str(k)
            if k not in got or k not in want:
                where_not = "the checkpoint" if k not in got else "this job"
                return f"{sub}: missing in {where_not}"
            diff = first_difference(got[k], want[k], sub)
            if diff:
                return diff
        return None
    if isinstance(got, list) and isinstance(want, list):
        named = all(isinstance(x, dict) and "name" in x for x in got + want)
        if named and [x["name"] for x in got] == [x["name"] for x in want]:
            for g, w in zip(got, want):
                diff = first_difference(g, w, f"{where}[{w['name']!r}]")
                if diff:
                    return diff
            return None
        if len(got) == len(want) and not named:
            for i, (g, w) in enumerate(zip(got, want)):
                diff = first_difference(g, w, f"{where}[{i}]")
                if diff:
                    return diff
            return None
    if got != want:
        return f"{where}: the checkpoint has {_short(got)}, this job has {_short(want)}"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 120 else text[:100] + f"... ({len(text)} chars)"


def fitted_ops(graph: FeatureGraph) -> list[tuple[str, Standardize]]:
    """(key, operator) of every operator that fits on the first batch."""
    out = []
    for fi, f in enumerate(graph.features):
        for si, op in enumerate(f.ops):
            if isinstance(op, Standardize) and op.fit:
                out.append((f"feat.{fi}.{si}", op))
    return out


def check_compatible(model: Model, world_size: int, m: Manifest, path: str,
                     resume: bool) -> None:
    """RecsError naming the first difference unless the checkpoint ``m`` at ``path`` loads
    into ``model`` (``resume``: also continues its window on ``world_size`` ranks)."""
    meta = m.meta
    if meta.get("trainer") != TRAINER_FORMAT:
        raise RecsError(f"{path}: not a model checkpoint of this trainer (trainer "
                        f"{meta.get('trainer')!r}, expected {TRAINER_FORMAT!r})")
    if meta.get("hash") != HASH_VERSION:
        raise RecsError(f"{path}: written with feature hash {meta.get('hash')!r}, this "
                        f"version hashes with {HASH_VERSION!r}: the ids would not match")
    for key, want, what in (("feature_spec", spec_description(model.spec), "feature spec"),
                            ("model", model_description(model), "model")):
        diff = first_difference(meta.get(key), as_json(want), "")
        if diff:
            raise RecsError(f"{path}: the checkpoint's {what} differs from this job's: {diff}")
    if not resume:
        return
    for key, want in (("train_config", train_description(model.cfg)),
                      ("batch_size", model.spec.batch_size)):
        diff = first_difference(meta.get(key), as_json(want), key)
        if diff:
            raise RecsError(f"{path}: --resume needs the same config: {diff}")


def as_json(v: Any) -> Any:
    return to_jsonable(v, "checkpoint meta")
