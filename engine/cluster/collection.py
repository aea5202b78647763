"""A collection split into shards, each replicated on Ray actors, behind the embedded
``Collection``'s methods: the same calls, arguments, results and errors.

Input is checked once here, by the same code the embedded collection runs
(``CollectionSchema``), before anything is sent: a bad batch writes nothing on any shard.
Points go to the shard their id hashes to (``routing.shard_of``); writes by filter and
payload-index changes go to every shard. Searches go to one replica of every shard at once
(one call per shard for a whole batch) and are merged by score with ``merge_topk``.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...kernels.topk import merge_topk
from ..collection import (
    CollectionConfig,
    CollectionSchema,
    _id_order,
    _subset_fields,
    normalize_ids,
)
from ..errors import InvalidArgument, ShardUnavailable
from ..facets import MAX_FACET_LIMIT, check_facet, merge_counts, sample_counts, top_values
from ..filters import normalize_id, parse_filter
from ..hits import SearchArrays
from ..ordering import parse_order_by, resolve
from ..params import SearchParams
from ..payload import canonical_payload, object_path
from ..persist import write_metadata
from ..points import Point, require_points, upsert_columns
from ..projection import payload_paths, payload_projection
from ..validation import check_k, check_threshold
from .routing import shard_of
from .shard import Shard


class PartialResults(list):
    """Search results (or a batch of them) missing the shards in ``missing_shards``: returned
    only to a caller that passed ``allow_partial=True``."""

    missing_shards: list[int]


class PartialCount(int):
    """A count missing the shards in ``missing_shards`` (``allow_partial``)."""

    missing_shards: list[int]


class PartialSearchArrays(SearchArrays):
    """``search_arrays`` results missing the shards in ``missing_shards`` (``allow_partial``)."""

    missing_shards: list[int]


class ShardedCollection(CollectionSchema):
    """Use ``quiver.connect(path, cluster=...)`` and its ``create_collection(...,
    shards=N, replicas=R)`` rather than this constructor."""

    def __init__(self, path: Path, config: CollectionConfig, name: str, shards: list[Shard]):
        super().__init__(config)
        self.path = path
        self.name = name
        self.shards = shards
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"collection {self.name!r} is closed")

    # --- routing ---------------------------------------------------------------------

    def _by_shard(self, ids: list) -> dict[int, np.ndarray]:
        """The batch indices (ascending) of the ids each shard holds."""
        owner = shard_of(ids, len(self.shards))
        return {int(s): np.flatnonzero(owner == s) for s in np.unique(owner)}

    @staticmethod
    def _results(pending: list) -> list:
        return [p.result() for p in pending]

    def _write_all(self, method: str, *args: Any, **kwargs: Any) -> list:
        """One write on every shard (a filter's matches can be anywhere)."""
        self._check_open()
        return self._results([s.submit(method, args, kwargs) for s in self.shards])

    def _targeted(self, method: str, ids, filter: dict | None, *args: Any, **kw: Any) -> int:
        """A write to the points given by ``ids`` (each shard gets its own) or ``filter``
        (every shard): the sum of the shards' counts."""
        self._check_open()
        if (ids is None) == (filter is None):
            raise InvalidArgument(f"{method}: pass exactly one of ids or filter")
        if filter is not None:
            parse_filter(filter)
            return sum(self._write_all(method, *args, filter=filter, **kw))
        norm = list(dict.fromkeys(normalize_ids(ids)))
        if method != "delete":  # before any shard writes (each checks its own share too)
            self._require_points(norm)
        pending = [self.shards[s].submit(method, args, {"ids": [norm[j] for j in rows.tolist()],
                                                        **kw})
                   for s, rows in self._by_shard(norm).items()]
        return sum(self._results(pending))

    def _require_points(self, ids: list) -> None:
        found = {p.id for p in self.get(ids, with_payload=False)}
        require_points(ids, found.__contains__)

    # --- writes ----------------------------------------------------------------------

    def upsert(self, ids=None, vectors=None, payloads=None, *, points=None) -> int:
        """As ``Collection.upsert``; returns the highest shard write number (each shard
        numbers its own writes) once every shard's quorum has the batch."""
        self._check_open()
        ids, vectors, payloads = upsert_columns(ids, vectors, payloads, points)
        norm, fields, pl = self._validate_points(ids, vectors, payloads)
        if not norm:
            return max(s.acked for s in self.shards)
        pending = []
        for s, rows in self._by_shard(norm).items():
            part = rows.tolist()
            pending.append(self.shards[s].submit("upsert_validated", (
                [norm[j] for j in part], _subset_fields(fields, rows, len(norm)), [pl[j] for j in part])))
        self._results(pending)
        return max(p.seq for p in pending)

    def update_vectors(self, ids, vectors) -> int:
        self._check_open()
        norm, new, _ = self._validate_points(ids, vectors, None)
        self._require_points(norm)
        pending = [self.shards[s].submit("update_validated", (
            [norm[j] for j in rows.tolist()], _subset_fields(new, rows, len(norm))))
            for s, rows in self._by_shard(norm).items()]
        return sum(self._results(pending))

    def delete(self, ids=None, filter: dict | None = None) -> int:
        return self._targeted("delete", ids, filter)

    def set_payload(self, payload: dict, ids=None, filter: dict | None = None,
                    key: str | None = None) -> int:
        canonical_payload(payload, "payload")
        if key is None:
            return self._targeted("set_payload", ids, filter, payload)
        object_path(key)
        return self._targeted("set_payload", ids, filter, payload, key=key)

    def overwrite_payload(self, payload: dict, ids=None, filter: dict | None = None) -> int:
        canonical_payload(payload, "payload")
        return self._targeted("overwrite_payload", ids, filter, payload)

    def delete_payload(self, keys: list[str], ids=None, filter: dict | None = None) -> int:
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise InvalidArgument(f"keys: expected a list of payload keys, got {keys!r:.60}")
        payload_paths(keys, "keys")
        return self._targeted("delete_payload", ids, filter, list(keys))

    def clear_payload(self, ids=None, filter: dict | None = None) -> int:
        return self._targeted("clear_payload", ids, filter)

    def delete_vectors(self, names: list[str], ids=None, filter: dict | None = None) -> int:
        self._check_vector_names(names)
        return self._targeted("delete_vectors", ids, filter, list(names))

    def create_payload_index(self, field_name: str, field_type: str) -> None:
        self._write_all("create_payload_index", field_name, field_type)
        self._reload_config()

    def delete_payload_index(self, field_name: str) -> None:
        self._write_all("delete_payload_index", field_name)
        self._reload_config()

    def _reload_config(self) -> None:
        """The driver's copy of the config follows the shards' (payload indexes)."""
        info = self.shards[0].read("info").result()
        self.config.payload_indexes = dict(info["payload_indexes"])
        write_metadata(self.path / "config.json", self.config.to_dict())

    def train_queries(self, queries, using: str | None = None) -> int:
        """As ``Collection.train_queries``: every shard keeps the sample."""
        return self._write_all("train_queries", queries, using=using)[0]

    # --- reads -----------------------------------------------------------------------

    def _gather(self, pending: dict[int, Any], allow_partial: bool) -> tuple[dict, list[int]]:
        """Each shard's answer, and the shards that had none (only with ``allow_partial``)."""
        out, missing = {}, []
        for s, p in pending.items():
            try:
                out[s] = p.result()
            except ShardUnavailable:
                if not allow_partial:
                    raise
                missing.append(s)
        return out, missing

    def get(self, ids, with_payload: bool | list | dict = True, with_vectors: bool = False,
            *, allow_partial: bool = False) -> list[Point]:
        self._check_open()
        payload_projection(with_payload)
        norm = normalize_ids(ids)
        pending = {s: self.shards[s].read("get", [norm[j] for j in rows.tolist()], with_payload,
                                          with_vectors)
                   for s, rows in self._by_shard(norm).items()}
        found, missing = self._gather(pending, allow_partial)
        by_id = {p.id: p for points in found.values() for p in points}
        out = [by_id[x] for x in norm if x in by_id]
        return self._flag(out, missing)

    def count(self, filter: dict | None = None, *, allow_partial: bool = False) -> int:
        """The points matching ``filter`` on every shard (with ``allow_partial``, on the
        shards that answered)."""
        self._check_open()
        if filter is not None:
            parse_filter(filter)
        found, missing = self._gather(
            {i: s.read("count", filter) for i, s in enumerate(self.shards)}, allow_partial)
        total = sum(found.values())
        if not missing:
            return total
        out = PartialCount(total)
        out.missing_shards = missing
        return out

    def __len__(self) -> int:
        return self.count()

    def facet(self, key: str, filter: dict | None = None, limit: int = 10, *,
              allow_partial: bool = False) -> list[tuple[Any, int]]:
        """As ``Collection.facet``, the shards' counts summed (each shard answers its
        ``MAX_FACET_LIMIT`` most frequent values)."""
        self._check_open()
        _, limit = check_facet(key, limit)
        if filter is not None:
            parse_filter(filter)
        found, missing = self._gather({i: s.read("facet", key, filter, MAX_FACET_LIMIT)
                                       for i, s in enumerate(self.shards)}, allow_partial)
        return self._flag(top_values(merge_counts(found.values()), limit), missing)

    def sample(self, k: int = 10, filter: dict | None = None,
               with_payload: bool | list | dict = True, with_vectors: bool = False,
               *, allow_partial: bool = False) -> list[Point]:
        """As ``Collection.sample``: how many picks each shard makes follows its share of
        the matching points, so the whole sample stays uniform."""
        self._check_open()
        k = check_k(k)
        payload_projection(with_payload)
        if filter is not None:
            parse_filter(filter)
        sizes, missing = self._gather({i: s.read("count", filter)
                                       for i, s in enumerate(self.shards)}, allow_partial)
        rng = np.random.default_rng()
        shards = sorted(sizes)
        picks = sample_counts([sizes[i] for i in shards], k, rng)
        found, more = self._gather(
            {i: self.shards[i].read("sample", m, filter, with_payload, with_vectors)
             for i, m in zip(shards, picks, strict=True) if m}, allow_partial)
        out = [p for points in found.values() for p in points]
        rng.shuffle(out)
        return self._flag(out, missing + more)

    def scroll(self, filter: dict | None = None, limit: int = 10, cursor=None,
               with_payload: bool | list | dict = True, with_vectors: bool = False,
               order_by: str | dict | None = None, *, allow_partial: bool = False
               ) -> tuple[list[Point], Any]:
        """As ``Collection.scroll``: each shard's first ``limit`` from the cursor, merged in
        id order (or in ``order_by``'s, by each shard's order values)."""
        self._check_open()
        limit = check_k(limit)
        payload_projection(with_payload)
        if filter is not None:
            parse_filter(filter)
        if order_by is not None:
            order = parse_order_by(order_by)
            if cursor is not None:
                raise InvalidArgument("cursor: a scroll with order_by continues from "
                                      "order_by.start_from (the last value seen), not a cursor")
            kinds, _ = self._gather({i: s.read("order_kinds", order.key)
                                     for i, s in enumerate(self.shards)}, allow_partial)
            order = resolve(order, set().union(*kinds.values()))  # one kind on every shard
            found, missing = self._gather(
                {i: s.read("scroll", filter, limit, None, with_payload, with_vectors, order)
                 for i, s in enumerate(self.shards)}, allow_partial)
            sign = -1 if order.desc else 1  # an int: int64 values stay exact in the key
            merged = sorted((p for page, _ in found.values() for p in page),
                            key=lambda p: (sign * p.score, _id_order(p.id)))
            return self._flag(merged[:limit], missing), None
        if cursor is not None:
            cursor = normalize_id(cursor, "cursor")
        found, missing = self._gather(
            {i: s.read("scroll", filter, limit, cursor, with_payload, with_vectors)
             for i, s in enumerate(self.shards)}, allow_partial)
        merged = sorted((p for page, _ in found.values() for p in page),
                        key=lambda p: _id_order(p.id))
        page = merged[:limit]
        following = [p.id for p in merged[limit:]]
        # a shard with more than it sent may hold the next id: its own next cursor says
        following += [nxt for _, nxt in found.values() if nxt is not None]
        nxt = min(following, key=_id_order) if following else None
        return self._flag(page, missing), nxt

    def _query_checks(self, vector, k, filter, params, with_payload, score_threshold,
                      using) -> tuple[int, bool, bool]:
        """k, whether ``vector`` is one query, and whether higher scores are better."""
        self._check_open()
        name = self._field(using)
        single = self.is_single_query(vector, using)
        k = check_k(k)
        SearchParams.parse(params)
        payload_projection(with_payload)
        if filter is not None:
            parse_filter(filter)
        if score_threshold is not None:
            check_threshold(score_threshold)
        return k, single, self._metrics[name].higher_is_better

    def search(self, vector, k: int = 10, filter: dict | None = None,
               params: SearchParams | dict | None = None,
               with_payload: bool | list | dict = False, with_vectors: bool = False,
               explain: bool = False, score_threshold: float | None = None,
               using: str | None = None, *, allow_partial: bool = False):
        """As ``Collection.search``, over every shard. With ``explain`` the plan lists each
        shard's segments (``shard`` says which)."""
        k, single, higher = self._query_checks(vector, k, filter, params, with_payload,
                                               score_threshold, using)
        pending = {i: s.read("search", vector, k, filter, params, with_payload, with_vectors,
                             explain, score_threshold, using)
                   for i, s in enumerate(self.shards)}
        found, missing = self._gather(pending, allow_partial)
        plan = []
        rows_by_shard = []
        for i, res in found.items():
            if explain:
                res, shard_plan = res
                plan.extend({"shard": i, **step} for step in shard_plan)
            rows_by_shard.append([res] if single else res)
        nq = 1 if single else len(rows_by_shard[0]) if rows_by_shard else _batch_len(vector)
        merged = [self._merge_points([r[q] for r in rows_by_shard], k, higher) for q in range(nq)]
        out = self._flag(merged[0] if single else merged, missing)
        return (out, plan) if explain else out

    @staticmethod
    def _merge_points(lists: list[list[Point]], k: int, higher: bool) -> list[Point]:
        """The best k of the shards' hit lists for one query, in score order, one per id."""
        if len(lists) == 1:
            return lists[0]
        hits = [p for row in lists for p in row]
        if not hits:
            return []
        scores = np.array([[p.score for p in hits]], np.float32)
        order = np.arange(len(hits), dtype=np.int64)[None, :]
        _, best = merge_topk(-scores if higher else scores, order, min(len(hits), 2 * k))
        out, seen = [], set()
        for j in best[0].tolist():
            if j >= 0 and hits[j].id not in seen:
                seen.add(hits[j].id)
                out.append(hits[j])
        return out[:k]

    def search_arrays(self, queries, k: int = 10, filter: dict | None = None,
                      params: SearchParams | dict | None = None,
                      score_threshold: float | None = None, using: str | None = None,
                      *, allow_partial: bool = False) -> SearchArrays:
        """As ``Collection.search_arrays``: one call per shard for the whole batch."""
        k, _, higher = self._query_checks(queries, k, filter, params, False, score_threshold,
                                          using)
        pending = {i: s.read("search_arrays", queries, k, filter, params, score_threshold, using)
                   for i, s in enumerate(self.shards)}
        found, missing = self._gather(pending, allow_partial)
        parts = list(found.values())
        out = parts[0] if len(parts) == 1 else _merge_arrays(parts, k, higher)
        if missing:
            out = PartialSearchArrays(*out)
            out.missing_shards = missing
        return out

    @staticmethod
    def _flag(result, missing: list[int]):
        if not missing:
            return result
        out = PartialResults(result)
        out.missing_shards = missing
        return out

    # --- upkeep ----------------------------------------------------------------------

    def flush(self, timeout: float = 600.0) -> None:
        self._check_open()
        deadline = time.monotonic() + timeout
        for s in self.shards:
            left = max(0.001, deadline - time.monotonic())
            s.each_replica("flush", left, timeout=left + 5.0)

    def wait_indexed(self, timeout: float = 600.0) -> None:
        self._check_open()
        deadline = time.monotonic() + timeout
        for s in self.shards:
            left = max(0.001, deadline - time.monotonic())
            s.read("wait_indexed", left, timeout=left + 5.0).result()

    def snapshot(self, directory: str | Path | None = None) -> Path:
        """One tar archive holding a snapshot archive per shard (each from one live
        replica) and a ``cluster.json`` naming them, where the embedded collection puts its
        own: ``ClusterDatabase.restore_snapshot`` (and the REST snapshot routes) take it."""
        self._check_open()
        out_dir = Path(directory) if directory else self.path.parent.parent / "snapshots"
        out_dir.mkdir(parents=True, exist_ok=True)
        parts = [s.snapshot() for s in self.shards]
        target = out_dir / (f"{self.name}-{time.strftime('%Y%m%dT%H%M%S')}-"
                            f"{max(at for _, at, _ in parts)}.tar")
        manifest = {"format": "quiver-sharded-snapshot", "config": self.config.to_dict(),
                    "shards": [{"shard": i, "file": f"shard-{i}.tar", "seq": at}
                               for i, (_, at, _) in enumerate(parts)]}
        tmp = target.with_name(target.name + ".tmp")
        try:
            with tarfile.open(tmp, "w") as tar:
                _add_bytes(tar, SNAPSHOT_MANIFEST, json.dumps(manifest).encode())
                for entry, (archive, _, _) in zip(manifest["shards"], parts, strict=True):
                    _add_bytes(tar, entry["file"], archive)
            tmp.replace(target)
        except BaseException:  # a full disk: no half-written archive eats the space
            tmp.unlink(missing_ok=True)
            raise
        return target

    def info(self) -> dict[str, Any]:
        self._check_open()
        infos = [s.read("info").result() for s in self.shards]
        first = infos[0]
        return {
            **{k: v for k, v in first.items() if k not in ("segments", "points", "last_seq",
                                                         "indexed_points", "status")},
            "name": self.name,
            "points": sum(i["points"] for i in infos),
            "indexed_points": sum(i["indexed_points"] for i in infos),
            "segments": [{"shard": n, **seg} for n, i in enumerate(infos) for seg in i["segments"]],
            "status": "green" if all(i["status"] == "green" for i in infos) and all(
                r.live for s in self.shards for r in s.replicas) else "yellow",
            "last_seq": max(i["last_seq"] for i in infos),
            "write_quorum": self.shards[0].write_quorum,
            "shards": [{"shard": s.index, "write": s.acked, "replicas": [
                {"replica": r.index, "live": r.live, "applied": r.applied} for r in s.replicas]}
                for s in self.shards],
        }

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SNAPSHOT_MANIFEST = "cluster.json"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _batch_len(queries) -> int:
    try:
        return len(queries)
    except TypeError:
        return 0


def _merge_arrays(parts: list[SearchArrays], k: int, higher: bool) -> SearchArrays:
    """The shards' (nq, k) result matrices merged into the best k per query."""
    text = any(p.ids.dtype.kind == "U" for p in parts)
    ids = np.concatenate([p.ids.astype("<U36") if text else p.ids for p in parts], axis=1)
    scores = np.concatenate([p.scores for p in parts], axis=1)
    valid = np.concatenate([np.arange(p.ids.shape[1])[None, :] < p.counts[:, None]
                            for p in parts], axis=1)
    nq, m = scores.shape
    cols = np.where(valid, np.arange(m, dtype=np.int64)[None, :], -1)
    key = np.where(valid, -scores if higher else scores, np.inf).astype(np.float32)
    _, best = merge_topk(np.ascontiguousarray(key), np.ascontiguousarray(cols), k)
    rows_ids, rows_scores = [], []
    for q in range(nq):
        picked = [j for j in best[q].tolist() if j >= 0]
        # integer ids stay integers (a UUID has dashes): text only if a UUID is among them
        rows_ids.append([int(i) if not text or i.isdigit() else i
                         for i in (ids[q, j].item() for j in picked)])
        rows_scores.append([float(scores[q, j]) for j in picked])
    return SearchArrays.from_rows(rows_ids, rows_scores, k)

