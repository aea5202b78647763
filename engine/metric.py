"""Metrics and their score conventions.

``l2``: score is the squared Euclidean distance, ascending (smaller is closer).
``ip``: score is the inner product, descending (larger is closer).
``cosine``: vectors and queries are normalised, score is the cosine similarity, descending.
Kernels work on distances (smaller is closer); ``ip``/``cosine`` distances are ``-score``.
"""

from __future__ import annotations

import enum

import numpy as np

from .errors import InvalidArgument


class Metric(str, enum.Enum):
    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @classmethod
    def parse(cls, value: str | Metric) -> Metric:
        if isinstance(value, Metric):
            return value
        aliases = {"l2": "l2", "euclidean": "l2", "ip": "ip", "dot": "ip", "inner_product": "ip",
                   "cosine": "cosine", "cos": "cosine", "angular": "cosine"}
        key = aliases.get(str(value).lower())
        if key is None:
            raise InvalidArgument(
                f"metric: unknown metric {value!r}; expected one of 'l2', 'ip', 'cosine'")
        return cls(key)

    @property
    def kernel_metric(self) -> str:
        """The metric the kernels see: cosine is ip over normalised vectors."""
        return "l2" if self is Metric.L2 else "ip"

    @property
    def higher_is_better(self) -> bool:
        return self is not Metric.L2

    def scores_from_distances(self, dist: np.ndarray) -> np.ndarray:
        return dist if self is Metric.L2 else -dist

    def distance_bound(self) -> float:
        """Score used to pad missing results."""
        return np.inf if self is Metric.L2 else -np.inf
