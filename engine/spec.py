"""The index spec grammar: FAISS-like factory strings with nested parameters.

    spec  := part ("," part)*
    part  := NAME [NUMBER ("x" NUMBER)* [SUFFIX]] ["(" arg ("," arg)* ")"]
    arg   := NUMBER | part

``"IVF1024,PQ48x8,Refine(F16)"`` is three parts: IVF with numbers (1024,), PQ with (48, 8),
Refine with one argument, the part F16. Letters after the numbers are a variant suffix
(``PQ96x4fs``: PQ, numbers (96, 4), suffix ``fs``). Parsing knows no index or codec: the registries give
the parts their meaning, so a new index type or codec needs no change here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z][A-Za-z_]*?)(?P<nums>\d+(?:[xX]\d+)*(?P<suffix>[A-Za-z]+)?)?"
                    r"(?=[\s,()]|$)"
                    r"|(?P<num>\d+)|(?P<punct>[,()]))")


@dataclass(frozen=True)
class SpecPart:
    """One comma-separated part: ``name`` (letters), trailing ``numbers`` and variant
    ``suffix`` (lower case), nested ``args`` (ints or parts), and the ``text`` it was written
    as."""

    name: str
    numbers: tuple[int, ...] = ()
    args: tuple[int | SpecPart, ...] = ()
    text: str = ""
    suffix: str = ""

    @property
    def key(self) -> str:
        """Upper-case name with its numbers and suffix, e.g. ``LVQ4X8``, ``PQ96X4FS``: what
        registries match first."""
        return self.name.upper() + "X".join(str(n) for n in self.numbers) + self.suffix.upper()

    @property
    def family(self) -> str:
        """Upper-case name alone (``PQ``), for parameterised entries."""
        return self.name.upper()

    def __str__(self) -> str:
        return self.text or self.key


def parse_spec(spec: str) -> list[SpecPart]:
    """Parts of ``spec``; a malformed string is an ``InvalidArgument`` that points at it."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument(f"spec: expected a string like 'HNSW16,LVQ8', got {spec!r}")
    tokens = _tokenize(spec)
    parts, i = _parse_list(spec, tokens, 0, top=True)
    if i != len(tokens):
        raise _bad(spec, tokens[i][1], f"unexpected {tokens[i][0]!r}")
    return parts


def _bad(spec: str, at: int, why: str) -> InvalidArgument:
    return InvalidArgument(f"spec: cannot parse {spec!r} at character {at + 1}: {why}")


def _tokenize(spec: str) -> list[tuple[str, int, re.Match]]:
    out = []
    pos = 0
    while pos < len(spec):
        if spec[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(spec, pos)
        if m is None or m.end() == pos:
            raise _bad(spec, pos, f"unexpected {spec[pos]!r}")
        out.append((m.group(0).strip(), m.start() + len(m.group(0)) - len(m.group(0).lstrip()), m))
        pos = m.end()
    return out


def _parse_list(spec, tokens, i, top: bool) -> tuple[list, int]:
    items: list = []
    while True:
        if i >= len(tokens):
            raise _bad(spec, len(spec) - 1, "the spec ends where a part was expected")
        text, at, m = tokens[i]
        if m.group("num") is not None:
            if top:
                raise _bad(spec, at, f"a number ({text}) where an index or codec name was expected")
            items.append(int(text))
            i += 1
        elif m.group("name") is not None:
            part, i = _parse_part(spec, tokens, i)
            items.append(part)
        else:
            raise _bad(spec, at, f"unexpected {text!r}")
        if i < len(tokens) and tokens[i][0] == ",":
            i += 1
            continue
        return items, i


def _parse_part(spec, tokens, i) -> tuple[SpecPart, int]:
    text, at, m = tokens[i]
    suffix = (m.group("suffix") or "").lower()
    digits = m.group("nums")[: len(m.group("nums")) - len(suffix)] if m.group("nums") else ""
    nums = tuple(int(n) for n in digits.lower().split("x")) if digits else ()
    i += 1
    args: tuple = ()
    end = at + len(text)
    if i < len(tokens) and tokens[i][0] == "(":
        inner, i = _parse_list(spec, tokens, i + 1, top=False)
        if i >= len(tokens) or tokens[i][0] != ")":
            raise _bad(spec, tokens[i][1] if i < len(tokens) else len(spec) - 1,
                       f"missing ')' after the arguments of {text}")
        end = tokens[i][1] + 1
        i += 1
        args = tuple(inner)
    return SpecPart(m.group("name"), nums, args, spec[at:end], suffix), i
