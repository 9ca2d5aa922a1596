"""Tests of the synthetic Criteo-format generator (recs_core.data.synth)."""

from __future__ import annotations

import gzip
import hashlib
import re

import numpy as np
import pytest

from recs_core.data.synth import CARDINALITIES, GenStats, generate, n_fields

HEX8 = re.compile(rb"^[0-9a-f]{8}$")
INT_MISS = (0.45, 0.0, 0.20, 0.20, 0.05, 0.25, 0.05, 0.0, 0.05, 0.45, 0.05, 0.70, 0.20)


# ----------------------------------------------------------------------------- helpers


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Rank-based ROC AUC (ties get average ranks)."""
    order = np.argsort(s, kind="mergesort")
    _, inv, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    avg = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = avg[inv]
    npos = float(y.sum())
    nneg = len(y) - npos
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def load_columns(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized parse of a 40-field file: labels, ints, int-missing mask, C ids as uint64
    (the 8 hex bytes reinterpreted; 0 = empty)."""
    d = np.fromfile(path, dtype=np.uint8)
    sep = np.flatnonzero((d == 9) | (d == 10))
    assert len(sep) % 40 == 0
    sep = sep.reshape(-1, 40)
    start = np.empty_like(sep)
    start[:, 0] = np.r_[0, sep[:-1, -1] + 1]
    start[:, 1:] = sep[:, :-1] + 1
    ln = sep - start
    y = (d[start[:, 0]] - 48).astype(np.int64)
    miss = ln[:, 1:14] == 0
    st, length = start[:, 1:14], ln[:, 1:14]
    neg = (d[st] == 45) & ~miss
    st = st + neg
    length = length - neg
    val = np.zeros(st.shape, np.int64)
    for k in range(int(length.max())):
        dig = d[np.minimum(st + k, len(d) - 1)].astype(np.int64) - 48
        val = np.where(k < length, val * 10 + dig, val)
    ints = np.where(neg, -val, val)
    padded = np.concatenate([d, np.zeros(8, np.uint8)])  # an empty last field ends the file
    raw = np.lib.stride_tricks.sliding_window_view(padded, 8)[start[:, 14:40]]
    cats = np.ascontiguousarray(raw).view(np.uint64)[..., 0]
    cats = np.where(ln[:, 14:40] == 0, np.uint64(0), cats)
    return y, ints, miss, cats


BUCKETS = 1 << 18


def _bucket(x: np.ndarray, salt: int) -> np.ndarray:
    x = (x + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return (x % np.uint64(BUCKETS)).astype(np.int64)


def hashed_features(ints, miss, cats) -> tuple[np.ndarray, np.ndarray]:
    """One hashed index per field (26 C, crosses (C1,C2) and (C3,C4), 13 log2-bucketized
    ints) offset into one weight vector, and the log1p dense features."""
    idx = [_bucket(cats[:, f], f + 1) for f in range(26)]
    idx.append(_bucket(cats[:, 0] * np.uint64(31) + cats[:, 1], 101))
    idx.append(_bucket(cats[:, 2] * np.uint64(31) + cats[:, 3], 102))
    v = np.maximum(ints, 0)
    bk = np.where(miss, 0, 1 + np.floor(np.log2(v + 1)).astype(np.int64))
    idx += [bk[:, j] for j in range(13)]
    idx = np.stack(idx, 1) + np.arange(len(idx)) * BUCKETS
    return idx, np.log1p(v) * ~miss


def logreg_one_pass(idx, dense, y, ntrain: int, lr: float = 0.1, bs: int = 256) -> np.ndarray:
    """One pass of minibatch Adagrad logistic regression on rows [0, ntrain); scores of the rest."""
    nf = idx.shape[1]
    w = np.zeros(nf * BUCKETS)
    acc = np.full(nf * BUCKETS, 1e-6)
    wd = np.zeros(dense.shape[1])
    accd = np.full(dense.shape[1], 1e-6)
    b, accb = 0.0, 1e-6
    for s in range(0, ntrain, bs):
        ii, dd = idx[s:s + bs], dense[s:s + bs]
        g = 1.0 / (1.0 + np.exp(-(w[ii].sum(1) + dd @ wd + b))) - y[s:s + bs]
        u, inv = np.unique(ii.ravel(), return_inverse=True)
        gs = np.bincount(inv, weights=np.repeat(g, nf), minlength=len(u))
        acc[u] += gs * gs
        w[u] -= lr * gs / np.sqrt(acc[u])
        gd = g @ dd
        accd += gd * gd
        wd -= lr * gd / np.sqrt(accd)
        gb = g.sum()
        accb += gb * gb
        b -= lr * gb / np.sqrt(accb)
    return w[idx[ntrain:]].sum(1) + dense[ntrain:] @ wd + b


def read_lines(path) -> list[list[bytes]]:
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    return [line.split(b"\t") for line in data[:-1].split(b"\n")]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """250k plain rows (seed 7) with true probabilities."""
    d = tmp_path_factory.mktemp("synth_big")
    out, probs = d / "big.tsv", d / "big.p"
    stats = generate(out, 250_000, seed=7, probs_out=probs)
    return out, probs, stats


@pytest.fixture(scope="module")
def big_cols(big):
    out, probs, _ = big
    y, ints, miss, cats = load_columns(out)
    p = np.loadtxt(probs)
    return y, ints, miss, cats, p


# ----------------------------------------------------------------------------- format


def test_plain_format(tmp_path):
    out, probs = tmp_path / "a.tsv", tmp_path / "a.p"
    stats = generate(out, 3000, seed=1, probs_out=probs)
    assert isinstance(stats, GenStats)
    rows = read_lines(out)
    assert len(rows) == 3000 == stats.rows
    assert stats.bytes_written == out.stat().st_size
    assert n_fields(False) == 40
    for f in rows:
        assert len(f) == 40
        assert f[0] in (b"0", b"1")
        for j in range(1, 14):
            if f[j]:
                v = int(f[j])
                assert v >= (-3 if j == 2 else 0)
                assert v <= 1_000_000
        for c in f[14:40]:
            assert c == b"" or HEX8.match(c)
    assert stats.positives == sum(f[0] == b"1" for f in rows)
    p = np.loadtxt(probs)
    assert p.shape == (3000,)
    assert np.all((p > 0) & (p < 1))
    assert not list(tmp_path.glob("*.tmp"))


def test_heavy_format(tmp_path):
    out = tmp_path / "h.tsv"
    generate(out, 2000, seed=2, heavy=True)
    rows = read_lines(out)
    assert len(rows) == 2000
    lens, ntags, mixed = [], [], 0
    for f in rows:
        assert len(f) == 42 == n_fields(True)
        assert f[0] in (b"0", b"1")
        for c in f[14:40]:
            assert c == b"" or HEX8.match(c)
        items = f[40].split(b"|") if f[40] else []
        assert len(items) <= 200
        assert all(HEX8.match(i) for i in items)
        lens.append(len(items))
        tags = f[41].split(b",")
        assert 1 <= len(tags) <= 20
        for t in tags:
            assert 3 <= len(t) <= 12 and t.isalpha() and t.isascii()
            mixed += t != t.lower()
        ntags.append(len(tags))
    assert 50 <= np.mean(lens) <= 110
    assert max(lens) == 200 and min(lens) == 0
    assert mixed > 0.1 * sum(ntags)


def _history_lengths(rows) -> np.ndarray:
    return np.array([len(f[40].split(b"|")) if f[40] else 0 for f in rows])


def test_heavy_max_history_scales_lengths_not_labels(tmp_path):
    generate(tmp_path / "d.tsv", 3000, seed=2, heavy=True)
    stats = generate(tmp_path / "l.tsv", 3000, seed=2, heavy=True, max_history=2000)
    base, long_ = read_lines(tmp_path / "d.tsv"), read_lines(tmp_path / "l.tsv")
    assert len(long_) == 3000 == stats.rows
    for f in long_:
        assert len(f) == 42
        if f[40]:
            assert all(HEX8.match(i) for i in f[40].split(b"|"))
    lb, ll = _history_lengths(base), _history_lengths(long_)
    assert ll.max() == 2000 and lb.max() == 200
    assert 7.0 <= np.median(ll) / np.median(lb) <= 13.0, (np.median(ll), np.median(lb))
    yb = np.mean([f[0] == b"1" for f in base])
    yl = np.mean([f[0] == b"1" for f in long_])
    assert abs(yl - yb) < 0.03 and abs(yl - 0.25) < 0.03, (yb, yl)


# sha256 of generate(_, 400, seed=2, heavy=True, probs_out=_) before max_history existed
HEAVY_400_SHA = "aa9e146fa767ab96f133085e15fa1b77cea695406856acc66f9f758dbaa6aaa4"
HEAVY_400_PROBS_SHA = "f0626137b787316115a9bf2fd7252b72f24c27f2527c4151915bd9ee3c91626b"


def test_heavy_default_max_history_bytes_unchanged(tmp_path):
    generate(tmp_path / "a.tsv", 400, seed=2, heavy=True, probs_out=tmp_path / "a.p")
    generate(tmp_path / "b.tsv", 400, seed=2, heavy=True, probs_out=tmp_path / "b.p",
             max_history=200)
    a, b = (tmp_path / "a.tsv").read_bytes(), (tmp_path / "b.tsv").read_bytes()
    assert a == b
    assert (tmp_path / "a.p").read_bytes() == (tmp_path / "b.p").read_bytes()
    assert hashlib.sha256(a).hexdigest() == HEAVY_400_SHA
    assert hashlib.sha256((tmp_path / "a.p").read_bytes()).hexdigest() == HEAVY_400_PROBS_SHA


def test_missing_rates_and_ints(big_cols):
    y, ints, miss, cats, _ = big_cols
    n = 50_000
    rates = miss[:n].mean(0)
    assert np.allclose(rates, INT_MISS, atol=0.015)
    assert ints[:, 1].min() == -3
    assert (np.delete(ints, 1, axis=1) >= 0).all()
    assert ints.max() > 100_000  # heavy tails
    empty = (cats[:n] == 0).mean()
    assert 0.03 <= empty <= 0.05


def test_positive_rate_and_probs(big_cols, big):
    y, _, _, _, p = big_cols
    assert abs(y[:50_000].mean() - 0.25) < 0.03
    assert len(p) == len(y)
    assert abs(p.mean() - y.mean()) < 0.01
    assert big[2].positives == int(y.sum())


def test_zipf_and_cardinality(big_cols):
    _, _, _, cats, _ = big_cols
    c3 = cats[:100_000, 2]
    c3 = c3[c3 != 0]
    _, counts = np.unique(c3, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[:10].sum() > 0.10 * len(c3)
    assert counts[0] > 100 * np.median(counts)
    assert len(np.unique(cats[:, 8])) <= 3  # C9, cardinality 3
    c20 = cats[:, 19]
    assert len(np.unique(c20[c20 != 0])) <= 4
    for f, card in enumerate(CARDINALITIES):
        if card <= 1000:
            col = cats[:, f]
            assert len(np.unique(col[col != 0])) <= card


def test_true_probability_auc(big_cols):
    y, _, _, _, p = big_cols
    a = auc(y[:100_000], p[:100_000])
    assert 0.75 <= a <= 0.85


def test_learnable(big_cols):
    y, ints, miss, cats, p = big_cols
    ntrain, ntest = 200_000, 50_000
    idx, dense = hashed_features(ints, miss, cats)
    scores = logreg_one_pass(idx[:ntrain + ntest], dense[:ntrain + ntest], y, ntrain)
    model_auc = auc(y[ntrain:ntrain + ntest], scores)
    true_auc = auc(y[ntrain:ntrain + ntest], p[ntrain:ntrain + ntest])
    assert model_auc > true_auc - 0.06, (model_auc, true_auc)


# ----------------------------------------------------------------------------- determinism


def test_deterministic_and_chunk_independent(tmp_path):
    paths = []
    for k, chunk in enumerate((65536, 777, 1)):
        out = tmp_path / f"d{k}.tsv"
        generate(out, 1500, seed=5, chunk_rows=chunk, probs_out=tmp_path / f"d{k}.p")
        paths.append(out)
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] == data[2]
    probs = [(tmp_path / f"d{k}.p").read_bytes() for k in range(3)]
    assert probs[0] == probs[1] == probs[2]
    generate(tmp_path / "again.tsv", 1500, seed=5)
    assert (tmp_path / "again.tsv").read_bytes() == data[0]
    # a prefix of a longer file is the shorter file
    generate(tmp_path / "long.tsv", 2000, seed=5)
    assert (tmp_path / "long.tsv").read_bytes().startswith(data[0])


def test_heavy_chunk_independent(tmp_path):
    generate(tmp_path / "a.tsv", 1200, seed=4, heavy=True, chunk_rows=100_000)
    generate(tmp_path / "b.tsv", 1200, seed=4, heavy=True, chunk_rows=333)
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


def test_seed_window_drift_change_data(tmp_path):
    def gen(name, **kw):
        generate(tmp_path / name, 2000, **kw)
        return (tmp_path / name).read_bytes()

    base = gen("base.tsv", seed=0)
    assert gen("seed1.tsv", seed=1) != base
    assert gen("w1.tsv", seed=0, window=1) != base
    assert gen("w1d.tsv", seed=0, window=1, drift=0.5) != gen("w1.tsv", seed=0, window=1)


def _top_id(path, field: int) -> bytes:
    vals = [f[14 + field] for f in read_lines(path) if f[14 + field]]
    ids, counts = np.unique(np.array(vals), return_counts=True)
    return bytes(ids[np.argmax(counts)])


def test_drift_moves_popular_ids(tmp_path):
    generate(tmp_path / "w0.tsv", 5000, seed=0)
    generate(tmp_path / "w3.tsv", 5000, seed=0, window=3, drift=0.0)
    generate(tmp_path / "w3d.tsv", 5000, seed=0, window=3, drift=0.5)
    # drift 0: same distribution, same most popular id of C1 (and C3)
    assert _top_id(tmp_path / "w0.tsv", 0) == _top_id(tmp_path / "w3.tsv", 0)
    assert _top_id(tmp_path / "w0.tsv", 2) == _top_id(tmp_path / "w3.tsv", 2)
    # drift: the popular ids rotate
    assert _top_id(tmp_path / "w0.tsv", 0) != _top_id(tmp_path / "w3d.tsv", 0)
    assert _top_id(tmp_path / "w0.tsv", 2) != _top_id(tmp_path / "w3d.tsv", 2)


def test_gzip_output(tmp_path):
    generate(tmp_path / "a.tsv", 1000, seed=3)
    stats = generate(tmp_path / "a.tsv.gz", 1000, seed=3)
    plain = (tmp_path / "a.tsv").read_bytes()
    with gzip.open(tmp_path / "a.tsv.gz", "rb") as f:
        assert f.read() == plain
    assert stats.bytes_written == len(plain)
    first = (tmp_path / "a.tsv.gz").read_bytes()
    generate(tmp_path / "a.tsv.gz", 1000, seed=3)
    assert (tmp_path / "a.tsv.gz").read_bytes() == first  # no mtime in the header


# ----------------------------------------------------------------------------- api


def test_progress_and_empty(tmp_path):
    seen = []
    generate(tmp_path / "p.tsv", 2500, chunk_rows=1000, progress=seen.append)
    assert seen == [1000, 2000, 2500]
    stats = generate(tmp_path / "e.tsv", 0, probs_out=tmp_path / "e.p")
    assert stats.rows == 0 and stats.bytes_written == 0
    assert (tmp_path / "e.tsv").read_bytes() == b""
    assert (tmp_path / "e.p").read_bytes() == b""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": -1}, "rows"),
        ({"rows": 10, "drift": 1.5}, "drift"),
        ({"rows": 10, "drift": -0.1}, "drift"),
        ({"rows": 10, "drift": float("nan")}, "drift"),
        ({"rows": 10, "window": -1}, "window"),
        ({"rows": 10, "chunk_rows": 0}, "chunk_rows"),
        ({"rows": 1.5}, "rows"),
        ({"rows": 10, "seed": -2}, "seed"),
        ({"rows": 10, "heavy": True, "max_history": 0}, "max_history"),
        ({"rows": 10, "heavy": True, "max_history": 100_001}, "max_history"),
        ({"rows": 10, "heavy": True, "max_history": 2.5}, "max_history"),
        ({"rows": 10, "max_history": 400}, "max_history"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tmp_path / "x.tsv", **kwargs)
    assert not list(tmp_path.iterdir())


def test_unwritable_path(tmp_path):
    bad = tmp_path / "no" / "such" / "dir" / "x.tsv"
    with pytest.raises(OSError, match=re.escape(str(bad))):
        generate(bad, 10)
    bad_probs = tmp_path / "missing_dir" / "x.p"
    with pytest.raises(OSError, match=re.escape(str(bad_probs))):
        generate(tmp_path / "ok.tsv", 10, probs_out=bad_probs)
    assert not list(tmp_path.glob("*.tmp"))
    assert not (tmp_path / "ok.tsv").exists()


def test_failed_write_leaves_old_file(tmp_path):
    out = tmp_path / "keep.tsv"
    out.write_bytes(b"old\n")

    def boom(_rows: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        generate(out, 100, chunk_rows=10, progress=boom)
    assert out.read_bytes() == b"old\n"
    assert not list(tmp_path.glob("*.tmp"))
