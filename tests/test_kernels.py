"""Numba kernels: bitsets against Python sets, heaps and merge_topk against sorting, codec
distances (f32, f16, sq8, lvq8 prepared queries) against NumPy on the decoded vectors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import lvq8_int8_distances
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from quiver.engine.codecs import CODECS, F16Codec, make_codec
from quiver.kernels import bitset as kb
from quiver.kernels import distance as kd
from quiver.kernels import scan as ks
from quiver.kernels import topk as kt
from quiver.kernels import vnni
from quiver.kernels.dispatch import (
    LEANVEC_INLINE_PRIMARY_IP,
    LEANVEC_INLINE_PRIMARY_L2,
    codec_distance,
    traversal_bytes,
)
from quiver.kernels.prefetch import prefetch_row, prefetch_row_l2
from quiver.kernels.vnni import dot_u4s8, dot_u8s8

from quiver import Bitset

# --- bitsets -------------------------------------------------------------------------------


def bits_as_set(words: np.ndarray, n: int) -> set[int]:
    return {i for i in range(n) if kb.bitset_test(words, i)}


@given(mask=st.lists(st.booleans(), max_size=300))
def test_bitset_from_bool(mask):
    n = len(mask)
    words = kb.bitset_from_bool(np.array(mask, dtype=np.bool_))
    expected = {i for i, b in enumerate(mask) if b}
    assert words.dtype == np.uint64 and words.shape == (kb.bitset_words(n),)
    assert bits_as_set(words, n) == expected
    assert kb.bitset_count(words) == len(expected)
    assert kb.bitset_to_positions(words, n).tolist() == sorted(expected)


@given(n=st.integers(0, 300), data=st.data())
def test_bitset_from_positions(n, data):
    positions = data.draw(st.lists(st.integers(-70, n + 70), max_size=120))
    words = kb.bitset_from_positions(np.array(positions, dtype=np.int64), n)
    expected = {p for p in positions if 0 <= p < n}  # out of range is ignored, repeats merge
    assert words.shape == ((n + 63) // 64,)
    assert bits_as_set(words, n) == expected
    assert kb.bitset_count(words) == len(expected)
    pos = kb.bitset_to_positions(words, n)
    assert pos.dtype == np.int64 and pos.tolist() == sorted(expected)
    # to_positions with a smaller n drops the bits at or beyond it
    cut = data.draw(st.integers(0, n))
    assert kb.bitset_to_positions(words, cut).tolist() == sorted(p for p in expected if p < cut)


@given(n=st.integers(1, 200), data=st.data())
def test_bitset_set_clear_test(n, data):
    ops = data.draw(st.lists(st.tuples(st.sampled_from("sc"), st.integers(0, n - 1)),
                             max_size=60))
    words = np.zeros(kb.bitset_words(n), np.uint64)
    model: set[int] = set()
    for op, i in ops:
        if op == "s":
            kb.bitset_set(words, i)
            model.add(i)
        else:
            kb.bitset_clear(words, i)
            model.discard(i)
        assert bool(kb.bitset_test(words, i)) == (i in model)
    assert bits_as_set(words, n) == model
    assert kb.bitset_count(words) == len(model)
    many = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=40)), np.int64)
    kb.bitset_set_many(words, many)
    model |= set(many.tolist())
    assert kb.bitset_to_positions(words, n).tolist() == sorted(model)
    drop = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=40)), np.int64)
    kb.bitset_clear_many(words, drop)
    model -= set(drop.tolist())
    assert kb.bitset_to_positions(words, n).tolist() == sorted(model)
    assert kb.bitset_count(words) == len(model)


def test_bitset_high_bit_and_word_edges():
    n = 130
    pos = np.array([0, 62, 63, 64, 127, 128, 129], np.int64)
    words = kb.bitset_from_positions(pos, n)
    assert words[0] == np.uint64(1 | (1 << 62) | (1 << 63))
    assert kb.bitset_to_positions(words, n).tolist() == pos.tolist()
    assert kb.bitset_count(np.full(3, np.uint64(2**64 - 1))) == 192


@given(mask=st.lists(st.booleans(), max_size=200), data=st.data())
def test_bitset_class(mask, data):
    n = len(mask)
    a = Bitset.from_mask(np.array(mask, bool))
    other = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=50)) if n else []
    b = Bitset.from_positions(other, n)
    sa = {i for i, m in enumerate(mask) if m}
    sb = set(other)
    assert a.to_mask().tolist() == mask
    assert len(a) == a.count() == len(sa)
    assert set(a.positions().tolist()) == sa
    assert set((a & b).positions().tolist()) == sa & sb
    assert set((a | b).positions().tolist()) == sa | sb
    assert set((~a).positions().tolist()) == set(range(n)) - sa
    for i in range(-1, n + 1):
        assert (i in a) == (i in sa)
    assert Bitset.full(n).count() == n and Bitset.empty(n).count() == 0


# --- heaps -----------------------------------------------------------------------------------


def check_sorted_topk(out_d, out_i, d, ids, k):
    """out_* hold the k smallest (d, id) pairs ascending, ties by id, padded with inf / -1."""
    m = min(k, len(d))
    np.testing.assert_array_equal(out_d[:m], np.sort(d)[:m])
    assert (out_d[m:] == np.inf).all() and (out_i[m:] == -1).all()
    lookup = dict(zip(ids.tolist(), d.tolist(), strict=True))
    got = out_i[:m].tolist()
    assert len(set(got)) == m
    assert [lookup[i] for i in got] == out_d[:m].tolist()
    for t in range(m - 1):  # equal distances come out by ascending id
        if out_d[t] == out_d[t + 1]:
            assert got[t] < got[t + 1]
    if m and len(np.unique(d)) == len(d):  # without ties, exactly np.argsort
        np.testing.assert_array_equal(out_i[:m], ids[np.argsort(d)[:m]])


distances = st.lists(
    st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([0.0, 1.0, -1.0])), max_size=150)


@given(values=distances, k=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_heap_push_keeps_k_smallest(values, k, seed):
    d = np.array(values, np.float32)
    ids = np.random.default_rng(seed).permutation(3 * len(d) + 1)[: len(d)].astype(np.int64)
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    for dist, i in zip(d, ids, strict=True):
        size = kt.heap_push(hd, hi, size, dist, i)
        for c in range(1, size):  # max-heap invariant
            assert hd[(c - 1) // 2] >= hd[c]
    assert size == min(k, len(d))
    for extra in (0, 3):  # output longer than the heap is padded
        out_d = np.empty(k + extra, np.float32)
        out_i = np.empty(k + extra, np.int64)
        kt.heap_sorted(hd, hi, size, out_d, out_i)
        check_sorted_topk(out_d, out_i, d, ids, k)


@given(values=distances, k=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_rank_select_keeps_the_k_smallest_by_distance_then_id(values, k, seed):
    """A beam search's final top-k: exactly the k smallest (distance, id) pairs, ascending,
    whatever the order of the candidates (distinct ids, tied distances), padded with inf /
    -1 when fewer came."""
    d = np.array(values, np.float32)
    ids = np.random.default_rng(seed).permutation(3 * len(d) + 1)[: len(d)].astype(np.int64)
    out_d = np.empty(k, np.float32)
    out_i = np.empty(k, np.int64)
    size = kt.rank_select(d, ids, len(d), out_d, out_i)
    want = sorted(zip(d.tolist(), ids.tolist(), strict=True))[:k]
    assert size == len(want)
    assert list(zip(out_d[:size].tolist(), out_i[:size].tolist(), strict=True)) == want
    assert np.all(out_i[size:] == -1) and np.all(np.isinf(out_d[size:]))


def test_heap_ties_come_out_by_id():
    hd = np.empty(4, np.float32)
    hi = np.empty(4, np.int64)
    size = 0
    for dist, i in ((1.0, 9), (1.0, 3), (0.5, 7), (1.0, 5), (1.0, 1)):
        size = kt.heap_push(hd, hi, size, dist, i)
    out_d = np.empty(4, np.float32)
    out_i = np.empty(4, np.int64)
    kt.heap_sorted(hd, hi, size, out_d, out_i)
    assert out_d.tolist() == [0.5, 1.0, 1.0, 1.0]
    assert out_i[0] == 7 and out_i[1:].tolist() == sorted(out_i[1:].tolist())


@given(nq=st.integers(1, 4), m=st.integers(0, 60), k=st.integers(1, 30),
       pad_share=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**31))
def test_merge_topk(nq, m, k, pad_share, seed):
    rng = np.random.default_rng(seed)
    D = rng.integers(-20, 20, size=(nq, m)).astype(np.float32) / 4  # plenty of ties
    I = np.stack([rng.permutation(10 * m + 1)[:m] for _ in range(nq)]).astype(np.int64)
    I[rng.random((nq, m)) < pad_share] = -1
    D[I < 0] = -1e9  # padding must be skipped whatever its distance
    out_d, out_i = kt.merge_topk(D, I, k)
    assert out_d.shape == out_i.shape == (nq, k)
    assert out_d.dtype == np.float32 and out_i.dtype == np.int64
    for r in range(nq):
        valid = I[r] >= 0
        check_sorted_topk(out_d[r], out_i[r], D[r][valid], I[r][valid], k)


# --- codec distances -------------------------------------------------------------------------


def decode(codec, codes: np.ndarray, aux: np.ndarray) -> np.ndarray:
    """Reconstruction in float64, written from each codec's documented layout."""
    if codec.name == "f32":
        return codes.astype(np.float64)
    if codec.name == "f16":
        return codes.view(np.float16).astype(np.float64)
    c = codes.astype(np.float64)
    if codec.name == "sq8":
        return codec.lo.astype(np.float64) + codec.step.astype(np.float64) * c
    if codec.name == "lvq8":
        return codec.mean.astype(np.float64) + aux[:, :1] + aux[:, 1:2] * c
    raise AssertionError(codec.name)


def kernel_distances(qs: np.ndarray, xhat: np.ndarray, metric: str, codec=None, codes=None,
                     aux=None) -> np.ndarray:
    """(nq, n): squared l2, or the negative inner product, as the kernels define distance
    (for LVQ-8 on a VNNI host, against the int8 query its kernels score)."""
    if getattr(codec, "int8_queries", False):
        return lvq8_int8_distances(codec, qs, codes, aux, metric)
    if metric == "l2":
        return ((qs[:, None, :] - xhat[None]) ** 2).sum(-1)
    return -(qs @ xhat.T)


def tolerance(q: np.ndarray, xhat: np.ndarray, codec) -> float:
    extra = {"sq8": "lo", "lvq8": "mean"}.get(codec.name)
    offset = np.linalg.norm(getattr(codec, extra)) if extra else 0.0
    scale = np.linalg.norm(q) + np.sqrt((xhat**2).sum(1).max()) + offset
    return 1e-6 + 3e-6 * xhat.shape[1] ** 0.5 * scale**2


CODEC_NAMES = ("f32", "f16", "sq8", "lvq8")


def encoded(name: str, n: int, d: int, seed: int, spread: float, shift: float):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * spread + shift).astype(np.float32)
    q = (rng.standard_normal((3, d)) * spread + shift).astype(np.float32)
    codec = make_codec(name, d)
    codec.fit(x)
    codes, aux = codec.encode(x)
    assert codes.dtype == codec.code_dtype and aux.shape == (n, codec.aux_width)
    assert codes.flags.c_contiguous and aux.dtype == np.float32
    return codec, x, q, np.ascontiguousarray(codes), np.ascontiguousarray(aux), rng


codec_cases = {
    "name": st.sampled_from(CODEC_NAMES),
    "metric": st.sampled_from(["l2", "ip"]),
    "n": st.integers(1, 40),
    "d": st.integers(1, 24),
    "seed": st.integers(0, 2**31),
    "spread": st.sampled_from([0.01, 1.0, 30.0]),
    "shift": st.sampled_from([0.0, 2.0, -50.0]),
}


@settings(max_examples=80)
@given(**codec_cases)
def test_codec_scan_topk_all_rows(name, metric, n, d, seed, spread, shift):
    """scan_topk over every row (k = n) gives each row's distance to the decoded vector."""
    codec, _, q, codes, aux, _ = encoded(name, n, d, seed, spread, shift)
    xhat = decode(codec, codes, aux)
    qs = codec.prepare(q)
    assert qs.dtype == np.float32 and qs.shape[0] == 3
    dist = codec.dist(metric)
    ref = kernel_distances(q.astype(np.float64), xhat, metric, codec, codes, aux)
    words = np.zeros(1, np.uint64)
    for r in range(3):
        out_d = np.empty(n, np.float32)
        out_i = np.empty(n, np.int64)
        ks.scan_topk(dist, qs[r], codes, aux, n, n, words, False, out_d, out_i)
        assert sorted(out_i.tolist()) == list(range(n))
        np.testing.assert_allclose(out_d, ref[r, out_i], rtol=0,
                                   atol=tolerance(q[r], xhat, codec))


@settings(max_examples=80)
@given(k=st.integers(1, 12), share=st.floats(0, 1), **codec_cases)
def test_codec_scan_topk_filtered_and_rows(k, share, name, metric, n, d, seed, spread, shift):
    """Filtered scans and row scans return the k best allowed rows, padded with -1 / inf."""
    codec, _, q, codes, aux, rng = encoded(name, n, d, seed, spread, shift)
    xhat = decode(codec, codes, aux)
    qs = codec.prepare(q)
    dist = codec.dist(metric)
    ref = kernel_distances(q.astype(np.float64), xhat, metric, codec, codes, aux)
    rows = np.flatnonzero(rng.random(n) < share).astype(np.int64)
    words = kb.bitset_from_positions(rows, n)
    for r in range(3):
        tol = tolerance(q[r], xhat, codec)
        best = np.sort(ref[r, rows])[:k]
        m = len(best)
        for how in ("filtered", "rows"):
            out_d = np.empty(k, np.float32)
            out_i = np.empty(k, np.int64)
            if how == "filtered":
                ks.scan_topk(dist, qs[r], codes, aux, n, k, words, True, out_d, out_i)
            else:
                ks.scan_topk_rows(dist, qs[r], codes, aux, rows, k, out_d, out_i)
            assert (out_i[m:] == -1).all() and (out_d[m:] == np.inf).all()
            assert set(out_i[:m].tolist()) <= set(rows.tolist())
            assert len(set(out_i[:m].tolist())) == m
            assert (np.diff(out_d[:m]) >= 0).all()
            np.testing.assert_allclose(out_d[:m], best, rtol=0, atol=tol)
            np.testing.assert_allclose(out_d[:m], ref[r, out_i[:m]], rtol=0, atol=tol)


@given(n=st.integers(1, 50), d=st.integers(1, 32), seed=st.integers(0, 2**31),
       spread=st.sampled_from([1e-3, 1.0, 100.0]), shift=st.sampled_from([0.0, 5.0]))
def test_reconstruction_error_is_bounded(n, d, seed, spread, shift):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * spread + shift).astype(np.float32)
    xd = x.astype(np.float64)
    eps = 1e-5 * (np.abs(xd).max() + 1e-3)
    f16 = make_codec("f16", d)
    codes, aux = f16.encode(x)
    np.testing.assert_array_equal(F16Codec.decode(codes), x.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(aux[:, 0], (x.astype(np.float16).astype(np.float64) ** 2).sum(1),
                               rtol=1e-5)
    sq8 = make_codec("sq8", d)
    sq8.fit(x)
    codes, aux = sq8.encode(x)
    err = np.abs(decode(sq8, codes, aux) - xd)
    assert (err <= sq8.step.astype(np.float64) / 2 + eps).all()  # per dimension, half a step
    lvq = make_codec("lvq8", d)
    lvq.fit(x)
    codes, aux = lvq.encode(x)
    xhat = decode(lvq, codes, aux)
    err = np.abs(xhat - xd)
    assert (err <= aux[:, 1:2].astype(np.float64) / 2 + eps).all()  # per vector, half its step
    np.testing.assert_allclose(aux[:, 2], (xhat**2).sum(1), rtol=1e-4, atol=eps)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_f16_kernel_extreme_halves(metric):
    """Subnormal, zero, negative zero and the largest half, against queries from tiny to
    far beyond the half range: the kernel stays exact up to float32 rounding."""
    x = np.array([[6e-8, 0.0, 1.0, -2.0], [65504, -1.0, 0.0, 3e-5],
                  [-0.0, 1e-5, -65504, 0.5], [1.0, 1.0, 1.0, 1.0]], np.float32)
    codec = make_codec("f16", 4)
    codes, aux = codec.encode(x)
    xhat = decode(codec, codes, aux)
    Q = np.array([[1.0, -2.0, 0.5, 3.0], [1e5, -3.0, 2.0, 1.0], [1e-4, 7e4, -1.0, 2e6],
                  [1e-20, 1e-20, 1e-20, 1e-20]], np.float32)
    qs = codec.prepare(Q)
    assert np.isfinite(qs).all()
    ref = kernel_distances(Q.astype(np.float64), xhat, metric)
    for r in range(len(Q)):
        out_d = np.empty(4, np.float32)
        out_i = np.empty(4, np.int64)
        ks.scan_topk_rows(codec.dist(metric), qs[r], codes, aux, np.arange(4), 4, out_d, out_i)
        np.testing.assert_allclose(out_d, ref[r, out_i], rtol=1e-5,
                                   atol=1e-5 * (np.abs(ref[r]).max() + 1e-30))


@pytest.mark.parametrize("name", ["sq8", "lvq8"])
def test_trained_codec_state_round_trip(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    a = make_codec(name, 6)
    assert not a.trained
    a.fit(x)
    assert a.trained and a.lossy
    b = make_codec(name, 6)
    b.load_state({k: np.array(v) for k, v in a.state().items()})
    for ca, cb in zip(a.encode(x), b.encode(x), strict=True):
        np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(a.prepare(x[:2]), b.prepare(x[:2]))
    assert a.bytes_per_vector() == 6 + 4 * a.aux_width


def test_codec_registry():
    assert {n.upper() for n in CODEC_NAMES} <= set(CODECS)
    for name in CODEC_NAMES:
        codec = make_codec(name.upper(), 5)
        assert codec.name == name and codec.dim == 5
        codes, aux = codec.empty(3)
        assert codes.shape == (3, 5) and aux.shape == (3, codec.aux_width)


def test_block_ip_matches_matmul():
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((11, 7)).astype(np.float32)
    X = rng.standard_normal((150, 7)).astype(np.float32)
    out = np.empty((11, 150), np.float32)
    kd.block_ip(Q, X, out)
    np.testing.assert_allclose(out, Q @ X.T, rtol=1e-5, atol=1e-5)


@njit(cache=True)
def _prefetch_all_rows(arr, nbytes):
    for r in range(arr.shape[0]):
        prefetch_row(arr, r, nbytes)
    return arr.sum()


@njit(cache=True)
def _prefetch_all_rows_l2(arr, nbytes):
    for r in range(arr.shape[0]):
        prefetch_row_l2(arr, r, nbytes)
    return arr.sum()


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_prefetch_row_is_a_harmless_hint(dtype):
    # a prefetch past a row's end is clipped to the row; it never reads into the result
    arr = (np.arange(6 * 40) % 7).astype(dtype).reshape(6, 40)
    before = arr.copy()
    for prefetch in (_prefetch_all_rows, _prefetch_all_rows_l2):
        for nbytes in (0, 1, 64, 4096):
            assert prefetch(arr, nbytes) == before.sum()
            assert prefetch(np.asfortranarray(arr), nbytes) == before.sum()
    np.testing.assert_array_equal(arr, before)


@njit(cache=True)
def _traversal_bytes(kind, qs, codes):
    return traversal_bytes(kind, qs, codes)


@pytest.mark.parametrize("spec,metric,expected", [
    ("f32", "ip", 4 * 64), ("f16", "l2", 2 * 64), ("sq8", "ip", 64), ("lvq8", "l2", 64),
    ("lvq4", "ip", 32), ("lvq4x8", "ip", 32), ("lvq8x8", "l2", 64), ("lvq4x4", "l2", 32),
    ("LeanVec(24,LVQ8,LVQ8)", "ip", 24), ("LeanVec(24,LVQ4,LVQ8)", "l2", 12),
    ("LeanVec(24,LVQ8,F16)", "l2", 24)])
def test_traversal_bytes_are_the_primary_codes(spec, metric, expected):
    """What a traversal prefetches of a row: all of a one-level row, the primary codes of
    two-level LVQ and LeanVec rows (the level their traversal distance reads), with the
    primary's inline bias and step where the kernel reads them there."""
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    codec = make_codec(spec, 64)
    codec.fit(x)
    codes, _ = codec.encode(x)
    kind = codec.dist(metric)
    got = _traversal_bytes(kind, codec.prepare(x[:1])[0], codes)
    inline = kind in (*LEANVEC_INLINE_PRIMARY_IP.values(), *LEANVEC_INLINE_PRIMARY_L2.values())
    assert got == expected + (8 if inline else 0) and got <= codes.shape[1] * codes.itemsize


_VECTOR_CODECS = ("f32", "f16", "sq8", "lvq8", "lvq4", "lvq4x4", "lvq4x8", "lvq8x8",
                  "LeanVec(64,LVQ8,LVQ8)", "LeanVec(64,LVQ4,LVQ8)", "LeanVec(64,LVQ8,F16)")


@pytest.mark.parametrize("spec", _VECTOR_CODECS)
def test_codec_distances_vectorise_without_gathers(spec):
    """Every distance a traversal or re-rank computes reads its codes with contiguous vector
    loads. An index Numba cannot prove non-negative (``qs[o + j]``) is wrapped on each read,
    which LLVM turns into gathers: LeanVec's secondary distance ran 10x slower that way (648
    against 59 ns a 384-d row), with right answers. Checked in the LLVM IR, so on any CPU."""
    x = np.random.default_rng(0).standard_normal((20, 128)).astype(np.float32)
    codec = make_codec(spec, 128)
    codec.fit(x)
    codes, aux = codec.encode(x)
    qs = codec.prepare(x[:1])[0]
    for metric in ("ip", "l2"):
        for kind in {codec.dist(metric), codec.rerank_dist(metric)} - {None}:
            @njit(fastmath=True)  # uncached: Numba shows no IR of a kernel loaded from cache
            def one(kind, qs, codes, aux, i):
                return codec_distance(kind, qs, codes, aux, i)

            one(kind, qs, codes, aux, 0)
            ir = next(iter(one.inspect_llvm().values()))
            assert "llvm.masked.gather" not in ir, f"{spec} {metric} {kind}: a gathering loop"
            assert re.search(r"load <\d+ x (i8|i16|i32|float)>", ir), f"{spec} {metric} {kind}: scalar"


@njit
def _dot_u8s8(codes, query, nbytes):
    return dot_u8s8(codes, query, nbytes)


@pytest.mark.skipif(not vnni.HAS_VNNI, reason="the CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("d", [1, 5, 63, 64, 65, 127, 128, 160, 384, 385, 1000])
def test_vnni_dot_is_the_integer_dot_product(d):
    """Whole 64-byte blocks and a masked tail, at the extremes of both operands' ranges."""
    rng = np.random.default_rng(d)
    for codes, query in ((rng.integers(0, 256, d), rng.integers(-127, 128, d)),
                         (np.full(d, 255), np.full(d, -127)), (np.full(d, 255), np.full(d, 127))):
        c, q = codes.astype(np.uint8), query.astype(np.int8)
        assert _dot_u8s8(c, q, d) == int(c.astype(np.int64) @ q.astype(np.int64))
        assert _dot_u8s8(c, q, d // 2) == int(c[: d // 2].astype(np.int64) @ q[: d // 2])


@njit
def _dot_u4s8(codes, query, half):
    return dot_u4s8(codes, query, half)


@pytest.mark.parametrize("d", [1, 3, 16, 257, 384])
def test_int8_query_quantisation_matches_numpy(d):
    """q8 = rint(127 q / max|q|) and 1/s per query (the integer max over the sign-cleared
    bits is max|q|): the peak negative or positive, a zero query (s = 1), odd widths."""
    from quiver.kernels.quantized import int8_quantize

    rng = np.random.default_rng(d)
    q = rng.standard_normal((6, d)).astype(np.float32)
    q[0] = 0
    q[1, d // 2] = -7.5  # the peak is negative
    q[2] *= np.float32(1e-30)  # tiny, still normal
    q8, inv = np.empty(q.shape, np.int8), np.empty(6, np.float32)
    int8_quantize(q, q8, inv)
    peak = np.abs(q).max(axis=1)
    scale = np.where(peak > 0, np.float32(127) / np.where(peak > 0, peak, 1), 1).astype(np.float32)
    np.testing.assert_array_equal(inv, np.float32(1) / scale)
    np.testing.assert_array_equal(q8, np.rint(q * scale[:, None]).astype(np.int8))
    assert q8[1, d // 2] == -127


@pytest.mark.skipif(not vnni.HAS_VNNI, reason="the CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("k4", [1, 2, 3, 96])
def test_vnni_dot16_is_four_exact_int8_matrix_vector_products(k4):
    """Four unsigned queries against one 16-column block of a signed matrix, for each
    column block: the integer products, the extremes of both operands included."""

    @njit
    def run(u, blocks, start, k4, out):
        vnni.dot16_u8s8(u, blocks, start, k4, out)

    rng = np.random.default_rng(k4)
    u = rng.integers(0, 256, (4, 4 * k4)).astype(np.uint8)
    u[0] = 255
    m = rng.integers(-128, 128, (4 * k4, 32)).astype(np.int8)
    m[:, 0] = -128
    blocks = np.ascontiguousarray(m.reshape(k4, 4, 2, 16).transpose(2, 0, 3, 1)).ravel()
    out = np.empty(64, np.int32)
    for g in range(2):
        run(u.ravel(), blocks, g * k4 * 64, k4, out)
        want = u.astype(np.int64) @ m[:, 16 * g : 16 * g + 16].astype(np.int64)
        np.testing.assert_array_equal(out.reshape(4, 16), want)


@pytest.mark.skipif(not vnni.HAS_VNNI, reason="the CPU has no AVX-512 VNNI")
@pytest.mark.parametrize("h", [1, 5, 63, 64, 65, 96, 128, 192, 500])
def test_vnni_packed_4bit_dot_is_the_integer_dot_product(h):
    """LVQ-4's layout (byte j: dimension j low, h + j high) against 2h signed bytes: whole
    blocks and a masked tail, all nibble values, both halves of the query read apart."""
    rng = np.random.default_rng(h)
    for codes, query in ((rng.integers(0, 256, h), rng.integers(-127, 128, 2 * h)),
                         (np.full(h, 255), np.full(2 * h, -127)), (np.full(h, 0x0F), np.full(2 * h, 127))):
        c, q = codes.astype(np.uint8), query.astype(np.int8)
        lo, hi = (c & 15).astype(np.int64), (c >> 4).astype(np.int64)
        want = int(lo @ q[:h].astype(np.int64) + hi @ q[h:].astype(np.int64))
        assert _dot_u4s8(c, q, h) == want


def test_int8_queries_span_the_int8_range():
    """LVQ-8's int8 queries: the largest |value| maps to 127; a zero query stays zero."""
    q = np.array([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    q8, inv = make_codec("lvq8", 3).int8_query(q)
    np.testing.assert_array_equal(q8, [[32, -127, 64], [0, 0, 0]])
    np.testing.assert_allclose(inv, [2.0 / 127, 1.0], rtol=1e-6)


# --- coarse quantizer: nearest lists ------------------------------------------------------


@pytest.mark.parametrize("nlist,nprobe", [(1, 1), (5, 3), (31, 12), (32, 12), (33, 31),
                                          (100, 32), (512, 12), (1000, 40), (20, 30)])
def test_top_lists_match_a_stable_sort(nlist, nprobe):
    """Both selections (few rows on the caller's thread, a batch in parallel) against NumPy:
    the nprobe smallest cnorms - 2 S, closest first, -1 where there are fewer lists. Some
    rows carry duplicated values, so ties go to the smaller list, as a stable sort has it."""
    from quiver.kernels import kmeans as kk

    rng = np.random.default_rng(nlist * 100 + nprobe)
    S = rng.standard_normal((9, nlist)).astype(np.float32)
    S[0] = np.round(S[0])  # many ties
    cnorms = rng.random(nlist).astype(np.float32) if nlist % 2 else np.zeros(nlist, np.float32)
    v = cnorms[None, :] - np.float32(2.0) * S
    want = np.full((9, nprobe), -1, np.int64)
    got = min(nprobe, nlist)
    want[:, :got] = np.argsort(v, axis=1, kind="stable")[:, :got]
    rows = np.empty((9, nprobe), np.int64)
    kk.top_lists_rows(S, cnorms, nprobe, rows)
    block = np.empty((11, nprobe), np.int64)
    kk.top_lists_block(S, cnorms, 2, nprobe, block)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_array_equal(block[2:], want)


def test_finish_hits_and_short_rows():
    """Kernel hits to results (negated for inner product, as is for l2; pad and -1 where a
    hit is missing) and the count of rows short of ``need`` hits."""
    dist = np.array([[0.5, 1.5, 9.0], [2.0, 9.0, 9.0]], np.float32)
    pos = np.array([[1, 0, -1], [2, -1, -1]], np.int64)
    ids = np.array([10, 11, 12], np.int64)
    scores, ext = np.empty((2, 3), np.float32), np.empty((2, 3), np.int64)
    kt.finish_hits(dist, pos, ids, True, np.float32(-np.inf), scores, ext)
    np.testing.assert_array_equal(ext, [[11, 10, -1], [12, -1, -1]])
    np.testing.assert_array_equal(scores, [[-0.5, -1.5, -np.inf], [-2.0, -np.inf, -np.inf]])
    kt.finish_hits(dist, pos, ids, False, np.float32(np.inf), scores, ext)
    np.testing.assert_array_equal(scores, [[0.5, 1.5, np.inf], [2.0, np.inf, np.inf]])
    assert [kt.short_rows(pos, need) for need in (0, 1, 2, 3)] == [0, 0, 1, 2]
