"""Geo points in payloads (``{"lon": x, "lat": y}``, degrees) and the shapes Qdrant's geo
filters test them against: a radius in metres, a bounding box, a polygon with holes.

Every test takes arrays of longitudes and latitudes and answers a boolean mask, so one
implementation serves the vectorised filter compiler and the per-payload reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument

EARTH_RADIUS_M = 6_371_008.8
"""The mean Earth radius (IUGG), as the haversine distance of Qdrant's geo crate uses."""


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None (not a number, a bool, inf, nan, or an integer too
    large for a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def geo_point(v: Any) -> tuple[float, float] | None:
    """(lon, lat) if ``v`` is a payload geo point (an object with numeric lon and lat; other
    keys beside them are allowed, as Qdrant allows them), else None; values outside the
    globe are no point."""
    if not isinstance(v, dict):
        return None
    lon, lat = finite(v.get("lon")), finite(v.get("lat"))
    if lon is None or lat is None or not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        return None
    return lon, lat


def parse_point(v: Any, path: str) -> tuple[float, float]:
    """A filter's point ``{"lon", "lat"}``; InvalidArgument naming ``path`` otherwise."""
    if not isinstance(v, dict) or set(v) != {"lon", "lat"}:
        raise InvalidArgument(f'{path}: expected {{"lon": ..., "lat": ...}}, got {v!r:.80}')
    lon, lat = finite(v["lon"]), finite(v["lat"])
    for k, x in (("lon", lon), ("lat", lat)):
        if x is None:
            raise InvalidArgument(f"{path}.{k}: expected a number, got {v[k]!r:.40}")
    if not -180.0 <= lon <= 180.0:
        raise InvalidArgument(f"{path}.lon: {v['lon']} is outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise InvalidArgument(f"{path}.lat: {v['lat']} is outside [-90, 90]")
    return lon, lat


def haversine_m(lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float) -> np.ndarray:
    """Great-circle distances in metres from (lon0, lat0)."""
    p, p0 = np.radians(lat), math.radians(lat0)
    a = (np.sin((p - p0) / 2) ** 2
         + np.cos(p) * math.cos(p0) * np.sin(np.radians(lon - lon0) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass(frozen=True, slots=True)
class GeoRadius:
    key: str
    lon: float
    lat: float
    radius: float

    def test(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return haversine_m(lon, lat, self.lon, self.lat) <= self.radius


@dataclass(frozen=True, slots=True)
class GeoBox:
    """``top_left`` and ``bottom_right`` corners; a box whose left edge is east of its right
    edge spans the antimeridian."""
    key: str
    left: float
    top: float
    right: float
    bottom: float

    def test(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        in_lat = (lat >= self.bottom) & (lat <= self.top)
        if self.left <= self.right:
            return in_lat & (lon >= self.left) & (lon <= self.right)
        return in_lat & ((lon >= self.left) | (lon <= self.right))


@dataclass(frozen=True, slots=True)
class GeoPolygon:
    """An exterior ring and holes, each a tuple of (lon, lat) vertices (closed or not),
    tested on the plane of degrees (as Qdrant does)."""
    key: str
    exterior: tuple[tuple[float, float], ...]
    interiors: tuple[tuple[tuple[float, float], ...], ...] = ()

    def test(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        inside = _in_ring(self.exterior, lon, lat)
        for hole in self.interiors:
            inside &= ~_in_ring(hole, lon, lat)
        return inside


def _in_ring(ring: tuple[tuple[float, float], ...], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, one edge at a time over all points."""
    inside = np.zeros(np.shape(x), bool)
    n = len(ring)
    for i in range(n):
        (x1, y1), (x2, y2) = ring[i], ring[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return inside


def _ring(v: Any, path: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(v, dict) or set(v) != {"points"} or not isinstance(v["points"], list):
        raise InvalidArgument(f'{path}: expected {{"points": [{{"lon", "lat"}}, ...]}}')
    pts = [parse_point(p, f"{path}.points[{i}]") for i, p in enumerate(v["points"])]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if len(set(pts)) < 3:
        raise InvalidArgument(f"{path}.points: a ring needs at least 3 distinct points")
    return tuple(pts)


def parse_geo(op: str, v: Any, key: str, path: str) -> GeoRadius | GeoBox | GeoPolygon:
    """Qdrant's ``geo_radius`` / ``geo_bounding_box`` / ``geo_polygon`` condition bodies."""
    if not isinstance(v, dict):
        raise InvalidArgument(f"{path}: expected an object, got {type(v).__name__}")
    if op == "geo_radius":
        if set(v) != {"center", "radius"}:
            raise InvalidArgument(f'{path}: expected {{"center": {{"lon", "lat"}}, "radius": '
                                  f'metres}}')
        lon, lat = parse_point(v["center"], f"{path}.center")
        r = finite(v["radius"])
        if r is None or r < 0:
            raise InvalidArgument(f"{path}.radius: expected metres >= 0, got {v['radius']!r:.40}")
        return GeoRadius(key, lon, lat, r)
    if op == "geo_bounding_box":
        if set(v) != {"top_left", "bottom_right"}:
            raise InvalidArgument(f'{path}: expected {{"top_left": {{"lon", "lat"}}, '
                                  f'"bottom_right": {{"lon", "lat"}}}}')
        left, top = parse_point(v["top_left"], f"{path}.top_left")
        right, bottom = parse_point(v["bottom_right"], f"{path}.bottom_right")
        if top < bottom:
            raise InvalidArgument(f"{path}: top_left.lat ({top}) is south of bottom_right.lat "
                                  f"({bottom})")
        return GeoBox(key, left, top, right, bottom)
    if not set(v) <= {"exterior", "interiors"} or "exterior" not in v:
        raise InvalidArgument(f'{path}: expected {{"exterior": {{"points": [...]}}, '
                              f'"interiors": [...]}}')
    holes = v.get("interiors") or []
    if not isinstance(holes, list):
        raise InvalidArgument(f"{path}.interiors: expected a list of rings")
    return GeoPolygon(key, _ring(v["exterior"], f"{path}.exterior"),
                      tuple(_ring(h, f"{path}.interiors[{i}]") for i, h in enumerate(holes)))
