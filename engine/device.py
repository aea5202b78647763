"""Where an index is built and searched: the one parser of ``device`` values.

``None`` or ``"cpu"`` is Quiver's own CPU indexes; ``"cuda"`` / ``"cuda:<n>"`` is a faiss
index on that GPU (``engine.index.gpu``). Parsing lives here, apart from the GPU module, so
the CPU path never imports faiss.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument

_CUDA = re.compile(r"cuda(?::(\d+))?")


class DeviceUnavailable(InvalidArgument):
    """``device="cuda"`` asked for what this machine or install lacks (faiss, its GPU build,
    a visible GPU, cuVS); the message says which and how to get it."""


def parse_device(value: object, name: str = "device") -> int | None:
    """The CUDA device ordinal ``value`` names, or None for the CPU; anything else is an
    ``InvalidArgument`` naming ``name`` (the field or keyword it came from)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "cpu":
            return None
        m = _CUDA.fullmatch(text)
        if m is not None:
            return int(m.group(1) or 0)
    raise InvalidArgument(f"{name}: expected 'cpu', 'cuda' or 'cuda:<n>' (e.g. 'cuda:1'), got "
                          f"{value!r}")


def device_name(ordinal: int | None) -> str:
    """The canonical spelling: ``"cpu"`` or ``"cuda:<n>"``."""
    return "cpu" if ordinal is None else f"cuda:{ordinal}"
