"""Which part of a payload a read returns (``with_payload``).

Payloads often carry large fields (a document's text, its chunks) that a caller only needs
some of the time; returning only the keys asked for saves decoding, serialising and sending
them. Shapes follow Qdrant: ``True`` / ``False``, a list of keys to include, or
``{"include": [...]}`` / ``{"exclude": [...]}``. Keys are dotted paths (``"meta.author"``) that
descend through nested objects.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgument
from .payload import split_key


class PayloadProjection:
    """Applies a parsed ``with_payload`` selector to one payload."""

    __slots__ = ("exclude", "include")

    def __init__(self, include: tuple[tuple[str, ...], ...] | None = None,
                 exclude: tuple[tuple[str, ...], ...] | None = None):
        self.include, self.exclude = include, exclude

    def __call__(self, payload: dict | None) -> dict | None:
        if payload is None or (self.include is None and self.exclude is None):
            return payload
        if self.include is not None:
            out: dict = {}
            for path in self.include:
                _copy_path(payload, out, path)
            return out
        out = payload
        for path in self.exclude or ():
            out = _without(out, path)
        return out


ALL = PayloadProjection()


def payload_projection(spec: Any, name: str = "with_payload") -> PayloadProjection | None:
    """None (no payload), ``ALL``, or a projection; errors name ``name``."""
    if isinstance(spec, (bool, np.bool_)):
        return ALL if spec else None
    if isinstance(spec, (list, tuple)):
        return PayloadProjection(include=payload_paths(spec, name))
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in ("include", "exclude"):
        (kind, keys), = spec.items()
        if not isinstance(keys, (list, tuple)):
            raise InvalidArgument(f"{name}.{kind}: expected a list of keys, got "
                                  f"{type(keys).__name__}")
        paths = payload_paths(keys, f"{name}.{kind}")
        return PayloadProjection(include=paths) if kind == "include" else \
            PayloadProjection(exclude=paths)
    raise InvalidArgument(f"{name}: expected true/false, a list of keys, or "
                          f'{{"include": [...]}} / {{"exclude": [...]}}, got {spec!r:.80}')


def payload_paths(keys: list | tuple, name: str) -> tuple[tuple[str, ...], ...]:
    out = []
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise InvalidArgument(f"{name}[{i}]: expected a key string, got {type(key).__name__}")
        if "[]" in key:
            raise InvalidArgument(f"{name}[{i}]: key {key!r}: selecting inside arrays ('[]') "
                                  "is not supported; name the array itself")
        try:
            out.append(split_key(key))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{name}[{i}]: {exc}") from None
    return tuple(out)


def _copy_path(src: dict, dst: dict, path: tuple[str, ...]) -> None:
    node: Any = src
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    for part in path[:-1]:
        nxt = dst.get(part)  # copied: it may be the stored payload's own dict
        dst[part] = nxt = dict(nxt) if isinstance(nxt, dict) else {}
        dst = nxt
    dst[path[-1]] = node


def _without(node: dict, path: tuple[str, ...]) -> dict:
    """``node`` less ``path``, copying only the dicts on the way (payloads are shared)."""
    head = path[0]
    if head not in node:
        return node
    out = dict(node)
    if len(path) == 1:
        del out[head]
    elif isinstance(out[head], dict):
        out[head] = _without(out[head], path[1:])
    return out
