"""Prometheus text exposition: per-route request counts and latency histograms."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self._hist: dict[tuple[str, str], list[int]] = {}
        self._sum: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route)
        with self._lock:
            self._counts[(method, route, status)] += 1
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0] * (len(BUCKETS) + 1)
            h[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[key] += seconds

    def render(self, collections: dict[str, dict], failed: Iterable[str] = ()) -> str:
        """``collections``: infos of the open collections by name; ``failed``: the names of
        those that failed to open (1 in quiver_collection_open_failed; the open ones 0)."""
        lines = ["# HELP quiver_requests_total HTTP requests by route and status.",
                 "# TYPE quiver_requests_total counter"]
        with self._lock:
            for (m, r, s), c in sorted(self._counts.items()):
                lines.append(f'quiver_requests_total{{method="{m}",route="{r}",status="{s}"}} {c}')
            lines += ["# HELP quiver_request_seconds HTTP request latency.",
                      "# TYPE quiver_request_seconds histogram"]
            for (m, r), h in sorted(self._hist.items()):
                acc = 0
                for le, c in zip((*BUCKETS, "+Inf"), h, strict=True):
                    acc += c
                    lines.append(f'quiver_request_seconds_bucket{{method="{m}",route="{r}",le="{le}"}} {acc}')
                total = self._sum[(m, r)]
                lines.append(f'quiver_request_seconds_sum{{method="{m}",route="{r}"}} {total:.6f}')
                lines.append(f'quiver_request_seconds_count{{method="{m}",route="{r}"}} {acc}')
        lines += ["# HELP quiver_collection_points Live points per collection.",
                  "# TYPE quiver_collection_points gauge"]
        for name, info in sorted(collections.items()):
            lines.append(f'quiver_collection_points{{collection="{name}"}} {info["points"]}')
        lines += ["# HELP quiver_collection_segments Segments per collection.",
                  "# TYPE quiver_collection_segments gauge"]
        for name, info in sorted(collections.items()):
            lines.append(f'quiver_collection_segments{{collection="{name}"}} {len(info["segments"])}')
        lines += ["# HELP quiver_collection_open_failed 1 for a collection that failed to open "
                  "(damaged files; GET /collections says why), else 0.",
                  "# TYPE quiver_collection_open_failed gauge"]
        states = {**dict.fromkeys(collections, 0), **dict.fromkeys(failed, 1)}
        for name, bad in sorted(states.items()):
            lines.append(f'quiver_collection_open_failed{{collection="{name}"}} {bad}')
        return "\n".join(lines) + "\n"
