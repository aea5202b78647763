"""Bad input raises InvalidArgument / DuplicateId naming the field; convertible input works."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BLAS_MIN, Oracle
from quiver.engine.codecs import make_codec
from quiver.engine.validation import as_ids, as_vectors, check_dim, check_k, normalize_rows

import quiver
from quiver import DuplicateId, FlatIndex, InvalidArgument


@pytest.fixture
def index():
    rng = np.random.default_rng(0)
    idx = FlatIndex(4, "l2")
    idx.add(rng.standard_normal((20, 4)).astype(np.float32), np.arange(100, 120))
    return idx


def test_error_classes():
    assert issubclass(InvalidArgument, ValueError)
    assert issubclass(DuplicateId, InvalidArgument) and issubclass(DuplicateId, ValueError)
    assert issubclass(quiver.CorruptData, quiver.QuiverError)


nan_row = np.ones((3, 4), np.float32)
nan_row[1, 2] = np.nan
inf_row = np.ones((3, 4), np.float32)
inf_row[2, 0] = -np.inf

BAD_ADD = [
    ("wrong dim", np.ones((2, 5)), None, InvalidArgument, r"vectors: wrong dimension 5"),
    ("wrong dim 1-D", np.ones(3), None, InvalidArgument, r"vectors: wrong dimension 3"),
    ("3-D", np.ones((2, 2, 4)), None, InvalidArgument, r"vectors: expected a 2-D array"),
    ("not numeric", [["a", "b", "c", "d"]], None, InvalidArgument, r"vectors: not a numeric"),
    ("nan", nan_row, None, InvalidArgument, r"vectors: row 1 contains NaN or inf"),
    ("inf", inf_row, None, InvalidArgument, r"vectors: row 2 contains NaN or inf"),
    ("dup in call", np.ones((3, 4)), [1, 2, 1], DuplicateId, r"ids: id 1 appears more than once"),
    ("already present", np.ones((2, 4)), [5, 105], DuplicateId, r"ids: id 105 is already in"),
    ("negative", np.ones((2, 4)), [3, -4], InvalidArgument, r"ids: ids must be non-negative"),
    ("count", np.ones((2, 4)), [3], InvalidArgument, r"ids: got 1 ids for 2 vectors"),
    ("float ids", np.ones((2, 4)), [1.0, 2.0], InvalidArgument, r"ids: expected a 1-D array of int"),
    ("bool ids", np.ones((2, 4)), [True, False], InvalidArgument, r"ids: expected a 1-D array"),
    ("2-D ids", np.ones((2, 4)), [[1], [2]], InvalidArgument, r"ids: expected a 1-D array"),
    ("huge uint64", np.ones((1, 4)), np.array([2**64 - 1], np.uint64), InvalidArgument,
     r"ids: ids must fit in int64"),
]


@pytest.mark.parametrize(("case", "x", "ids", "exc", "match"), BAD_ADD, ids=[c[0] for c in BAD_ADD])
def test_bad_add_is_rejected_and_changes_nothing(index, case, x, ids, exc, match):
    before = index.search(np.zeros(4), 5)
    with pytest.raises(exc, match=match):
        index.add(x, ids)
    assert len(index) == 20
    after = index.search(np.zeros(4), 5)
    np.testing.assert_array_equal(before[1], after[1])
    # a failed call leaves the ids it mentioned free
    if ids is not None and exc is DuplicateId and case == "dup in call":
        index.add(np.zeros((1, 4)), [1])
        assert len(index) == 21


BAD_SEARCH = [
    ("wrong dim", np.ones(5), 3, {}, r"queries: wrong dimension 5"),
    ("wrong dim batch", np.ones((BLAS_MIN, 3)), 3, {}, r"queries: wrong dimension 3"),
    ("nan", np.array([0, np.nan, 0, 0]), 3, {}, r"queries: row 0 contains NaN or inf"),
    ("inf in batch", inf_row, 3, {}, r"queries: row 2 contains NaN or inf"),
    ("k zero", np.ones(4), 0, {}, r"k: must be positive"),
    ("k negative", np.ones(4), -3, {}, r"k: must be positive"),
    ("k float", np.ones(4), 2.0, {}, r"k: expected a positive integer"),
    ("k str", np.ones(4), "3", {}, r"k: expected a positive integer"),
    ("k bool", np.ones(4), True, {}, r"k: expected a positive integer"),
    ("k None", np.ones(4), None, {}, r"k: expected a positive integer"),
    ("allowed mask", np.ones(4), 3, {"allowed": np.ones(20, bool)}, r"allowed: pass ids"),
    ("allowed floats", np.ones(4), 3, {"allowed": [1.5]}, r"allowed: ids must be integers"),
    ("unknown param", np.ones(4), 3, {"nprob": 3}, r"params: unknown search parameter.*nprob"),
    ("bad param", np.ones(4), 3, {"ef": 0}, r"params.ef: expected a positive integer"),
]


@pytest.mark.parametrize(("case", "q", "k", "kw", "match"), BAD_SEARCH,
                         ids=[c[0] for c in BAD_SEARCH])
def test_bad_search_is_rejected(index, case, q, k, kw, match):
    with pytest.raises(InvalidArgument, match=match):
        index.search(q, k, **kw)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: FlatIndex(4, "hamming"), r"metric: unknown metric 'hamming'"),
    (lambda: FlatIndex(4, None), r"metric: unknown metric"),
    (lambda: FlatIndex(4, "l2", dtype="f64"), r"dtype: FlatIndex stores f32, f16 or a row "
                                              r"codec \(codec: unknown codec 'f64'"),
    (lambda: FlatIndex(4, "l2", dtype="pq"), r"dtype: FlatIndex stores .*PQ needs its size"),
    (lambda: FlatIndex(0), r"dim: expected a positive integer"),
    (lambda: FlatIndex(4.0), r"dim: expected a positive integer"),
    (lambda: FlatIndex(True), r"dim: expected a positive integer"),
    (lambda: make_codec("pq9", 4), r"codec: unknown codec 'pq9'"),
    (lambda: quiver.index("NSG64", 4), r"spec: unknown index type .NSG64."),
    (lambda: quiver.index("Flat,XYZ", 4), r"spec: unknown codec .XYZ.; accepted: F32, F16"),
    (lambda: quiver.index("Flat,F16,Refine", 4), r"spec: Flat does not take .Refine."),
    (lambda: quiver.index("", 4), r"spec: expected a string"),
    (lambda: quiver.index(None, 4), r"spec: expected a string"),
    (lambda: quiver.index("Flat", 4, metric="manhattan"), r"metric: unknown metric"),
])
def test_bad_construction_is_rejected(make, match):
    with pytest.raises(InvalidArgument, match=match):
        make()


@pytest.mark.parametrize("alias", ["euclidean", "L2", "dot", "inner_product", "cos", "angular"])
def test_metric_aliases(alias):
    assert quiver.Metric.parse(alias).value in ("l2", "ip", "cosine")


def test_f16_values_beyond_half_range_are_rejected():
    idx = FlatIndex(2, "l2", dtype="f16")
    idx.add(np.array([[65504.0, -65504.0]]))
    with pytest.raises(InvalidArgument, match=r"vectors: .*float16 range"):
        idx.add(np.array([[1.0, 0.0], [7e4, 0.0]]))
    assert len(idx) == 1


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_float64_and_non_contiguous_input_is_converted(metric, dtype):
    rng = np.random.default_rng(7)
    base = rng.standard_normal((60, 8))  # float64
    wide = np.repeat(base, 2, axis=1)  # (60, 16); [:, ::2] is a strided view of `base`
    fortran = np.asfortranarray(base)
    ids = np.arange(60)
    plain = FlatIndex(8, metric, dtype)
    plain.add(base.astype(np.float32), ids)
    variants = {
        "float64": (base, ids),
        "strided": (wide[:, ::2], ids.astype(np.int32)),
        "fortran": (fortran, list(ids.tolist())),
        "reversed": (base[::-1], ids[::-1].astype(np.uint16)),
    }
    qbase = rng.standard_normal((BLAS_MIN, 8))
    queries = [qbase[0], qbase[:3], qbase, np.repeat(qbase, 2, axis=1)[:, ::2],
               np.asfortranarray(qbase[:4]), qbase[:2].tolist()]
    for name, (x, xid) in variants.items():
        idx = FlatIndex(8, metric, dtype)
        idx.add(x, xid)
        for q in queries:
            for allowed in (None, ids[:5], ids[:40]):
                s1, i1 = plain.search(q, 5, allowed=allowed)
                s2, i2 = idx.search(q, 5, allowed=allowed)
                np.testing.assert_array_equal(i1, i2, err_msg=name)
                np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6, err_msg=name)
    oracle = Oracle(8, metric, dtype)
    oracle.add(base, ids)
    s, i = plain.search(qbase[:3].T.copy().T, 5)  # non-contiguous float64 query batch
    oracle.check(s, i, qbase[:3], 5)


def test_single_vector_with_scalar_id_and_numpy_k(index):
    index.add(np.full(4, 9.0), 7)
    s, i = index.search(np.full(4, 9.0), np.int64(1))
    assert i.tolist() == [7] and s.tolist() == [0.0]
    assert index.remove(7) == 1


def test_all_finite_finds_every_kind_of_non_finite_value():
    """The dot-with-zeros check and the mask fallback above 65,536 values agree with NumPy,
    at either end, and huge finite values pass (0 * v cannot overflow); no warning."""
    import warnings

    from quiver.engine.validation import all_finite

    for shape in [(7, 128), (300, 384), (0, 4)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        assert all_finite(x)
        if not x.size:
            continue
        for v in (np.nan, np.inf, -np.inf):
            for at in (0, -1):
                y = x.copy()
                y.reshape(-1)[at] = v
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    assert not all_finite(y)
    assert all_finite(np.full((4, 4), np.finfo(np.float32).max, np.float32))


def test_helpers_directly():
    v = as_vectors([[1, 2], [3, 4]], 2)
    assert v.dtype == np.float32 and v.flags.c_contiguous and v.shape == (2, 2)
    assert as_vectors(np.arange(2.0), 2, "queries").shape == (1, 2)
    with pytest.raises(InvalidArgument, match="queries: wrong dimension"):
        as_vectors(np.ones((1, 3)), 2, "queries")
    assert as_ids(np.array([3, 1], np.uint8), 2).dtype == np.int64
    assert as_ids([], 0).shape == (0,)
    assert check_k(np.int32(4)) == 4 and check_dim(np.int64(3)) == 3
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(normalize_rows(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    rng = np.random.default_rng(0)
    y = normalize_rows(rng.standard_normal((20, 5)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)
