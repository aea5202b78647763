"""What each SDK call sends and how it reads the answer, written once for both clients.

Every operation is a generator: it yields ``Req`` objects (one HTTP request each), receives
the decoded JSON body of each answer, and returns the call's result. ``Client`` drives the
generators with a blocking httpx client, ``AsyncClient`` with an async one, so the two cannot
drift apart.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from ..engine.errors import AlreadyExists, InvalidArgument, NotFound, QuiverError
from ..engine.facets import check_facet
from ..engine.frame import encode_batch
from ..engine.groups import Group
from ..engine.hits import NPZ, SearchArrays
from ..engine.metric import Metric
from ..engine.ordering import parse_order_by
from ..engine.params import SearchParams
from ..engine.payload import canonical_payload, object_path
from ..engine.points import Point, field_rows, pack_fields, upsert_columns
from ..engine.projection import payload_paths, payload_projection
from ..engine.tokens import as_token_matrices, is_one_query
from ..engine.validation import check_k, check_threshold
from ..server.schemas import BINARY_POINTS, NPY

BINARY_MIN_POINTS = 64
"""Upserts of more points than this travel as the binary points frame instead of JSON."""


class AuthError(QuiverError, PermissionError):
    """The server refused the API key: missing or wrong (401), or read-only for a write (403)."""


class ServerUnavailable(QuiverError, ConnectionError):
    """The server could not be reached (after the retries allowed for the call)."""


@dataclass
class Req:
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    params: dict[str, Any] | None = None
    idempotent: bool = True
    """Safe to send again after a connection error (the server may have applied it)."""
    upload: Path | None = None
    """Stream this file as the body."""
    download: Path | None = None
    """Stream the answer into this file instead of decoding it."""
    text: bool = False
    """The answer is plain text (``/metrics``), returned as ``str``."""
    raw: bool = False
    """The answer is binary (``.npz``), returned as ``bytes``."""
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    """Seconds to wait for this answer, instead of the client's timeout."""

    def request_headers(self) -> dict[str, str]:
        h = dict(self.headers)
        if self.content_type:
            h["content-type"] = self.content_type
        return h


Op = Generator[Req, Any, Any]


# --- encoding ------------------------------------------------------------------------------


def _np_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, nonfinite: bool = False) -> bytes:
    """JSON bytes. orjson writes NaN/inf as null; with ``nonfinite`` the standard library
    writes the NaN / Infinity tokens instead so the server rejects them with its own message."""
    try:
        if not nonfinite:
            try:
                return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY |
                                    orjson.OPT_NON_STR_KEYS)
            except (orjson.JSONEncodeError, TypeError):
                pass
        return json.dumps(obj, allow_nan=True, default=_np_default).encode()
    except (TypeError, ValueError) as exc:  # what the server could not read either
        raise InvalidArgument(f"request: {exc}; send numbers, strings, lists, dicts or "
                              f"NumPy arrays") from None


def json_req(method: str, path: str, obj: Any, idempotent: bool = True,
             nonfinite: bool = False, **kw: Any) -> Req:
    return Req(method, path, dumps(obj, nonfinite), "application/json", idempotent=idempotent, **kw)


def as_float_array(x: Any) -> np.ndarray | None:
    """``x`` as a float32 array, or None when it is not a rectangular numeric array (the
    server then gets it as sent and reports what is wrong with it)."""
    if isinstance(x, (str, bytes, dict)):
        return None
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        return None
    return arr


def id_list(ids: Any) -> Any:
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (list, tuple)):
        return [i.item() if isinstance(i, np.generic) else i for i in ids]
    if isinstance(ids, (str, int, np.integer)):
        return ids.item() if isinstance(ids, np.generic) else ids
    try:
        return [i.item() if isinstance(i, np.generic) else i for i in ids]
    except TypeError:
        return ids


def seg(name: str) -> str:
    """One URL path segment."""
    return quote(str(name), safe="")


def points_from(items: Any) -> list[Point]:
    return [Point(p["id"], p.get("score"), p.get("payload"), p.get("vector")) for p in items]


# --- errors --------------------------------------------------------------------------------


def error_for(status: int, body: bytes, what: str) -> QuiverError:
    """The engine's exception for an HTTP error answer, carrying the server's message."""
    code = details = None
    try:
        err = orjson.loads(body)["error"]
        message, code, details = str(err["message"]), err.get("code"), err.get("details")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body.decode("utf-8", "replace").strip()[:1000] or f"HTTP {status}"
    if status == 404:
        exc: QuiverError = NotFound(message)
    elif status == 409:
        exc = AlreadyExists(message)
    elif status in (401, 403):
        exc = AuthError(message)
    elif 400 <= status < 500:
        exc = InvalidArgument(message)
    else:
        exc = QuiverError(f"{what}: server error {status}: {message}")
    exc.status_code = status  # type: ignore[attr-defined]
    exc.code = code  # type: ignore[attr-defined]
    exc.details = details  # type: ignore[attr-defined]
    return exc


# --- database operations ---------------------------------------------------------------------


def create_collection(name: str, dim: int | None, metric: str, index: str, ef_construction: int,
                      segment_size: int, fsync: str, exist_ok: bool,
                      vectors: dict | None = None, sharding: dict | None = None) -> Op:
    """``sharding``: shards / replicas / write_quorum (a server with ``--cluster``)."""
    body: dict[str, Any] = {"ef_construction": ef_construction, "segment_size": segment_size,
                            "fsync": fsync, **{k: v for k, v in (sharding or {}).items()
                                               if v is not None}}
    if vectors is not None:
        if dim is not None:
            raise InvalidArgument("pass dim (one unnamed vector) or vectors (named fields), not both")
        if not isinstance(vectors, dict):
            raise InvalidArgument("vectors: expected a non-empty dict of fields by name")
        body["vectors"] = {n: (dict(f.__dict__) if hasattr(f, "__dict__") else f)
                           for n, f in vectors.items()}
    else:
        body.update({"dim": dim, "metric": Metric.parse(metric).value, "index": index})
    try:
        return (yield json_req("PUT", f"/collections/{seg(name)}", body, idempotent=False))["result"]
    except AlreadyExists:
        if not exist_ok:
            raise
    return (yield Req("GET", f"/collections/{seg(name)}"))["result"]


def collection_info(name: str) -> Op:
    return (yield Req("GET", f"/collections/{seg(name)}"))["result"]


def flush(name: str, timeout: float) -> Op:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidArgument(f"timeout: expected a positive number of seconds, got {timeout!r}")
    res = (yield Req("POST", f"/collections/{seg(name)}/flush", params={"timeout": timeout},
                     timeout=timeout + 30))["result"]
    if res.get("status") != "flushed":  # 202: still indexing at the deadline, as embedded
        raise TimeoutError(res.get("message") or "flush: not done in time")


def train_queries(name: str, queries, using: str | None) -> Op:
    try:
        q = np.asarray(queries, np.float32)
    except (TypeError, ValueError):
        raise InvalidArgument("queries: expected an (n, dim) array of numbers") from None
    body = {"queries": q.tolist(), **({"using": using} if using is not None else {})}
    res = yield json_req("POST", f"/collections/{seg(name)}/train_queries", body)
    return res["result"]["kept"]


def list_collections() -> Op:
    return [c["name"] for c in (yield Req("GET", "/collections"))["result"]["collections"]]


def drop_collection(name: str) -> Op:
    yield Req("DELETE", f"/collections/{seg(name)}", idempotent=False)


def restore_snapshot(snapshot: str | Path, name: str) -> Op:
    path = Path(snapshot)
    if not path.is_file():
        raise InvalidArgument(f"snapshot: cannot read {snapshot} (no such file)")
    return (yield Req("POST", f"/collections/{seg(name)}/snapshots/upload",
                      content_type="application/x-tar", upload=path, idempotent=False))["result"]


# --- collection operations -------------------------------------------------------------------


def upsert(name: str, ids: Any, vectors: Any, payloads: Any, points: Any,
           batch_size: int | None, multi: dict[str, int] | None = None) -> Op:
    """``multi``: the collection's multi-vector fields and their token dimensions (their
    token matrices travel as token rows plus offsets in the binary frame)."""
    ids, vectors, payloads = upsert_columns(ids, vectors, payloads, points)
    ids = id_list_arg(ids)
    if payloads is not None:
        if not isinstance(payloads, (list, tuple)):
            raise InvalidArgument(f"payloads: expected a list with one payload per id, got "
                                  f"{type(payloads).__name__}")
        payloads = [canonical_payload(p, f"payloads[{i}]") for i, p in enumerate(payloads)]
    if isinstance(vectors, dict):  # named fields travel as one binary frame
        n = len(ids) if isinstance(ids, list) else 0
        fields = {}
        for fname, value in vectors.items():
            x, rows = field_rows(value, n, f"vectors[{fname!r}]")
            if multi and fname in multi:
                fields[fname] = (as_token_matrices(x, multi[fname], f"vectors[{fname!r}]"), rows)
                continue
            arr = as_float_array(x)
            if arr is None or arr.ndim != 2:
                raise InvalidArgument(f"vectors[{fname!r}]: expected a matrix of equal-length rows")
            fields[fname] = (np.ascontiguousarray(arr), rows)
        req = Req("PUT", f"/collections/{seg(name)}/points",
                  encode_batch(ids, pack_fields(fields), payloads), BINARY_POINTS)
        return (yield req)["result"]["operation_id"]
    vecs = as_float_array(vectors)
    n = len(ids) if isinstance(ids, list) else 0
    if batch_size and n > batch_size and vecs is not None and vecs.ndim == 2 and len(vecs) == n \
            and (payloads is None or len(payloads) == n):
        seq = None
        for s in range(0, n, batch_size):
            seq = yield _upsert_req(name, ids[s:s + batch_size], vecs[s:s + batch_size],
                                    None if payloads is None else payloads[s:s + batch_size],
                                    vectors)
            seq = seq["result"]["operation_id"]
        return seq
    return (yield _upsert_req(name, ids, vecs, payloads, vectors))["result"]["operation_id"]


def _upsert_req(name: str, ids: Any, vecs: np.ndarray | None, payloads: list | None,
                raw_vectors: Any) -> Req:
    path = f"/collections/{seg(name)}/points"
    n = len(ids) if isinstance(ids, list) else -1
    regular = (vecs is not None and vecs.ndim == 2 and len(vecs) == n
               and (payloads is None or len(payloads) == n))
    if vecs is not None and vecs.size and (not regular or n > BINARY_MIN_POINTS
                                           or not np.isfinite(vecs).all()):
        # binary frame: compact, and passes odd shapes and NaN through for the engine to judge
        try:
            return Req("PUT", path, encode_batch(ids, np.ascontiguousarray(vecs), payloads),
                       BINARY_POINTS)
        except InvalidArgument:
            pass  # ids the frame cannot carry: let the server's validation report them
    if regular:
        assert vecs is not None
        rows = vecs.tolist()
        pts = [{"id": i, "vector": v} if payloads is None else
               {"id": i, "vector": v, "payload": payloads[j]}
               for j, (i, v) in enumerate(zip(ids, rows, strict=True))]
    elif isinstance(ids, list) and isinstance(raw_vectors, (list, tuple)) \
            and len(raw_vectors) == n and (payloads is None or len(payloads) == n):
        pts = [{"id": i, "vector": v, "payload": None if payloads is None else payloads[j]}
               for j, (i, v) in enumerate(zip(ids, raw_vectors, strict=True))]
    else:
        raise InvalidArgument(f"vectors: expected one vector per id ({n} ids)")
    return json_req("PUT", path, {"points": pts})


def id_list_arg(ids: Any) -> Any:
    """``ids`` for a request body; a single id is an error, as in the embedded API."""
    if isinstance(ids, (str, int, np.integer)):
        raise InvalidArgument("ids: expected a list of ids, got a single value")
    out = id_list(ids)
    if not isinstance(out, list):
        raise InvalidArgument(f"ids: expected a list of ids, got {type(ids).__name__}")
    return out


def get(name: str, ids: Any, with_payload: Any, with_vectors: bool) -> Op:
    payload_projection(with_payload)  # the embedded API's message for a bad selector
    body = {"ids": id_list_arg(ids), "with_payload": with_payload, "with_vector": with_vectors}
    return points_from((yield json_req("POST", f"/collections/{seg(name)}/points", body))["result"])


def delete(name: str, ids: Any, filter: Any) -> Op:
    if (ids is None) == (filter is None):
        raise InvalidArgument("delete: pass exactly one of ids or filter")
    body = {"points": id_list_arg(ids)} if ids is not None else {"filter": filter}
    res = yield json_req("POST", f"/collections/{seg(name)}/points/delete", body, idempotent=False)
    return res["result"]["deleted"]


def update_payload(name: str, method: str, ids: Any, filter: Any, payload: Any = None,
                   keys: Any = None, key: str | None = None) -> Op:
    """set (into the object at ``key``) / overwrite / delete (keys) / clear, by ids or
    filter; checked as the embedded API checks them, so errors read the same."""
    body: dict[str, Any] = {}
    if method in ("set", "overwrite"):
        body["payload"] = canonical_payload(payload, "payload")
    if key is not None:
        object_path(key)
        body["key"] = key
    if method == "delete":
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise InvalidArgument(f"keys: expected a list of payload keys, got {keys!r:.60}")
        payload_paths(keys, "keys")
        body["keys"] = list(keys)
    if (ids is None) == (filter is None):
        raise InvalidArgument("pass exactly one of ids or filter")
    body.update({"points": id_list_arg(ids)} if ids is not None else {"filter": filter})
    verb, path = {"set": ("POST", "payload"), "overwrite": ("PUT", "payload"),
                  "delete": ("POST", "payload/delete"), "clear": ("POST", "payload/clear")}[method]
    res = yield json_req(verb, f"/collections/{seg(name)}/points/{path}", body)
    return res["result"]["updated"]


def _rows_arg(value: Any, what: str) -> list:
    """One entry a point: a matrix's rows or a list (InvalidArgument naming ``what``)."""
    if isinstance(value, list) or (isinstance(value, np.ndarray) and value.ndim):
        return list(value)
    raise InvalidArgument(f"{what}: expected a matrix or a list with one entry per id, got "
                          f"{type(value).__name__}")


def _vector_list(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray) else v


def update_vectors(name: str, ids: Any, vectors: Any) -> Op:
    """``vectors`` as ``Collection.update_vectors`` takes them (a matrix, or a dict by field
    of matrices or lists with None where a point keeps that field), sent per point."""
    ids = id_list_arg(ids)
    if isinstance(vectors, dict):
        cols = {n: _rows_arg(v, f"vectors[{n!r}]") for n, v in vectors.items()}
        for n, col in cols.items():
            if len(col) != len(ids):
                raise InvalidArgument(f"vectors[{n!r}]: got {len(col)} entries for {len(ids)} ids")
        points = [{"id": x, "vector": {n: _vector_list(col[j]) for n, col in cols.items()
                                       if col[j] is not None}} for j, x in enumerate(ids)]
    else:
        rows = _rows_arg(vectors, "vectors")
        if len(rows) != len(ids):
            raise InvalidArgument(f"vectors: got {len(rows)} vectors for {len(ids)} ids")
        points = [{"id": x, "vector": _vector_list(v)} for x, v in zip(ids, rows, strict=True)]
    res = yield json_req("PUT", f"/collections/{seg(name)}/points/vectors", {"points": points})
    return res["result"]["updated"]


def delete_vectors(name: str, names: Any, ids: Any, filter: Any) -> Op:
    if (ids is None) == (filter is None):
        raise InvalidArgument("pass exactly one of ids or filter")
    body: dict[str, Any] = {"vector": names}
    body.update({"points": id_list_arg(ids)} if ids is not None else {"filter": filter})
    res = yield json_req("POST", f"/collections/{seg(name)}/points/vectors/delete", body)
    return res["result"]["updated"]


def aliases() -> Op:
    res = yield Req("GET", "/aliases")
    return {a["alias_name"]: a["collection_name"] for a in res["result"]["aliases"]}


_ALIAS_ACTIONS = {"create": ("create_alias", "alias_name", "collection_name"),
                  "delete": ("delete_alias", "alias_name"),
                  "rename": ("rename_alias", "old_alias_name", "new_alias_name")}


def update_aliases(actions: Any) -> Op:
    """``Database.update_aliases``'s tuples as Qdrant's alias actions."""
    body = []
    for i, action in enumerate(actions):
        shape = _ALIAS_ACTIONS.get(action[0]) if isinstance(action, (tuple, list)) and action else None
        if shape is None or len(action) != len(shape):
            raise InvalidArgument(f"actions[{i}]: expected ('create', alias, collection), "
                                  f"('delete', alias) or ('rename', old, new)")
        body.append({shape[0]: dict(zip(shape[1:], action[1:], strict=True))})
    yield json_req("POST", "/collections/aliases", {"actions": body}, idempotent=False)


def count(name: str, filter: Any) -> Op:
    res = yield json_req("POST", f"/collections/{seg(name)}/points/count", {"filter": filter})
    return res["result"]["count"]


def scroll(name: str, filter: Any, limit: int, cursor: Any, with_payload: Any,
           with_vectors: bool, order_by: Any = None) -> Op:
    body = {"filter": filter, "limit": check_k(limit), "offset": id_list(cursor),
            "with_payload": with_payload, "with_vector": with_vectors}
    payload_projection(with_payload)
    if order_by is not None:
        parse_order_by(order_by)
        if cursor is not None:  # as the embedded scroll says it
            raise InvalidArgument("cursor: a scroll with order_by continues from "
                                  "order_by.start_from (the last value seen), not a cursor")
        body["order_by"] = order_by
    res = (yield json_req("POST", f"/collections/{seg(name)}/points/scroll", body))["result"]
    points = res["points"]
    if order_by is not None:  # the order value is the embedded scroll's score
        points = [{**p, "score": p.get("order_value")} for p in points]
    return points_from(points), res["next_page_offset"]


def facet(name: str, key: str, filter: Any, limit: int) -> Op:
    check_facet(key, limit)
    res = yield json_req("POST", f"/collections/{seg(name)}/facet",
                         {"key": key, "filter": filter, "limit": limit})
    return [(h["value"], h["count"]) for h in res["result"]["hits"]]


def sample(name: str, k: int, filter: Any, with_payload: Any, with_vectors: bool) -> Op:
    payload_projection(with_payload)
    body = {"query": {"sample": "random"}, "limit": check_k(k), "filter": filter,
            "with_payload": with_payload, "with_vector": with_vectors}
    res = yield json_req("POST", f"/collections/{seg(name)}/points/query", body)
    return [Point(p["id"], None, p.get("payload"), p.get("vector"))  # as the embedded get
            for p in res["result"]["points"]]


def _int(x: Any) -> Any:
    return int(x) if isinstance(x, np.integer) else x


def search(name: str, vector: Any, k: int, filter: Any, params: Any, with_payload: Any,
           with_vectors: bool, explain: bool, score_threshold: float | None = None,
           using: str | None = None, multi: bool = False) -> Op:
    """``multi``: the field searched holds token matrices (a query is one matrix, a batch a
    list of them, sent as JSON)."""
    path = f"/collections/{seg(name)}/points/search"
    k = check_k(k)
    payload_projection(with_payload)
    thr = None if score_threshold is None else check_threshold(score_threshold)
    params = SearchParams.parse(params).to_dict() or None  # the embedded API's checks
    if multi:
        single, vector, nonfinite = _token_queries(vector)
        q = None
    else:
        try:
            single = np.ndim(vector) == 1
        except ValueError:  # ragged nesting: let the server describe it
            single = True
        q = as_float_array(vector)
        if q is not None and q.ndim not in (1, 2):
            raise InvalidArgument(f"vector: expected a vector or a matrix of queries, got "
                                  f"shape {q.shape}")
        nonfinite = q is not None and q.size > 0 and not bool(np.isfinite(q).all())
    if single:
        body: dict[str, Any] = {"vector": q.tolist() if q is not None else vector, "limit": k,
                                "filter": filter, "params": params, "using": using,
                                "with_payload": with_payload, "with_vector": with_vectors}
        if explain:
            body["explain"] = True
        if thr is not None:
            body["score_threshold"] = thr
        res = yield json_req("POST", path, body, nonfinite=nonfinite)
        hits = points_from(res["result"])
        return (hits, res.get("plan")) if explain else hits
    if explain:  # one group of a JSON batch: one batched search and its plan, as embedded
        searches = [{"vector": v, "limit": k, "filter": filter, "params": params,
                     "using": using, "with_payload": with_payload, "with_vector": with_vectors,
                     "score_threshold": thr, "explain": True}
                    for v in (q.tolist() if q is not None else list(vector))]
        res = yield json_req("POST", f"{path}/batch", {"searches": searches}, nonfinite=nonfinite)
        plans = res.get("plans") or [[]]  # no queries: no segment searched
        return [points_from(r) for r in res["result"]], plans[0]
    if q is not None and q.ndim == 2 and filter is None and not with_vectors \
            and isinstance(with_payload, bool):
        req = _npy_search(path, q, k, params, with_payload, thr, using)
        if with_payload:  # payloads come back as JSON
            return [points_from(r) for r in (yield req)["result"]]
        ans = yield req
        if isinstance(ans, dict):  # a server (or proxy) that answers JSON anyway
            return [points_from(r) for r in ans["result"]]
        return _arrays(ans).to_points()
    return (yield from _json_batch(path, vector, q, k, filter, params, with_payload, with_vectors,
                                   nonfinite, thr, using))


def search_groups(name: str, vector: Any, group_by: str, limit: int, group_size: int,
                  filter: Any, params: Any, with_payload: Any, with_vectors: bool,
                  score_threshold: float | None, using: str | None, multi: bool) -> Op:
    """One query's hits in groups by a payload key (``Collection.search_groups``)."""
    payload_projection(with_payload)
    thr = None if score_threshold is None else check_threshold(score_threshold)
    params = SearchParams.parse(params).to_dict() or None
    if multi:
        single, query, nonfinite = _token_queries(vector)
    else:
        q = as_float_array(vector)
        single = q is None or q.ndim == 1
        query = q.tolist() if q is not None else vector
        nonfinite = q is not None and q.size > 0 and not bool(np.isfinite(q).all())
    if not single:
        raise InvalidArgument("vector: search_groups takes one query, not a batch")
    body = {"vector": query, "group_by": group_by, "limit": limit, "group_size": group_size,
            "filter": filter, "params": params, "using": using, "with_payload": with_payload,
            "with_vector": with_vectors, "score_threshold": thr}
    res = yield json_req("POST", f"/collections/{seg(name)}/points/search/groups", body,
                         nonfinite=nonfinite)
    return [Group(g["id"], points_from(g["hits"])) for g in res["result"]["groups"]]


def search_arrays(name: str, queries: Any, k: int, filter: Any, params: Any,
                  score_threshold: float | None = None, using: str | None = None,
                  multi: bool = False) -> Op:
    path = f"/collections/{seg(name)}/points/search"
    k = check_k(k)
    thr = None if score_threshold is None else check_threshold(score_threshold)
    params = SearchParams.parse(params).to_dict() or None
    if multi:
        single, rows, nonfinite = _token_queries(queries)
        if single:
            raise InvalidArgument("queries: expected a list of token matrices (one per query), "
                                  "got one matrix")
        hits = yield from _json_batch(path, rows, None, k, filter, params, False, False,
                                      nonfinite, thr, using)
        return SearchArrays.from_points(hits, k)
    q = as_float_array(queries)
    if q is None or q.ndim != 2:
        got = "" if q is None else f", got {q.ndim} dimension(s)"
        raise InvalidArgument(f"queries: expected a 2-D matrix (one query per row){got}")
    if filter is None and bool(np.isfinite(q).all()):
        ans = yield _npy_search(path, q, k, params, False, thr, using)
        if not isinstance(ans, dict):
            return _arrays(ans)
        return SearchArrays.from_points([points_from(r) for r in ans["result"]], k)
    hits = yield from _json_batch(path, queries, q, k, filter, params, False, False,
                                  not bool(np.isfinite(q).all()), thr, using)
    return SearchArrays.from_points(hits, k)


def _token_queries(vector: Any) -> tuple[bool, Any, bool]:
    """(one query?, the query or queries as nested lists, any non-finite value?) for a
    multi-vector field: one token matrix, or a list (or ``TokenMatrices``) of them."""
    single = is_one_query(vector)
    mats = [vector] if single else list(vector)
    arrays = [as_float_array(m) for m in mats]
    rows = [a.tolist() if a is not None else m for a, m in zip(arrays, mats, strict=True)]
    nonfinite = any(a is not None and a.size and not bool(np.isfinite(a).all()) for a in arrays)
    return single, (rows[0] if single else rows), nonfinite


def _arrays(raw: bytes) -> SearchArrays:
    try:
        return SearchArrays.from_npz(raw)
    except InvalidArgument as exc:  # the server's answer, not the caller's input
        raise QuiverError(f"batch search: the server's answer is unreadable ({exc})") from None


def _npy_search(path: str, q: np.ndarray, k: int, params: Any, with_payload: bool,
                threshold: float | None, using: str | None) -> Req:
    """A .npy batch; answered as arrays (.npz, the cheapest form on both ends) unless
    payloads are wanted."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(q), allow_pickle=False)
    query: dict[str, Any] = {"limit": k}
    if using is not None:
        query["using"] = using
    if threshold is not None:
        query["score_threshold"] = repr(threshold)
    for key, value in (params or {}).items():
        if value is not None:
            query[key] = _flag(value) if isinstance(value, bool) else _int(value)
    if with_payload:
        return Req("POST", f"{path}/batch", buf.getvalue(), NPY,
                   params={**query, "with_payload": "true"})
    return Req("POST", f"{path}/batch", buf.getvalue(), NPY, params=query, raw=True,
               headers={"accept": NPZ})


def _json_batch(path: str, vector: Any, q: np.ndarray | None, k: int, filter: Any, params: Any,
                with_payload: Any, with_vectors: bool, nonfinite: bool,
                threshold: float | None, using: str | None) -> Op:
    rows = q.tolist() if q is not None else _rows_arg(vector, "vector")
    searches = [{"vector": v, "limit": k, "filter": filter, "params": params, "using": using,
                 "with_payload": with_payload, "with_vector": with_vectors,
                 "score_threshold": threshold} for v in rows]
    res = yield json_req("POST", f"{path}/batch", {"searches": searches}, nonfinite=nonfinite)
    return [points_from(r) for r in res["result"]]


def _flag(b: Any) -> str:
    return "true" if b else "false"


def create_payload_index(name: str, field_name: str, field_type: str) -> Op:
    body = {"field_name": field_name, "field_schema": field_type}
    yield json_req("PUT", f"/collections/{seg(name)}/index", body)


def delete_payload_index(name: str, field_name: str) -> Op:
    if not isinstance(field_name, str) or not field_name:
        raise InvalidArgument("field: expected a non-empty string")
    yield Req("DELETE", f"/collections/{seg(name)}/index/{seg(field_name)}", idempotent=False)


def snapshot(name: str) -> Op:
    res = yield Req("POST", f"/collections/{seg(name)}/snapshots", idempotent=False)
    return res["result"]["name"]


def list_snapshots(name: str) -> Op:
    return (yield Req("GET", f"/collections/{seg(name)}/snapshots"))["result"]


def download_snapshot(name: str, snapshot: str, path: str | Path) -> Op:
    target = Path(path)
    if target.is_dir():
        target = target / snapshot
    if not snapshot or "/" in snapshot or snapshot.startswith("."):
        raise InvalidArgument(f"snapshot: {snapshot!r} is not a snapshot name")
    yield Req("GET", f"/collections/{seg(name)}/snapshots/{seg(snapshot)}", download=target)
    return target


def metrics() -> Op:
    return (yield Req("GET", "/metrics", text=True))


def backoff(attempt: int, rnd: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 0.1, 0.2, 0.4 ... capped at 2 s,
    with jitter in [50%, 100%]."""
    return min(2.0, 0.1 * math.pow(2, attempt)) * (0.5 + rnd / 2)
