"""recs-hash64 v1 against a pure-Python reference written from the documented definition,
plus pinned golden values: a change that would remap every id must fail here."""

from __future__ import annotations

import numpy as np

from recs_core.features.hashing import HASH_VERSION, bucket_of, cross_hash, hash_bytes, hash_str

M = (1 << 64) - 1


def ref_fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M
    x ^= x >> 33
    return x


def ref_hash(b: bytes) -> int:
    h = 0x27D4EB2F165667C5 ^ ((len(b) * 0x9E3779B97F4A7C15) & M)
    for i in range(0, len(b), 8):
        w = int.from_bytes(b[i:i + 8].ljust(8, b"\0"), "little")
        h ^= ref_fmix((w * 0xC2B2AE3D27D4EB4F) & M)
        h = ((((h << 27) | (h >> 37)) & M) * 0x9E3779B97F4A7C15 + 0x52DCE729) & M
    return ref_fmix(h)


def ref_cross(*hs: int) -> int:
    c = 0x9E3779B97F4A7C15
    for h in hs:
        c = ref_fmix(((c ^ h) * 0x100000001B3) & M)
    return c


def ref_bucket(h: int, buckets: int) -> int:
    return 1 + (((h >> 32) * (buckets - 1)) >> 32)


def test_version_name() -> None:
    assert HASH_VERSION == "recs-hash64-v1"


def test_golden_values_are_pinned() -> None:
    golden = {
        "": 0x9353DFC8A195F3E2,
        "68fd1e64": 0xF4F97E2F989B55CD,
        "hello world, this is long": 0xCA5BA9374EEC37A1,
    }
    for s, h in golden.items():
        assert hash_str(s) == h, s
        assert ref_hash(s.encode()) == h, s
    assert cross_hash(hash_str("a"), hash_str("b")) == 0xF2FDCB47831646A2


def test_matches_reference_on_random_bytes_every_length_and_offset() -> None:
    rng = np.random.default_rng(7)
    buf = rng.integers(0, 256, size=300, dtype=np.uint8)
    for length in range(0, 40):
        for start in (0, 1, 3, 7, 300 - length):  # includes the end of the buffer (tail path)
            got = int(hash_bytes(buf, start, length))
            assert got == ref_hash(bytes(buf[start:start + length])), (start, length)


def test_cross_matches_reference() -> None:
    hs = [hash_str(x) for x in ("x", "", "0123456789abcdef")]
    assert cross_hash(*hs) == ref_cross(*hs)
    assert cross_hash(hs[0], hs[1]) != cross_hash(hs[1], hs[0])  # order matters


def test_bucket_range_and_uniformity() -> None:
    buckets = 1000
    ids = np.array([bucket_of(np.uint64(ref_hash(str(i).encode())), buckets)
                    for i in range(20000)])
    assert ids.min() >= 1 and ids.max() <= buckets - 1
    counts = np.bincount(ids, minlength=buckets)[1:]
    assert counts.std() / counts.mean() < 0.3  # ~ Poisson spread, no gross skew
    # documented formula
    h = ref_hash(b"abc")
    assert bucket_of(np.uint64(h), buckets) == ref_bucket(h, buckets)
