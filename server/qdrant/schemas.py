"""Qdrant's request bodies, as the ``qdrant-client`` package (``qdrant_client.http.models``)
defines them, reduced to what Quiver can honour. Unknown keys are a 422 naming them, so a
setting Quiver would silently drop is never mistaken for one it applied."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

PointId = StrictInt | StrictStr
Number = Annotated[float, Strict()]
"""A vector element: a JSON number (integers too), never ``true`` or ``"1"`` made one."""
Tokens = list[list[Number]]
"""A multi-vector field's value: one token vector per row."""
VectorValue = list[Number] | Tokens
Distance = Literal["Cosine", "Dot", "Euclid", "Manhattan"]
PayloadSelector = bool | list[str] | dict[Literal["include", "exclude"], list[str]]
VectorSelector = bool | list[str]
"""``with_vector``: all fields or none, or the names of the fields to return."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HnswConfigDiff(_Strict):
    """``m`` and ``ef_construct`` shape the graph; the others are resource hints Quiver's
    engine decides for itself (accepted, so configs written for Qdrant load unchanged)."""

    m: int | None = Field(None, ge=0, le=512, description="Links per node; 0: no graph (exact scans).")
    ef_construct: int | None = Field(None, ge=4, le=4096)
    full_scan_threshold: int | None = Field(None, ge=0)
    max_indexing_threads: int | None = Field(None, ge=0)
    on_disk: bool | None = None
    payload_m: int | None = Field(None, ge=0)
    inline_storage: bool | None = None


class ScalarQuantizationConfig(_Strict):
    type: Literal["int8"]
    quantile: float | None = Field(None, ge=0.5, le=1.0)
    always_ram: bool | None = None


class QuantizationConfig(_Strict):
    """One of ``scalar`` (Quiver's SQ8 codec), ``product`` or ``binary`` (no codec fits
    them: a 400 says what to use instead)."""

    scalar: ScalarQuantizationConfig | None = None
    product: dict[str, Any] | None = None
    binary: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> QuantizationConfig:
        if sum(x is not None for x in (self.scalar, self.product, self.binary)) != 1:
            raise ValueError("give exactly one of scalar, product, binary")
        return self


class MultiVectorConfig(_Strict):
    """A field holding a matrix of token vectors per point, scored by MaxSim (served by
    MUVERA: a dense index over fixed-dimensional encodings, exact re-ranking)."""

    comparator: Literal["max_sim"]


class QdrantVectorParams(_Strict):
    """One dense vector field. ``index`` is Quiver's extension: an index spec such as
    ``"HNSW16,LVQ8"`` that replaces ``hnsw_config``, ``quantization_config`` and
    ``datatype``."""

    size: int = Field(gt=0, le=65536)
    distance: Distance
    hnsw_config: HnswConfigDiff | None = None
    quantization_config: QuantizationConfig | None = None
    on_disk: bool | None = None
    datatype: Literal["float32", "float16", "uint8"] | None = None
    multivector_config: MultiVectorConfig | None = None
    index: str | None = Field(None, max_length=128, description="Quiver extension: an index spec.")


class QdrantCreateCollection(_Strict):
    """``PUT /collections/{name}`` in Qdrant's form. Sharding, replication, optimizer and
    WAL settings are accepted and left to Quiver's engine (one node, its own optimizer);
    ``segment_size`` and ``fsync`` are Quiver's extensions."""

    vectors: QdrantVectorParams | dict[str, QdrantVectorParams]
    hnsw_config: HnswConfigDiff | None = None
    quantization_config: QuantizationConfig | None = None
    on_disk_payload: bool | None = None
    shard_number: int | None = Field(None, ge=1)
    sharding_method: Literal["auto"] | None = None
    replication_factor: int | None = Field(None, ge=1)
    write_consistency_factor: int | None = Field(None, ge=1)
    optimizers_config: dict[str, Any] | None = None
    wal_config: dict[str, Any] | None = None
    sparse_vectors: dict[str, Any] | None = None
    segment_size: int = Field(50_000, ge=1, le=10_000_000)
    fsync: Literal["batch", "always", "never"] = "batch"


class UpdateCollection(_Strict):
    """``PATCH /collections/{name}``: optimizer and replication settings are accepted and
    left to Quiver's engine, as at creation; changing the vectors' index (``vectors``,
    ``hnsw_config``, ``quantization_config``) would rebuild it and is refused (build a new
    collection and swap an alias to it)."""

    optimizers_config: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    vectors: dict[str, Any] | None = None
    hnsw_config: dict[str, Any] | None = None
    quantization_config: dict[str, Any] | str | None = None

    def check(self) -> None:
        for key in ("vectors", "hnsw_config", "quantization_config"):
            if getattr(self, key):
                raise ValueError(f"{key}: changing the index of an existing collection is not "
                                 f"supported; create a new collection and point an alias at it")


class QuantizationSearchParams(_Strict):
    ignore: StrictBool = False
    rescore: StrictBool | None = None
    oversampling: StrictFloat | StrictInt | None = Field(None, ge=1)


class QueryParams(_Strict):
    """Qdrant's search ``params`` (``hnsw_ef``, ``exact``, ``quantization``,
    ``indexed_only``) and Quiver's knobs (``ef``, ``nprobe``, ``rerank``, ``candidates``) in
    one object. ``indexed_only`` is accepted and ignored: Quiver searches unindexed points
    too."""

    hnsw_ef: StrictInt | None = Field(None, ge=1)
    exact: StrictBool | None = None
    quantization: QuantizationSearchParams | None = None
    indexed_only: StrictBool | None = None
    ef: StrictInt | None = Field(None, ge=1)
    nprobe: StrictInt | None = Field(None, ge=1)
    rerank: StrictBool | Literal["exact"] | None = None
    candidates: StrictInt | None = Field(None, ge=1)


Example = list[Number] | Tokens | PointId
"""A vector (a token matrix for a multi-vector field), or the id of a stored point whose
vector stands for it."""


class Mmr(_Strict):
    """Maximal marginal relevance over the ``candidates_limit`` nearest (default: the limit)."""

    diversity: float | None = Field(None, ge=0, le=1, description="0: relevance only (the "
                                    "default 0.5 balances); 1: difference from the picks only.")
    candidates_limit: int | None = Field(None, ge=0)


class NearestQuery(_Strict):
    nearest: Example
    mmr: Mmr | None = None


class RecommendInput(_Strict):
    positive: list[Example] = Field(default_factory=list)
    negative: list[Example] = Field(default_factory=list)
    strategy: Literal["average_vector", "best_score", "sum_scores"] | None = None


class RecommendQuery(_Strict):
    """Points like the ``positive`` examples and unlike the ``negative`` ones."""

    recommend: RecommendInput


class FusionQuery(_Strict):
    fusion: Literal["rrf", "dbsf"]


class Rrf(_Strict):
    k: int | None = Field(None, ge=1)
    weights: list[float] | None = None


class RrfQuery(_Strict):
    rrf: Rrf


class ContextPair(_Strict):
    positive: Example
    negative: Example


class DiscoverInput(_Strict):
    target: Example
    context: list[ContextPair] | ContextPair | None = None


class DiscoverQuery(_Strict):
    """Points near ``target`` on the positive side of the most ``context`` pairs: the score's
    integer part counts the pairs whose positive is closer (minus those whose negative is),
    its fraction is the closeness to the target."""

    discover: DiscoverInput


class ContextQuery(_Strict):
    """Points closer to each pair's positive than to its negative: the score is 0 there, and
    below 0 by how far a point is on the wrong side of each pair."""

    context: list[ContextPair] | ContextPair


class OrderBy(_Strict):
    key: str = Field(min_length=1, max_length=256)
    direction: Literal["asc", "desc"] | None = None
    start_from: StrictInt | StrictFloat | StrictStr | None = None


class OrderByQuery(_Strict):
    """Points in the order of a payload value, as a scroll's ``order_by`` (score 0, the value
    in ``order_value``)."""

    order_by: str | OrderBy


class SampleQuery(_Strict):
    """Points picked at random among those the filter admits (score 0)."""

    sample: Literal["random"]


class FormulaQuery(_Strict):
    """The prefetched points re-scored by an expression over their prefetch scores, payload
    values and conditions (server/qdrant/formula.py says what it may hold)."""

    formula: Any
    defaults: dict[str, Any] | None = None


_QUERY_KINDS = {"nearest": "nearest", "recommend": "recommend", "discover": "discover",
                "context": "context", "order_by": "order_by", "sample": "sample",
                "fusion": "fusion", "rrf": "rrf", "formula": "formula"}
UNSUPPORTED_QUERIES = {"relevance_feedback": "relevance feedback queries are not supported"}


def _query_kind(v: Any) -> str | None:
    """The query's kind: an example (a vector, a token matrix or a point id), or the one key
    of a query object (None: an object of no known kind, answered with the kinds there are)."""
    if isinstance(v, BaseModel):
        v = v.model_dump(exclude_unset=True)
    if not isinstance(v, dict):
        return "example"
    keys = [k for k in v if k not in ("mmr", "defaults")]  # (a nearest's, a formula's)
    return _QUERY_KINDS.get(keys[0]) if len(keys) == 1 else None


QueryInput = Annotated[
    Annotated[Example, Tag("example")] | Annotated[NearestQuery, Tag("nearest")]
    | Annotated[RecommendQuery, Tag("recommend")] | Annotated[DiscoverQuery, Tag("discover")]
    | Annotated[ContextQuery, Tag("context")] | Annotated[OrderByQuery, Tag("order_by")]
    | Annotated[SampleQuery, Tag("sample")] | Annotated[FusionQuery, Tag("fusion")]
    | Annotated[RrfQuery, Tag("rrf")] | Annotated[FormulaQuery, Tag("formula")],
    Discriminator(_query_kind, custom_error_type="query_kind",
                  custom_error_message="expected a vector, a point id or one of "
                                       "{nearest, recommend, discover, context, order_by, "
                                       "sample, fusion, rrf, formula}")]
SELF_SCORED = (DiscoverQuery, ContextQuery, OrderByQuery, SampleQuery)
"""Query kinds whose scores are their own (not a distance to one vector)."""


class LookupFrom(_Strict):
    """Where examples given by id are read: another collection's vector field (its points
    are then not left out of the answer)."""

    collection: str = Field(min_length=1, max_length=256)
    vector: str | None = Field(None, max_length=64)


class Prefetch(_Strict):
    """A search whose hits the enclosing query fuses or re-scores."""

    prefetch: Prefetch | list[Prefetch] | None = None
    query: QueryInput | None = None
    using: str | None = Field(None, max_length=64)
    filter: dict[str, Any] | None = None
    params: QueryParams | None = None
    score_threshold: float | None = None
    limit: int = Field(10, ge=1)
    lookup_from: LookupFrom | None = None

    @field_validator("query", mode="before")
    @classmethod
    def _supported(cls, v: Any) -> Any:
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in UNSUPPORTED_QUERIES:
            kind = next(iter(v))
            raise PydanticCustomError("unsupported_query", f"{kind}: {UNSUPPORTED_QUERIES[kind]}")
        return v


class QueryRequest(Prefetch):
    """``POST /points/query``: ``query`` is a vector, a point id (search with its vector,
    the point itself left out), ``{"nearest": either}``, ``{"recommend": ...}``,
    ``{"discover": ...}``, ``{"context": ...}``, ``{"order_by": ...}``, ``{"sample":
    "random"}``, or a fusion or re-scoring of the ``prefetch`` searches (``{"fusion": "rrf" |
    "dbsf"}``, ``{"rrf": {"k"}}``, ``{"formula": ..., "defaults": ...}``)."""

    offset: int = Field(0, ge=0)
    with_vector: VectorSelector = False
    with_payload: PayloadSelector = False


class WithLookup(_Strict):
    """A groups answer's ``lookup``: the point of collection ``collection`` whose id is the
    group's value (documents for groups of their chunks)."""

    collection: str = Field(min_length=1, max_length=256)
    with_payload: PayloadSelector = True
    with_vectors: VectorSelector = False


class QueryGroupsRequest(Prefetch):
    """``POST /points/query/groups``: the best ``limit`` groups of points sharing a value of
    the payload key ``group_by``, ``group_size`` hits each (a plain query: no prefetch)."""

    group_by: str = Field(min_length=1, max_length=256)
    group_size: int = Field(3, ge=1)
    with_vector: VectorSelector = False
    with_payload: PayloadSelector = False
    with_lookup: str | WithLookup | None = Field(
        None, description="A collection name (or {collection, with_payload, with_vectors}): "
                          "each group gets that collection's point with the group's id.")


class RecommendRequest(RecommendInput):
    """Legacy ``POST /points/recommend``: the examples and a search around them."""

    using: str | None = Field(None, max_length=64)
    filter: dict[str, Any] | None = None
    params: QueryParams | None = None
    score_threshold: float | None = None
    limit: int = Field(10, ge=1)
    offset: int = Field(0, ge=0)
    with_vector: VectorSelector = False
    with_payload: PayloadSelector = False
    lookup_from: LookupFrom | None = None

    def as_query(self) -> QueryRequest:
        rec = RecommendInput(positive=self.positive, negative=self.negative, strategy=self.strategy)
        return QueryRequest(query=RecommendQuery(recommend=rec), **self.model_dump(
            exclude={"positive", "negative", "strategy"}, exclude_unset=True))


class RecommendBatch(_Strict):
    searches: list[RecommendRequest]


class QueryBatch(_Strict):
    searches: list[QueryRequest]


class NamedVector(_Strict):
    """Legacy search's ``{"name": field, "vector": [...]}``."""

    name: str = Field(max_length=64)
    vector: VectorValue


class UpsertBatch(_Strict):
    """The columnar form of an upsert: ``vectors`` a matrix, or matrices by field name."""

    ids: list[PointId]
    vectors: list[list[Number]] | dict[str, list[VectorValue]]
    payloads: list[dict[str, Any] | None] | None = None


class CreateAlias(_Strict):
    collection_name: str
    alias_name: str


class DeleteAlias(_Strict):
    alias_name: str


class RenameAlias(_Strict):
    old_alias_name: str
    new_alias_name: str


class AliasAction(_Strict):
    """One of ``create_alias``, ``delete_alias``, ``rename_alias``."""

    create_alias: CreateAlias | None = None
    delete_alias: DeleteAlias | None = None
    rename_alias: RenameAlias | None = None

    def engine(self) -> tuple[str, ...]:
        """The action as ``Database.update_aliases`` takes it."""
        given = [a for a in (self.create_alias, self.delete_alias, self.rename_alias) if a is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of create_alias, delete_alias, rename_alias")
        a = given[0]
        if isinstance(a, CreateAlias):
            return ("create", a.alias_name, a.collection_name)
        if isinstance(a, DeleteAlias):
            return ("delete", a.alias_name)
        return ("rename", a.old_alias_name, a.new_alias_name)


class AliasActions(_Strict):
    actions: list[AliasAction]
