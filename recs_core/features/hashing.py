"""recs-hash64 v1: the fixed, documented 64-bit hash behind every hashed feature id.

Ids must stay the same across versions, ranks and machines, or yesterday's
embeddings mean nothing today. Changing anything here remaps every id: bump
``HASH_VERSION`` and expect the golden-value tests to fail.

Definition (all arithmetic modulo 2**64, words little-endian)::

    fmix64(x): x ^= x >> 33; x *= 0xFF51AFD7ED558CCD; x ^= x >> 33;
               x *= 0xC4CEB9FE1A85EC53; x ^= x >> 33            (MurmurHash3 finalizer)
    hash(b):   h = 0x27D4EB2F165667C5 ^ (len(b) * 0x9E3779B97F4A7C15)
               for each 8-byte word w of b (the last one zero-padded):
                   h ^= fmix64(w * 0xC2B2AE3D27D4EB4F)
                   h = rotl64(h, 27) * 0x9E3779B97F4A7C15 + 0x52DCE729
               return fmix64(h)
    cross(h1..hk): c = 0x9E3779B97F4A7C15
               for each component hash hi: c = fmix64((c ^ hi) * 0x100000001B3)
               return c

A missing (empty) value hashes as the empty byte string. Hash to bucket: id 0 is
reserved for "missing"; a present value with hash h maps to::

    bucket(h, buckets) = 1 + (((h >> 32) * (buckets - 1)) >> 32)

(Lemire's multiply-shift range reduction of the high 32 bits: uniform like a
modulo, without a 64-bit division; ``buckets`` is at most 2**32).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from recs_core.jitutil import LITTLE_ENDIAN as _LITTLE
from recs_core.jitutil import load_u64_le

HASH_VERSION = "recs-hash64-v1"

_SEED = np.uint64(0x27D4EB2F165667C5)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_ADD = np.uint64(0x52DCE729)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_FNV_PRIME = np.uint64(0x100000001B3)
_S33 = np.uint64(33)
_S27 = np.uint64(27)
_S37 = np.uint64(37)
_S8 = np.uint64(8)


@njit(nogil=True, cache=True, inline="always")
def fmix64(x: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finalizer."""
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@njit(nogil=True, cache=True, inline="always")
def _word(buf: np.ndarray, p: int, nb: int) -> np.uint64:
    """The nb (1..8) bytes at buf[p:] as a little-endian, zero-padded word."""
    if _LITTLE and p + 8 <= buf.shape[0]:
        w = load_u64_le(buf, p)
        if nb < 8:
            w &= (np.uint64(1) << (np.uint64(nb) * _S8)) - np.uint64(1)
        return w
    w = np.uint64(0)
    for j in range(nb):
        w |= np.uint64(buf[p + j]) << (np.uint64(j) * _S8)
    return w


# inline="always": a plain call from another module costs 3x the hash itself
@njit(nogil=True, cache=True, inline="always")
def hash_bytes(buf: np.ndarray, start: int, length: int) -> np.uint64:
    """recs-hash64 v1 of ``buf[start:start+length]`` (a uint8 array)."""
    h = _SEED ^ (np.uint64(length) * _K1)
    p = start
    end = start + length
    while p < end:
        w = _word(buf, p, min(8, end - p))
        h ^= fmix64(w * _K2)
        h = ((h << _S27) | (h >> _S37)) * _K1 + _ADD
        p += 8
    return fmix64(h)


@njit(nogil=True, cache=True, inline="always")
def cross_init() -> np.uint64:
    """Start value of a cross hash."""
    return _K1


@njit(nogil=True, cache=True, inline="always")
def cross_step(acc: np.uint64, h: np.uint64) -> np.uint64:
    """Fold one component hash into a cross hash."""
    return fmix64((acc ^ h) * _FNV_PRIME)


MAX_BUCKETS = 1 << 32
_S32 = np.uint64(32)


@njit(nogil=True, cache=True, inline="always")
def bucket_of(h: np.uint64, buckets: int) -> np.int64:
    """Map a present value's hash to ``1 .. buckets-1`` (0 is reserved for missing)."""
    return np.int64(((h >> _S32) * np.uint64(buckets - 1)) >> _S32) + 1


def hash_str(value: str | bytes) -> int:
    """recs-hash64 v1 of a Python string (UTF-8) or bytes, as a Python int."""
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    arr = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(1, dtype=np.uint8)
    return int(hash_bytes(arr, 0, len(data)))


@njit(nogil=True, cache=True)
def _cross_of(hashes: np.ndarray) -> np.uint64:
    acc = cross_init()
    for h in hashes:
        acc = cross_step(acc, h)
    return acc


def cross_hash(*hashes: int) -> int:
    """Cross hash of component hashes, as a Python int."""
    return int(_cross_of(np.array(hashes, dtype=np.uint64)))
