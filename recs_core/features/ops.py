"""Feature operators: validated parameters, a static type rule, and a compiled kernel.

Each operator transforms one :mod:`~recs_core.features.values` batch into another.
The spec compiler (:mod:`recs_core.features.spec`) chains them, checking types
with :meth:`Operator.out_type` before any data is seen.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from recs_core.errors import ConfigError, DataError
from recs_core.features import kernels as K
from recs_core.features.hashing import MAX_BUCKETS
from recs_core.features.values import (
    FloatValues,
    IdValues,
    IntValues,
    ListIdValues,
    ListStrValues,
    StrValues,
    Value,
)


@dataclass(frozen=True)
class VType:
    """Static type of a value: kind, number of columns, may-be-missing, id cardinality."""

    kind: str  # int | float | str | list_str | id | list_id
    width: int
    missing: bool = True
    cardinality: int | None = None


class Params:
    """Reads an operator's parameter table, naming the key in every error."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where, self.used = dict(raw), where, {"op"}

    def _err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {msg}")

    def get(self, key: str, kind: type | tuple, default: Any = ..., *, check=None,
            what: str = "") -> Any:
        self.used.add(key)
        if key not in self.raw:
            if default is ...:
                raise self._err(key, "is required")
            return default
        v = self.raw[key]
        if isinstance(v, bool) and kind is not bool and bool not in (
                kind if isinstance(kind, tuple) else (kind,)):
            raise self._err(key, f"expected {what or kind}, got {v!r}")
        if not isinstance(v, kind):
            raise self._err(key, f"expected {what or getattr(kind, '__name__', kind)}, got {v!r}")
        if isinstance(v, float) and math.isnan(v):
            raise self._err(key, "must be a number, not NaN")
        if isinstance(v, list) and any(isinstance(x, bool) or (isinstance(x, float) and
                                                               math.isnan(x)) for x in v):
            raise self._err(key, "list holds a boolean or NaN")
        if check is not None and not check(v):
            raise self._err(key, f"must be {what}, got {v!r}")
        return v

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.used)
        if extra:
            raise ConfigError(f"{self.where}: unknown parameter(s) {', '.join(extra)}")


def _as_float(v: Value) -> FloatValues:
    if isinstance(v, IntValues):
        return FloatValues(K.fill_missing_int(v.values, v.missing,
                                              np.full(v.values.shape[1], np.nan)))
    return v  # type: ignore[return-value]


def _flat_strings(v: StrValues) -> tuple[np.ndarray, np.ndarray]:
    return v.start.reshape(-1), v.length.reshape(-1)


class Operator(ABC):
    """Base class; subclasses set ``name``, ``accepts`` and implement the rules."""

    name: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params) -> None:
        self.where = params.where

    def check_input(self, t: VType) -> None:
        if t.kind not in self.accepts:
            raise ConfigError(f"{self.where}: {self.name} takes {' or '.join(self.accepts)} "
                              f"input, got {t.kind}")

    @abstractmethod
    def out_type(self, t: VType) -> VType:
        """The output type for input type ``t`` (raises ConfigError if ``t`` is not accepted)."""

    def order_free(self) -> bool:
        """Whether batches may run through this operator in any order (False while it
        still has to fit on the first batch)."""
        return True

    def set_reduction(self, reduce_sum: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """For operators that fit on data: ``reduce_sum`` sums an array over the ranks,
        so that every rank fits on every rank's first batch (None: on its own)."""
        return None

    @abstractmethod
    def apply(self, v: Value) -> Value:
        """Run the operator on one batch."""

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k != "where" and not k.startswith("_")}
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class FillMissing(Operator):
    """Replace missing numbers by ``value`` (int/float → float)."""

    name, accepts = "fill_missing", ("int", "float")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.value = float(p.get("value", (int, float), 0.0, what="a number"))

    def out_type(self, t: VType) -> VType:
        return VType("float", t.width, missing=False)

    def apply(self, v: Value) -> Value:
        if isinstance(v, IntValues):
            fill = np.full(v.values.shape[1], self.value)
            return FloatValues(K.fill_missing_int(v.values, v.missing, fill))
        return FloatValues(K.fill_nan(v.values, np.full(v.values.shape[1], self.value)))


class Clip(Operator):
    """Clamp into [min, max] (either bound may be left out; ``max(x, 0)`` is ``min = 0``)."""

    name, accepts = "clip", ("int", "float")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.min = float(p.get("min", (int, float), -math.inf, what="a number"))
        self.max = float(p.get("max", (int, float), math.inf, what="a number"))
        if self.min == -math.inf and self.max == math.inf:
            raise ConfigError(f"{self.where}: clip needs min or max")
        if self.min > self.max:
            raise ConfigError(f"{self.where}.min: {self.min} is above max {self.max}")

    def out_type(self, t: VType) -> VType:
        return VType("float", t.width, t.missing)

    def apply(self, v: Value) -> Value:
        return FloatValues(K.clip(_as_float(v).values, self.min, self.max))


class Log1p(Operator):
    """log(1 + x); values below -1 are an error (clip first)."""

    name, accepts = "log1p", ("int", "float")

    def out_type(self, t: VType) -> VType:
        return VType("float", t.width, t.missing)

    def apply(self, v: Value) -> Value:
        out, bad = K.log1p(_as_float(v).values)
        if bad:
            raise DataError(f"{self.where}: log1p got {bad} value(s) below -1; "
                            "add a clip with min = 0 (or -1) before it", reason="log1p_domain")
        return FloatValues(out)


class Standardize(Operator):
    """(x - mean) / std per column; mean/std given (scalars or lists) or fitted on the
    first batch seen (``fit = true``), ignoring missing values."""

    name, accepts = "standardize", ("int", "float")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.fit = p.get("fit", bool, False)
        num = (int, float, list)
        self._mean_raw = p.get("mean", num, None if self.fit else ..., what="a number or list")
        self._std_raw = p.get("std", num, None if self.fit else ..., what="a number or list")
        if self.fit and (self._mean_raw is not None or self._std_raw is not None):
            raise ConfigError(f"{self.where}: give mean/std or fit = true, not both")
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._reduce_sum: Callable[[np.ndarray], np.ndarray] | None = None

    def out_type(self, t: VType) -> VType:
        if not self.fit:
            self._set_given(t.width)
        return VType("float", t.width, t.missing)

    def _set_given(self, width: int) -> None:
        self.mean = self._column_values("mean", self._mean_raw, width)
        self.std = self._column_values("std", self._std_raw, width)
        if np.any(self.std <= 0):
            raise ConfigError(f"{self.where}.std: must be > 0")

    def _column_values(self, key: str, raw: Any, width: int) -> np.ndarray:
        vals = raw if isinstance(raw, list) else [raw] * width
        if len(vals) != width or not all(isinstance(x, (int, float)) for x in vals):
            raise ConfigError(f"{self.where}.{key}: expected a number or {width} numbers")
        return np.asarray(vals, dtype=np.float64)

    def order_free(self) -> bool:
        return not self.fit or self.mean is not None

    def set_reduction(self, reduce_sum: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self._reduce_sum = reduce_sum

    def __getstate__(self) -> dict[str, Any]:
        # a copy (the kernels' warm-up before each pass) fits alone: the reduction belongs
        # to the job's ranks and holds their communicator, which cannot be copied
        return {**self.__dict__, "_reduce_sum": None}

    def fit_on(self, x: np.ndarray) -> None:
        """Fit mean and std per column on the present, finite values of ``x`` (with a
        reduction set, of every rank's first batch: the sums are summed over ranks)."""
        total = self._reduce_sum or (lambda a: a)
        with np.errstate(invalid="ignore"):
            present = np.isfinite(x)
            sums = total(np.stack([present.sum(axis=0).astype(np.float64),
                                   np.where(present, x, 0.0).sum(axis=0)]))
            cnt = np.maximum(sums[0], 1)
            mean = sums[1] / cnt
            var = total((np.where(present, x - mean, 0.0) ** 2).sum(axis=0)) / cnt
        self.mean = mean
        self.std = np.where(var > 0, np.sqrt(var), 1.0)

    def fitted_state(self) -> dict[str, np.ndarray] | None:
        """The statistics fitted on the first batch (``fit = true``, once fitted), for a
        checkpoint; None otherwise."""
        if not self.fit or self.mean is None or self.std is None:
            return None
        return {"mean": np.asarray(self.mean, np.float64), "std": np.asarray(self.std, np.float64)}

    def set_fitted_state(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Restore statistics saved by :meth:`fitted_state` (no refit on the next batch)."""
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if not self.fit or mean.shape != std.shape or mean.ndim != 1 or np.any(std <= 0):
            raise ValueError(f"{self.where}: cannot restore fitted statistics {mean.shape} / "
                             f"{std.shape} (fit = {self.fit})")
        self.mean, self.std = mean.copy(), std.copy()

    def apply(self, v: Value) -> Value:
        x = _as_float(v).values
        if self.mean is None:
            if self.fit:
                self.fit_on(x)
            else:
                self._set_given(x.shape[1])
        return FloatValues(K.standardize(x, self.mean, 1.0 / self.std))


class Bucketize(Operator):
    """Bucket index by sorted ``boundaries``: 0 missing, 1 + count of boundaries <= x."""

    name, accepts = "bucketize", ("int", "float")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        b = p.get("boundaries", list, what="a list of numbers")
        if not b or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b):
            raise ConfigError(f"{self.where}.boundaries: expected a non-empty list of numbers")
        if any(b2 <= b1 for b1, b2 in zip(b, b[1:])):
            raise ConfigError(f"{self.where}.boundaries: must be strictly increasing")
        self.boundaries = np.asarray(b, dtype=np.float64)

    def __repr__(self) -> str:
        b = self.boundaries
        return f"bucketize({len(b)} boundaries {b[0]:g} .. {b[-1]:g})"

    def out_type(self, t: VType) -> VType:
        return VType("id", t.width, False, len(self.boundaries) + 2)

    def apply(self, v: Value) -> Value:
        if isinstance(v, IntValues):
            return IdValues(K.bucketize_int(v.values, v.missing, self.boundaries))
        return IdValues(K.bucketize(v.values, self.boundaries))


def _buckets(p: Params) -> int:
    return p.get("buckets", int, check=lambda b: 2 <= b <= MAX_BUCKETS,
                 what="an integer in [2, 2**32]")


class HashBucket(Operator):
    """recs-hash64 of each string → 0 for missing, else ``bucket_of(hash, buckets)``."""

    name, accepts = "hash_bucket", ("str", "list_str")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.buckets = _buckets(p)

    def out_type(self, t: VType) -> VType:
        kind = "id" if t.kind == "str" else "list_id"
        return VType(kind, t.width, False, self.buckets)

    def apply(self, v: Value) -> Value:
        if isinstance(v, StrValues):
            return IdValues(K.hash_str_ids(v.arena, v.start, v.length, v.hashes, v.known,
                                           self.buckets))
        return ListIdValues(K.hash_token_ids(v.arena, v.start, v.length, self.buckets), v.offsets)


class HashCross(Operator):
    """Cross hash of groups of ``arity`` columns (inputs listed group by group)."""

    name, accepts = "hash_cross", ("str", "int")

    def __init__(self, p: Params, arity: int = 2) -> None:
        super().__init__(p)
        self.buckets = _buckets(p)
        self.arity = arity

    def out_type(self, t: VType) -> VType:
        if self.arity < 2 or t.width % self.arity:
            raise ConfigError(f"{self.where}: hash_cross needs inputs as groups of 2 or more "
                              "columns, e.g. inputs = [[\"C1\", \"C2\"]]")
        return VType("id", t.width // self.arity, False, self.buckets)

    def apply(self, v: Value) -> Value:
        if isinstance(v, StrValues):
            return IdValues(K.cross_str_ids(v.arena, v.start, v.length, v.hashes, v.known,
                                            self.arity, self.buckets))
        return IdValues(K.cross_int_ids(v.values, v.missing, self.arity, self.buckets))


class IdMod(Operator):
    """Integer id → 0 for missing, 1 + (id mod (buckets - 1))."""

    name, accepts = "id_mod", ("int",)

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.buckets = _buckets(p)

    def out_type(self, t: VType) -> VType:
        return VType("id", t.width, False, self.buckets)

    def apply(self, v: Value) -> Value:
        return IdValues(K.mod_ids(v.values, v.missing, self.buckets))


class Vocab(Operator):
    """Vocabulary lookup: 0 missing, 1..V the entries, then ``oov_buckets`` hashed OOV ids."""

    name, accepts = "vocab", ("str", "list_str")

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        values = p.get("values", list, None, what="a list of strings")
        path = p.get("file", str, None, what="a path")
        if (values is None) == (path is None):
            raise ConfigError(f"{self.where}: give exactly one of values or file")
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    values = [ln.rstrip("\r\n") for ln in f if ln.rstrip("\r\n")]
            except OSError as e:
                raise ConfigError(f"{self.where}.file: cannot read {path}: {e.strerror}") from e
        if not values or not all(isinstance(x, str) and x for x in values):
            raise ConfigError(f"{self.where}.values: expected non-empty strings")
        if len(set(values)) != len(values):
            raise ConfigError(f"{self.where}.values: duplicate entries")
        self.oov_buckets = p.get("oov_buckets", int, 1, check=lambda b: b >= 1,
                                 what="an integer >= 1")
        self.size = len(values)
        enc = [x.encode("utf-8") for x in values]
        self._arena = np.frombuffer(b"".join(enc), dtype=np.uint8).copy()
        lens = np.array([len(e) for e in enc], dtype=np.int32)
        self._start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        self._len = lens
        self._hashes, self._order = K.vocab_index(self._arena, self._start, self._len)

    def out_type(self, t: VType) -> VType:
        kind = "id" if t.kind == "str" else "list_id"
        return VType(kind, t.width, False, 1 + self.size + self.oov_buckets)

    def _lookup(self, arena: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        return K.vocab_lookup_flat(arena, start, length, self._arena, self._start, self._len,
                                   self._hashes, self._order, self.oov_buckets)

    def apply(self, v: Value) -> Value:
        if isinstance(v, StrValues):
            s, ln = _flat_strings(v)
            return IdValues(self._lookup(v.arena, s, ln).reshape(v.start.shape))
        return ListIdValues(self._lookup(v.arena, v.start, v.length), v.offsets)

    def __repr__(self) -> str:
        return f"vocab(size={self.size}, oov_buckets={self.oov_buckets})"


class Split(Operator):
    """Split one string column on ``sep`` into tokens, keeping at most ``max_len`` (the
    ``keep = "first"`` or ``"last"`` ones); empty tokens are dropped."""

    name, accepts = "split", ("str",)

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        sep = p.get("sep", str, what="a one-byte string")
        if len(sep.encode("utf-8")) != 1:
            raise ConfigError(f"{self.where}.sep: must be one byte (ASCII), got {sep!r}")
        self.sep = sep
        self.max_len = p.get("max_len", int, check=lambda n: n >= 1, what="an integer >= 1")
        self.keep = p.get("keep", str, "first", check=lambda k: k in ("first", "last"),
                          what='"first" or "last"')

    def out_type(self, t: VType) -> VType:
        if t.width != 1:
            raise ConfigError(f"{self.where}: split takes exactly one input column, got {t.width}")
        return VType("list_str", 1, False)

    def apply(self, v: Value) -> Value:
        s, ln, off = K.split_tokens(v.arena, v.start, v.length, np.uint8(ord(self.sep)),
                                    self.max_len, self.keep == "last")
        return ListStrValues(v.arena, s, ln, off)


class Lowercase(Operator):
    """ASCII lowercase of strings or tokens (other bytes unchanged)."""

    name, accepts = "lowercase", ("str", "list_str")

    def out_type(self, t: VType) -> VType:
        return t

    def apply(self, v: Value) -> Value:
        if isinstance(v, StrValues):
            s, ln = _flat_strings(v)
            arena, ns = K.lower_copy(v.arena, s, ln)
            return StrValues(arena, ns.reshape(v.start.shape), v.length)
        arena, ns = K.lower_copy(v.arena, v.start, v.length)
        return ListStrValues(arena, ns, v.length, v.offsets)


class Pad(Operator):
    """Fixed-length id lists: truncate to ``max_len`` (``keep`` first/last) and pad with id
    ``value`` (default 0, the missing id)."""

    name, accepts = "pad", ("list_id",)

    def __init__(self, p: Params) -> None:
        super().__init__(p)
        self.max_len = p.get("max_len", int, check=lambda n: n >= 1, what="an integer >= 1")
        self.value = p.get("value", int, 0, check=lambda n: n >= 0, what="an id >= 0")
        self.keep = p.get("keep", str, "first", check=lambda k: k in ("first", "last"),
                          what='"first" or "last"')

    def out_type(self, t: VType) -> VType:
        card = t.cardinality if t.cardinality is None else max(t.cardinality, self.value + 1)
        return replace(t, cardinality=card)

    def apply(self, v: Value) -> Value:
        n = len(v.offsets) - 1
        ids = K.pad_ids(v.ids, v.offsets, self.max_len, self.value, self.keep == "last")
        return ListIdValues(ids, np.arange(0, (n + 1) * self.max_len, self.max_len, dtype=np.int64))


OPERATORS: dict[str, type[Operator]] = {
    cls.name: cls for cls in (FillMissing, Clip, Log1p, Standardize, Bucketize, HashBucket,
                              HashCross, IdMod, Vocab, Split, Lowercase, Pad)
}


def make_operator(raw: dict[str, Any], where: str, arity: int = 1) -> Operator:
    """Build one operator from its TOML table ``{op = "...", ...}``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table like {{ op = \"log1p\" }}, got {raw!r}")
    name = raw.get("op")
    if name not in OPERATORS:
        raise ConfigError(f"{where}.op: unknown operator {name!r}; known: "
                          f"{', '.join(sorted(OPERATORS))}")
    p = Params(raw, where)
    op = OPERATORS[name](p, arity) if name == "hash_cross" else OPERATORS[name](p)
    p.done()
    return op
