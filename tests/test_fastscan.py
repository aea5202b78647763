"""IVF-PQ with 4-bit codes and the fast scan (``PQ<m>x4fs``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import blobs, brute_ids, no_second_kernel_variants
from numba import njit
from quiver.engine.errors import CorruptData, InvalidArgument
from quiver.engine.index.fastscan import IVFPQFastScanIndex, pack_blocks, unpack_blocks
from quiver.engine.pq import PQCodec
from quiver.kernels import fastscan as kf

import quiver

K = 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(33)
    return blobs(rng, 3000, 32), blobs(rng, 30, 32)


def recall(got, true):
    return np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, true, strict=True)])


@njit
def _below_avx2(blocks, base, lut, thr, acc):
    return kf._block_below_avx2(blocks, base, lut, thr, acc)


def test_the_shuffle_kernel_equals_the_scalar_one():
    """Sums of 32 rows' table entries and the below-threshold mask, both ways."""
    if not kf.HAVE_AVX2:
        pytest.skip("no AVX2 on this machine: only the scalar kernel runs")
    rng = np.random.default_rng(0)
    npairs = 12
    blocks = rng.integers(0, 256, 5 * npairs * 32, dtype=np.uint8)
    lut = rng.integers(0, 256, npairs * 32, dtype=np.uint8)
    for b in range(5):
        for thr in (0, 3000, 6000, kf.SUM_LIMIT):
            a1, a2 = np.empty(32, np.uint16), np.empty(32, np.uint16)
            m1 = _below_avx2(blocks, np.int64(b * npairs * 32), lut, np.int64(thr), a1)
            m2 = kf._block_below_scalar(blocks, np.int64(b * npairs * 32), lut, np.int64(thr), a2)
            np.testing.assert_array_equal(a1, a2)
            assert m1 == m2 == sum(1 << r for r in range(32) if a2[r] < thr)


def test_blocks_round_trip():
    rng = np.random.default_rng(1)
    offsets = np.array([0, 5, 5, 70, 101])
    codes = rng.integers(0, 256, (101, 6), dtype=np.uint8)
    blocks, block_off = pack_blocks(codes, offsets)
    assert block_off.tolist() == [0, 1, 1, 4, 5] and blocks.shape == (5 * 6 * 32,)
    np.testing.assert_array_equal(unpack_blocks(blocks, block_off, offsets, 6), codes)
    grid = blocks.reshape(5, 6, 32)
    np.testing.assert_array_equal(grid[1, :, 0], codes[5])  # list 2 starts block 1, row 0
    assert not grid[0, :, 5:].any()  # padding


def test_four_bit_codes_pack_two_a_byte():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    pq = PQCodec(32, 16, 4)
    pq.fit(x)
    codes, _ = pq.encode(x)
    assert codes.shape == (2000, 8) and pq.bytes_per_vector() == 8 and pq.name == "pq16x4fs"
    idx = pq.unpack(codes)
    assert idx.max() < 16 and np.array_equal(idx[:, 1::2], codes >> 4)
    err = ((pq.decode(codes) - x) ** 2).sum() / (x**2).sum()
    assert err < 0.35, err  # 16 levels per 2 dimensions (measured 0.24)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_fast_scan_ranks_as_the_4bit_reconstruction(data, metric):
    """Without re-ranking, every list probed, the fast scan's top-k is the brute-force top-k
    over the decoded vectors, up to its uint8 table rounding: the scores it returns are
    within that rounding of the true ADC distances of the rows it returns."""
    x, q = data
    idx = quiver.index("IVF8,PQ16x4fs", 32, metric)
    idx.train(x)
    idx.add(x)
    rec = idx.reconstruct(np.arange(x.shape[0]))
    qq = q / np.linalg.norm(q, axis=1, keepdims=True) if metric == "cosine" else q
    d = ((qq[:, None] - rec[None]) ** 2).sum(-1) if metric == "l2" else -(qq @ rec.T)
    want = np.argsort(d, axis=1)[:, :K]
    for batch in (slice(None), slice(0, 1)):
        scores, ids = idx.search(q[batch], K, nprobe=8)
        assert recall(ids, want[batch]) >= 0.8
        got = scores if metric == "l2" else -scores
        span = np.ptp(d[batch], axis=1, keepdims=True)
        assert np.all(np.abs(np.take_along_axis(d[batch], ids, 1) - got) < 0.05 * span)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_unordered_hits_are_the_sorted_ones_in_any_order(data, metric):
    """``search_positions(..., ordered=False)`` (what multi-vector retrieval asks for) skips
    the final sort: the same hits per row, -1 padded at the end, one query or a batch."""
    from quiver.engine.params import SearchParams
    from quiver.engine.planner import Plan

    x, q = data
    full = quiver.index("IVF16,PQ16x4fs", 32, metric)
    full.train(x)
    full.add(x)
    few = quiver.index("IVF8,PQ16x4fs", 32, metric)
    few.train(x)
    few.add(x[:40])  # fewer rows than k: padding
    reordered = False
    for idx, k, nprobe in ((full, 25, 4), (few, 45, 8)):
        params = SearchParams(nprobe=nprobe)
        # probe the lists (all of them for ``few``: no exact fallback), never the exact path
        plan = Plan("traversal", len(idx), len(idx))
        for batch in (q[:1], q):
            d1, p1, _ = idx.search_positions(batch, k, None, params, plan)
            d2, p2, info = idx.search_positions(batch, k, None, params, plan, ordered=False)
            assert info["strategy"] == "traversal" and info["fallback_exact"] == 0
            for a, b, da, db in zip(p1, p2, d1, d2, strict=True):
                assert sorted(a.tolist()) == sorted(b.tolist())
                n = int((b >= 0).sum())
                assert (b[:n] >= 0).all() and (b[n:] == -1).all()
                np.testing.assert_array_equal(np.sort(da), np.sort(db))
                reordered |= a.tolist() != b.tolist()
    assert reordered and (p1 == -1).any()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_fast_scan_refined_is_exact_and_filters(data, metric):
    x, q = data
    idx = quiver.index("IVF8,PQ16x4fs,Refine(F16)", 32, metric)
    idx.train(x)
    idx.add(x)
    true = brute_ids(x, q, metric, K)
    assert recall(idx.search(q, K, nprobe=8, ef=x.shape[0])[1], true) == 1.0
    assert recall(idx.search(q, K, nprobe=8)[1], true) >= 0.9
    assert recall(idx.search(q[:1], K, nprobe=8)[1], true[:1]) >= 0.9
    rng = np.random.default_rng(3)
    for share in (0.01, 0.3):
        allowed = np.sort(rng.choice(x.shape[0], int(share * x.shape[0]), replace=False))
        want = allowed[brute_ids(x[allowed], q, metric, min(K, allowed.size))]
        for kw in ({"nprobe": 8, "ef": x.shape[0]}, {"nprobe": 8, "rerank": False}):
            _, got = idx.search(q, K, allowed=allowed, **kw)
            assert np.isin(got[got >= 0], allowed).all()
            assert ((got >= 0).sum(axis=1) == min(K, allowed.size)).all()
            if "ef" in kw:
                assert recall(got[:, : want.shape[1]], want) == 1.0


def test_fast_scan_save_load_add_and_memory(tmp_path: Path, data):
    x, q = data
    idx = quiver.index("IVF8,PQ16x4fs", 32, "ip")
    assert isinstance(idx, IVFPQFastScanIndex)
    idx.train(x)
    idx.add(x[:1000])
    idx.add(x[1000:])
    idx.remove([3])
    blocks = int(np.sum((idx.list_sizes() + 31) // 32))
    assert idx.memory_usage()["vectors"] == blocks * 32 * 8  # the blocks alone
    idx.save(tmp_path / "fs")
    for mmap in (True, False):
        back = quiver.load_index(tmp_path / "fs", mmap=mmap)
        assert isinstance(back, IVFPQFastScanIndex) and len(back) == 2999
        for kw in ({"nprobe": 3}, {"exact": True}):
            first = idx.search(q, K, **kw), idx.search(q[0], K, **kw)
            with no_second_kernel_variants():
                again = back.search(q, K, **kw), back.search(q[0], K, **kw)
            for a, b in zip(first, again, strict=True):
                np.testing.assert_array_equal(a, b)
    back.add(x[:10] + 1.0)
    np.testing.assert_allclose(back.reconstruct([0]), idx.reconstruct([0]))
    _, got = back.search(x[:2] + 1.0, 5, allowed=np.arange(3000, 3010), nprobe=8)
    assert len(back) == 3009 and np.isin(got, np.arange(3000, 3010)).all()
    (tmp_path / "fs" / "fs_blocks.npy").unlink()
    with pytest.raises(CorruptData, match=r"fs_blocks\.npy"):
        quiver.load_index(tmp_path / "fs")


@pytest.mark.parametrize(("spec", "match"), [
    ("IVF8,PQ15x4fs", r"m must be even; got m=15"),
    ("IVF8,PQ16x8fs", r"the fast scan \('fs'\) is for 4-bit codes; write PQ16x4fs"),
    ("IVF8,PQ16x4xx", r"write PQ<m>x8 .* or PQ<m>x4fs"),
    ("IVF8fs,PQ16x4fs", r"Ivf takes no variant suffix \('fs'\)"),
])
def test_fast_scan_bad_specs(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        quiver.index(spec, 30 if "15" in spec else 32)


def test_select_smallest_keeps_the_k_smallest():
    from quiver.kernels.topk import select_smallest

    rng = np.random.default_rng(4)
    for size, k in ((1, 1), (50, 1), (50, 50), (400, 100), (400, 7)):
        d = rng.integers(0, 30, size).astype(np.float32)  # many ties
        i = np.arange(size, dtype=np.int64)
        dd, ii = d.copy(), i.copy()
        top = select_smallest(dd, ii, size, k)
        np.testing.assert_array_equal(np.sort(dd[:k]), np.sort(d)[:k])
        np.testing.assert_array_equal(d[ii], dd)  # ids carried along
        assert top == np.sort(d)[k - 1]
    for d in (np.full(60, 3.0, np.float32), np.r_[np.full(40, 1.0), np.full(20, 2.0)]):
        d = d.astype(np.float32)  # the pivot is the minimum: its copies are split off
        dd, ii = d.copy(), np.arange(60, dtype=np.int64)
        assert select_smallest(dd, ii, 60, 45) == np.sort(d)[44]
        np.testing.assert_array_equal(np.sort(dd[:45]), np.sort(d)[:45])
        assert sorted(ii) == list(range(60))


def test_trained_empty_fast_scan_reloads_and_ivfpq_refuses_4bit(tmp_path: Path, data):
    x, q = data
    idx = quiver.index("IVF8,PQ16x4fs", 32, "l2")
    idx.train(x)
    assert (idx.search(q, K)[1] == -1).all()
    idx.save(tmp_path / "empty")
    back = quiver.load_index(tmp_path / "empty")
    back.add(x[:50])
    assert (back.search(x[:2], 1, nprobe=8)[1][:, 0] == [0, 1]).all()
    from quiver.engine.index.ivfpq import IVFPQIndex

    with pytest.raises(InvalidArgument, match=r"IVFPQIndex stores PQ<m>x8 codes.*PQ<m>x4fs"):
        IVFPQIndex(32, codec="PQ16x4fs")
    with pytest.raises(InvalidArgument, match=r"IVFPQFastScanIndex stores PQ<m>x4fs codes"):
        IVFPQFastScanIndex(32, codec="PQ16x8")
