"""The index-type table and the spec strings that build from it.

``quiver.index("HNSW32,LVQ8", dim)`` parses the spec once (``engine.spec``): the first part
names the index type, the second (optional, default F32) the codec, and later parts are
options such as ``Refine(F32)``; a leading ``OPQ<m>`` rotates the vectors first
(``engine.opq``). A new index type is one module plus one ``register_index``
call; segments build, train and load any registered type through this table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codecs import codec_from_spec
from ..device import parse_device
from ..errors import CorruptData, InvalidArgument
from ..metric import Metric
from ..persist import read_manifest
from ..pq import PQCodec  # registers the PQ<m>x8 codec
from ..spec import SpecPart, parse_spec
from ..validation import check_dim


@dataclass(frozen=True)
class ParsedSpec:
    """A spec split into its roles: the index part, the codec part, the option parts."""

    index: SpecPart
    codec: SpecPart
    options: tuple[SpecPart, ...]
    transform: SpecPart | None = None
    """A leading ``OPQ<m>`` part: the vectors are rotated before the index sees them."""

    def stores_f16(self) -> bool:
        """Whether rows are kept as float16, which holds no value beyond |x| = 65504: by the
        codec, a ``Refine(F16)`` or a LeanVec's F16 secondary."""
        parts = [self.codec, self.refine(), *self.codec.args]
        return any(isinstance(p, SpecPart) and p.key == "F16" for p in parts)

    def refine(self) -> SpecPart | None:
        """The codec of a ``Refine(...)`` option, if any."""
        for part in self.options:
            if part.family == "REFINE":
                if len(part.args) != 1 or not isinstance(part.args[0], SpecPart):
                    raise InvalidArgument(f"spec: Refine takes one codec, e.g. Refine(F32); got {part}")
                return part.args[0]
        return None


@dataclass(frozen=True)
class IndexType:
    """``form``: how a spec writes it; ``kind``: the name saved indexes carry; ``build``
    makes an empty index from the parsed spec; ``cls.load(dir)`` restores one."""

    form: str
    kind: str
    cls: type
    build: Callable[[ParsedSpec, int, Metric, dict[str, Any]], Any]
    options: tuple[str, ...] = ()
    """Spec option families (besides the codec) this type understands, e.g. REFINE."""


INDEX_TYPES: dict[str, IndexType] = {}
"""The one index-type table, keyed by a spec part's family (``HNSW``)."""


def register_index(family: str, entry: IndexType) -> None:
    INDEX_TYPES[family.upper()] = entry


def parse_index_spec(spec: str) -> ParsedSpec:
    """The roles of each part of ``spec``; unknown index types list what is accepted."""
    parts = parse_spec(spec)
    transform = None
    if parts[0].family == "OPQ":
        transform, parts = parts[0], parts[1:]
        if len(transform.numbers) != 1 or transform.args:
            raise InvalidArgument(f"spec: write OPQ<m> (a rotation for m sub-vectors, e.g. "
                                  f"OPQ48), got {transform}")
        if not parts:
            raise InvalidArgument(f"spec: OPQ<m> goes before an index, e.g. "
                                  f"OPQ48,IVF1024,PQ48x8; got {spec!r}")
    head = parts[0]
    entry = INDEX_TYPES.get(head.family)
    for part in (head, transform):
        if part is not None and part.suffix:
            raise InvalidArgument(f"spec: {part.family.title()} takes no variant suffix "
                                  f"({part.suffix!r}) in {spec!r}")
    if entry is None:
        raise InvalidArgument(f"spec: unknown index type {str(head)!r} in {spec!r}; accepted: "
                              f"{', '.join(e.form for e in INDEX_TYPES.values())}, each "
                              f"optionally after OPQ<m>")
    codec = parts[1] if len(parts) > 1 else SpecPart("F", (32,), (), "F32")
    options = tuple(parts[2:])
    for part in options:
        if part.family not in entry.options:
            allowed = ", ".join(f"{o.title()}(...)" for o in entry.options) or "none"
            raise InvalidArgument(f"spec: {head.family.title()} does not take {str(part)!r} in "
                                  f"{spec!r}; options it accepts after the codec: {allowed}")
    return ParsedSpec(head, codec, options, transform)


def index(spec: str, dim: int, metric: str | Metric = "l2", device: str | None = None,
          **options: Any):
    """An empty index built from a spec string, e.g. ``"Flat"``, ``"Flat,F16"``,
    ``"HNSW32,LVQ8"``. Keyword ``options`` go to the index (``ef_construction=200``).
    ``device="cuda"`` (or ``"cuda:1"``) builds a faiss index on that GPU (``index.gpu``:
    Flat, IVF<nlist>,Flat, IVF<nlist>,PQ<m>, CAGRA<degree>); None or ``"cpu"``: Quiver's own."""
    parsed = parse_index_spec(spec)
    metric = Metric.parse(metric)
    dim = check_dim(dim)
    if parse_device(device) is not None:
        from .gpu import FaissIndex

        return FaissIndex(dim, metric, spec, device=device, **options)
    codec_from_spec(parsed.codec, dim)  # names an unknown codec before the index type does
    built = INDEX_TYPES[parsed.index.family].build(parsed, dim, metric, options)
    if parsed.transform is not None:
        from ..opq import OPQIndex

        return OPQIndex(built, parsed.transform.numbers[0])
    return built


def load_index(directory: str | os.PathLike, mmap: bool = True):
    """Whatever index was saved in ``directory``, by the kind its manifest records."""
    kind = read_manifest(directory, None).get("kind")
    from ..muvera import MultiVectorIndex
    from ..opq import OPQIndex

    for wrapper in (OPQIndex, MultiVectorIndex):
        if kind == wrapper.kind:
            return wrapper.load(directory, mmap=mmap)
    for entry in INDEX_TYPES.values():
        if entry.kind == kind:
            return entry.cls.load(directory, mmap=mmap)
    raise CorruptData(f"{directory}: unknown index kind {kind!r}")


def _no_numbers(part: SpecPart) -> None:
    if part.numbers or part.args:
        raise InvalidArgument(f"spec: {part.family.title()} takes no parameters, got {part}")


def _build_flat(parsed: ParsedSpec, dim: int, metric: Metric, options: dict):
    from .flat import FlatIndex

    _no_numbers(parsed.index)
    return FlatIndex(dim, metric, dtype=_row_codec(parsed, dim, "Flat").name, **options)


def _row_codec(parsed: ParsedSpec, dim: int, index: str):
    """The spec's codec, which must store rows (PQ codes live in IVF lists)."""
    codec = codec_from_spec(parsed.codec, dim)
    if isinstance(codec, PQCodec):
        raise InvalidArgument(f"spec: PQ codes are searched by IVF (e.g. IVF1024,{parsed.codec}); "
                              f"{index} takes row codecs such as F32, F16, SQ8, LVQ8, LeanVec")
    return codec


def _build_hnsw(parsed: ParsedSpec, dim: int, metric: Metric, options: dict):
    from .hnsw import HNSWIndex

    head = parsed.index
    if len(head.numbers) > 1 or head.args:
        raise InvalidArgument(f"spec: write HNSW<M> (M links per node, e.g. HNSW16), got {head}")
    refine = parsed.refine()
    if refine is not None and codec_from_spec(refine, dim).name != "f32":
        raise InvalidArgument(f"spec: HNSW re-ranks on F32 vectors; Refine({refine}) is not "
                              f"available yet")
    links = head.numbers[0] if head.numbers else 16
    return HNSWIndex(dim, metric, m=links, codec=_row_codec(parsed, dim, "HNSW").name, **options)


def _build_ivf(parsed: ParsedSpec, dim: int, metric: Metric, options: dict):
    from .fastscan import IVFPQFastScanIndex
    from .ivf import IVFIndex
    from .ivfpq import IVFPQIndex

    head = parsed.index
    if len(head.numbers) != 1 or head.args:
        raise InvalidArgument(f"spec: write IVF<nlist> (nlist lists, e.g. IVF1024), got {head}")
    codec, refine = codec_from_spec(parsed.codec, dim), parsed.refine()
    if isinstance(codec, PQCodec):
        kind = IVFPQFastScanIndex if codec.nbits == 4 else IVFPQIndex
        return kind(dim, metric, nlist=head.numbers[0], codec=str(parsed.codec),
                          refine=None if refine is None else str(refine), **options)
    if refine is not None:
        raise InvalidArgument(f"spec: Refine re-ranks PQ codes; IVF over {codec.name.upper()} "
                              f"rows has nothing to refine")
    return IVFIndex(dim, metric, nlist=head.numbers[0], codec=codec.name, **options)


def _build_cagra(parsed: ParsedSpec, dim: int, metric: Metric, options: dict):
    raise InvalidArgument(f"spec: {parsed.index} is a GPU graph (cuVS CAGRA): build it with "
                          f"device='cuda'; on the CPU use HNSW<M>")


def _register_builtin() -> None:
    from .flat import FlatIndex
    from .gpu import FaissIndex  # imports no faiss until one is made
    from .hnsw import HNSWIndex
    from .ivf import IVFIndex

    register_index("FLAT", IndexType("Flat", "flat", FlatIndex, _build_flat))
    register_index("HNSW", IndexType("HNSW<M>", "hnsw", HNSWIndex, _build_hnsw, ("REFINE",)))
    register_index("IVF", IndexType("IVF<nlist>", "ivf", IVFIndex, _build_ivf, ("REFINE",)))
    # GPU only; its entry also loads saved faiss indexes (kind "faiss") of any spec
    register_index("CAGRA", IndexType("CAGRA<degree> (GPU)", "faiss", FaissIndex, _build_cagra))


_register_builtin()
