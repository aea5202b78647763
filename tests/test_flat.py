"""FlatIndex against a NumPy brute-force oracle: metrics, dtypes, query shapes, kernel paths,
filters, removals and save/load round trips."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from conftest import (
    BLAS_MIN,
    DTYPES,
    METRICS,
    ROWS_SHARE,
    Oracle,
    expected_path,
    make_data,
    pad_score,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quiver
from quiver import Bitset, FlatIndex

QUERY_MODES = {"single": None, "small": 5, "blas": BLAS_MIN + 4}


def make_queries(rng, mode: str, d: int, style: str = "gauss") -> np.ndarray:
    if mode == "single":
        return make_data(rng, 1, d, style)[0]
    return make_data(rng, QUERY_MODES[mode], d, style)


def n_queries(q) -> int:
    return 1 if np.ndim(q) == 1 else len(q)


def build(metric, dtype, n=300, d=16, seed=0, style="gauss"):
    rng = np.random.default_rng(seed)
    x = make_data(rng, n, d, style)
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    idx = FlatIndex(d, metric, dtype=dtype)
    oracle = Oracle(d, metric, dtype)
    # two batches, so growth of the storage is exercised too
    half = n // 2
    idx.add(x[:half], ids[:half])
    idx.add(x[half:], ids[half:])
    oracle.add(x, ids)
    return idx, oracle, ids, rng


def pick_allowed(rng, live_ids: np.ndarray, mode: str | None):
    """External ids to allow: a few unknown ids are mixed in (they must be ignored)."""
    if mode is None:
        return None
    share = {"selective": 0.1, "permissive": 0.6}[mode]
    m = max(1, int(share * len(live_ids)))
    chosen = rng.choice(live_ids, size=m, replace=False)
    unknown = np.array([10**9 + 1, 10**9 + 2], np.int64)
    return np.concatenate([chosen, unknown])


# --- fixed-seed oracle tests ---------------------------------------------------------------


@pytest.mark.parametrize("allowed_mode", [None, "selective", "permissive"])
@pytest.mark.parametrize("mode", list(QUERY_MODES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_matches_oracle(metric, dtype, mode, allowed_mode, path_spy):
    idx, oracle, ids, rng = build(metric, dtype, seed=11)
    q = make_queries(rng, mode, idx.dim)
    allowed = pick_allowed(rng, ids, allowed_mode)
    path_spy.clear()
    scores, got = idx.search(q, 10, allowed=allowed)
    oracle.check(scores, got, q, 10, allowed=allowed, exact_ids=True)
    n_allowed = None if allowed is None else int(np.isin(ids, allowed).sum())
    assert set(path_spy) == {expected_path(len(ids), n_allowed, n_queries(q))}


@pytest.mark.parametrize("metric", METRICS)
def test_single_query_equals_batch_row(metric):
    idx, _, _, rng = build(metric, "f32", n=120, d=8, seed=3)
    Q = make_data(rng, BLAS_MIN, 8)
    s_blas, i_blas = idx.search(Q, 7)
    s_scan, i_scan = idx.search(Q[:3], 7)
    for r in range(3):
        s1, i1 = idx.search(Q[r], 7)
        assert s1.shape == i1.shape == (7,)
        np.testing.assert_array_equal(i1, i_scan[r])
        np.testing.assert_array_equal(i1, i_blas[r])
        np.testing.assert_allclose(s1, s_blas[r], rtol=1e-5, atol=1e-5)
    # a 2-D batch of one stays 2-D
    s2, i2 = idx.search(Q[:1], 7)
    assert s2.shape == i2.shape == (1, 7)


@pytest.mark.parametrize("mode", list(QUERY_MODES))
@pytest.mark.parametrize("metric", METRICS)
def test_score_conventions(metric, mode):
    """l2: squared distance ascending; ip: inner product descending; cosine: similarity."""
    x = np.array([[1, 0], [3, 0], [0, 2]], np.float32)
    idx = FlatIndex(2, metric)
    idx.add(x, [10, 20, 30])
    q1 = np.array([2.0, 0.0], np.float32)
    q = q1 if mode == "single" else np.tile(q1, (QUERY_MODES[mode], 1))
    scores, ids = idx.search(q, 3)
    if mode != "single":
        scores, ids = scores[0], ids[0]
    expected = {
        "l2": ([10, 20, 30], [1.0, 1.0, 8.0]),
        "ip": ([20, 10, 30], [6.0, 2.0, 0.0]),
        "cosine": ([10, 20, 30], [1.0, 1.0, 0.0]),
    }[metric]
    np.testing.assert_array_equal(ids, expected[0])  # ties ordered by insertion position
    np.testing.assert_allclose(scores, expected[1], atol=1e-6)


@pytest.mark.parametrize("allowed_mode", [None, "selective"])
@pytest.mark.parametrize("mode", list(QUERY_MODES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_padding_when_k_exceeds_points(metric, dtype, mode, allowed_mode):
    idx, oracle, ids, rng = build(metric, dtype, n=40, d=4, seed=5)
    q = make_queries(rng, mode, 4)
    allowed = None if allowed_mode is None else ids[:3]
    k = 50
    scores, got = idx.search(q, k, allowed=allowed)
    oracle.check(scores, got, q, k, allowed=allowed)
    nfound = 40 if allowed is None else 3
    got2 = np.atleast_2d(got)
    s2 = np.atleast_2d(scores)
    assert (got2[:, nfound:] == -1).all()
    assert (s2[:, nfound:] == pad_score(metric)).all()


@pytest.mark.parametrize("mode", list(QUERY_MODES))
@pytest.mark.parametrize("metric", METRICS)
def test_empty_index_and_empty_allowed(metric, mode):
    rng = np.random.default_rng(0)
    idx = FlatIndex(6, metric)
    q = make_queries(rng, mode, 6)
    scores, ids = idx.search(q, 4)
    assert (ids == -1).all() and (scores == pad_score(metric)).all()
    idx.add(make_data(rng, 30, 6))
    for allowed in ([], np.array([], np.int64), [999]):
        scores, ids = idx.search(q, 4, allowed=allowed)
        assert (ids == -1).all() and (scores == pad_score(metric)).all()


def test_empty_query_batch():
    idx, _, _, _ = build("l2", "f32", n=20, d=4)
    scores, ids = idx.search(np.zeros((0, 4), np.float32), 3)
    assert scores.shape == ids.shape == (0, 3)


@pytest.mark.parametrize("metric", METRICS)
def test_allowed_as_bitset_over_positions(metric):
    idx, oracle, ids, rng = build(metric, "f32", n=100, d=8, seed=2)
    q = make_data(rng, 3, 8)
    pos = np.array([1, 5, 50, 99])
    # ids were added in order, so position p holds ids[p]
    s1, i1 = idx.search(q, 3, allowed=Bitset.from_positions(pos, 100))
    s2, i2 = idx.search(q, 3, allowed=ids[pos])
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    # a Bitset sized for fewer rows than the index is padded, not misread
    s3, i3 = idx.search(q, 3, allowed=Bitset.from_positions(pos[:2], 10))
    oracle.check(s3, i3, q, 3, allowed=ids[pos[:2]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_after_removals(metric, dtype, path_spy):
    idx, oracle, ids, rng = build(metric, dtype, n=300, d=12, seed=21)
    gone = rng.choice(ids, size=120, replace=False)
    # unknown ids are ignored, and repeating an id removes it once
    assert idx.remove(np.concatenate([gone, gone[:5], [10**9]])) == 120
    oracle.remove(gone)
    assert len(idx) == 180
    live = np.setdiff1d(ids, gone)
    for mode in QUERY_MODES:
        q = make_queries(rng, mode, 12)
        for allowed_mode in (None, "selective", "permissive"):
            allowed = pick_allowed(rng, live, allowed_mode)
            if allowed is not None:  # removed ids in `allowed` must not come back
                allowed = np.concatenate([allowed, gone[:10]])
            scores, got = idx.search(q, 10, allowed=allowed)
            oracle.check(scores, got, q, 10, allowed=allowed, exact_ids=True)
            assert not np.isin(got, gone).any()
    # re-adding removed ids (with new vectors) works
    x_new = make_data(rng, 20, 12)
    idx.add(x_new, gone[:20])
    oracle.add(x_new, gone[:20])
    q = make_queries(rng, "blas", 12)
    scores, got = idx.search(q, 10)
    oracle.check(scores, got, q, 10, exact_ids=True)


def test_remove_everything_then_add():
    idx, _, ids, rng = build("l2", "f32", n=50, d=4)
    assert idx.remove(ids) == 50
    assert len(idx) == 0
    scores, got = idx.search(np.zeros(4), 3)
    assert (got == -1).all()
    assert idx.remove(ids) == 0
    idx.add(np.ones((2, 4)), [7, 8])
    _, got = idx.search(np.ones(4), 3)
    np.testing.assert_array_equal(np.sort(got[:2]), [7, 8])
    assert got[2] == -1


def test_remove_duplicate_ids_keeps_other_rows():
    """Removing [a, a] must remove a once and leave every other id findable by its vector."""
    x = np.eye(10, dtype=np.float32)
    idx = FlatIndex(10)
    idx.add(x)
    assert idx.remove([3, 3, 3]) == 1
    assert len(idx) == 9
    for i in [0, 1, 2, 4, 5, 6, 7, 8, 9]:
        s, got = idx.search(x[i], 1)
        assert got[0] == i and s[0] == 0
        s, got = idx.search(x[i], 1, allowed=[i])
        assert got[0] == i and s[0] == 0


def test_default_ids_are_consecutive():
    idx = FlatIndex(3)
    np.testing.assert_array_equal(idx.add(np.ones((3, 3))), [0, 1, 2])
    idx.add(np.ones((1, 3)), [10])
    np.testing.assert_array_equal(idx.add(np.ones((2, 3))), [11, 12])
    assert len(idx) == idx.ntotal == 6


def test_factory_builds_flat_indexes():
    a = quiver.index("Flat", 8, "ip")
    b = quiver.index(" flat , F16 ", 8, metric="cosine")
    assert isinstance(a, FlatIndex) and a.dtype == "f32" and a.metric.value == "ip"
    assert isinstance(b, FlatIndex) and b.dtype == "f16" and b.metric.value == "cosine"
    assert isinstance(a, quiver.Index)


def test_f16_extreme_values():
    """Half subnormals, zero and the largest half work in both scans; queries outside the
    half range still compare exactly against half storage."""
    x = np.array([[6e-8, 0, 1], [65504, -1, 0], [-0.0, 1e-5, -65504], [1, 1, 1]], np.float32)
    for metric in ("l2", "ip"):
        idx = FlatIndex(3, metric, "f16")
        idx.add(x)
        oracle = Oracle(3, metric, "f16")
        oracle.add(x, np.arange(4))
        for q in (np.array([1e5, -3.0, 2.0], np.float32), np.array([1e-3, 7e4, -1], np.float32)):
            for batch in (q, np.tile(q, (3, 1)), np.tile(q, (BLAS_MIN, 1))):
                scores, got = idx.search(batch, 4)
                oracle.check(scores, got, batch, 4)


# --- hypothesis ------------------------------------------------------------------------------


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    metric=st.sampled_from(METRICS),
    dtype=st.sampled_from(DTYPES),
    n=st.integers(0, 70),
    d=st.integers(1, 10),
    nq=st.sampled_from([0, 1, 3, BLAS_MIN, BLAS_MIN + 3]),  # 0: a single 1-D query
    k=st.integers(1, 20),
    style=st.sampled_from(["gauss", "grid"]),
    allowed_share=st.sampled_from([None, 0.0, 0.1, 0.24, 0.5, 1.0]),
    n_remove=st.integers(0, 15),
    roundtrip=st.booleans(),
    n_after=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_matches_oracle(metric, dtype, n, d, nq, k, style, allowed_share, n_remove,
                                 roundtrip, n_after, seed, path_spy):
    rng = np.random.default_rng(seed)
    x = make_data(rng, n, d, style)
    ids = rng.choice(3 * n + 3, size=n, replace=False).astype(np.int64)
    idx = FlatIndex(d, metric, dtype=dtype)
    oracle = Oracle(d, metric, dtype)
    if n:
        cut = int(rng.integers(0, n + 1))
        for sl in (slice(0, cut), slice(cut, n)):
            if sl.stop > sl.start:
                idx.add(x[sl], ids[sl])
        oracle.add(x, ids)
    if n_remove and n:
        gone = rng.choice(ids, size=min(n_remove, n), replace=True)  # may repeat
        assert idx.remove(np.concatenate([gone, [10**9]])) == len(np.unique(gone))
        oracle.remove(gone)
    with tempfile.TemporaryDirectory() as tmp:
        if roundtrip:
            idx.save(tmp)
            idx = FlatIndex.load(tmp)
        if n_after:  # adding after a load writes to copies of the read-only maps
            extra = make_data(rng, n_after, d, style)
            extra_ids = np.arange(10**6, 10**6 + n_after)
            idx.add(extra, extra_ids)
            oracle.add(extra, extra_ids)
        assert len(idx) == len(oracle.vectors)
        live = np.array(sorted(oracle.vectors), np.int64)
        allowed = None
        if allowed_share is not None:
            m = int(round(allowed_share * len(live)))
            allowed = np.concatenate([rng.choice(live, size=m, replace=False), [10**9 + 7]])
        q = make_data(rng, max(nq, 1), d, style)
        if nq == 0:
            q = q[0]
        path_spy.clear()
        scores, got = idx.search(q, k, allowed=allowed)
        oracle.check(scores, got, q, k, allowed=allowed)
        n_allowed = None if allowed is None else int(np.isin(live, allowed).sum())
        assert set(path_spy) == {expected_path(len(live), n_allowed, max(nq, 1))}


def test_rows_path_threshold_is_a_share_of_rows(path_spy):
    """Just below the share the rows path is taken, at or above it the scans are."""
    n = 200
    idx, oracle, ids, rng = build("l2", "f32", n=n, d=4)
    q = make_data(rng, 2, 4)
    below = int(np.ceil(ROWS_SHARE * n)) - 1
    for m, path in ((below, "rows"), (below + 1, "scan")):
        path_spy.clear()
        scores, got = idx.search(q, 5, allowed=ids[:m])
        oracle.check(scores, got, q, 5, allowed=ids[:m], exact_ids=True)
        assert path_spy == [path]
