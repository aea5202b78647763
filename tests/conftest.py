"""Shared fixtures: a NumPy brute-force oracle, data makers, a kernel-path spy, hypothesis setup."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from quiver.engine.index import flat as flat_module
from quiver.engine.validation import normalize_rows
from quiver.kernels import distance as kd
from quiver.kernels import scan as ks

settings.register_profile(
    "quiver",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("QUIVER_HYPOTHESIS_PROFILE", "quiver"))

METRICS = ("l2", "ip", "cosine")
DTYPES = ("f32", "f16")
BLAS_MIN = flat_module._BLAS_MIN_QUERIES
ROWS_SHARE = flat_module._ROWS_PATH_SHARE


# --- data --------------------------------------------------------------------------------


def make_data(rng: np.random.Generator, n: int, d: int, style: str = "gauss") -> np.ndarray:
    """float32 (n, d). 'gauss' has no ties; 'grid' (small integers) is full of ties, duplicate
    rows and zero vectors, which the score-based checks must tolerate."""
    if style == "gauss":
        return rng.standard_normal((n, d)).astype(np.float32)
    if style == "grid":
        return rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    raise ValueError(style)


# --- oracle ------------------------------------------------------------------------------


def stored(x, metric: str, dtype: str) -> np.ndarray:
    """What the index stores, as float64: normalised for cosine, rounded to half for f16."""
    v = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    if metric == "cosine":
        v = normalize_rows(v)
    if dtype == "f16":
        v = v.astype(np.float16)
    return v.astype(np.float64)


def prepared(q, metric: str) -> np.ndarray:
    v = np.asarray(q, np.float32).reshape(-1, np.shape(q)[-1])
    if metric == "cosine":
        v = normalize_rows(v)
    return v.astype(np.float64)


def oracle_scores(xs: np.ndarray, qs: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) user-facing scores in float64: squared l2, or inner product for ip/cosine."""
    if metric == "l2":
        return ((qs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
    return qs @ xs.T


def blobs(rng: np.random.Generator, n: int, d: int, centers: int = 16) -> np.ndarray:
    """Gaussian clusters: what k-means and IVF are for (and a fair recall test)."""
    c = rng.standard_normal((centers, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, d))).astype(np.float32)


def brute_ids(x: np.ndarray, q: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Brute-force top-k row ids in float64 (cosine on unit rows)."""
    x = np.asarray(x, np.float64)
    q = np.asarray(q, np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = oracle_scores(x, q, metric)
    return np.argsort(s if metric == "l2" else -s, axis=1, kind="stable")[:, :k]


def pad_score(metric: str) -> float:
    return np.inf if metric == "l2" else -np.inf


class Oracle:
    """Brute force over a dict id -> raw vector, mirroring what a FlatIndex should hold."""

    def __init__(self, dim: int, metric: str, dtype: str = "f32"):
        self.dim = dim
        self.metric = metric
        self.dtype = dtype
        self.vectors: dict[int, np.ndarray] = {}

    def add(self, x, ids) -> None:
        for i, v in zip(np.asarray(ids).tolist(), np.asarray(x, np.float32), strict=True):
            assert i not in self.vectors
            self.vectors[i] = v

    def remove(self, ids) -> None:
        for i in np.asarray(ids).tolist():
            self.vectors.pop(i, None)

    def arrays(self, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(self.vectors), np.int64)
        if allowed is not None:
            ids = ids[np.isin(ids, np.asarray(allowed, np.int64))]
        x = np.array([self.vectors[i] for i in ids.tolist()], np.float32).reshape(-1, self.dim)
        return x, ids

    def check(self, scores, ids, queries, k: int, allowed=None, exact_ids: bool = False) -> None:
        x, xid = self.arrays(allowed)
        check_topk(scores, ids, x, xid, queries, k, self.metric, self.dtype, exact_ids=exact_ids)


def check_topk(scores, ids, x, xid, queries, k, metric, dtype="f32", exact_ids=False) -> None:
    """Assert (scores, ids) is a correct top-k of ``queries`` over rows ``x`` with ids ``xid``.

    Ties are tolerated: every returned id must be a candidate whose oracle score matches the
    returned score, and the returned scores must match the oracle's k best scores."""
    single = np.ndim(queries) == 1
    scores = np.asarray(scores)
    ids = np.asarray(ids)
    assert scores.dtype == np.float32
    assert ids.dtype == np.int64
    if single:
        assert scores.shape == ids.shape == (k,)
        scores, ids = scores[None], ids[None]
    qs = prepared(queries, metric)
    assert scores.shape == ids.shape == (qs.shape[0], k)
    xs = stored(x, metric, dtype) if len(x) else np.zeros((0, qs.shape[1]))
    S = oracle_scores(xs, qs, metric)
    higher = metric != "l2"
    nfound = min(k, xs.shape[0])
    col = {int(i): j for j, i in enumerate(np.asarray(xid).tolist())}
    xn = (xs**2).sum(1).max() if xs.shape[0] else 0.0
    for r in range(qs.shape[0]):
        qn = (qs[r] ** 2).sum()
        tol = 1e-6 + (2e-5 * (qn + xn) if metric == "l2" else 2e-5 * np.sqrt(qn * xn))
        got_s, got_i = scores[r], ids[r]
        assert (got_i[:nfound] >= 0).all(), (got_i, nfound)
        assert (got_i[nfound:] == -1).all(), got_i
        assert (got_s[nfound:] == pad_score(metric)).all(), got_s
        assert len(set(got_i[:nfound].tolist())) == nfound, "duplicate ids in a result"
        diffs = np.diff(got_s[:nfound])
        assert (diffs <= 0).all() if higher else (diffs >= 0).all(), got_s
        best = np.sort(S[r])[::-1] if higher else np.sort(S[r])
        np.testing.assert_allclose(got_s[:nfound], best[:nfound], rtol=0, atol=tol)
        for s, i in zip(got_s[:nfound].tolist(), got_i[:nfound].tolist(), strict=True):
            assert i in col, f"id {i} is not a candidate"
            assert abs(S[r, col[i]] - s) <= tol, (i, S[r, col[i]], s)
        if exact_ids:
            order = np.argsort(-S[r] if higher else S[r], kind="stable")[:nfound]
            np.testing.assert_array_equal(got_i[:nfound], np.asarray(xid)[order])


def expected_path(n: int, n_allowed: int | None, nq: int) -> str:
    """Which FlatIndex scan a search should take."""
    if n_allowed is not None and n_allowed < ROWS_SHARE * n:
        return "rows"
    return "blas" if nq >= BLAS_MIN else "scan"


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def oracle_cls():
    return Oracle


_PATHS = {
    "scan_topk_any": "scan",
    "scan_topk_rows_any": "rows",
    "heaps_sorted": "blas",  # called once per BLAS search, even over zero rows
}


@pytest.fixture
def path_spy(monkeypatch) -> list[str]:
    """Records the FlatIndex kernel paths searches take ('scan', 'rows', 'blas'), in order."""
    calls: list[str] = []
    for name, label in _PATHS.items():
        module = ks if name.startswith("scan_") else kd
        orig = getattr(module, name)

        def wrapper(*args, _orig=orig, _label=label):
            calls.append(_label)
            return _orig(*args)

        monkeypatch.setattr(module, name, wrapper)
    return calls


def _dispatchers() -> list:
    found = []
    for o in gc.get_objects():
        with contextlib.suppress(ReferenceError):  # a dead weak proxy
            if isinstance(o, numba.core.registry.CPUDispatcher):
                found.append(o)
    return found


def _writable_form(sig) -> tuple[str, ...]:
    return tuple(str(t).replace("readonly ", "") for t in sig)


@contextlib.contextmanager
def no_second_kernel_variants() -> Iterator[None]:
    """The block compiles no kernel variant that differs from one compiled before it only in
    its arrays' writability: a reloaded (memory-mapped) index must run the machine code the
    built one ran (``engine.vectors.readonly``), or fastmath leaves it free to round
    differently, and every kernel would compile twice."""
    before = {d: set(d.signatures) for d in _dispatchers()}
    yield
    second = []
    for d in _dispatchers():
        old = before.get(d, set())
        forms = {_writable_form(s) for s in old}
        second += [f"{d.py_func.__module__}.{d.py_func.__name__}{[str(t) for t in s]}"
                   for s in set(d.signatures) - old if _writable_form(s) in forms]
    assert not second, "compiled again for other array writability:\n" + "\n".join(second)


def read_state(col) -> dict:
    """Everything a collection holds: id -> (payload, vector tuple), read page by page via
    scroll, checked against count()."""
    state: dict = {}
    cursor = None
    while True:
        page, cursor = col.scroll(limit=97, cursor=cursor, with_payload=True, with_vectors=True)
        for p in page:
            assert p.id not in state, f"scroll returned {p.id} twice"
            state[p.id] = (p.payload, tuple(p.vector))
        if cursor is None:
            break
    assert col.count() == len(state)
    return state


def lvq8_int8_distances(codec, q: np.ndarray, codes: np.ndarray, aux: np.ndarray,
                        metric: str) -> np.ndarray:
    """(nq, n) distances of LVQ-8 rows against int8 queries (a VNNI host's LVQ-8), as those
    kernels define them: the codes' dot product with q8 / s, every other term with q."""
    q8, inv = codec.int8_query(np.asarray(q, np.float32))
    qd = np.asarray(q, np.float64)
    seen = q8.astype(np.float64) * inv[:, None].astype(np.float64)
    ip = ((qd @ codec.mean.astype(np.float64))[:, None] + np.outer(qd.sum(1), aux[:, 0])
          + (seen @ codes.astype(np.float64).T) * aux[:, 1])
    return -ip if metric == "ip" else (qd**2).sum(1)[:, None] - 2 * ip + aux[:, 2]

