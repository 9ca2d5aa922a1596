"""Deterministic synthetic Criteo-format data (``recs gen``), written by a Numba kernel.

Each line is ``label \\t I1..I13 \\t C1..C26`` (40 fields; plus ``H1 \\t H2`` with
``heavy=True``), no header, the shape of the Criteo display-advertising TSV:

* ``I1..I13``: heavy-tailed non-negative counts (log-logistic, capped at 1e6; ``I2``
  may be -1..-3) with Criteo's per-column missing rates (0-70%). Missing = empty.
* ``C1..C26``: 8-character lowercase hex ids. Field ``f``'s popularity rank is drawn
  from a bounded power law (exponent 1.1, continuous inverse-CDF, O(1) per draw) over
  the Criteo Kaggle cardinality of the field; rank -> item by a rotation (drift) and
  item -> id by a 64-bit mixing hash cut to 32 bits. About 4% are empty.
* ``H1`` (heavy): ``|``-separated list of 0-200 item ids by default, 0-``max_history``
  in general (lengths scale by ``max_history / 200``; Zipf over 1,000,000 items);
  ``H2`` (heavy): ``,``-separated list of 1-20 tag words (Zipf over a 50,000-word
  vocabulary; each word's letters are fixed by its index, its case varies per
  occurrence: lower, Capitalized or UPPER, so lowercasing matters).
* ``label``: Bernoulli of the hidden true click probability
  ``sigmoid(bias + dense + sum_f w_f(item) + interactions [+ history + tags])``.
  Categorical weights are Gaussian and shrink with the popularity rank (full size for
  the top ranks only), so the signal is learnable by hashed embeddings; the bias is
  calibrated at start-up for about 25% positives.

The hidden model depends only on (heavy, max_history, window, drift), never on
``seed``: files generated with different seeds are independent samples of the same
distribution (so one may be used to train and another to evaluate). ``window``/``drift``
model an incremental stream: window ``w`` rotates which items are popular by
``floor(w * drift * 0.1 * N)`` ranks and blends every weight as
``sqrt(1 - d) * base + sqrt(d) * window_specific`` with ``d = 1 - (1 - drift) ** w``.
With ``drift = 0`` all windows share one distribution but hold different rows.

Randomness is counter-based (splitmix64 of seed, window, row and draw number), so
the output bytes depend only on (rows, seed, heavy, max_history, window, drift), not
on the chunking.
"""

from __future__ import annotations

import gzip
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

__all__ = ["CARDINALITIES", "GenStats", "generate", "n_fields"]

#: Criteo Kaggle per-field cardinalities of C1..C26 (see docs/WORKLOAD.md).
CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
N_INT = 13
N_CAT = 26
ZIPF_S = 1.1
N_ITEMS = 1_000_000
N_TAGS = 50_000
MAX_HISTORY = 200
MAX_HISTORY_LIMIT = 100_000  # bound of ``max_history`` (a row must fit the write buffer)
MAX_TAGS = 20

# Per-column missing rates of I1..I13 (Criteo's) and C1..C26 (~4% on average).
_INT_MISS = (0.45, 0.0, 0.20, 0.20, 0.05, 0.25, 0.05, 0.0, 0.05, 0.45, 0.05, 0.70, 0.20)
_CAT_MISS = (0.0, 0.0, 0.03, 0.03, 0.0, 0.06, 0.0, 0.0, 0.0, 0.03, 0.0, 0.03, 0.0,
             0.0, 0.0, 0.03, 0.0, 0.0, 0.15, 0.15, 0.03, 0.20, 0.0, 0.03, 0.15, 0.15)
# I_j = floor((median_j + 1) * exp(spread_j * z)) - 1 clipped to [0, cap_j], z logistic.
_INT_MEDIAN = (1.0, 3.0, 7.0, 4.0, 2800.0, 41.0, 3.0, 7.0, 42.0, 1.0, 1.0, 0.0, 5.0)
_INT_SPREAD = (0.7, 1.8, 0.87, 0.72, 1.3, 1.06, 0.92, 0.87, 0.97, 0.3, 0.6, 0.66, 0.77)
_INT_CAP = (5000, 300000, 65535, 1000, 1000000, 100000, 50000, 1000, 50000, 10, 200, 200,
            10000)
_I2_NEG_RATE = 0.10
# Hidden dense model: coef * (log1p(max(v, 0)) - log1p(median)) if present, else miss_coef.
_INT_COEF = (0.25, 0.07, -0.08, 0.10, -0.07, -0.10, 0.20, 0.04, 0.07, 0.25, 0.28, 0.10, -0.14)
_INT_MISS_COEF = (-0.20, 0.0, 0.07, -0.10, 0.14, 0.18, -0.07, 0.0, 0.04, -0.14, 0.07, -0.10,
                  0.07)

# Hidden categorical model: weight(f, item) = sigma_f * shrink(rank) * N(0, 1), where
# shrink = 1 for rank < TOPK, else (TOPK / (rank + 1)) ** 1.5.
_CAT_TOPK = 1000
_SIGMA_SMALL = 0.33  # fields with <= 30 values
_SIGMA_MID = 0.245  # fields with <= 20,000 values
_SIGMA_BIG = 0.21  # larger fields
_SIGMA_MISSING = 0.15
# Interactions: (C1, C2) over their top 30 x 30 ranks, (C3, C4) over top 10 x 10,
# (C6, C9) over all pairs.
_X_SIGMA = (0.27, 0.27, 0.22)
_X_TOP = (30, 10, 1 << 30)
# Heavy variant: history items and tags.
_ITEM_TOPK = 2000
_ITEM_SIGMA = 0.3
_TAG_TOPK = 500
_TAG_SIGMA = 0.3
_HIST_LEN_COEF = 0.1

_TARGET_CTR = 0.25
_CALIB_ROWS = 32768
_MODEL_KEY = 0x7E5C_0DE5_1A7E_B1A5
_BUF_BYTES = 8 << 20
_ROWS_PER_CALL = 16384

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S16 = np.uint64(16)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
_U4 = np.uint64(4)
_U15 = np.uint64(15)
_U16MASK = np.uint64(0xFFFF)
_U32MASK = np.uint64(0xFFFFFFFF)
_INV53 = 1.0 / 9007199254740992.0
_INV16 = 1.0 / 65536.0
_SQRT3 = math.sqrt(3.0)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).copy()

# Index of the integer parameter array.
_P_ITEM_ROT = 0
_P_TAG_ROT = 1
_P_HEAVY = 2
_P_BLEND = 3  # 1 if window-specific weights are blended in
_P_MAX_HIST = 4  # longest H1 history (MAX_HISTORY by default)
# Index of the float parameter array.
_F_A = 0  # sqrt(1 - d)
_F_B = 1  # sqrt(d)
_F_ITEM_ZA = 2
_F_TAG_ZA = 3


def n_fields(heavy: bool = False) -> int:
    """Number of tab-separated fields per line (40, or 42 with ``heavy``)."""
    return 42 if heavy else 40


@dataclass(frozen=True)
class GenStats:
    """What :func:`generate` wrote: rows, uncompressed TSV bytes, wall seconds, positives."""

    rows: int
    bytes_written: int
    seconds: float
    positives: int

    @property
    def rows_per_sec(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


# ----------------------------------------------------------------------------- kernels


@njit(nogil=True, cache=True, inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64's finalizer (a bijection of uint64)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(nogil=True, cache=True, inline="always")
def _draw(key: np.uint64, c: np.int64) -> np.uint64:
    """The c-th 64-bit draw of the stream ``key`` (splitmix64 sequence)."""
    return _mix(key + np.uint64(c) * _G)


@njit(nogil=True, cache=True, inline="always")
def _u01(x: np.uint64) -> float:
    """[0, 1) from the top 53 bits."""
    return np.float64(x >> _S11) * _INV53


@njit(nogil=True, cache=True, inline="always")
def _uopen(x: np.uint64) -> float:
    """(0, 1) from the top 53 bits."""
    return (np.float64(x >> _S11) + 0.5) * _INV53


@njit(nogil=True, cache=True, inline="always")
def _normal(x: np.uint64) -> float:
    """Approximately N(0, 1) from one 64-bit hash (Irwin-Hall sum of four 16-bit uniforms)."""
    s = (np.float64(x & _U16MASK) + np.float64((x >> _S16) & _U16MASK)
         + np.float64((x >> _S32) & _U16MASK) + np.float64(x >> _S48) + 2.0) * _INV16
    return (s - 2.0) * _SQRT3


@njit(nogil=True, cache=True, inline="always")
def _zipf_rank(u: float, za: float, n: np.int64) -> np.int64:
    """Rank in 0..n-1 of a bounded power law (exponent 1.1) by continuous inverse CDF.

    ``za = (n + 1) ** (1 - s) - 1``; x = (1 + u * za) ** (1 / (1 - s)) lies in [1, n + 1).
    """
    y = 1.0 + u * za
    y2 = y * y
    y4 = y2 * y2
    x = 1.0 / (y4 * y4 * y2)  # y ** -10, exactly the exponent 1 / (1 - 1.1)
    r = np.int64(x) - 1
    if r >= n:
        r = n - 1
    if r < 0:
        r = 0
    return r


@njit(nogil=True, cache=True, inline="always")
def _weight(wkey: np.uint64, wwkey: np.uint64, item: np.int64, rank: np.int64, topk: np.int64,
            sigma: float, fa: float, fb: float, blend: bool) -> float:
    """Hidden weight of one item: blended Gaussian, shrunk beyond the top ``topk`` ranks."""
    z = _normal(_mix(wkey + np.uint64(item) * _G))
    if blend:
        z = fa * z + fb * _normal(_mix(wwkey + np.uint64(item) * _G))
    w = sigma * z
    if rank >= topk:
        t = np.float64(topk) / np.float64(rank + 1)
        w *= t * np.sqrt(t)
    return w


@njit(nogil=True, cache=True, inline="always")
def _put_uint(buf: np.ndarray, pos: np.int64, v: np.int64) -> np.int64:
    """Decimal digits of v >= 0 at buf[pos:]; returns the new position."""
    if v < 10:
        buf[pos] = 48 + v
        return pos + 1
    n = 0
    t = v
    while t > 0:
        t //= 10
        n += 1
    p = pos + n - 1
    while v > 0:
        buf[p] = 48 + v % 10
        v //= 10
        p -= 1
    return pos + n


@njit(nogil=True, cache=True, inline="always")
def _put_hex8(buf: np.ndarray, pos: np.int64, v: np.uint64, hexd: np.ndarray) -> np.int64:
    """8 lowercase hex digits of the low 32 bits of v."""
    for k in range(8):
        buf[pos + 7 - k] = hexd[np.int64(v & _U15)]
        v >>= _U4
    return pos + 8


@njit(nogil=True, cache=True)
def _kernel(row0, nrows, rowkey0, write, bias, ip, fp, card, cat_za, cat_miss, cat_sigma,
            cat_rot, id_keys, w_keys, ww_keys, miss_w, x_keys, x_sigma, x_top, int_miss,
            int_med1, int_spread, int_cap, int_center, int_coef, int_mcoef, hexd, buf, pbuf,
            logits):
    """Generate rows row0 .. row0+nrows-1 (stopping early when ``buf`` is nearly full).

    With ``write``: formats lines into ``buf`` and probabilities into ``pbuf`` (if it
    is non-empty). Without: only stores each row's logit (bias excluded) in ``logits``.
    Returns (rows done, bytes in buf, bytes in pbuf, positives).
    """
    heavy = ip[_P_HEAVY] != 0
    blend = ip[_P_BLEND] != 0
    fa = fp[_F_A]
    fb = fp[_F_B]
    item_za = fp[_F_ITEM_ZA]
    tag_za = fp[_F_TAG_ZA]
    item_rot = ip[_P_ITEM_ROT]
    tag_rot = ip[_P_TAG_ROT]
    max_h = ip[_P_MAX_HIST]
    # History lengths scale with max_h; the hidden model sees nl / hscale, so the label
    # distribution does not depend on max_h (hscale = 1.0 exactly by default).
    hscale = np.float64(max_h) / np.float64(MAX_HISTORY)
    want_probs = pbuf.shape[0] > 0
    max_row = 2 + 13 * 8 + 26 * 9 + 1
    if heavy:
        max_row += max_h * 9 + 1 + 20 * 13 + 2
    cap = buf.shape[0]
    ivals = np.zeros(13, np.int64)
    imiss = np.zeros(13, np.bool_)
    ids = np.zeros(26, np.uint64)
    cmiss = np.zeros(26, np.bool_)
    ranks = np.zeros(26, np.int64)
    items = np.zeros(26, np.int64)
    hist = np.zeros(max_h, np.uint64)
    tags = np.zeros(20, np.int64)
    tcase = np.zeros(20, np.int64)
    pos = 0
    ppos = 0
    positives = 0
    done = 0
    nl = 0
    nt = 0
    while done < nrows:
        if write and cap - pos < max_row:
            break
        row = row0 + done
        rk = _mix(rowkey0 + np.uint64(row) * _G)
        c = 0
        logit = 0.0
        # ---- dense
        for j in range(13):
            u = _u01(_draw(rk, c))
            c += 1
            x = _draw(rk, c)
            c += 1
            if u < int_miss[j]:
                imiss[j] = True
                logit += int_mcoef[j]
                continue
            imiss[j] = False
            if j == 1 and u < int_miss[j] + 0.10:
                # I2 negatives: -1 (85%), -2 (12%), -3 (3%)
                v2 = _u01(x)
                ivals[j] = -1 if v2 < 0.85 else (-2 if v2 < 0.97 else -3)
                logit += int_coef[j] * (0.0 - int_center[j])
                continue
            uo = _uopen(x)
            z = np.log(uo / (1.0 - uo))
            t = int_med1[j] * np.exp(int_spread[j] * z)
            if t > int_cap[j] + 1.0:
                v = np.int64(int_cap[j])
            else:
                v = np.int64(t) - 1
                if v < 0:
                    v = 0
            ivals[j] = v
            logit += int_coef[j] * (np.log1p(np.float64(v)) - int_center[j])
        # ---- categorical
        for f in range(26):
            u = _u01(_draw(rk, c))
            c += 1
            x = _draw(rk, c)
            c += 1
            if u < cat_miss[f]:
                cmiss[f] = True
                ranks[f] = -1
                items[f] = -1
                logit += miss_w[f]
                continue
            cmiss[f] = False
            n = card[f]
            r = _zipf_rank(_u01(x), cat_za[f], n)
            it = r + cat_rot[f]
            if it >= n:
                it -= n
            ranks[f] = r
            items[f] = it
            ids[f] = _mix(id_keys[f] + np.uint64(it) * _G)
            logit += _weight(w_keys[f], ww_keys[f], it, r, _CAT_TOPK, cat_sigma[f], fa, fb,
                             blend)
        # ---- interactions (C1,C2), (C3,C4), (C6,C9)
        for k in range(3):
            a = 2 * k if k < 2 else 5
            b = a + 1 if k < 2 else 8
            if ranks[a] >= 0 and ranks[b] >= 0 and ranks[a] < x_top[k] and ranks[b] < x_top[k]:
                pair = np.uint64(items[a]) * np.uint64(card[b]) + np.uint64(items[b])
                logit += _weight(x_keys[k], x_keys[k + 3], np.int64(pair), 0, 1, x_sigma[k],
                                 fa, fb, blend)
        # ---- heavy: history items and tags
        if heavy:
            uo = _uopen(_draw(rk, c))
            c += 1
            if uo < 0.04:
                nl = 0
            else:
                uo = (uo - 0.04) / 0.96
                t = 72.0 * hscale * np.exp(0.5 * np.log(uo / (1.0 - uo)))
                nl = max_h if t >= np.float64(max_h) else np.int64(t)
            hs = 0.0
            for k in range(nl):
                r = _zipf_rank(_u01(_draw(rk, c)), item_za, N_ITEMS)
                c += 1
                it = r + item_rot
                if it >= N_ITEMS:
                    it -= N_ITEMS
                hist[k] = _mix(id_keys[26] + np.uint64(it) * _G)
                if r < 4 * _ITEM_TOPK:
                    hs += _weight(w_keys[26], ww_keys[26], it, r, _ITEM_TOPK, _ITEM_SIGMA, fa,
                                  fb, blend)
            if nl > 0:
                logit += hs / np.sqrt(np.float64(nl))
            logit += _HIST_LEN_COEF * (np.log1p(np.float64(nl) / hscale) - 4.0)
            u = _u01(_draw(rk, c))
            c += 1
            nt = 1 + np.int64(20.0 * u * u)
            if nt > 20:
                nt = 20
            ts = 0.0
            for k in range(nt):
                r = _zipf_rank(_u01(_draw(rk, c)), tag_za, N_TAGS)
                c += 1
                u = _u01(_draw(rk, c))
                c += 1
                it = r + tag_rot
                if it >= N_TAGS:
                    it -= N_TAGS
                tags[k] = it
                tcase[k] = 0 if u < 0.7 else (1 if u < 0.9 else 2)
                if r < 4 * _TAG_TOPK:
                    ts += _weight(w_keys[27], ww_keys[27], it, r, _TAG_TOPK, _TAG_SIGMA, fa,
                                  fb, blend)
            logit += ts / np.sqrt(np.float64(nt))
        # ---- label
        ul = _u01(_draw(rk, 1000000))
        if not write:
            logits[done] = logit
            done += 1
            continue
        p = 1.0 / (1.0 + np.exp(-(logit + bias)))
        label = 1 if ul < p else 0
        positives += label
        # ---- format
        buf[pos] = 48 + label
        pos += 1
        for j in range(13):
            buf[pos] = 9
            pos += 1
            if imiss[j]:
                continue
            v = ivals[j]
            if v < 0:
                buf[pos] = 45
                pos += 1
                v = -v
            pos = _put_uint(buf, pos, v)
        for f in range(26):
            buf[pos] = 9
            pos += 1
            if not cmiss[f]:
                pos = _put_hex8(buf, pos, ids[f], hexd)
        if heavy:
            buf[pos] = 9
            pos += 1
            for k in range(nl):
                if k > 0:
                    buf[pos] = 124
                    pos += 1
                pos = _put_hex8(buf, pos, hist[k], hexd)
            buf[pos] = 9
            pos += 1
            for k in range(nt):
                if k > 0:
                    buf[pos] = 44
                    pos += 1
                h = _mix(id_keys[27] + np.uint64(tags[k]) * _G)
                wl = 3 + np.int64(h % np.uint64(10))
                h = _mix(h)
                for q in range(wl):
                    ch = 97 + np.int64(((h & np.uint64(31)) * np.uint64(26)) >> np.uint64(5))
                    h >>= np.uint64(5)
                    if tcase[k] == 2 or (tcase[k] == 1 and q == 0):
                        ch -= 32
                    buf[pos] = ch
                    pos += 1
        buf[pos] = 10
        pos += 1
        if want_probs:
            q6 = np.int64(p * 1e6 + 0.5)
            if q6 < 1:
                q6 = 1
            if q6 > 999999:
                q6 = 999999
            pbuf[ppos] = 48
            pbuf[ppos + 1] = 46
            for k in range(6):
                pbuf[ppos + 7 - k] = 48 + q6 % 10
                q6 //= 10
            pbuf[ppos + 8] = 10
            ppos += 9
        done += 1
    return done, pos, ppos, positives


# ----------------------------------------------------------------------------- model


def _mix_py(x: int) -> int:
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def _key(*parts: int) -> int:
    h = _MODEL_KEY
    for p in parts:
        h = _mix_py(h + (p & ((1 << 64) - 1)) * 0x9E3779B97F4A7C15)
    return h


def _za(n: int) -> float:
    return (n + 1.0) ** (1.0 - ZIPF_S) - 1.0


@lru_cache(maxsize=64)
def _model(heavy: bool, window: int, drift: float, max_history: int = MAX_HISTORY) -> tuple:
    """Kernel arguments describing the hidden model of one (heavy, window, drift, max_history)."""
    d = 1.0 - (1.0 - drift) ** window if window > 0 else 0.0
    frac = window * drift * 0.1

    def rot(n: int) -> int:
        return int(math.floor(frac * n)) % n

    card = np.asarray(CARDINALITIES, dtype=np.int64)
    cat_za = np.array([_za(n) for n in CARDINALITIES])
    cat_sigma = np.array([_SIGMA_SMALL if n <= 30 else _SIGMA_MID if n <= 20000 else _SIGMA_BIG
                          for n in CARDINALITIES])
    cat_rot = np.array([rot(n) for n in CARDINALITIES], dtype=np.int64)
    # 26 fields, then items (26) and tags (27)
    id_keys = np.array([_key(1, f) for f in range(28)], dtype=np.uint64)
    w_keys = np.array([_key(2, f) for f in range(28)], dtype=np.uint64)
    ww_keys = np.array([_key(3, f, window) for f in range(28)], dtype=np.uint64)
    x_keys = np.array([_key(5, k) for k in range(3)] + [_key(6, k, window) for k in range(3)],
                      dtype=np.uint64)
    a, b = math.sqrt(1 - d), math.sqrt(d)
    miss_w = np.array([_SIGMA_MISSING * (a * _normal_py(_key(4, f))
                                         + b * _normal_py(_key(7, f, window)))
                       for f in range(26)])
    rng_dense = [(_normal_py(_key(8, j, window)), _normal_py(_key(9, j, window)))
                 for j in range(N_INT)]
    int_coef = np.array([a * c + b * 0.25 * rng_dense[j][0] for j, c in enumerate(_INT_COEF)])
    int_mcoef = np.array([a * c + b * 0.2 * rng_dense[j][1]
                          for j, c in enumerate(_INT_MISS_COEF)])
    int_miss = np.asarray(_INT_MISS, dtype=np.float64)
    int_med1 = np.asarray(_INT_MEDIAN, dtype=np.float64) + 1.0
    int_spread = np.asarray(_INT_SPREAD, dtype=np.float64)
    int_cap = np.asarray(_INT_CAP, dtype=np.float64)
    int_center = np.log1p(np.asarray(_INT_MEDIAN, dtype=np.float64))
    ip = np.zeros(5, dtype=np.int64)
    ip[_P_ITEM_ROT] = rot(N_ITEMS)
    ip[_P_TAG_ROT] = rot(N_TAGS)
    ip[_P_HEAVY] = int(heavy)
    ip[_P_BLEND] = int(d > 0)
    ip[_P_MAX_HIST] = max_history
    fp = np.zeros(4, dtype=np.float64)
    fp[_F_A] = math.sqrt(1 - d)
    fp[_F_B] = math.sqrt(d)
    fp[_F_ITEM_ZA] = _za(N_ITEMS)
    fp[_F_TAG_ZA] = _za(N_TAGS)
    x_sigma = np.asarray(_X_SIGMA, dtype=np.float64)
    x_top = np.asarray(_X_TOP, dtype=np.int64)
    args = (ip, fp, card, cat_za, np.asarray(_CAT_MISS, dtype=np.float64), cat_sigma, cat_rot,
            id_keys, w_keys, ww_keys, miss_w, x_keys, x_sigma, x_top, int_miss, int_med1,
            int_spread, int_cap, int_center, int_coef, int_mcoef, _HEX)
    for arr in args:
        arr.setflags(write=False)
    return args


def _normal_py(x: int) -> float:
    m = 0xFFFF
    s = ((x & m) + ((x >> 16) & m) + ((x >> 32) & m) + (x >> 48) + 2.0) / 65536.0
    return (s - 2.0) * _SQRT3


def _row_key(seed: int, window: int, salt: int = 0) -> np.uint64:
    return np.uint64(_mix_py(_mix_py(seed * 0xD1B54A32D192ED03 + 0x5851F42D4C957F2D)
                             + _mix_py(window + 0x1000 * salt + 1)))


@lru_cache(maxsize=64)
def _bias(heavy: bool, window: int, drift: float, max_history: int = MAX_HISTORY) -> float:
    """Bias giving a mean true click probability of 0.25 on a fixed calibration sample."""
    model = _model(heavy, window, drift, max_history)
    logits = np.empty(_CALIB_ROWS, dtype=np.float64)
    empty = np.zeros(0, dtype=np.uint8)
    _kernel(0, _CALIB_ROWS, _row_key(0x0CA1_1B4A7E, window, salt=1), False, 0.0, *model,
            empty, empty, logits)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < _TARGET_CTR:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- driver


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _open_tmp(path: str, gz: bool):  # noqa: ANN202 - a binary file object
    tmp = path + ".tmp"
    try:
        raw = open(tmp, "wb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", path) from e
    if not gz:
        return raw, raw, tmp
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0), raw, tmp


def generate(out: str | os.PathLike, rows: int, seed: int = 0, *, heavy: bool = False,
             probs_out: str | os.PathLike | None = None, window: int = 0, drift: float = 0.0,
             chunk_rows: int = 65536, progress: Callable[[int], None] | None = None,
             max_history: int = MAX_HISTORY) -> GenStats:
    """Write ``rows`` synthetic Criteo-format lines to ``out`` (gzip level 1 if it ends in .gz).

    ``probs_out`` (optional, plain text) receives the true click probability of every
    row, one ``0.dddddd`` per line in row order. ``window``/``drift`` select a window of
    a drifting stream (see the module docstring). ``max_history`` (heavy files only) is
    the longest ``H1`` history, 1..100,000 (default 200): all history lengths scale by
    ``max_history / 200`` (median 72 * that, capped at ``max_history``) while the hidden
    model sees the length divided by that factor, so the labels keep their distribution;
    the default gives exactly the bytes of earlier versions. A value other than 200
    without ``heavy`` raises ValueError (it is not silently ignored), as does one outside
    1..100,000. The bytes written depend only on (rows, seed, heavy, max_history, window,
    drift). ``progress(rows_done)`` is called after each
    chunk of ``chunk_rows`` rows. Both files are written to ``<path>.tmp`` and renamed
    into place when complete.
    """
    rows = _check_int("rows", rows)
    seed = _check_int("seed", seed)
    window = _check_int("window", window)
    chunk_rows = _check_int("chunk_rows", chunk_rows)
    max_history = _check_int("max_history", max_history)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if seed < 0 or seed >= 1 << 63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    try:
        drift = float(drift)
    except (TypeError, ValueError):
        raise ValueError(f"drift must be a number in [0, 1], got {drift!r}") from None
    if not (0.0 <= drift <= 1.0):
        raise ValueError(f"drift must be in [0, 1], got {drift}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    heavy = bool(heavy)
    if not 1 <= max_history <= MAX_HISTORY_LIMIT:
        raise ValueError(f"max_history must be in [1, {MAX_HISTORY_LIMIT}], got {max_history}")
    if max_history != MAX_HISTORY and not heavy:
        raise ValueError(f"max_history ({max_history}) applies to heavy files only "
                         f"(heavy=True); plain files have no H1 history")
    out_s = os.fspath(out)
    probs_s = os.fspath(probs_out) if probs_out is not None else None
    if probs_s is not None and os.path.abspath(probs_s) == os.path.abspath(out_s):
        raise ValueError(f"probs_out must differ from out ({out_s})")

    t0 = time.perf_counter()
    model = _model(heavy, window, drift, max_history)
    bias = _bias(heavy, window, drift, max_history)
    rowkey = _row_key(seed, window)
    # Two buffer pairs: the kernel (nogil) fills one while a writer thread writes the other.
    bufs = [np.empty(_BUF_BYTES, dtype=np.uint8) for _ in range(2)]
    pbufs = [np.empty(_ROWS_PER_CALL * 9 if probs_s is not None else 0, dtype=np.uint8)
             for _ in range(2)]
    dummy = np.zeros(0, dtype=np.float64)

    files: list = []
    tmps: list[str] = []
    ok = False
    try:
        f, raw, tmp = _open_tmp(out_s, out_s.endswith(".gz"))
        files += [f] if f is raw else [f, raw]
        tmps.append(tmp)
        pf = None
        if probs_s is not None:
            pf, praw, ptmp = _open_tmp(probs_s, probs_s.endswith(".gz"))
            files += [pf] if pf is praw else [pf, praw]
            tmps.append(ptmp)

        def write(k: int, nb: int, npb: int) -> None:
            f.write(memoryview(bufs[k])[:nb])
            if pf is not None:
                pf.write(memoryview(pbufs[k])[:npb])

        nbytes = 0
        positives = 0
        done = 0
        pending: list[Future | None] = [None, None]
        k = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-write") as ex:
            try:
                while done < rows:
                    end = min(rows, done + chunk_rows)
                    while done < end:
                        if pending[k] is not None:
                            pending[k].result()
                        n, nb, npb, npos = _kernel(done, min(end - done, _ROWS_PER_CALL), rowkey,
                                                   True, bias, *model, bufs[k], pbufs[k], dummy)
                        pending[k] = ex.submit(write, k, nb, npb)
                        k ^= 1
                        done += n
                        nbytes += nb
                        positives += npos
                    if progress is not None:
                        progress(done)
            finally:
                for fut in pending:
                    if fut is not None:
                        fut.result()
        for fo in files:
            fo.close()
        os.replace(tmps[0], out_s)
        if probs_s is not None:
            os.replace(tmps[1], probs_s)
        ok = True
    finally:
        if not ok:
            for fo in files:
                try:
                    fo.close()
                except OSError:
                    pass
            for t in tmps:
                try:
                    os.remove(t)
                except OSError:
                    pass
    return GenStats(rows=rows, bytes_written=nbytes, seconds=time.perf_counter() - t0,
                    positives=positives)
