"""Collection configs between Qdrant's form and Quiver's: a ``CreateCollection`` body becomes
``Database.create_collection`` arguments (distances to metrics, ``hnsw_config`` and
``quantization_config`` to an index spec), and a collection's state becomes the
``CollectionInfo`` the client parses."""

from __future__ import annotations

from typing import Any

from ...engine.collection import Collection, VectorField
from ...engine.errors import InvalidArgument
from ...engine.index.registry import parse_index_spec
from ...engine.points import DEFAULT_FIELD
from . import schemas as q

DISTANCES = {"Cosine": "cosine", "Dot": "ip", "Euclid": "l2"}
METRICS = {v: k for k, v in DISTANCES.items()}
DEFAULT_M = 16


def _codec(v: q.QdrantVectorParams, quant: q.QuantizationConfig | None, where: str) -> str:
    if quant is not None:
        if quant.product is not None:
            raise InvalidArgument(
                f"{where}quantization_config.product: Quiver's product quantization runs inside "
                f"IVF indexes; give the field Quiver's index spec instead, e.g. \"index\": "
                f"\"IVF1024,PQ{max(1, v.size // 8)}x8,Refine(F32)\" (or scalar quantization)")
        if quant.binary is not None:
            raise InvalidArgument(
                f"{where}quantization_config.binary: not supported; use scalar quantization, or "
                f"Quiver's index spec with an LVQ codec, e.g. \"index\": \"HNSW16,LVQ4x8\"")
        return "SQ8"
    if v.datatype == "uint8":
        raise InvalidArgument(f"{where}datatype: uint8 vectors are not supported (float32, float16)")
    return "F16" if v.datatype == "float16" else "F32"


def _field(v: q.QdrantVectorParams, hnsw: q.HnswConfigDiff | None,
           quant: q.QuantizationConfig | None, where: str) -> dict[str, Any]:
    """One field's ``{"dim", "metric", "index"}``; ``hnsw`` and ``quant`` are the
    collection's, which the field's own settings override."""
    if v.distance not in DISTANCES:
        raise InvalidArgument(f"{where}distance: {v.distance} is not supported; use one of "
                              f"{', '.join(DISTANCES)}")
    field: dict[str, Any] = {"dim": v.size, "metric": DISTANCES[v.distance]}
    if v.multivector_config is not None:
        field["multivector"] = v.multivector_config.comparator
    if v.index is not None:
        return {**field, "index": v.index}
    m = next((h.m for h in (v.hnsw_config, hnsw) if h is not None and h.m is not None), DEFAULT_M)
    codec = _codec(v, v.quantization_config or quant, where)
    if m == 0 and codec not in ("F32", "F16"):
        raise InvalidArgument(f"{where}hnsw_config.m: 0 (exact scans) stores float32 or float16 "
                              f"only; drop quantization_config or use m > 0")
    return {**field, "index": f"{'Flat' if m == 0 else f'HNSW{m}'},{codec}"}


def create_kwargs(body: q.QdrantCreateCollection, clustered: bool = False) -> dict[str, Any]:
    """``Database.create_collection`` keyword arguments for a Qdrant ``CreateCollection``;
    on a cluster (``clustered``) its shard_number, replication_factor and
    write_consistency_factor shard the collection (an embedded server ignores them, as a
    single-node Qdrant does)."""
    if body.sparse_vectors:
        raise InvalidArgument("sparse_vectors: sparse vectors are not supported")
    vectors = body.vectors
    if isinstance(vectors, dict) and list(vectors) == [DEFAULT_FIELD]:
        vectors = vectors[DEFAULT_FIELD]  # {"": {...}}: Qdrant's name for the unnamed vector
    single = isinstance(vectors, q.QdrantVectorParams)
    fields = {DEFAULT_FIELD: vectors} if single else vectors
    if not fields:
        raise InvalidArgument("vectors: give at least one vector field")
    if single and vectors.multivector_config is not None:  # Quiver's unnamed field is dense
        raise InvalidArgument("vectors.multivector_config: name the multi-vector field "
                              "(named vectors, e.g. {\"colbert\": {...}})")
    if not single and DEFAULT_FIELD in fields:
        raise InvalidArgument("vectors: the unnamed vector (\"\") and named ones in one "
                              "collection are not supported; name every field")
    specs = {n: _field(v, body.hnsw_config, body.quantization_config,
                       "vectors." if single else f"vectors.{n}.") for n, v in fields.items()}
    # each field's own ef_construct, else the collection's: Quiver has one per collection
    efs = {next((h.ef_construct for h in (v.hnsw_config, body.hnsw_config)
                 if h is not None and h.ef_construct is not None), None)
           for v in fields.values()} - {None}
    if len(efs) > 1:
        raise InvalidArgument(f"hnsw_config.ef_construct: Quiver builds every field of a "
                              f"collection with one ef_construct; got {sorted(efs)}")
    out: dict[str, Any] = {"segment_size": body.segment_size, "fsync": body.fsync}
    if clustered and body.shard_number is not None:
        out["shards"] = body.shard_number
        out["replicas"] = body.replication_factor or 1
        if body.write_consistency_factor is not None:
            out["write_quorum"] = body.write_consistency_factor
    if efs:
        out["ef_construction"] = efs.pop()
    if single:
        f = specs[DEFAULT_FIELD]
        return {**out, "dim": f["dim"], "metric": f["metric"], "index": f["index"]}
    return {**out, "vectors": specs}



def _sharding(info: dict[str, Any]) -> dict[str, int]:
    """Qdrant's shard_number, replication_factor and write_consistency_factor."""
    shards = info.get("shards")
    if not shards:
        return {"shard_number": 1, "replication_factor": 1, "write_consistency_factor": 1}
    return {"shard_number": len(shards), "replication_factor": len(shards[0]["replicas"]),
            "write_consistency_factor": info.get("write_quorum", len(shards[0]["replicas"]))}


def _vector_params(f: VectorField, ef_construct: int) -> dict[str, Any]:
    """A field as Qdrant's ``VectorParams``: what of its index spec Qdrant can express (the
    spec itself stays in Quiver's part of the info)."""
    spec = parse_index_spec(f.index)
    out: dict[str, Any] = {"size": f.dim, "distance": METRICS[f.metric]}
    if f.kind == "multi":  # its index is over the points' MUVERA encodings
        out["multivector_config"] = {"comparator": "max_sim"}
    if spec.index.family == "HNSW":
        out["hnsw_config"] = {"m": spec.index.numbers[0] if spec.index.numbers else DEFAULT_M,
                              "ef_construct": ef_construct}
    else:  # exact scans or IVF lists: no graph
        out["hnsw_config"] = {"m": 0}
    codec = spec.codec.key
    if codec == "SQ8":
        out["quantization_config"] = {"scalar": {"type": "int8", "always_ram": True}}
    elif codec == "F16":
        out["datatype"] = "float16"
    elif codec in ("F32", "FLAT"):
        out["datatype"] = "float32"
    return out


def collection_info(col: Collection, info: dict[str, Any],
                    payload_points: dict[str, int]) -> dict[str, Any]:
    """Quiver's ``info`` with Qdrant's ``CollectionInfo`` fields beside it (one answer that
    both clients parse); ``payload_points`` counts the points holding each indexed key."""
    cfg = col.config
    fields = {n: _vector_params(f, cfg.ef_construction) for n, f in col.fields.items()}
    first = next(iter(fields.values()))
    return {
        **info,  # its "status" (green / yellow) is Qdrant's too
        "optimizer_status": "ok",
        "indexed_vectors_count": info["indexed_points"],
        "points_count": info["points"],
        "segments_count": len(info["segments"]),
        "config": {
            "params": {"vectors": fields.get(DEFAULT_FIELD, fields), **_sharding(info)},
            "hnsw_config": {"m": first["hnsw_config"]["m"], "ef_construct": cfg.ef_construction,
                            "full_scan_threshold": 10_000},
            "optimizer_config": {"deleted_threshold": cfg.vacuum_share,
                                 "vacuum_min_vector_number": 0,
                                 "default_segment_number": cfg.max_segments,
                                 "max_segment_size": None, "flush_interval_sec": 0},
        },
        "payload_schema": {k: {"data_type": t, "points": payload_points.get(k, 0)}
                           for k, t in info["payload_indexes"].items()},
    }


def payload_points(col: Collection) -> dict[str, int]:
    """How many points hold a value under each indexed payload key (``payload_schema``)."""
    return {k: col.count({"must_not": [{"is_empty": {"key": k}}]})
            for k in col.config.payload_indexes}
