"""The trainer's part of a config file: ``[model]``, ``[optimizer]`` and ``[train]``.

    [model]
    preset = "dlrm"          # or "wdl" (Wide&Deep)
    bottom_mlp = [64, 16]    # dlrm: last size = embedding dim
    top_mlp = [256, 128]     # dlrm: a final layer to 1 logit is added
    deep_mlp = [256, 128]    # wdl: deep part (a final layer to 1 logit is added)

    [optimizer]
    name = "adagrad"         # dense parameters: sgd | adagrad | adam
    lr = 0.05
    sparse = "adagrad"       # embeddings: sgd | adagrad (row-wise); default adagrad
    sparse_lr = 0.05         # default: lr
    eps = 1e-8
    initial_accumulator = 0.1         # dense adagrad's starting accumulator (TensorFlow's)
    sparse_initial_accumulator = 0.0  # row-wise adagrad's (PyTorch's sparse Adagrad's)

    [train]
    seed = 0
    eval_fraction = 0.0      # hold out the last share of rows, scored after the pass
    placement = "row"        # several ranks: shard tables by row hash, or "table"-wise
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recs_core.errors import ConfigError
from recs_core.features.spec import Spec


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "dlrm"
    bottom_mlp: tuple[int, ...] = (64, 16)
    top_mlp: tuple[int, ...] = (256, 128)
    deep_mlp: tuple[int, ...] = (256, 128)
    optimizer: str = "adagrad"
    lr: float = 0.05
    sparse_optimizer: str = "adagrad"
    sparse_lr: float = 0.05
    eps: float = 1e-8
    initial_accumulator: float = 0.1
    sparse_initial_accumulator: float = 0.0
    seed: int = 0
    eval_fraction: float = 0.0
    placement: str = "row"  # sharded embeddings: "row" (by row hash) or "table"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _sizes(table: dict, key: str, where: str, default: tuple[int, ...]) -> tuple[int, ...]:
    v = table.get(key, list(default))
    if not isinstance(v, list) or not v or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        raise ConfigError(f"{where}.{key}: expected a non-empty list of positive integers")
    return tuple(v)


def _number(table: dict, key: str, where: str, default: float, lo: float, hi: float) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}: expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _choice(table: dict, key: str, where: str, default: str, choices: tuple[str, ...]) -> str:
    v = table.get(key, default)
    if v not in choices:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(choices)}; got {v!r}")
    return v


def _known(table: Any, keys: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    extra = sorted(set(table) - keys)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
    return table


def train_config(spec: Spec) -> TrainConfig:
    """Validate the trainer sections kept in ``spec.extra``."""
    m = _known(spec.extra.get("model", {}), {"preset", "bottom_mlp", "top_mlp", "deep_mlp"},
               "model")
    o = _known(spec.extra.get("optimizer", {}), {"name", "lr", "sparse", "sparse_lr", "eps",
                                                    "initial_accumulator",
                                                    "sparse_initial_accumulator"},
               "optimizer")
    t = _known(spec.extra.get("train", {}), {"seed", "eval_fraction", "placement"}, "train")
    lr = _number(o, "lr", "optimizer", 0.05, 0.0, 1e6)
    seed = t.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"train.seed: expected an integer >= 0, got {seed!r}")
    cfg = TrainConfig(
        preset=_choice(m, "preset", "model", "dlrm", ("dlrm", "wdl")),
        bottom_mlp=_sizes(m, "bottom_mlp", "model", (64, 16)),
        top_mlp=_sizes(m, "top_mlp", "model", (256, 128)),
        deep_mlp=_sizes(m, "deep_mlp", "model", (256, 128)),
        optimizer=_choice(o, "name", "optimizer", "adagrad", ("sgd", "adagrad", "adam")),
        lr=lr,
        sparse_optimizer=_choice(o, "sparse", "optimizer", "adagrad", ("sgd", "adagrad")),
        sparse_lr=_number(o, "sparse_lr", "optimizer", lr, 0.0, 1e6),
        eps=_number(o, "eps", "optimizer", 1e-8, 0.0, 1.0),
        initial_accumulator=_number(o, "initial_accumulator", "optimizer", 0.1, 0.0, 1e6),
        sparse_initial_accumulator=_number(o, "sparse_initial_accumulator", "optimizer", 0.0,
                                           0.0, 1e6),
        seed=seed,
        eval_fraction=_number(t, "eval_fraction", "train", 0.0, 0.0, 0.9),
        placement=_choice(t, "placement", "train", "row", ("row", "table")),
    )
    dims = {tbl.dim for _, tbl in spec.sparse_fields}
    if len(dims) > 1:
        raise ConfigError(f"embedding dims differ across fields ({sorted(dims)}); the {cfg.preset} "
                          "model needs one dim")
    if cfg.preset == "dlrm" and spec.dense_width == 0:
        raise ConfigError("model.preset: \"dlrm\" needs a dense feature (output = \"dense\") "
                          "for its bottom MLP; without one use preset = \"wdl\"")
    if cfg.preset == "dlrm" and dims and cfg.bottom_mlp[-1] != next(iter(dims)):
        raise ConfigError(f"model.bottom_mlp: the last size ({cfg.bottom_mlp[-1]}) must equal the "
                          f"embedding dim ({next(iter(dims))})")
    return cfg
