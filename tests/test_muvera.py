"""Multi-vector retrieval (index layer): exact Chamfer against NumPy, MUVERA FDE properties,
FDE candidates plus re-ranking, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import no_second_kernel_variants
from quiver.bench.datasets import find_data_file
from quiver.engine.bitset import Bitset
from quiver.engine.errors import InvalidArgument
from quiver.engine.muvera import FDEConfig, FDEEncoder, MultiVectorIndex, ragged
from quiver.engine.params import SearchParams
from quiver.engine.tokens import TokenMatrices

import quiver

DIM = 16


def token_sets(rng, n, lo=1, hi=9):
    out = []
    for _ in range(n):
        m = rng.standard_normal((int(rng.integers(lo, hi)), DIM)).astype(np.float32)
        out.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return out


def chamfer(q, d):
    return float((q.astype(np.float64) @ d.T.astype(np.float64)).max(axis=1).sum())


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(3)
    return token_sets(rng, 300), token_sets(rng, 12)


def test_exact_search_equals_the_numpy_chamfer_oracle(corpus):
    docs, queries = corpus
    idx = quiver.MultiVectorIndex(DIM, index="Flat", fde={"k_sim": 2, "d_proj": 8, "r_reps": 2},
                                  tokens="f32")
    idx.add(docs, ids=np.arange(1000, 1300))
    scores, ids = idx.search(queries, 5, exact=True)
    for q, s, i in zip(queries, scores, ids, strict=True):
        want = np.array([chamfer(q, d) for d in docs])
        order = np.argsort(-want, kind="stable")[:5]
        np.testing.assert_array_equal(i, order + 1000)
        np.testing.assert_allclose(s, want[order], rtol=1e-5, atol=1e-5)
    one_s, one_i = idx.search(queries[0], 5, exact=True)  # one (tokens, dim) matrix
    assert one_i.shape == (5,) and one_i.tolist() == ids[0].tolist()


def test_float16_tokens_score_like_their_rounded_values_in_half_the_memory(corpus):
    docs, queries = corpus
    cfg = {"k_sim": 2, "d_proj": 4, "r_reps": 1}
    half = MultiVectorIndex(DIM, index="Flat", fde=cfg)  # f16 is the default
    full = MultiVectorIndex(DIM, index="Flat", fde=cfg, tokens="f32")
    half.add(docs)
    full.add(docs)
    scores, ids = half.search(queries, 5, exact=True)
    rounded = [d.astype(np.float16).astype(np.float32) for d in docs]
    for q, s, i in zip(queries, scores, ids, strict=True):
        want = np.array([chamfer(q, d) for d in rounded])
        np.testing.assert_allclose(s, np.sort(want)[::-1][:5], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(want[i], s, rtol=1e-5, atol=1e-5)
    n_tokens = sum(d.shape[0] for d in docs)  # f16: 2 bytes a value plus the row's norm
    assert half.memory_usage()["tokens"] == n_tokens * (2 * DIM + 4)
    assert full.memory_usage()["tokens"] == n_tokens * 4 * DIM
    with pytest.raises(InvalidArgument, match="tokens: 'f8'"):
        MultiVectorIndex(DIM, tokens="f8")


def test_fde_candidates_then_rerank_find_the_exact_top_k(corpus):
    docs, queries = corpus
    idx = MultiVectorIndex(DIM, index="HNSW8", fde={"k_sim": 3, "d_proj": 8, "r_reps": 8})
    idx.add(docs)
    _, exact = idx.search(queries, 5, exact=True)
    _, all_cand = idx.search(queries, 5, candidates=len(docs))  # every document re-ranked
    np.testing.assert_array_equal(all_cand, exact)
    _, few = idx.search(queries, 5)  # the default: 8 k candidates
    hit = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(few, exact, strict=True)])
    assert hit >= 0.4  # 40 random documents of 300 would find 0.13


def test_fde_is_seeded_and_asymmetric():
    rng = np.random.default_rng(0)
    toks = np.repeat(token_sets(rng, 1, 1, 2)[0], 2, axis=0)  # one token, twice
    offsets = np.array([0, 2], np.int64)
    enc = FDEEncoder(DIM, FDEConfig(k_sim=2, d_proj=4, r_reps=3, seed=7))
    single = enc.documents(toks[:1], np.array([0, 1]))
    # a document block is the mean of its bucket: a repeated token changes nothing (to BLAS's
    # rounding: it projects one row and two rows by different kernels)
    np.testing.assert_allclose(enc.documents(toks, offsets), single, rtol=1e-6, atol=1e-7)
    # a query block is the sum: the repeated token counts twice, and empty buckets stay zero
    np.testing.assert_allclose(enc.queries(toks, offsets),
                               2 * enc.queries(toks[:1], np.array([0, 1])), rtol=1e-6, atol=1e-7)
    assert (enc.queries(toks, offsets) == 0).sum() > 0
    assert (single != 0).all()  # documents fill empty buckets
    again = FDEEncoder(DIM, FDEConfig(k_sim=2, d_proj=4, r_reps=3, seed=7))
    np.testing.assert_array_equal(again.documents(toks, offsets), enc.documents(toks, offsets))
    other = FDEEncoder(DIM, FDEConfig(k_sim=2, d_proj=4, r_reps=3, seed=8))
    assert not np.array_equal(other.documents(toks, offsets), enc.documents(toks, offsets))


@pytest.mark.slow
def test_fde_inner_product_tracks_chamfer_on_real_tokens():
    h5py = pytest.importorskip("h5py")
    path = find_data_file("wordnet-minilm-tokens-128.hdf5")
    if path is None:
        pytest.skip("shared token file not present")
    with h5py.File(path) as f:
        D = np.asarray(f["doc_vectors"][: 20_000], np.float32)
        doff = np.asarray(f["doc_offsets"][:501])
        Q = np.asarray(f["query_vectors"][:400], np.float32)
        qoff = np.asarray(f["query_offsets"][:21])
    enc = FDEEncoder(128, FDEConfig())
    est = enc.queries(Q, qoff) @ enc.documents(D, doff).T
    true = np.array([[chamfer(Q[qoff[i]:qoff[i + 1]], D[doff[j]:doff[j + 1]])
                      for j in range(500)] for i in range(20)])
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.55  # measured 0.64


def test_bad_input_names_the_item_and_writes_nothing(corpus):
    docs, _ = corpus
    idx = MultiVectorIndex(DIM, index="Flat", fde={"k_sim": 2, "d_proj": 4, "r_reps": 1})
    idx.add(docs[:3])
    bad_dim = [docs[0], np.zeros((2, DIM + 1), np.float32)]
    with pytest.raises(InvalidArgument, match=r"documents\[1\]: expected \(tokens, 16\)"):
        idx.add(bad_dim)
    with pytest.raises(InvalidArgument, match=r"documents\[0\]: 0 tokens"):
        idx.add([np.zeros((0, DIM), np.float32)])
    nan = docs[1].copy()
    nan[0, 0] = np.nan
    with pytest.raises(InvalidArgument, match=r"documents\[1\]: NaN"):
        idx.add([docs[0], nan])
    with pytest.raises(InvalidArgument, match=r"documents\[0\]: not a matrix"):
        idx.add([[[1.0, 2.0], [3.0]]])
    with pytest.raises(InvalidArgument, match="offsets must rise"):
        ragged((np.zeros((3, DIM)), np.array([0, 3, 2])), DIM, "documents")
    with pytest.raises(InvalidArgument, match=r"documents\[1\]: a token value beyond the float16"):
        idx.add([docs[0], docs[1] * 1e6])
    with pytest.raises(InvalidArgument, match="expected a list of token matrices"):
        idx.add(3)
    with pytest.raises(InvalidArgument, match="ids: expected integers"):
        idx.add(docs[3:4], ids=["a"])
    with pytest.raises(InvalidArgument, match="ids: must be new"):
        idx.add(docs[3:4], ids=[0])
    with pytest.raises(InvalidArgument, match="metric"):
        MultiVectorIndex(DIM, metric="l2")
    with pytest.raises(InvalidArgument, match=r"fde\.k_sim"):
        MultiVectorIndex(DIM, fde={"k_sim": 0})
    assert len(idx) == 3
    assert idx.search(docs[0], 2, exact=True)[1][0] == 0


def test_token_retrieval_votes_then_reranks(corpus, tmp_path):
    """Candidates from each query token's nearest document tokens: with enough hits every
    document that matters is voted in, so the re-ranked top-k is the exact one; saved and
    loaded it answers the same; a filter keeps to its documents."""
    docs, queries = corpus
    idx = quiver.MultiVectorIndex(DIM, index="HNSW16", retrieval="tokens", token_hits=64)
    idx.add(docs)
    _, want = idx.search(queries, 5, exact=True)
    scores, got = idx.search(queries, 5, candidates=60)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want, strict=True)]) >= 0.95
    assert idx.memory_usage()["token_docs"] == 8 * sum(len(d) for d in docs)
    idx.save(tmp_path / "mv")
    back = quiver.load_index(tmp_path / "mv")
    assert back.retrieval == "tokens" and back.token_hits == 64
    for a, b in zip(idx.search(queries, 5, candidates=60), back.search(queries, 5, candidates=60),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    from quiver.engine.bitset import Bitset
    from quiver.engine.params import SearchParams
    from quiver.engine.tokens import as_token_matrices

    allowed = np.arange(0, 300, 7)
    q = as_token_matrices(queries, DIM, "queries")
    _, pos, info = idx.search_positions(q, 5, Bitset.from_positions(allowed, 300),
                                        SearchParams(candidates=40), None, True)
    assert np.isin(pos[pos >= 0], allowed).all() and (pos >= 0).all()
    with pytest.raises(InvalidArgument, match="retrieval: 'bm25'"):
        quiver.MultiVectorIndex(DIM, retrieval="bm25")


def test_token_votes_equal_a_python_tally():
    """Each document's vote sums over query tokens its best hit's similarity, or a share of
    the token's worst hit where the token found none of its tokens; the best-voted documents
    come out, with the -1 padding of short hit rows skipped. Queries of 1 to 9 tokens of 40
    hits cross the prefetch distance and the table's growth."""
    from quiver.kernels.chamfer import VOTE_MISSING, token_votes

    rng = np.random.default_rng(11)
    ndocs = 500
    doc_of = np.sort(rng.integers(0, ndocs, 3000)).astype(np.int64)
    counts = rng.integers(1, 10, 6)
    qoff = np.r_[0, np.cumsum(counts)].astype(np.int64)
    hits = 40
    pos = rng.integers(0, doc_of.shape[0], (int(qoff[-1]), hits)).astype(np.int64)
    dist = -rng.random((int(qoff[-1]), hits)).astype(np.float32)
    for t in range(pos.shape[0]):  # some rows found fewer hits
        pos[t, hits - int(rng.integers(0, 30)):] = -1
    cand = np.empty((6, 25), np.int64)
    token_votes(doc_of, pos, dist, qoff, ndocs, cand)
    for q in range(6):
        best = []
        for t in range(qoff[q], qoff[q + 1]):
            found: dict[int, float] = {}
            for p, d in zip(pos[t], dist[t], strict=True):
                if p >= 0:
                    doc = int(doc_of[p])
                    found[doc] = max(found.get(doc, -np.inf), -float(d))
            missing = float(VOTE_MISSING) * -float(dist[t][pos[t] >= 0].max())
            best.append((found, missing))
        votes = {doc: sum(found.get(doc, missing) for found, missing in best)
                 for found, _ in best for doc in found}
        want = sorted(votes, key=lambda doc: -votes[doc])[:25]
        got = cand[q][cand[q] >= 0]
        assert set(got) == set(want)
        assert got.size == min(25, len(votes))


def test_token_pooling_merges_similar_tokens():
    """pool_factor 2 keeps ceil(n / 2) tokens a document; duplicated tokens merge into one,
    so a document of pairs scores exactly as before; unit tokens stay unit."""
    from quiver.engine.muvera import pool_tokens

    rng = np.random.default_rng(8)
    base = token_sets(rng, 20, 1, 6)
    paired = [np.repeat(d, 2, axis=0) for d in base]  # every token twice
    tokens = np.concatenate(paired)
    offsets = np.cumsum([0] + [len(d) for d in paired])
    out, out_off = pool_tokens(tokens, offsets, 2)
    assert np.array_equal(np.diff(out_off), [len(d) for d in base])
    for i, d in enumerate(base):
        got = out[out_off[i]:out_off[i + 1]]
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        q = base[(i + 1) % len(base)]
        assert abs(chamfer(q, got) - chamfer(q, d)) < 1e-4
    odd = token_sets(rng, 1, 7, 8)[0]  # 7 tokens -> 4
    _, off = pool_tokens(odd, np.array([0, 7]), 2)
    assert off.tolist() == [0, 4]
    idx = quiver.MultiVectorIndex(DIM, index="Flat", pool_factor=2,
                                  fde={"k_sim": 2, "d_proj": 8, "r_reps": 2})
    idx.add(paired)
    assert idx.memory_usage()["tokens"] == sum(len(d) for d in base) * (2 * DIM + 4)  # halved
    with pytest.raises(InvalidArgument, match="pool_factor: expected a positive integer"):
        quiver.MultiVectorIndex(DIM, pool_factor=0)


def _ward_pool(tokens: np.ndarray, keep: int) -> np.ndarray:
    """NumPy oracle: agglomerative Ward clustering (the merge adding the least within-cluster
    sum of squares first, ties to the first pair), cluster means normalised."""
    clusters = [[i] for i in range(len(tokens))]
    x = tokens.astype(np.float64)
    while len(clusters) > keep:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                na, nb = len(clusters[a]), len(clusters[b])
                gap = x[clusters[a]].mean(0) - x[clusters[b]].mean(0)
                cost = na * nb / (na + nb) * float(gap @ gap)
                if best is None or cost < best[0]:
                    best = (cost, a, b)
        _, a, b = best
        clusters[a] += clusters.pop(b)
    means = np.stack([x[c].mean(0) for c in clusters])
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def test_token_pooling_is_wards_linkage():
    """Each document's pooled tokens are the normalised means of Ward's clusters (the token
    pooling paper's linkage), for pool factors 2 and 3."""
    from quiver.engine.muvera import pool_tokens

    rng = np.random.default_rng(11)
    docs = token_sets(rng, 12, 2, 14)
    tokens = np.concatenate(docs)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    for factor in (2, 3):
        out, out_off = pool_tokens(tokens, offsets, factor)
        for i, d in enumerate(docs):
            want = _ward_pool(d, -(-len(d) // factor))
            got = out[out_off[i]:out_off[i + 1]]
            order = lambda m: m[np.lexsort(m.T[::-1])]  # noqa: E731 -- clusters in any order
            np.testing.assert_allclose(order(got), order(want), atol=1e-5)


def test_too_few_token_hits_fall_back_to_exact(corpus):
    """A one-token query fetching one token finds one document: the search notices it has
    fewer than k and scores that query exactly, so k results still come back."""
    docs, queries = corpus
    idx = quiver.MultiVectorIndex(DIM, index="HNSW16", retrieval="tokens", token_hits=1)
    idx.add(docs)
    q = [queries[0][:1], queries[1]]
    _, got = idx.search(q, 10, candidates=10)
    _, want = idx.search(q, 10, exact=True)
    assert (got >= 0).all()
    np.testing.assert_array_equal(got[0], want[0])


def test_lvq8_tokens_score_close_to_float_in_half_the_memory_of_f16(corpus, tmp_path):
    docs, queries = corpus
    fde = {"k_sim": 2, "d_proj": 8, "r_reps": 2}
    exact = quiver.MultiVectorIndex(DIM, index="Flat", fde=fde, tokens="f32")
    exact.add(docs)
    lvq = quiver.MultiVectorIndex(DIM, index="Flat", fde=fde, tokens="lvq8")
    lvq.add(docs)
    s_f, i_f = exact.search(queries, 5, exact=True)
    s_l, i_l = lvq.search(queries, 5, exact=True)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i_l, i_f, strict=True)]) >= 0.9
    np.testing.assert_allclose(s_l[:, 0], s_f[:, 0], atol=0.05)
    n_tok = sum(len(d) for d in docs)
    assert lvq.memory_usage()["tokens"] == n_tok * (DIM + 12)  # a byte a dim + bias, step, norm
    np.testing.assert_allclose(lvq.reconstruct([3]).doc(0), docs[3], atol=0.02)
    lvq.save(tmp_path / "lvq")
    back = quiver.load_index(tmp_path / "lvq")
    first = lvq.search(queries, 5, exact=True), lvq.search(queries, 5)
    with no_second_kernel_variants():
        again = back.search(queries, 5, exact=True), back.search(queries, 5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("codec", ["f32", "f16", "lvq8"])
def test_chamfer_kernel_tiles_match_numpy_on_every_length(codec):
    """The register tiles (two query tokens by four rows, remainders, 64-row blocks) score
    every shape as NumPy does on the stored (decoded) tokens, over all documents and over
    explicit candidate rows (the path that prefetches documents ahead)."""
    rng = np.random.default_rng(11)
    docs = [rng.standard_normal((n, 24)).astype(np.float32)
            for n in (1, 2, 3, 4, 5, 7, 63, 64, 65, 130, 9, 1)]
    idx = quiver.MultiVectorIndex(24, index=None, tokens=codec)
    idx.add(docs)
    stored = [idx.reconstruct([i]).doc(0).astype(np.float64) for i in range(len(docs))]
    for nq in (1, 2, 3, 5, 8):
        q = rng.standard_normal((nq, 24)).astype(np.float32)
        want = np.array([(q.astype(np.float64) @ d.T).max(axis=1).sum() for d in stored])
        scores, ids = idx.search(q, len(docs), exact=True)  # every document, in order
        assert sorted(ids.tolist()) == list(range(len(docs)))
        np.testing.assert_allclose(scores, want[ids], rtol=1e-4, atol=1e-3 * nq)
        assert (np.diff(scores) <= 1e-6).all()
        # explicit candidate rows (a filter): the look-ahead prefetch path, -1 padding
        allowed = np.array([0, 2, 6, 7, 8, 9, 10], np.int64)
        tm = TokenMatrices(q, np.array([0, nq], np.int64))
        dist, pos, _ = idx.search_positions(tm, 5, Bitset.from_positions(allowed, len(docs)),
                                            SearchParams(exact=True))
        assert np.isin(pos[0], allowed).all()
        np.testing.assert_allclose(-dist[0], want[pos[0]], rtol=1e-4, atol=1e-3 * nq)
        assert set(pos[0]) == set(allowed[np.argsort(-want[allowed], kind="stable")[:5]])


@pytest.mark.parametrize("retrieval", ["fde", "tokens"])
def test_candidates_from_a_fast_scan_are_gathered_unordered(corpus, retrieval, monkeypatch):
    """Over an IVF index the candidates are asked for unordered (they are re-scored): the
    same results as sorted candidates give; token retrieval with every token a hit and a
    third of the documents re-ranked finds the exact top 5."""
    docs, queries = corpus
    idx = quiver.MultiVectorIndex(DIM, index="IVF4,PQ8x4fs", retrieval=retrieval,
                                  token_hits=2000, fde={"k_sim": 2, "d_proj": 8, "r_reps": 2})
    idx.add(docs)
    seen = []
    inner = idx.fdes.search_positions

    def spy(*args, **kwargs):
        seen.append(kwargs.get("ordered"))
        return inner(*args, **kwargs)

    monkeypatch.setattr(idx.fdes, "search_positions", spy)
    got = idx.search(queries, 5, candidates=len(docs) // 3, nprobe=4)
    assert seen and all(o is False for o in seen)
    monkeypatch.setattr(MultiVectorIndex, "_any_order", lambda self: {})
    sorted_got = idx.search(queries, 5, candidates=len(docs) // 3, nprobe=4)
    assert seen[-1] is None  # this time sorted
    for a, b in zip(got, sorted_got, strict=True):
        np.testing.assert_array_equal(a, b)
    if retrieval == "tokens":
        np.testing.assert_array_equal(got[1], idx.search(queries, 5, exact=True)[1])
