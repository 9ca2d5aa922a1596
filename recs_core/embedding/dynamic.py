"""Dynamic (hash-keyed) embedding tables: a row per admitted key instead of hashing every
id into a fixed ``[0, rows)``.

One :class:`DynamicTable` is a compiled open-addressing hash table (linear probing,
power-of-two slot count, load kept <= 0.7, grown by rehash; deletion by backward shift, so
there are no tombstones) from int64 keys to dense row numbers. All per-key loops are Numba
kernels; the Python class only sizes arrays and picks victims with vectorized NumPy.

Keys are any int64 (64-bit feature hashes included; uint64 keys are read bit for bit as
int64) except ``EMPTY = -2**63``, the empty-slot sentinel, which is rejected.

Per-row storage (row r, rows allocated densely, freed rows reused last-freed-first):

* ``values[r]``: the float32 embedding, ``dim`` wide;
* key, frequency and last-seen window (int64 each);
* named float32 per-row states added with :meth:`DynamicTable.add_row_state` (e.g. a
  row-wise Adagrad accumulator); they follow their row through growth, are reset to their
  initial value when the row is freed, and are part of :meth:`DynamicTable.state`.

**Admission.** A key not in the table is counted in a count-min sketch (``sketch_depth``
rows of ``sketch_width`` uint32 counters, fixed memory whatever the number of distinct
keys, row d indexed by ``fmix64(key ^ s_d)`` with seeds s_d drawn from ``seed``;
conservative update). The key gets a row when its estimate (which may overcount, never
undercounts) reaches ``admit_after``; its frequency starts at that estimate and grows by one
per sighting. With ``admit_after=1`` every key is admitted on first sight and no sketch is
allocated. Sketch counts never decrease: a key evicted after admission is readmitted on its
next sighting. A key without a row maps to row -1: it reads as a zero vector and its
gradients are dropped (callers keep only rows >= 0 before an optimizer update).

**Eviction** runs only in :meth:`DynamicTable.end_window`: first rows unseen for more than
``evict_after_windows`` windows, then, if more than ``row_budget`` rows are still live, the
lowest-frequency rows (ties: smallest key first) down to the budget. Within a window the
table may exceed its budget.

**Initial vectors** depend on ``(seed, key)`` alone, never on arrival order, rank or world
size: with ``base = fmix64(key ^ fmix64(seed + G))`` and ``G = 0x9E3779B97F4A7C15``,
element d is ``u * 2b - b`` (float64, then rounded to float32) where
``u = (fmix64(base + (d + 1) * G) >> 40) / 2**24`` and ``b = sqrt(1 / init_scale)``; that is
uniform(-b, b) like a fixed table of ``init_scale`` rows (:func:`~.table.init_table`).

Everything is bit-deterministic: the same sequence of calls gives the same state.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from recs_core.embedding.table import AHEAD, prefetch, prefetch_w
from recs_core.features.hashing import fmix64

EMPTY = np.int64(-(2**63))  # empty-slot sentinel: the one int64 that cannot be a key
MAX_LOAD = 0.7
_G = np.uint64(0x9E3779B97F4A7C15)
_S40 = np.uint64(40)
_U24 = 1.0 / (1 << 24)
_SAT = np.uint32(0xFFFFFFFF)
_SAT_I = np.int64(0xFFFFFFFF)

KEY, FREQ, SEEN = 0, 1, 2  # columns of the per-row metadata [row_capacity, 3] int64
LIVE, NEXT, NFREE = 0, 1, 2  # counters: live rows, rows ever used, entries on the free list
_CONFIG = ("dim", "seed", "admit_after", "row_budget", "evict_after_windows", "sketch_width",
           "sketch_depth", "init_scale")

# ---------------------------------------------------------------------------------------
# Kernels: slots are [capacity, 2] int64 (key, row) so a probe touches one cache line
# ---------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, inline="always")
def _home(key: np.int64, mask: int) -> int:
    return np.int64(fmix64(np.uint64(key)) & np.uint64(mask))


@njit(nogil=True, cache=True, inline="always")
def _probe(slots: np.ndarray, key: np.int64) -> int:
    """The slot holding key, or the empty slot where it would go."""
    mask = slots.shape[0] - 1
    s = _home(key, mask)
    while slots[s, 0] != key and slots[s, 0] != EMPTY:
        s = (s + 1) & mask
    return s


@njit(nogil=True, cache=True)
def _lookup(slots: np.ndarray, keys: np.ndarray, out: np.ndarray) -> None:
    mask = slots.shape[0] - 1
    n = keys.shape[0]
    for i in range(n):
        if i + AHEAD < n:
            prefetch(slots, 2 * _home(keys[i + AHEAD], mask))
        s = _probe(slots, keys[i])
        out[i] = slots[s, 1] if slots[s, 0] == keys[i] else -1


@njit(nogil=True, cache=True)
def _index_rows(meta: np.ndarray, used: int, slots: np.ndarray) -> None:
    """Inserts every live row among the first ``used`` into empty ``slots`` (a rehash)."""
    mask = slots.shape[0] - 1
    for r in range(used):
        if r + AHEAD < used and meta[r + AHEAD, KEY] != EMPTY:
            prefetch_w(slots, 2 * _home(meta[r + AHEAD, KEY], mask))
        key = meta[r, KEY]
        if key != EMPTY:
            s = _probe(slots, key)
            slots[s, 0] = key
            slots[s, 1] = r


@njit(nogil=True, cache=True)
def _init_row(values: np.ndarray, r: int, key: np.int64, seed: np.int64, bound: float) -> None:
    base = fmix64(np.uint64(key) ^ fmix64(np.uint64(seed) + _G))
    for d in range(values.shape[1]):
        u = np.float64(fmix64(base + np.uint64(d + 1) * _G) >> _S40) * _U24
        values[r, d] = np.float32(u * (2.0 * bound) - bound)


@njit(nogil=True, cache=True)
def _init_rows(values: np.ndarray, keys: np.ndarray, seed: np.int64, bound: float) -> None:
    for r in range(keys.shape[0]):
        _init_row(values, r, keys[r], seed, bound)


@njit(nogil=True, cache=True, inline="always")
def _sketch_estimate(sketch: np.ndarray, seeds: np.ndarray, key: np.int64,
                     cols: np.ndarray) -> np.uint32:
    """Min over the sketch rows of key's counters (their columns go to cols)."""
    wmask = np.uint64(sketch.shape[1] - 1)
    est = _SAT
    for d in range(sketch.shape[0]):
        c = np.int64(fmix64(np.uint64(key) ^ seeds[d]) & wmask)
        cols[d] = c
        est = min(est, sketch[d, c])
    return est


@njit(nogil=True, cache=True, inline="always")
def _take_row(free: np.ndarray, counts: np.ndarray) -> int:
    """A row for a new key: the last freed one, else the next never used."""
    counts[LIVE] += 1
    if counts[NFREE] > 0:
        counts[NFREE] -= 1
        return free[counts[NFREE]]
    counts[NEXT] += 1
    return counts[NEXT] - 1


@njit(nogil=True, cache=True)
def _observe(keys: np.ndarray, start: int, window: int, slots: np.ndarray, meta: np.ndarray,
             values: np.ndarray, free: np.ndarray, counts: np.ndarray, sketch: np.ndarray,
             seeds: np.ndarray, admit_after: int, seed: np.int64, bound: float,
             max_live: int, out: np.ndarray) -> int:
    """Observes keys[start:]; out[i] = row or -1. Returns len(keys), or the position of the
    first key that needs a row while the slots are at their load limit or no row is free
    (nothing written for it: the caller grows the table and resumes there)."""
    mask = slots.shape[0] - 1
    n = keys.shape[0]
    cols = np.empty(sketch.shape[0], dtype=np.int64)
    for i in range(start, n):
        if i + AHEAD < n:
            prefetch(slots, 2 * _home(keys[i + AHEAD], mask))
        key = keys[i]
        s = _probe(slots, key)
        if slots[s, 0] == key:
            r = slots[s, 1]
            meta[r, FREQ] += 1
            meta[r, SEEN] = window
            out[i] = r
            continue
        count = 1
        if admit_after > 1:  # saturating count
            count = min(np.int64(_sketch_estimate(sketch, seeds, key, cols)) + 1, _SAT_I)
        admit = count >= admit_after
        if admit and (counts[LIVE] >= max_live
                      or (counts[NFREE] == 0 and counts[NEXT] == meta.shape[0])):
            return i
        for d in range(sketch.shape[0]):  # conservative update (no sketch when admit_after=1)
            sketch[d, cols[d]] = max(sketch[d, cols[d]], np.uint32(count))
        if not admit:
            out[i] = -1
            continue
        r = _take_row(free, counts)
        slots[s, 0] = key
        slots[s, 1] = r
        meta[r, KEY] = key
        meta[r, FREQ] = count
        meta[r, SEEN] = window
        _init_row(values, r, key, seed, bound)
        out[i] = r
    return n


@njit(nogil=True, cache=True)
def _delete(slots: np.ndarray, key: np.int64) -> int:
    """Removes key (backward-shift deletion); returns its row, or -1 if absent."""
    mask = slots.shape[0] - 1
    i = _probe(slots, key)
    if slots[i, 0] != key:
        return -1
    r = slots[i, 1]
    j = i
    while True:
        j = (j + 1) & mask
        if slots[j, 0] == EMPTY:
            break
        home = _home(slots[j, 0], mask)
        if ((j - home) & mask) >= ((j - i) & mask):  # home not in (i, j]: move it to i
            slots[i, 0] = slots[j, 0]
            slots[i, 1] = slots[j, 1]
            i = j
    slots[i, 0] = EMPTY
    slots[i, 1] = -1
    return r


@njit(nogil=True, cache=True)
def _evict(keys: np.ndarray, slots: np.ndarray, meta: np.ndarray, free: np.ndarray,
           counts: np.ndarray) -> None:
    """Frees the rows of keys (all present), pushing them on the free list in order."""
    for i in range(keys.shape[0]):
        r = _delete(slots, keys[i])
        meta[r, KEY] = EMPTY
        meta[r, FREQ] = 0
        meta[r, SEEN] = 0
        free[counts[NFREE]] = r
        counts[NFREE] += 1
        counts[LIVE] -= 1


@njit(nogil=True, cache=True)
def _gather_rows(values: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    dim = values.shape[1]
    n = rows.shape[0]
    for i in range(n):
        if i + AHEAD < n and rows[i + AHEAD] >= 0:
            prefetch(values, rows[i + AHEAD] * dim)
        r = rows[i]
        for d in range(dim):
            out[i, d] = values[r, d] if r >= 0 else np.float32(0.0)


@njit(nogil=True, cache=True)
def _sketch_seeds(seed: np.int64, depth: int) -> np.ndarray:
    out = np.empty(depth, dtype=np.uint64)
    for d in range(depth):
        out[d] = fmix64(fmix64(np.uint64(seed) ^ _G) + np.uint64(d + 1) * _G)
    return out


# ---------------------------------------------------------------------------------------
# Checks and sizes
# ---------------------------------------------------------------------------------------


def _keys(keys: np.ndarray) -> np.ndarray:
    """keys as a contiguous 1-d int64 array (uint64 reinterpreted), sentinel rejected."""
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-d, got shape {keys.shape}")
    if keys.dtype.kind not in "iu":
        raise TypeError(f"keys must be integers (int64 or uint64), got {keys.dtype}")
    if keys.dtype == np.uint64:
        keys = keys.view(np.int64)
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    bad = np.flatnonzero(keys == EMPTY)
    if len(bad):
        raise ValueError(f"key at position {bad[0]} is {EMPTY} (= uint64 2**63), the reserved "
                         "empty-slot sentinel of dynamic tables")
    return keys


def _slot_capacity(live: int) -> int:
    """The smallest power of two (>= 8) that holds ``live`` keys under the load limit."""
    cap = 8
    while live > MAX_LOAD * cap:
        cap *= 2
    return cap


def _positive(name: str, value: int | None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if value is None or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _optional(value: int) -> int | None:
    return None if value < 0 else int(value)


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


class DynamicTable:
    """A hash-keyed embedding table (see the module docstring for every rule).

    ``values``, ``row_state(name)`` and the row numbers returned by :meth:`observe` stay
    valid until the next :meth:`observe`, :meth:`end_window` or :meth:`load_state` (growth
    reallocates, eviction frees rows)."""

    def __init__(self, dim: int, seed: int, admit_after: int = 1,
                 row_budget: int | None = None, evict_after_windows: int | None = None,
                 sketch_width: int = 2**20, sketch_depth: int = 4,
                 initial_capacity: int = 1024, init_scale: int = 2**20) -> None:
        self.dim = _positive("dim", dim)
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        self.seed = int(seed)
        self.admit_after = _positive("admit_after", admit_after)
        self.row_budget = _positive("row_budget", row_budget, allow_none=True)
        if evict_after_windows is not None and evict_after_windows < 0:
            raise ValueError(f"evict_after_windows must be >= 0, got {evict_after_windows}")
        self.evict_after_windows = evict_after_windows
        self.sketch_width = _positive("sketch_width", sketch_width)
        if self.sketch_width & (self.sketch_width - 1):
            raise ValueError(f"sketch_width must be a power of two, got {sketch_width}")
        self.sketch_depth = _positive("sketch_depth", sketch_depth)
        self.initial_capacity = _positive("initial_capacity", initial_capacity)
        self.init_scale = _positive("init_scale", init_scale)
        self._bound = math.sqrt(1.0 / self.init_scale)
        depth = self.sketch_depth if self.admit_after > 1 else 0  # no sketch when admit_after=1
        self._sketch = np.zeros((depth, self.sketch_width if depth else 0), dtype=np.uint32)
        self._seeds = _sketch_seeds(np.int64(self.seed), depth)
        self._extra: dict[str, np.ndarray] = {}
        self._extra_init: dict[str, float] = {}
        self._reset(self.initial_capacity, _slot_capacity(self.initial_capacity))

    # ---- storage -----------------------------------------------------------------------

    def _reset(self, row_capacity: int, slot_capacity: int) -> None:
        self._slots = np.full((slot_capacity, 2), EMPTY, dtype=np.int64)
        self._slots[:, 1] = -1
        self._values = np.zeros((row_capacity, self.dim), dtype=np.float32)
        self._meta = np.zeros((row_capacity, 3), dtype=np.int64)
        self._meta[:, KEY] = EMPTY
        self._free = np.empty(row_capacity, dtype=np.int32)
        self._counts = np.zeros(3, dtype=np.int64)
        for name, init in self._extra_init.items():
            self._extra[name] = np.full(row_capacity, init, dtype=np.float32)

    def _grow_rows(self) -> None:
        """Doubles the row capacity. Rows past NEXT are written on allocation, so only the
        row states get a fill (no page is touched twice)."""
        cap = 2 * self._meta.shape[0]
        self._values = _grown(self._values, cap)
        self._meta = _grown(self._meta, cap)
        self._free = _grown(self._free, cap)
        for name, arr in self._extra.items():
            self._extra[name] = _grown(arr, cap, self._extra_init[name])

    def _rehash(self, slot_capacity: int) -> None:
        self._slots = np.full((slot_capacity, 2), EMPTY, dtype=np.int64)
        self._slots[:, 1] = -1
        _index_rows(self._meta, int(self._counts[NEXT]), self._slots)

    def _max_live(self) -> int:
        return int(MAX_LOAD * self._slots.shape[0])

    def _make_room(self) -> None:
        if self._counts[LIVE] >= self._max_live():
            self._rehash(2 * self._slots.shape[0])
        if self._counts[NFREE] == 0 and self._counts[NEXT] == self._meta.shape[0]:
            self._grow_rows()

    # ---- per-key calls -----------------------------------------------------------------

    def observe(self, keys: np.ndarray, window: int) -> np.ndarray:
        """Counts keys seen in ``window``, admits the ones that reach ``admit_after``, and
        bumps frequency and last-seen of the ones with a row. Returns int64 rows (-1: not
        admitted), in key order."""
        keys = _keys(keys)
        out = np.empty(len(keys), dtype=np.int64)
        pos = 0
        while True:
            pos = _observe(keys, pos, int(window), self._slots, self._meta, self._values,
                           self._free, self._counts, self._sketch, self._seeds,
                           self.admit_after, np.int64(self.seed), self._bound,
                           self._max_live(), out)
            if pos == len(keys):
                return out
            self._make_room()

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Rows of keys (-1 if absent); changes nothing."""
        keys = _keys(keys)
        out = np.empty(len(keys), dtype=np.int64)
        _lookup(self._slots, keys, out)
        return out

    def gather(self, keys: np.ndarray) -> np.ndarray:
        """Embeddings [n, dim] float32 of keys; zeros for keys without a row."""
        return self.gather_rows(self.rows_of(keys))

    def gather_rows(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings [n, dim] float32 of rows from :meth:`observe`; zeros for -1."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-d, got shape {rows.shape}")
        if len(rows) and (rows.min() < -1 or rows.max() >= self._meta.shape[0]):
            raise IndexError(f"rows must be -1 or in [0, {self._meta.shape[0]})")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        _gather_rows(self._values, rows, out)
        return out

    # ---- windows and eviction ----------------------------------------------------------

    def end_window(self, window: int) -> np.ndarray:
        """Evicts rows last seen before ``window - evict_after_windows``, then the
        lowest-frequency rows (ties: smallest key) down to ``row_budget``. Returns the
        evicted keys, ascending."""
        used = int(self._counts[NEXT])
        meta = self._meta[:used]
        live = np.flatnonzero(meta[:, KEY] != EMPTY)
        if self.evict_after_windows is not None:
            stale = int(window) - meta[live, SEEN] > self.evict_after_windows
            victims, live = live[stale], live[~stale]
        else:
            victims = live[:0]
        if self.row_budget is not None and len(live) > self.row_budget:
            order = np.lexsort((meta[live, KEY], meta[live, FREQ]))
            victims = np.concatenate([victims, live[order[:len(live) - self.row_budget]]])
        keys = np.sort(meta[victims, KEY])
        self._evict_keys(keys)
        return keys

    def _evict_keys(self, keys: np.ndarray) -> None:
        rows = self.rows_of(keys)
        _evict(keys, self._slots, self._meta, self._free, self._counts)
        for name, arr in self._extra.items():
            arr[rows] = self._extra_init[name]

    # ---- per-row states ----------------------------------------------------------------

    def add_row_state(self, name: str, init_value: float = 0.0) -> np.ndarray:
        """Adds a float32 per-row state (e.g. an optimizer accumulator), every row at
        ``init_value``; returns it (indexed by row, like ``values``)."""
        if name in self._extra:
            raise ValueError(f"row state {name!r} already exists")
        self._extra_init[name] = float(np.float32(init_value))
        self._extra[name] = np.full(self._meta.shape[0], init_value, dtype=np.float32)
        return self._extra[name]

    def row_state(self, name: str) -> np.ndarray:
        """The per-row state ``name`` [row_capacity] float32 (see the class docstring)."""
        return self._extra[name]

    # ---- sizes -------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._counts[LIVE])

    @property
    def values(self) -> np.ndarray:
        """The embeddings [row_capacity, dim] float32, indexed by row (rows never
        allocated hold unset memory)."""
        return self._values

    @property
    def row_capacity(self) -> int:
        return self._meta.shape[0]

    @property
    def slot_capacity(self) -> int:
        return self._slots.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by all arrays: slots, rows, free list, row states and sketch."""
        arrays = [self._slots, self._values, self._meta, self._free, self._counts,
                  self._sketch, self._seeds, *self._extra.values()]
        return sum(a.nbytes for a in arrays)

    # ---- state -------------------------------------------------------------------------

    def config(self) -> dict[str, int | None]:
        """The constructor arguments that define the table's behaviour."""
        return {name: getattr(self, name) for name in _CONFIG}

    def state(self) -> dict[str, np.ndarray]:
        """Live rows by ascending key: ``keys``, ``values``, ``freq``, ``last_seen``,
        ``extra/<name>``; plus ``sketch``, ``config`` (int64, -1 for None) and
        ``extra_init/<name>``. Independent of the row layout."""
        used = int(self._counts[NEXT])
        live = np.flatnonzero(self._meta[:used, KEY] != EMPTY)
        rows = live[np.argsort(self._meta[live, KEY], kind="stable")]
        cfg = [-1 if v is None else v for v in self.config().values()]
        out = {"keys": self._meta[rows, KEY], "values": self._values[rows],
               "freq": self._meta[rows, FREQ], "last_seen": self._meta[rows, SEEN],
               "sketch": self._sketch.copy(), "config": np.array(cfg, dtype=np.int64)}
        for name, arr in self._extra.items():
            out[f"extra/{name}"] = arr[rows]
            out[f"extra_init/{name}"] = np.array(self._extra_init[name], dtype=np.float32)
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> DynamicTable:
        """A table rebuilt from :meth:`state` (configuration included)."""
        cfg = dict(zip(_CONFIG, (int(v) for v in state["config"])))
        for name in ("row_budget", "evict_after_windows"):
            cfg[name] = _optional(cfg[name])
        table = cls(**cfg)
        table.load_state(state)
        return table

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Replaces rows, sketch and row states with those of :meth:`state` (same dim and
        sketch shape). Rows are laid out in key order."""
        keys = np.asarray(state["keys"])
        n = len(keys)
        _check_state(state, keys, self.dim, self._sketch.shape)
        extra_names = [k.split("/", 1)[1] for k in state if k.startswith("extra/")]
        self._extra_init = {name: float(state[f"extra_init/{name}"]) for name in extra_names}
        self._extra = {}
        self._reset(max(self.initial_capacity, n), _slot_capacity(max(self.initial_capacity, n)))
        self._values[:n] = state["values"]
        self._meta[:n, KEY] = keys
        self._meta[:n, FREQ] = state["freq"]
        self._meta[:n, SEEN] = state["last_seen"]
        for name in extra_names:
            self._extra[name][:n] = state[f"extra/{name}"]
        self._counts[:] = (n, n, 0)
        self._sketch[:] = state["sketch"]
        _index_rows(self._meta, n, self._slots)


def _grown(arr: np.ndarray, rows: int, fill: float | None = None) -> np.ndarray:
    """arr with ``rows`` rows: the old ones copied, the new ones ``fill`` (or unset)."""
    out = np.empty((rows, *arr.shape[1:]), dtype=arr.dtype)
    out[:arr.shape[0]] = arr
    if fill is not None:
        out[arr.shape[0]:] = fill
    return out


def _check_state(state: dict[str, np.ndarray], keys: np.ndarray, dim: int,
                 sketch_shape: tuple[int, ...]) -> None:
    n = len(keys)
    if keys.dtype != np.int64 or keys.ndim != 1:
        raise ValueError(f"state keys must be 1-d int64, got {keys.dtype} {keys.shape}")
    if n and (keys[0] == EMPTY or (np.diff(keys) <= 0).any()):
        raise ValueError("state keys must be strictly ascending and not the sentinel")
    shapes = {"values": (n, dim), "freq": (n,), "last_seen": (n,), "sketch": sketch_shape}
    shapes.update({k: (n,) for k in state if k.startswith("extra/")})
    for name, shape in shapes.items():
        if np.shape(state[name]) != shape:
            raise ValueError(f"state {name!r} has shape {np.shape(state[name])}, "
                             f"expected {shape}")
