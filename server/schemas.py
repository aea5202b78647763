"""Request and response bodies of the REST API (shared with the Python client).

Shapes follow Qdrant's (``qdrant.schemas`` holds the bodies only Qdrant's dialect sends); every
response is ``{"result": ..., "status": "ok", "time": seconds}`` and every error
``{"status": {"error": message}, "error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ..engine.params import SearchParams
from .qdrant.schemas import (
    NamedVector,
    QueryParams,
    UpsertBatch,
    VectorSelector,
    VectorValue,
    WithLookup,
)

__all__ = ["SearchParams"]  # the engine's own type: one definition of the knobs

PointId = StrictInt | StrictStr
"""Unsigned 64-bit integer or UUID string; strict, so ``true`` or ``1.0`` is a 422 instead of
the id 1."""

BINARY_POINTS = "application/vnd.quiver.points"
"""Binary upsert body: Quiver's batch frame (``u8 version (2) | u32 header length | u32 crc32 |
JSON header {"n", "ids", "payloads", "arrays"} | 8-byte aligned raw little-endian arrays``), the
format the write-ahead log stores, produced by ``quiver.engine.frame.encode_batch`` and the
client."""
NPY = "application/x-npy"
"""Binary batch-search body: one float32 ``.npy`` matrix of queries (parameters in the URL)."""


PayloadSelector = bool | list[str] | dict[Literal["include", "exclude"], list[str]]
"""``with_payload``: all or nothing, the keys to include (dotted paths), or
``{"include": [...]}`` / ``{"exclude": [...]}``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


IndexSpec = Field("HNSW16,F32", max_length=128,
                  description='Index spec: "HNSW16,F32", "HNSW16,LVQ8", "HNSW32,SQ8", "Flat", '
                              '"Flat,F16" (the grammar: README, "Index specs").')


class VectorParams(_Strict):
    """One named vector field; ``multivector`` makes it a multi-vector (MaxSim) field."""

    dim: int = Field(gt=0, le=65536, description="Vector dimension (of each token).")
    metric: Literal["l2", "ip", "cosine"] = "cosine"
    index: str = IndexSpec
    multivector: Literal["max_sim"] | None = Field(
        None, description="A token matrix per point, scored by MaxSim (late interaction).")
    retrieval: Literal["fde", "tokens"] | None = Field(
        None, description="Multi-vector candidates from MUVERA encodings (fde, the default) "
                          "or from each query token's nearest document tokens.")
    fde: dict[str, int] | None = Field(
        None, description='MUVERA parameters, e.g. {"k_sim": 4, "d_proj": 16, "r_reps": 20}.')
    tokens: Literal["f16", "f32", "lvq8"] | None = Field(None, description="How tokens are stored.")
    token_hits: int | None = Field(
        None, ge=1, le=4096, description="With retrieval 'tokens': document tokens found per "
                                         "query token (default 64).")
    pool_factor: int | None = Field(
        None, ge=1, le=64, description="Keep 1/pool_factor of each document's tokens, "
                                       "similar ones merged.")
    device: str | None = Field(
        None, max_length=16, description='"cuda" or "cuda:<n>": build and serve the sealed '
                                         'segments\' index with faiss on that GPU (Quiver extension).')


class CreateCollection(_Strict):
    """One unnamed vector (``dim``, ``metric``, ``index``) or named fields (``vectors``)."""

    dim: int | None = Field(None, gt=0, le=65536, description="Vector dimension (one unnamed vector).")
    metric: Literal["l2", "ip", "cosine"] = "cosine"
    index: str = IndexSpec
    vectors: dict[str, VectorParams] | None = Field(
        None, description='Named vector fields instead of dim: {"text": {"dim": 384}, ...}.')

    @model_validator(mode="after")
    def _one_form(self) -> CreateCollection:
        if (self.dim is None) == (self.vectors is None):
            raise ValueError("pass dim (one unnamed vector) or vectors (named fields)"
                             + (", not both" if self.dim is not None else ""))
        return self
    ef_construction: int = Field(200, ge=1, le=4096)
    segment_size: int = Field(50_000, ge=1, le=10_000_000)
    fsync: Literal["batch", "always", "never"] = "batch"
    shards: int | None = Field(None, ge=1, le=1024, description=(
        "Split the collection into this many shards on the server's Ray cluster (quiver "
        "serve --cluster)."))
    replicas: int | None = Field(None, ge=1, le=16, description="Copies of each shard.")
    write_quorum: int | None = Field(None, ge=1, le=16, description=(
        "Copies of a shard that must have a write before it is acknowledged (default: all)."))

    def cluster_kwargs(self) -> dict[str, int]:
        return {k: v for k in ("shards", "replicas", "write_quorum")
                if (v := getattr(self, k)) is not None}


class PointStruct(_Strict):
    id: PointId
    vector: VectorValue | dict[str, VectorValue] = Field(
        description="The vector, or named vectors by field (a point may leave fields out); a "
                    "multi-vector field's value is a matrix of token vectors.")
    payload: dict[str, Any] | None = None


class UpsertPoints(_Strict):
    """``points`` (a list of points) or ``batch`` (Qdrant's columnar form)."""

    points: list[PointStruct] | None = Field(None, description="Points to insert or replace.")
    batch: UpsertBatch | None = Field(None, description="The same as columns: ids, vectors, payloads.")

    @model_validator(mode="after")
    def _one_form(self) -> UpsertPoints:
        if (self.points is None) == (self.batch is None):
            raise ValueError("pass points (a list of points) or batch (columns), one of them")
        return self


class PointsSelector(_Strict):
    """Which points a write applies to: ``points`` (ids) or ``filter``."""

    points: list[PointId] | None = None
    filter: dict[str, Any] | None = None


class SetPayload(PointsSelector):
    """``payload`` for the points given by ``points`` (ids) or ``filter``: merged into their
    payloads (POST; with ``key``, into the nested object there) or replacing them (PUT)."""

    payload: dict[str, Any]
    key: str | None = Field(None, max_length=1024,
                            description="POST only: merge into the nested object at this path.")


class DeletePayload(PointsSelector):
    """Payload keys (dotted paths) to remove from the selected points."""

    keys: list[str]


class PointVectors(_Strict):
    id: PointId
    vector: VectorValue | dict[str, VectorValue]


class UpdateVectors(_Strict):
    """New vectors for some fields of existing points (their other fields and payloads kept)."""

    points: list[PointVectors]


class DeleteVectors(PointsSelector):
    """Vector fields (by name) to remove from the selected points."""

    vector: list[str]


class UpdateOperation(_Strict):
    """One operation of a batch update: exactly one of its keys."""

    upsert: UpsertPoints | None = None
    delete: PointsSelector | None = None
    set_payload: SetPayload | None = None
    overwrite_payload: SetPayload | None = None
    delete_payload: DeletePayload | None = None
    clear_payload: PointsSelector | None = None
    update_vectors: UpdateVectors | None = None
    delete_vectors: DeleteVectors | None = None

    @model_validator(mode="after")
    def _one(self) -> UpdateOperation:
        if len(self.model_fields_set) != 1 or getattr(self, next(iter(self.model_fields_set))) is None:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)}")
        return self

    def only(self) -> tuple[str, Any]:
        name = next(iter(self.model_fields_set))
        return name, getattr(self, name)


class UpdateOperations(_Strict):
    operations: list[UpdateOperation]


class GetPoints(_Strict):
    ids: list[PointId]
    with_payload: PayloadSelector = True
    with_vector: VectorSelector = False


class SearchRequest(_Strict):
    """Qdrant's legacy search (``vector`` may be ``{"name", "vector"}``); ``explain`` is
    Quiver's extension."""

    vector: VectorValue | NamedVector
    limit: int = Field(10, ge=1, description="k: number of results.")
    offset: int = Field(0, ge=0, description="Skip this many of the best hits.")
    filter: dict[str, Any] | None = None
    params: QueryParams | None = None
    using: str | None = Field(None, max_length=64,
                              description="The vector field to search (collections with named vectors).")
    with_payload: PayloadSelector = False
    with_vector: VectorSelector = False
    explain: bool = False
    score_threshold: float | None = Field(
        None, description="Drop hits scoring worse: below it for ip/cosine, above it for l2.")


class SearchGroupsRequest(_Strict):
    """Qdrant's legacy ``search/groups``: a search whose hits come in groups by the payload
    key ``group_by`` (``limit`` groups of ``group_size``)."""

    vector: VectorValue | NamedVector
    group_by: str = Field(min_length=1, max_length=256)
    group_size: int = Field(3, ge=1)
    limit: int = Field(10, ge=1, description="The number of groups.")
    filter: dict[str, Any] | None = None
    params: QueryParams | None = None
    using: str | None = Field(None, max_length=64)
    with_payload: PayloadSelector = False
    with_vector: VectorSelector = False
    score_threshold: float | None = None
    with_lookup: str | WithLookup | None = None


class SearchBatch(_Strict):
    searches: list[SearchRequest]


class ScrollRequest(_Strict):
    filter: dict[str, Any] | None = None
    limit: int = Field(10, ge=1)
    offset: PointId | None = Field(None, description="Cursor: the next_page_offset of a previous page.")
    with_payload: PayloadSelector = True
    with_vector: VectorSelector = False
    order_by: str | dict[str, Any] | None = Field(
        None, description='A payload key, or {"key", "direction": "asc"|"desc", "start_from"}: '
                          "points in the order of that value (numbers or datetimes), each with "
                          "its order_value; the next page starts from the last value.")


class CountRequest(_Strict):
    filter: dict[str, Any] | None = None
    exact: bool = Field(True, description="Accepted for Qdrant: Quiver's counts are always exact.")


class FacetRequest(_Strict):
    """``POST /collections/{name}/facet``: the most frequent values of a payload key."""

    key: str = Field(min_length=1, max_length=256)
    limit: int = Field(10, ge=1, le=10_000)
    filter: dict[str, Any] | None = None
    exact: bool = Field(True, description="Accepted for Qdrant: Quiver's counts are always exact.")


class SearchMatrixRequest(_Strict):
    """``POST /collections/{name}/points/search/matrix/{pairs,offsets}``: ``sample`` random
    points (among those ``filter`` admits) and each one's ``limit`` nearest among them."""

    filter: dict[str, Any] | None = None
    sample: int = Field(10, ge=2)
    limit: int = Field(3, ge=1)
    using: str | None = Field(None, max_length=64)


PayloadType = Literal["keyword", "integer", "float", "bool", "datetime", "uuid", "geo", "text"]
"""Qdrant's payload index types (``Collection.create_payload_index`` says what uuid, geo
and text become)."""


class PayloadFieldSchema(_Strict):
    """``field_schema`` as Qdrant's object form: its ``type``; the index tuning Qdrant takes
    beside it (``is_tenant``, ``on_disk``, ``lookup``, ``range``, ...) is left to Quiver."""

    model_config = ConfigDict(extra="allow")
    type: PayloadType


class TrainQueriesRequest(_Strict):
    """A sample of the queries a field will see (``Collection.train_queries``)."""

    queries: list[list[float]] = Field(min_length=1, max_length=100_000)
    using: str | None = None


class PayloadIndexRequest(_Strict):
    field_name: str = Field(min_length=1, max_length=256)
    field_schema: PayloadType | PayloadFieldSchema

    @property
    def field_type(self) -> str:
        return self.field_schema if isinstance(self.field_schema, str) else self.field_schema.type


def update_result(wait: bool, **counts: int) -> dict[str, Any]:
    """Qdrant's ``UpdateResult``: a write is applied and durable when answered, so
    ``completed`` when the caller waited (``?wait=true``); Quiver's counts beside it."""
    return {**counts, "status": "completed" if wait else "acknowledged"}


class ScoredPoint(BaseModel):
    id: PointId
    score: float | None = None
    payload: dict[str, Any] | None = None
    vector: list[float] | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody
