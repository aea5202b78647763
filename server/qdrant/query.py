"""Searches in Qdrant's dialect: a ``QueryRequest`` (or a legacy search or recommend body)
as ``Collection.search`` calls, and their hits as Qdrant's ``ScoredPoint``s.

What Qdrant does that the engine leaves to its caller lives here: ``offset`` (search
``offset + limit``, drop the first), examples given as point ids (their stored vectors, the
points themselves left out of the answer), ``recommend`` (average_vector, best_score,
sum_scores), ``discover`` and ``context`` searches, ``order_by`` and ``sample`` queries,
``prefetch`` with fusion (RRF, DBSF) or re-scoring (ordering, sampling) of the prefetched
points, Euclid scores (Qdrant answers the distance, the engine its square) and
``with_vector`` naming fields.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ...engine.collection import Collection
from ...engine.errors import InvalidArgument, NotFound
from ...engine.filters import normalize_id
from ...engine.mmr import mmr_order
from ...engine.params import SearchParams
from ...engine.points import Point
from ...engine.tokens import is_one_query
from . import schemas as q
from .formula import compile_formula, rescore
from .recommend import context_scores, discovery_scores, example_scores

RRF_K = 60
"""RRF's rank constant when the query does not give one: score = sum of 1 / (k + rank)."""


def engine_params(p: q.QueryParams | None, limit: int) -> SearchParams | None:
    """Qdrant's ``hnsw_ef`` / ``exact`` / ``quantization`` and Quiver's knobs as one
    ``SearchParams``: ``rescore`` (or ``ignore``) re-ranks on the originals, ``oversampling``
    widens the beam to ``limit * oversampling``."""
    if p is None:
        return None
    if p.ef is not None and p.hnsw_ef is not None and p.ef != p.hnsw_ef:
        raise InvalidArgument(f"params: hnsw_ef ({p.hnsw_ef}) and ef ({p.ef}) disagree; give one")
    ef = p.ef if p.ef is not None else p.hnsw_ef
    rerank = p.rerank
    quant = p.quantization
    if quant is not None:
        if quant.ignore:
            rerank = True
        elif quant.rescore is not None:
            rerank = quant.rescore
        if quant.oversampling is not None:
            ef = max(ef or 64, math.ceil(limit * quant.oversampling))
    return SearchParams(ef=ef, nprobe=p.nprobe, rerank=rerank, exact=bool(p.exact),
                        candidates=p.candidates)


def select_vector(vector: Any, names: list[str] | None) -> Any:
    """``with_vector`` as a list of field names: only those fields of a named vector."""
    if names is None or not isinstance(vector, dict):
        return vector
    return {n: v for n, v in vector.items() if n in names}


def check_vector_names(col: Collection, with_vector: Any) -> None:
    """``with_vector`` as a list names vector fields of ``col`` (InvalidArgument otherwise:
    a misspelt name would quietly return no vector)."""
    if not isinstance(with_vector, list):
        return
    named = [n for n in col.fields if n]
    for n in with_vector:
        if n not in named:
            raise InvalidArgument(
                f"with_vector: no vector field {n!r}; named fields: "
                f"{', '.join(map(repr, named))}" if named else
                f"with_vector: {n!r}: this collection has one unnamed vector; pass true or false")


def select_vectors(points: list[Point], with_vector: bool | list[str]) -> list[Point]:
    """``points`` (read with their vectors when ``with_vector`` is a list of field names)
    keeping only those fields."""
    if isinstance(with_vector, list):
        for p in points:
            p.vector = select_vector(p.vector, with_vector)
    return points


def both(*filters: dict | None) -> dict | None:
    """Filters that must all hold (None: no filter)."""
    given = [f for f in filters if f]
    return None if not given else given[0] if len(given) == 1 else {"must": given}


@dataclass
class Query:
    """One search, ready for ``Collection.search(vector, **args)``, and how to answer it.
    ``fused``: for a query over ``prefetch`` searches, its hits computed already (then
    ``vector`` is None and ``search`` is not called)."""

    vector: Any
    args: dict[str, Any]
    limit: int
    offset: int = 0
    euclid: bool = False
    vector_names: list[str] | None = None
    fused: list[Point] | None = field(default=None, repr=False)
    ordered: bool = False
    """An ``order_by`` query: each hit's score is its order value, answered as Qdrant does
    (score 0, the value in ``order_value``)."""

    def answer(self, hits: list[Point]) -> list[dict[str, Any]]:
        """The hits as Qdrant's ``ScoredPoint``s (Quiver keeps no per-point version: 0)."""
        hits = hits[self.offset : self.offset + self.limit]
        out = [{"id": h.id, "version": 0,
                "score": 0.0 if self.ordered else
                math.sqrt(max(h.score, 0.0)) if self.euclid else h.score,
                "payload": h.payload, "vector": select_vector(h.vector, self.vector_names)}
               for h in hits]
        if self.ordered:
            for o, h in zip(out, hits, strict=True):
                o["order_value"] = h.score
        return out


def run(col: Collection, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """The answers to planned queries: the plain ones as grouped batched searches
    (``search_grouped``: one search for the entries that differ by vector only)."""
    plain = [i for i, x in enumerate(queries) if x.fused is None]
    hits, _ = search_grouped(col, [queries[i] for i in plain], [False] * len(plain))
    found = [x.fused for x in queries]
    for i, h in zip(plain, hits, strict=True):
        found[i] = h
    return [x.answer(h) for x, h in zip(queries, found, strict=True)]


class Planner:
    """Turns Qdrant queries on one collection into ``Query``s; runs in the worker pool (ids
    given as examples are read from the collection). ``check_k(k, field)`` applies the
    server's limit on result counts."""

    def __init__(self, col: Collection, check_k,
                 collection: Callable[[str], Collection] | None = None) -> None:
        self.col, self.check_k = col, check_k
        self.collection = collection
        """Opens another collection by name (a query's ``lookup_from``)."""

    def query(self, req: q.QueryRequest) -> Query:
        self.check_k(req.limit + req.offset, "limit + offset")
        p = req.params
        if p is not None and (p.ef or p.hnsw_ef) is not None:
            self.check_k(p.ef or p.hnsw_ef, "params.hnsw_ef")
        fusion = _own_scores(req.query)
        # a fusion's scores (a discovery's, an order's...) are its own; else the field decides
        is_l2 = not fusion and self.col.vector_field(req.using).metric == "l2"
        threshold = req.score_threshold
        if is_l2 and threshold is not None:  # a distance bound: the engine compares squares
            threshold = math.copysign(threshold * threshold, threshold)
        check_vector_names(self.col, req.with_vector)
        names = req.with_vector if isinstance(req.with_vector, list) else None
        k = req.limit + req.offset
        if req.prefetch is not None or fusion:
            hits = self._node(req, None, k, threshold, req.with_payload, bool(req.with_vector))
            return Query(None, {}, req.limit, req.offset, is_l2, names, hits,
                         ordered=isinstance(req.query, q.OrderByQuery))
        if req.query is None:
            raise InvalidArgument("query: required (a vector, a point id, {\"nearest\": ...}, "
                                  "{\"recommend\": ...} or a fusion of prefetch searches)")
        if isinstance(req.query, q.NearestQuery) and req.query.mmr is not None:
            return Query(None, {}, req.limit, req.offset, is_l2, names,
                         self._mmr(req, k, threshold))
        if _scored_recommend(req.query):  # its scores are its own, not distances
            return Query(None, {}, req.limit, req.offset, False, names,
                         self._recommend_scored(req, k, req.score_threshold))
        vector, exclude = self._vector(req.query, req.using, req.lookup_from)
        args = {"k": k, "filter": both(req.filter, exclude),
                "params": engine_params(req.params, k), "with_payload": req.with_payload,
                "with_vectors": bool(req.with_vector), "score_threshold": threshold,
                "using": req.using}
        return Query(vector, args, req.limit, req.offset, is_l2, names)

    def legacy(self, req: Any, using: str | None, vector: list[float]) -> Query:
        """A legacy search body (``vector`` already taken apart): Euclid distances stay
        squared there, as Quiver's own clients expect."""
        found = self.query(q.QueryRequest.model_construct(  # validated already, as a search
            query=vector, using=using, filter=req.filter, params=req.params,
            score_threshold=req.score_threshold, limit=req.limit, offset=req.offset,
            with_vector=req.with_vector, with_payload=req.with_payload, prefetch=None))
        if found.euclid and req.score_threshold is not None:
            found.args["score_threshold"] = req.score_threshold
        found.euclid = False
        return found

    # --- the parts of a query --------------------------------------------------------------

    def _node(self, node: q.Prefetch, outer: dict | None, k: int, threshold: float | None,
              with_payload: Any = False, with_vectors: bool = False) -> list[Point]:
        """The hits of a query with ``prefetch`` (or of one prefetch), best first, under the
        enclosing queries' filters ``outer``."""
        flt = both(outer, node.filter)
        subs = node.prefetch if isinstance(node.prefetch, list) else (
            [node.prefetch] if node.prefetch is not None else [])
        if isinstance(node.query, (q.FusionQuery, q.RrfQuery, q.FormulaQuery)):
            if not subs:
                raise InvalidArgument("query: a fusion or formula needs prefetch searches "
                                      "to fuse or re-score")
            formula = compile_formula(node.query.formula, len(subs)) if isinstance(
                node.query, q.FormulaQuery) else None  # its errors before any search
            lists = [self._sub(p, flt) for p in subs]
            if formula is not None:
                ids = list(dict.fromkeys(h.id for hits in lists for h in hits))
                payloads = {p.id: p.payload for p in self.col.get(ids, with_payload=True)}
                ranked = rescore(formula, lists, payloads, node.query.defaults or {})
            else:
                ranked = self._fuse(node.query, lists, subs)
            fused = [h for h in ranked if threshold is None or h.score >= threshold][:k]
            return self._fill(fused, with_payload, with_vectors)
        if node.query is None:
            raise InvalidArgument("query: required with prefetch (a vector to re-score the "
                                  "prefetched points with, or a fusion)")
        if isinstance(node.query, q.NearestQuery) and node.query.mmr is not None:
            raise InvalidArgument("query.mmr: supported on a query without prefetch only")
        if subs:  # re-score (or order, sample) what the prefetches found
            ids = list(dict.fromkeys(h.id for p in subs for h in self._sub(p, flt)))
            if not ids:
                return []
            flt = both(flt, {"must": [{"has_id": ids}]})
        if isinstance(node.query, q.SELF_SCORED):
            return self._fill(self._self_scored(node, flt, k, threshold), with_payload,
                              with_vectors)
        vector, exclude = self._vector(node.query, node.using, node.lookup_from)
        return self.col.search(vector, k=k, filter=both(flt, exclude),
                               params=engine_params(node.params, k), using=node.using,
                               score_threshold=threshold, with_payload=with_payload,
                               with_vectors=with_vectors)

    def _mmr(self, req: q.QueryRequest, k: int, threshold: float | None) -> list[Point]:
        """The top ``k`` by maximal marginal relevance (engine/mmr.py) among the
        ``candidates_limit`` nearest; scores stay the similarity to the query, and
        ``score_threshold`` bounds the candidates (as Qdrant does both)."""
        mmr = req.query.mmr
        f = self.col.vector_field(req.using)
        if f.kind == "multi":
            raise InvalidArgument("query.mmr: not for multi-vector fields")
        n = max(mmr.candidates_limit or k, k)
        self.check_k(n, "query.mmr.candidates_limit")
        vector, exclude = self._vector(req.query, req.using, req.lookup_from)
        found = self.col.search(vector, k=n, filter=both(req.filter, exclude),
                                params=engine_params(req.params, n), using=req.using,
                                score_threshold=threshold, with_payload=req.with_payload,
                                with_vectors=True)
        if not found:
            return []
        name = req.using or ""
        pool = np.asarray([h.vector[name] if isinstance(h.vector, dict) else h.vector
                           for h in found], np.float32)
        diversity = 0.5 if mmr.diversity is None else mmr.diversity
        picks = [found[j] for j in mmr_order(np.asarray(vector, np.float32), pool, k,
                                             diversity, f.metric)]
        if not req.with_vector:
            for h in picks:
                h.vector = None
        return picks

    def _sub(self, p: q.Prefetch, outer: dict | None) -> list[Point]:
        self.check_k(p.limit, "prefetch.limit")
        thr = p.score_threshold
        if thr is not None and not _own_scores(p.query) and \
                self.col.vector_field(p.using).metric == "l2":
            thr = math.copysign(thr * thr, thr)
        return self._node(p, outer, p.limit, thr)

    def _fuse(self, how: q.FusionQuery | q.RrfQuery, lists: list[list[Point]],
              subs: list[q.Prefetch]) -> list[Point]:
        """One ranking from several: RRF (sum of w / (k + rank), rank from 1) or DBSF (each
        list's scores mapped to [0, 1] by its mean +- 3 standard deviations, then summed)."""
        score: dict[Any, float] = {}
        if isinstance(how, q.RrfQuery) or how.fusion == "rrf":
            rrf = how.rrf if isinstance(how, q.RrfQuery) else q.Rrf()
            k = rrf.k or RRF_K
            weights = rrf.weights or [1.0] * len(lists)
            if len(weights) != len(lists):
                raise InvalidArgument(f"query.rrf.weights: {len(weights)} weights for "
                                      f"{len(lists)} prefetch searches")
            for w, hits in zip(weights, lists, strict=True):
                for rank, h in enumerate(hits, 1):
                    score[h.id] = score.get(h.id, 0.0) + w / (k + rank)
        else:
            for p, hits in zip(subs, lists, strict=True):
                if not hits:
                    continue
                s = np.array([h.score for h in hits], np.float64)
                if not _own_scores(p.query) and self.col.vector_field(p.using).metric == "l2":
                    s = -s  # closer is better: higher, like the other metrics
                lo, hi = s.mean() - 3 * s.std(), s.mean() + 3 * s.std()
                norm = np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else np.full_like(s, 0.5)
                for h, v in zip(hits, norm.tolist(), strict=True):
                    score[h.id] = score.get(h.id, 0.0) + v
        order = sorted(score.items(), key=lambda kv: -kv[1])
        return [Point(i, s) for i, s in order]

    def _fill(self, hits: list[Point], with_payload: Any, with_vectors: bool) -> list[Point]:
        """Payloads and vectors of fused hits (read once, for the final ones only)."""
        if not hits or (not with_payload and not with_vectors):
            return hits
        stored = {p.id: p for p in self.col.get([h.id for h in hits], with_payload, with_vectors)}
        return [Point(h.id, h.score, stored[h.id].payload, stored[h.id].vector)
                for h in hits if h.id in stored]

    def _vector(self, query: Any, using: str | None, lookup: q.LookupFrom | None = None
                ) -> tuple[Any, dict | None]:
        """The vector a query searches with, and a filter leaving out the points given as
        examples (by id; read from ``lookup``'s collection when given, and then not left out);
        a vector is passed on as it is (the engine checks it)."""
        if isinstance(query, q.NearestQuery):
            query = query.nearest
        if isinstance(query, q.RecommendQuery):
            return self._recommend(query.recommend, using, lookup)
        if isinstance(query, (q.FusionQuery, q.RrfQuery, q.FormulaQuery)):
            raise InvalidArgument("query: a fusion or formula goes with prefetch searches")
        if isinstance(query, q.SELF_SCORED):
            raise InvalidArgument(f"query: {next(iter(type(query).model_fields))} does not search "
                                  f"around one vector; not here")
        if isinstance(query, list):
            if not self.col.is_single_query(query, using):
                kind = self.col.vector_field(using).kind
                raise InvalidArgument(
                    "query: expected one matrix of token vectors for this multivector field"
                    if kind == "multi" else
                    f"query: expected one vector (a list of numbers) for vector field "
                    f"{using or ''!r}, got a nested list")
            return query, None
        pid = normalize_id(query, "query")
        return (self._stored([pid], using, "query", lookup)[0],
                None if lookup else {"must_not": [{"has_id": [pid]}]})

    def _recommend(self, rec: q.RecommendInput, using: str | None,
                   lookup: q.LookupFrom | None = None) -> tuple[Any, dict | None]:
        """Qdrant's average-vector strategy: avg(positive) + (avg(positive) - avg(negative))."""
        if rec.strategy not in (None, "average_vector"):
            raise InvalidArgument(f"recommend.strategy: {rec.strategy} scores whole queries; "
                                  f"not inside prefetch (use average_vector there)")
        if not rec.positive:
            raise InvalidArgument("recommend.positive: give at least one example")
        pos, neg, exclude = self._examples(rec, using, lookup)
        vec = pos.mean(axis=0)
        if len(neg):
            vec = vec + (vec - neg.mean(axis=0))
        return vec.astype(np.float32).tolist(), exclude

    def _examples(self, rec: q.RecommendInput, using: str | None,
                  lookup: q.LookupFrom | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict | None]:
        """The positive and negative examples as float64 rows, prepared as stored vectors are
        (unit length for cosine), and a filter leaving out the examples given by id."""
        (pos, neg), exclude = self._example_rows(
            {"positive": rec.positive, "negative": rec.negative}, using, "recommend", lookup)
        return pos, neg, exclude

    def _example_rows(self, groups: dict[str, list], using: str | None, what: str,
                      lookup: q.LookupFrom | None = None
                      ) -> tuple[list[np.ndarray], dict | None]:
        """Each group of examples (vectors or point ids) as float64 rows, prepared as stored
        vectors are (unit length for cosine), and a filter leaving out the examples given by
        id; errors name ``what.group[i]``."""
        if self.col.vector_field(using).kind == "multi":
            raise InvalidArgument(
                "recommend: not for multi-vector fields (an average of token matrices is not "
                "one); query by a point id instead" if what == "recommend" else
                f"{what}: not for multi-vector fields (it compares one vector per example)")
        ids = [normalize_id(x, what) for g in groups.values() for x in g
               if not isinstance(x, list)]
        stored = dict(zip(ids, self._stored(ids, using, what, lookup), strict=True)) if ids else {}
        dim = self.col.vector_field(using).dim
        cosine = self.col.vector_field(using).metric == "cosine"

        def rows(examples: list, where: str) -> np.ndarray:
            out = []
            for i, x in enumerate(examples):
                if not isinstance(x, list):
                    out.append(stored[normalize_id(x)])
                    continue
                if len(x) != dim or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                            for v in x):  # (a token matrix is a list too)
                    raise InvalidArgument(f"{what}.{where}[{i}]: expected {dim} finite numbers")
                v = np.asarray(x, np.float64)
                out.append(v / (np.linalg.norm(v) or 1.0) if cosine else v)
            return np.asarray(out, np.float64).reshape(len(out), dim)

        return ([rows(g, where) for where, g in groups.items()],
                {"must_not": [{"has_id": ids}]} if ids and not lookup else None)

    def _self_scored(self, node: q.Prefetch, flt: dict | None, k: int,
                     threshold: float | None) -> list[Point]:
        """The best ``k`` of a query whose scores are its own (``q.SELF_SCORED``), under
        ``flt``: an order (each score its order value), a random sample (scores 0), or a
        discovery or context search."""
        query = node.query
        if isinstance(query, q.OrderByQuery):
            order = query.order_by
            order = order if isinstance(order, str) else order.model_dump(exclude_none=True)
            found, _ = self.col.scroll(flt, k, None, False, False, order)
            return [Point(p.id, p.score) for p in found]
        if isinstance(query, q.SampleQuery):
            return [Point(p.id, 0.0) for p in self.col.sample(k, flt, False, False)]
        if isinstance(query, q.DiscoverQuery):
            what, target, pairs = "discover", [query.discover.target], query.discover.context
        else:
            what, target, pairs = "context", [], query.context
        pairs = [] if pairs is None else pairs if isinstance(pairs, list) else [pairs]
        if what == "context" and not pairs:
            raise InvalidArgument("context: give at least one {positive, negative} pair")
        f = self.col.vector_field(node.using)
        (tgt, pos, neg), exclude = self._example_rows(
            {"target": target, "context.positive": [p.positive for p in pairs],
             "context.negative": [p.negative for p in pairs]}, node.using, what, node.lookup_from)
        # candidates: the nearest to the target and to each positive, and where the metric
        # makes one, to the direction the pairs point (inner products add up)
        probes = [*tgt, *pos]
        if f.metric != "l2" and len(pairs):
            probes.append(tgt.sum(axis=0) + pos.sum(axis=0) - neg.sum(axis=0))
        pts, x = self._candidates(probes, k, both(flt, exclude), node.params, node.using, what)
        scores = (discovery_scores(x, tgt, pos, neg, f.metric) if what == "discover" else
                  context_scores(x, pos, neg, f.metric))
        return _best(pts, scores, threshold, k)

    def _candidates(self, probes: list[np.ndarray], k: int, flt: dict | None,
                    params: q.QueryParams | None, using: str | None, what: str
                    ) -> tuple[list[Point], np.ndarray]:
        """The points nearest any probe (4 x ``k`` of each, at least 64) and their vectors as
        float64 rows, for a query that scores every candidate against its examples."""
        n = max(4 * k, 64)
        self.check_k(n, f"{what} candidates (4 x limit)")
        found = self.col.search(np.asarray(probes, np.float32), k=n, filter=flt,
                                params=engine_params(params, n), using=using)
        ids = list(dict.fromkeys(h.id for hits in found for h in hits))
        pts = self.col.get(ids, with_payload=False, with_vectors=True) if ids else []
        name = using or ""
        x = np.asarray([p.vector[name] if isinstance(p.vector, dict) else p.vector for p in pts],
                       np.float64).reshape(len(pts), self.col.vector_field(using).dim)
        return pts, x

    def _recommend_scored(self, req: q.QueryRequest, k: int, threshold: float | None
                          ) -> list[Point]:
        """Qdrant's ``best_score`` and ``sum_scores``: every candidate scored against every
        example (server/qdrant/recommend.py). Candidates: the nearest to each positive, and to
        the examples' linear combination where the metric makes it one."""
        rec = req.query.recommend
        if not rec.positive and not rec.negative:
            raise InvalidArgument("recommend: give at least one positive or negative example")
        f = self.col.vector_field(req.using)
        pos, neg, exclude = self._examples(rec, req.using, req.lookup_from)
        probes = list(pos)
        if f.metric != "l2":  # sum of inner products = inner product with the sum
            probes.append(pos.sum(axis=0) - neg.sum(axis=0))
        elif not len(pos):
            raise InvalidArgument("recommend: with Euclid distances, best_score and sum_scores "
                                  "need a positive example")
        pts, x = self._candidates(probes, k, both(req.filter, exclude), req.params, req.using,
                                  "recommend")
        scores = example_scores(x, pos, neg, f.metric, rec.strategy)
        return self._fill(_best(pts, scores, threshold, k), req.with_payload,
                          bool(req.with_vector))

    def _stored(self, ids: list, using: str | None, where: str,
                lookup: q.LookupFrom | None = None) -> list[list[float]]:
        """The stored vectors of points given by id, in the field searched (or in
        ``lookup``'s collection and field, which must have the searched field's dimension)."""
        col = self.col
        if lookup is not None:
            if self.collection is None:
                raise InvalidArgument("lookup_from: not served here")
            col = self.collection(lookup.collection)
            other = col.vector_field(lookup.vector)
            mine = self.col.vector_field(using)
            if other.kind != mine.kind or other.dim != mine.dim:
                raise InvalidArgument(
                    f"lookup_from: vector {lookup.vector or ''!r} of {lookup.collection!r} "
                    f"holds {other.dim}-d {other.kind} vectors, the field searched "
                    f"{mine.dim}-d {mine.kind} ones")
            using = lookup.vector
        found = {p.id: p.vector for p in col.get(ids, with_payload=False, with_vectors=True)}
        name = using or ""
        out = []
        for pid in ids:
            if pid not in found:
                raise NotFound(f"{where}: no point with id {pid!r}")
            vec = found[pid]
            if isinstance(vec, dict):
                if name not in vec:
                    col.vector_field(using)  # names the fields when `using` is wrong or missing
                    raise InvalidArgument(f"{where}: point {pid!r} has no vector {name!r}")
                vec = vec[name]
            out.append(vec)
        return out


def _best(points: list[Point], scores: np.ndarray, threshold: float | None, k: int
          ) -> list[Point]:
    """The ``k`` best-scoring points (stable among ties) at or above ``threshold``."""
    order = np.argsort(-scores, kind="stable")
    return [Point(points[j].id, float(scores[j])) for j in order.tolist()
            if threshold is None or scores[j] >= threshold][:k]


def _own_scores(query: Any) -> bool:
    """Whether a query's scores are its own (a fusion's, a discovery's, an order's...), not a
    distance in the field searched."""
    return isinstance(query, (q.FusionQuery, q.RrfQuery, q.FormulaQuery, *q.SELF_SCORED))


def _scored_recommend(query: Any) -> bool:
    return isinstance(query, q.RecommendQuery) and query.recommend.strategy in ("best_score",
                                                                                "sum_scores")


def search_groups(planner: Planner, req: q.QueryGroupsRequest, max_hits: int,
                  collection: Callable[[str], Collection], euclid: bool = True
                  ) -> dict[str, Any]:
    """``{"groups": [{"id": value, "hits": [ScoredPoint, ...]}, ...]}`` for a groups query
    (engine/groups.py), each with its ``lookup`` when asked (``collection`` opens the one
    named); ``euclid=False`` leaves Euclid distances squared (legacy search)."""
    if req.prefetch is not None or _own_scores(req.query) or (
            isinstance(req.query, q.NearestQuery) and req.query.mmr is not None) or \
            _scored_recommend(req.query):
        raise InvalidArgument("query: groups take a vector, a point id, nearest or recommend "
                              "(average_vector); not prefetch, fusion, mmr, best_score, "
                              "sum_scores, discover, context, order_by or sample")
    planner.check_k(req.limit * req.group_size, "limit * group_size")
    base = planner.query(q.QueryRequest.model_construct(
        query=req.query, using=req.using, filter=req.filter, params=req.params,
        score_threshold=req.score_threshold, limit=req.group_size, offset=0,
        with_vector=req.with_vector, with_payload=req.with_payload, prefetch=None,
        lookup_from=req.lookup_from))
    a = base.args
    thr = a["score_threshold"] if euclid or not base.euclid else req.score_threshold
    groups = planner.col.search_groups(
        base.vector, req.group_by, req.limit, req.group_size, filter=a["filter"],
        params=a["params"], with_payload=req.with_payload, with_vectors=bool(req.with_vector),
        score_threshold=thr, using=req.using, max_hits=max_hits)
    answer = Query(None, {}, req.group_size, 0, base.euclid and euclid, base.vector_names)
    out = [{"id": g.id, "hits": answer.answer(g.hits)} for g in groups]
    if req.with_lookup is not None:
        _look_up(req.with_lookup, out, collection)
    return {"groups": out}


def _look_up(spec: str | q.WithLookup, groups: list[dict], collection) -> None:
    """Each group's ``lookup``: the point whose id is the group's value (None if there is no
    such point, or the value is no point id)."""
    spec = q.WithLookup(collection=spec) if isinstance(spec, str) else spec
    other = collection(spec.collection)
    check_vector_names(other, spec.with_vectors)
    ids: dict[Any, Any] = {}
    for g in groups:
        with contextlib.suppress(InvalidArgument):  # a keyword that is no UUID: no lookup
            ids[g["id"]] = normalize_id(g["id"])
    found = {p.id: p for p in other.get(list(dict.fromkeys(ids.values())), spec.with_payload,
                                        bool(spec.with_vectors))}
    names = spec.with_vectors if isinstance(spec.with_vectors, list) else None
    for g in groups:
        p = found.get(ids.get(g["id"]))
        g["lookup"] = None if p is None else {"id": p.id, "payload": p.payload,
                                              "vector": select_vector(p.vector, names)}


def _check_one_matrix(vector: Any, i: int) -> None:
    """A multi-vector field's query is searched as a batch of one: it must be one token
    matrix (a flat vector would read as a one-token query and answer a flat hit list)."""
    try:
        one = is_one_query(vector)
    except InvalidArgument as exc:
        raise InvalidArgument(f"searches[{i}]: {exc}") from None
    if not one:
        raise InvalidArgument(f"searches[{i}]: vector: a multi-vector query is one token "
                              f"matrix (tokens x dim), not a list of them")


def search_grouped(col: Collection, queries: list[Query], explain: list[bool]
                   ) -> tuple[list[list[Point]], list]:
    """Hits (and, for entries with ``explain``, plans) for a batch, in order. Entries asking
    the same question of different vectors (same filter, limit and parameters: the common
    case) run as one batched search, which uses every core; the answers are the same as one
    search per entry, and an explained entry gets its group's plan (counts in it cover the
    whole group)."""
    args = [{**query.args, "explain": e} for query, e in zip(queries, explain, strict=True)]
    groups: dict[bytes, list[int]] = {}
    for i, (query, a) in enumerate(zip(queries, args, strict=True)):
        try:
            f = col.vector_field(a["using"])
        except InvalidArgument:  # the engine names the fields, for this entry alone
            f = None
        if f is not None and f.kind == "multi":
            _check_one_matrix(query.vector, i)
        try:  # a wrong length: let the engine word the error for this entry alone
            alone = f is None or f.kind == "multi" or len(query.vector) != f.dim
        except TypeError:
            alone = True
        if not alone:
            try:
                key = orjson.dumps(a, option=orjson.OPT_SORT_KEYS)
            except TypeError:  # say an integer past 64 bits: the engine words it, alone
                alone = True
        if alone:
            key = str(i).encode()
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(queries)
    plans: list = [None] * len(queries)

    def put(members: list[int], found: Any, a: dict) -> None:
        hits, plan = found if a["explain"] else (found, None)
        for i, h in zip(members, hits, strict=True):
            out[i], plans[i] = h, plan

    for members in groups.values():
        a = args[members[0]]
        if len(members) > 1:
            try:
                found = col.search([queries[i].vector for i in members], **a)
            except InvalidArgument:  # one bad entry: find it below and name it
                pass
            else:
                put(members, found, a)
                continue
        for i in members:
            try:
                found = col.search([queries[i].vector], **a)
            except InvalidArgument as exc:
                raise type(exc)(f"searches[{i}]: {exc}") from None
            put([i], found, a)
    return out, plans
