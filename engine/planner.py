"""The query planner: per query batch and segment, how to search.

Strategies:
- ``exact``: scan the allowed rows (selective filters, small segments, ``exact=True``);
- ``filtered-traversal``: graph traversal that steps over rows the filter rejects to their
  allowed neighbours (two-hop expansion, ACORN-1 style; medium selectivity);
- ``traversal``: plain traversal with an in-loop bitset check on results (permissive
  filters, deletions, or no filter).

Each index type supplies its cost model (``strategy_costs``: estimated microseconds per
query for each strategy it offers, from the allowed count, k and the search parameters); the
planner takes the cheapest, and ``explain`` shows the choice beside every estimate. Indexes
also fall back to an exact scan per query when a traversal visits more nodes than the filter
allows or finds fewer than k hits; ``explain`` counts those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from .params import SearchParams

STRATEGIES = ("exact", "filtered-traversal", "traversal")
"""In order of preference when estimates tie."""

SCAN_BYTES_PER_US = 11_800.0
"""Exact-scan throughput, one thread: float32 384-d rows at 0.13 us a row (WordNet 117k,
the measurement the HNSW cost model's crossovers come from); bandwidth-bound, so cost
follows the bytes read per row."""


class CostModel(Protocol):
    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]: ...


@dataclass(slots=True)
class Plan:
    """The planner's choice for one segment (or one index) and what it estimated."""

    strategy: str
    allowed: int
    points: int
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def selectivity(self) -> float:
        return self.allowed / self.points if self.points else 0.0

    def explain(self) -> dict[str, Any]:
        """What the search reports: the choice and every estimate (None for infinite)."""
        return {"strategy": self.strategy, "allowed": self.allowed, "points": self.points,
                "selectivity": self.selectivity,
                "estimated_us_per_query": {s: round(c, 3) if c < math.inf else None
                                           for s, c in self.costs.items()}}


def scan_cost(rows: int, bytes_per_row: float) -> float:
    """Estimated microseconds for one query to scan ``rows`` rows of ``bytes_per_row``."""
    return rows * bytes_per_row / SCAN_BYTES_PER_US


def choose(index: CostModel, allowed: int, points: int, k: int, params: SearchParams,
           filtered: bool, **hints) -> Plan:
    """The cheapest strategy ``index`` offers for ``allowed`` of ``points`` rows; ``hints``
    (what only the caller knows, such as a multi-vector query's token count) go to its cost
    model."""
    if points == 0 or allowed == 0:
        return Plan("exact", allowed, points, {"exact": 0.0})
    costs = index.strategy_costs(allowed, points, k, params, filtered, **hints)
    if params.exact or len(costs) == 1:
        strategy = "exact" if params.exact else next(iter(costs))
    else:  # the cheapest; of equal ones, the first in STRATEGIES
        strategy, best = "exact", math.inf
        for s in STRATEGIES:
            c = costs.get(s, math.inf)
            if c < best:
                strategy, best = s, c
    return Plan(strategy, allowed, points, costs)
