"""Filters: parsing and its error messages, semantics, selectivity, and a property test that
compile() (with and without payload indexes) agrees with the reference evaluator."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quiver.engine.errors import InvalidArgument
from quiver.engine.filters import (
    Filter,
    HasId,
    Match,
    Range,
    compile,
    estimate_selectivity,
    id_lookup_from_ids,
    matches,
    parse_filter,
)
from quiver.engine.payload import INDEX_KINDS, PayloadStore, parse_datetime

import quiver

U1 = str(uuid.UUID(int=1))


# ---------------------------------------------------------------- parsing

def test_parse_tree():
    f = parse_filter({"must": [{"key": "pos", "match": {"value": 3}},
                               {"key": "t", "range": {"gte": "2024-01-01", "lt": None}}],
                      "should": None, "must_not": [{"has_id": [5, U1.upper()]},
                                                   {"should": [{"is_null": {"key": "x"}}]}]})
    assert f.must[0] == Match("pos", 3)
    assert f.must[1] == Range("t", gte=parse_datetime("2024-01-01"), datetime=True)
    assert f.must_not[0] == HasId(frozenset({5, U1}))
    assert isinstance(f.must_not[1], Filter) and f.should == ()
    assert parse_filter(None) == Filter() == parse_filter({})
    assert parse_filter({"must": {"key": "a", "match": {"value": "x"}}}).must == (Match("a", "x"),)
    with pytest.raises(AttributeError):
        f.must = ()  # immutable


@pytest.mark.parametrize("obj, message", [
    ([], "filter: expected an object with must/should/must_not, got list"),
    ({"mustnt": []}, "filter: unknown clause 'mustnt'"),
    ({"must": 3}, "filter.must: expected a list of conditions, got int"),
    ({"must": [{"key": "a", "match": {"value": 1}}, {"key": "a", "range": {"gtx": 1}}]},
     "filter.must[1].range: unknown operator 'gtx'"),
    ({"must": ["a"]}, "filter.must[0]: expected a condition object, got str"),
    ({"should": [{"key": "a", "match": {"value": 1.5}}]},
     "filter.should[0].match.value: expected a string, integer or bool, got float "
     "(use range for numbers)"),
    ({"must": [{"key": "a", "match": {"value": None}}]},
     "filter.must[0].match.value: expected a string, integer or bool, got null"),
    ({"must": [{"key": "a", "match": {"any": [1, True]}}]},
     "filter.must[0].match.any[1]: expected a string or integer, got bool"),
    ({"must": [{"key": "a", "match": {"except": "x"}}]},
     "filter.must[0].match.except: expected a list, got str"),
    ({"must": [{"key": "a", "match": {"value": 1, "any": [1]}}]},
     "filter.must[0].match: expected exactly one of value, any, except"),
    ({"must": [{"key": "a", "match": {"like": 1}}]},
     "filter.must[0].match: unknown operator 'like'"),
    ({"must": [{"key": "a", "range": {"gt": "soon"}}]},
     "filter.must[0].range.gt: 'soon' is not an ISO-8601 datetime"),
    ({"must": [{"key": "a", "range": {"gt": 1, "lt": "2024-01-01"}}]},
     "filter.must[0].range: mixes numbers and datetimes"),
    ({"must": [{"key": "a", "range": {"gt": True}}]},
     "filter.must[0].range.gt: expected a number or an ISO-8601 datetime string, got bool"),
    ({"must": [{"key": "a", "range": {}}]}, "filter.must[0].range: expected at least one of"),
    ({"must": [{"key": "a", "range": {"gt": float("nan")}}]},
     "filter.must[0].range.gt: nan is not a finite number"),
    ({"must": [{"key": 3, "match": {"value": 1}}]}, "filter.must[0].key: expected a string, got int"),
    ({"must": [{"key": "a..b", "match": {"value": 1}}]}, "filter.must[0].key 'a..b'"),
    ({"must": [{"key": "a"}]}, "filter.must[0]: a field condition needs exactly one of match, range"),
    ({"must": [{"key": "a", "match": {"value": 1}, "range": {"gt": 1}}]},
     "filter.must[0]: a field condition needs exactly one of match, range, values_count, "
     "geo_radius, geo_bounding_box, geo_polygon; got match, range"),
    ({"must": [{"key": "a", "color": 1}]}, "filter.must[0]: unknown condition key 'color'"),
    ({"must": [{"key": "a", "geo_radius": {}}]}, 'filter.must[0].geo_radius: expected {"center"'),
    ({"must": [{"key": "a", "geo_radius": {"center": {"lon": 0, "lat": 91}, "radius": 1}}]},
     "filter.must[0].geo_radius.center.lat: 91 is outside [-90, 90]"),
    ({"must": [{"key": "a", "geo_bounding_box": {"top_left": {"lon": 0, "lat": 0},
                                                 "bottom_right": {"lon": 1, "lat": 5}}}]},
     "filter.must[0].geo_bounding_box: top_left.lat (0.0) is south of bottom_right.lat"),
    ({"must": [{"key": "a", "geo_polygon": {"exterior": {"points": [{"lon": 0, "lat": 0}]}}}]},
     "filter.must[0].geo_polygon.exterior.points: a ring needs at least 3 distinct points"),
    ({"must": [{"key": "a", "values_count": {"gt": 1.5}}]},
     "filter.must[0].values_count.gt: expected an integer, got float"),
    ({"must": [{"nested": {"key": "a"}}]}, 'filter.must[0].nested: expected {"key"'),
    ({"must": [{"nested": {"key": "a", "filter": {"must": [{"has_id": [1]}]}}}]},
     "filter.must[0].nested.filter: has_id and has_vector are about points"),
    ({"must": [{"nested": {"key": "a", "filter": {"should": [{"has_vector": "v"}]}}}]},
     "filter.must[0].nested.filter: has_id and has_vector are about points"),
    ({"must": [{"key": "a", "geo_radius": {"center": {"lon": 0, "lat": 0}, "radius": 10**400}}]},
     "filter.must[0].geo_radius.radius: expected metres >= 0"),
    ({"must": [{"key": "a", "values_count": {"gt": -10**30}}]},
     "filter.must[0].values_count.gt: integer"),
    ({"must": [{"nested": {"key": "a", "filter": {"must": [{"key": "b"}]}}}]},
     "filter.must[0].nested.filter.must[0]: a field condition needs"),
    ({"must": [{"hasid": [1]}]}, "filter.must[0]: unknown condition key 'hasid'"),
    ({"must": [{"has_id": 1}]}, "filter.must[0].has_id: expected a list of ids, got int"),
    ({"must": [{"has_id": [1, -2]}]}, "filter.must[0].has_id[1]: id -2 is not an unsigned"),
    ({"must": [{"has_id": ["nope"]}]}, "filter.must[0].has_id[0]: 'nope' is not a UUID"),
    ({"must": [{"has_id": [4, True]}]}, "filter.must[0].has_id[1]: expected an unsigned integer"),
    ({"must": [{"has_id": [3, 2**64]}]}, "filter.must[0].has_id[1]: id 18446744073709551616"),
    ({"must": [{"is_null": "a"}]}, "filter.must[0].is_null: expected {\"key\": <field>}"),
    ({"must": [{"is_empty": {"key": "a"}, "is_null": {"key": "a"}}]},
     "filter.must[0]: expected one condition per object, got is_empty, is_null"),
    ({"must": [{"must": [{"should": [{"key": "a", "range": {"lte": []}}]}]}]},
     "filter.must[0].must[0].should[0].range.lte: expected a number"),
])
def test_parse_errors_name_the_path(obj, message):
    with pytest.raises(InvalidArgument) as exc:
        parse_filter(obj)
    assert str(exc.value).startswith(message), str(exc.value)


# ---------------------------------------------------------------- semantics

DOCS = [
    {"color": "red", "n": 3, "tags": ["a", "b"], "meta": {"author": "ann"}, "t": "2024-01-02"},
    {"color": "blue", "n": 3.0, "tags": [], "meta": [{"author": "bob"}, {"author": "ann"}]},
    {"color": None, "n": [1, 10], "tags": [None], "t": "2023-12-31T23:00:00-02:00"},
    {"n": True, "tags": "a", "t": 5},
    {},
]
IDS = [10, 11, U1, 13, 2**64 - 1]


@pytest.mark.parametrize("flt, expected", [
    ({}, [0, 1, 2, 3, 4]),
    ({"must": [{"key": "color", "match": {"value": "red"}}]}, [0]),
    ({"must": [{"key": "n", "match": {"value": 3}}]}, [0]),  # 3.0 is a float, True a bool
    ({"must": [{"key": "n", "match": {"value": True}}]}, [3]),
    ({"must": [{"key": "tags", "match": {"value": "a"}}]}, [0, 3]),
    ({"must": [{"key": "tags", "match": {"any": ["b", "zz"]}}]}, [0]),
    ({"must": [{"key": "tags", "match": {"except": ["a"]}}]}, [0]),
    ({"must": [{"key": "color", "match": {"except": ["red"]}}]}, [1]),
    ({"must": [{"key": "meta.author", "match": {"value": "ann"}}]}, [0, 1]),
    ({"must": [{"key": "meta[].author", "match": {"value": "bob"}}]}, [1]),
    ({"must": [{"key": "n", "range": {"gt": 2, "lte": 3}}]}, [0, 1]),
    ({"must": [{"key": "n", "range": {"gte": 5}}]}, [2]),
    ({"must": [{"key": "t", "range": {"gte": "2024-01-01T00:00:00Z"}}]}, [0, 2]),
    ({"must": [{"key": "t", "range": {"lt": "2024-01-01"}}]}, []),
    ({"must": [{"is_empty": {"key": "tags"}}]}, [1, 2, 4]),
    ({"must": [{"is_empty": {"key": "color"}}]}, [2, 3, 4]),
    ({"must": [{"is_null": {"key": "color"}}]}, [2]),
    ({"must": [{"has_id": [11, U1.upper(), 99]}]}, [1, 2]),
    ({"should": [{"has_id": [2**64 - 1]}, {"key": "color", "match": {"value": "blue"}}]}, [1, 4]),
    ({"must_not": [{"key": "tags", "match": {"any": ["a"]}}]}, [1, 2, 4]),
    ({"must": [{"should": [{"key": "n", "range": {"lt": 2}}, {"is_null": {"key": "color"}}]},
               {"must_not": [{"has_id": [10]}]}]}, [2]),
    ({"should": []}, [0, 1, 2, 3, 4]),
    ({"must": [{}], "should": [{"must_not": [{}]}, {}]}, [0, 1, 2, 3, 4]),
    ({"must_not": [{}]}, []),
])
@pytest.mark.parametrize("indexed", [False, True])
def test_semantics(flt, expected, indexed):
    s = PayloadStore()
    s.extend(DOCS)
    if indexed:
        for key in ("color", "n", "tags", "meta.author", "t"):
            for kind in INDEX_KINDS:
                s.create_index(key, kind)
    lookup = id_lookup_from_ids(IDS)
    assert compile(flt, s, id_lookup=lookup).positions().tolist() == expected
    assert [i for i, p in enumerate(DOCS) if matches(flt, p, IDS[i])] == expected


def test_compile_bounds_and_has_id_needs_lookup():
    s = PayloadStore()
    s.extend(DOCS)
    assert compile({"must": [{"key": "n", "range": {"gte": 1}}]}, s, n=2).n == 2
    with pytest.raises(InvalidArgument, match="n: 9"):
        compile({}, s, n=9)
    with pytest.raises(InvalidArgument, match="has_id"):
        compile({"must": [{"has_id": [1]}]}, s)


def test_estimate_selectivity():
    rng = np.random.default_rng(0)
    s = PayloadStore()
    s.extend({"c": int(c), "w": float(w)} for c, w in zip(rng.integers(0, 10, 2000),
                                                          rng.random(2000), strict=True))
    f_eq = {"must": [{"key": "c", "match": {"value": 3}}]}
    true_eq = compile(f_eq, s).count() / 2000
    assert abs(estimate_selectivity(f_eq, s) - true_eq) < 0.06  # sampled
    s.create_index("c", "integer")
    assert estimate_selectivity(f_eq, s) == pytest.approx(true_eq)  # exact from the index
    f = {"must": [{"key": "c", "range": {"lt": 5}}], "must_not": [{"key": "w", "range": {"gt": 0.5}}]}
    assert abs(estimate_selectivity(f, s) - compile(f, s).count() / 2000) < 0.08
    assert estimate_selectivity({"must": [{"has_id": [1, 2]}]}, s) == pytest.approx(0.001)
    assert estimate_selectivity({}, s) == 1.0 and estimate_selectivity({}, PayloadStore()) == 0.0


# ---------------------------------------------------------------- property test

STRS = ["x", "y", "2024-01-01", "2024-01-01T12:00:00+02:00"]
DATES = ["2024-01-01", "2024-01-01T10:00:00Z", "2024-01-01T12:00:00+02:00", "2024-02-01"]
KEYS = ["a", "b", "c.d", "c[].d", "c", "tags", "missing"]
PAYLOAD_KEYS = ["a", "b", "c", "tags"]

ints = st.integers(-2, 2) | st.just(10**6)
floats = st.sampled_from([-1.5, 0.0, 2.0, 2.5])
scalar = st.sampled_from(STRS) | ints | floats | st.booleans() | st.none()
leaf_value = scalar | st.lists(scalar | st.lists(scalar, max_size=2), max_size=3)
inner = st.dictionaries(st.sampled_from(["d", "e"]), leaf_value, min_size=1, max_size=2)
geo = st.builds(lambda lon, lat: {"lon": lon, "lat": lat},
                st.sampled_from([-179.5, -10.0, 0.0, 5.0, 179.5]),
                st.sampled_from([-45.0, 0.0, 5.0, 60.0]))
value = leaf_value | inner | geo | st.lists(inner | scalar | geo, max_size=3)
payloads_st = st.lists(st.dictionaries(st.sampled_from(PAYLOAD_KEYS), value, min_size=2,
                                       max_size=4), min_size=5, max_size=16)


def ids_for(n: int) -> list:
    return [i * 7 if i % 2 else str(uuid.UUID(int=i)) for i in range(n)]


def scalars(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from scalars(x)
    elif isinstance(v, list):
        for x in v:
            yield from scalars(x)
    else:
        yield v


def filters_for(payloads: list[dict]):
    """Random filter trees whose values mostly come from the payloads, so conditions split
    the points instead of matching all or none."""
    found = [x for p in payloads for x in scalars(p)]
    strs = st.sampled_from(sorted({x for x in found if type(x) is str} | {"x"}))
    ints_ = st.sampled_from(sorted({x for x in found if type(x) is int} | {0}))
    nums = ints_ | st.sampled_from(sorted({x for x in found if type(x) is float} | {0.5}))
    dates = st.sampled_from(sorted({x for x in found if type(x) is str and parse_datetime(x)}
                                   | set(DATES)))
    key = st.sampled_from(KEYS)
    match_scalar = strs | ints_
    ops = st.sampled_from(["gt", "gte", "lt", "lte"])
    leaf = st.one_of(
        st.builds(lambda k, v: {"key": k, "match": {"value": v}}, key, match_scalar | st.booleans()),
        st.builds(lambda k, v: {"key": k, "match": {"any": v}}, key,
                  st.lists(match_scalar, max_size=3)),
        st.builds(lambda k, v: {"key": k, "match": {"except": v}}, key,
                  st.lists(match_scalar, max_size=3)),
        st.builds(lambda k, r: {"key": k, "range": r}, key,
                  st.dictionaries(ops, nums | st.integers(-3, 3), min_size=1, max_size=2)),
        st.builds(lambda k, r: {"key": k, "range": r}, key,
                  st.dictionaries(ops, dates, min_size=1, max_size=2)),
        st.builds(lambda ids: {"has_id": ids}, st.lists(
            st.sampled_from([*ids_for(len(payloads)), 999, str(uuid.UUID(int=99)).upper()]),
            max_size=4)),
        st.builds(lambda k: {"is_empty": {"key": k}}, key),
        st.builds(lambda k: {"is_null": {"key": k}}, key),
        st.builds(lambda k, v, r: {"nested": {"key": k, "filter": {"must": [
            {"key": "d", "match": {"value": v}}], "must_not": [{"key": "e", "range": r}]}}},
            st.sampled_from(["c", "tags", "a"]), match_scalar,
            st.dictionaries(ops, st.integers(-3, 3), min_size=1, max_size=1)),
        st.builds(lambda k, r: {"key": k, "values_count": r}, key,
                  st.dictionaries(ops, st.integers(0, 3), min_size=1, max_size=2)),
        st.builds(lambda k, c, r: {"key": k, "geo_radius": {"center": c, "radius": r}}, key,
                  geo, st.sampled_from([0.0, 1e5, 2e6, 2e7])),
        st.builds(lambda k, b: {"key": k, "geo_bounding_box": {
            "top_left": {"lon": b[0], "lat": b[1]}, "bottom_right": {"lon": b[2], "lat": b[3]}}},
            key, st.sampled_from([(-20, 20, 20, -20), (170, 70, -170, -50), (0, 10, 10, 0)])),
        st.builds(lambda k, holes: {"key": k, "geo_polygon": {
            "exterior": {"points": [{"lon": -20, "lat": -50}, {"lon": 30, "lat": -50},
                                    {"lon": 30, "lat": 70}, {"lon": -20, "lat": 70},
                                    {"lon": -20, "lat": -50}]},
            "interiors": [{"points": [{"lon": -1, "lat": -1}, {"lon": 6, "lat": -1},
                                      {"lon": 6, "lat": 6}]}] if holes else []}},
            key, st.booleans()),
    )

    def clauses(cond):
        return st.fixed_dictionaries({}, optional={c: st.lists(cond, max_size=3)
                                                   for c in ("must", "should", "must_not")})

    single = st.builds(lambda c, where: {where: [c]}, leaf, st.sampled_from(["must", "must_not"]))
    return single | clauses(st.recursive(leaf, clauses, max_leaves=5))


index_config = st.dictionaries(st.sampled_from(KEYS), st.sets(st.sampled_from(INDEX_KINDS)),
                               max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=payloads_st, config=index_config, data=st.data())
def test_compile_agrees_with_reference(payloads, config, data):
    f = parse_filter(data.draw(filters_for(payloads)))
    ids = ids_for(len(payloads))
    lookup = id_lookup_from_ids(ids)
    expected = [matches(f, p, ids[i]) for i, p in enumerate(payloads)]

    plain = PayloadStore()
    plain.extend(payloads)
    assert compile(f, plain, id_lookup=lookup).to_mask().tolist() == expected

    # indexed, built in two appends so indexes and columns are rebuilt/extended in between
    split = data.draw(st.integers(0, len(payloads)))
    s = PayloadStore()
    s.extend(payloads[:split])
    for k, kinds in config.items():
        for kind in kinds:
            s.create_index(k, kind)
    assert compile(f, s, id_lookup=lookup).to_mask().tolist() == expected[:split]
    s.extend(payloads[split:])
    assert compile(f, s, id_lookup=lookup).to_mask().tolist() == expected

    reopened = PayloadStore.from_arrays(*s.to_arrays())
    assert compile(f, reopened, id_lookup=lookup).to_mask().tolist() == expected
    assert 0.0 <= estimate_selectivity(f, s, id_lookup=lookup) <= 1.0


def _rand_scalar(r):
    return r.choice([*STRS, -2, -1, 0, 1, 2, 10**6, -1.5, 0.0, 2.0, 2.5, True, False, None])


def _rand_value(r, depth=0):
    roll = r.random()
    if roll < 0.5 or depth > 1:
        return _rand_scalar(r)
    if roll < 0.75:
        return [_rand_value(r, depth + 1) for _ in range(r.randint(0, 3))]
    return {k: _rand_value(r, depth + 1) for k in r.sample(["d", "e"], r.randint(1, 2))}


def _rand_cond(r, pool, depth=0):
    k, roll = r.choice(KEYS), r.random()
    if roll < 0.15 and depth < 2:
        return {c: [_rand_cond(r, pool, depth + 1) for _ in range(r.randint(0, 2))]
                for c in r.sample(["must", "should", "must_not"], r.randint(1, 2))}
    if roll < 0.35:
        return {"key": k, "match": {"value": r.choice([*pool, True, False])}}
    if roll < 0.5:
        return {"key": k, "match": {r.choice(["any", "except"]): r.sample(pool, r.randint(0, 3))}}
    if roll < 0.7:
        b = [-2, -1, 0, 1, 2, 10**6, -1.5, 0.5, 2.0, 2.5]
        return {"key": k, "range": {o: r.choice(b) for o in r.sample(["gt", "gte", "lt", "lte"], 2)}}
    if roll < 0.8:
        return {"key": k, "range": {o: r.choice(DATES) for o in r.sample(["gt", "gte", "lt", "lte"], 1)}}
    if roll < 0.87:
        return {"has_id": r.sample([*ids_for(8), 999], 3)}
    return {r.choice(["is_empty", "is_null"]): {"key": k}}


def test_compile_agrees_with_reference_fuzz():
    """Seeded plain-random companion to the hypothesis test: denser payloads and filters, so
    most conditions split the points (hypothesis favours small, often trivial, examples)."""
    import random
    r = random.Random(1234)
    pool = [*STRS, -2, -1, 0, 1, 2, 10**6]
    split_cases = 0
    for _ in range(400):
        payloads = [{k: _rand_value(r) for k in PAYLOAD_KEYS if r.random() < 0.7}
                    for _ in range(r.randint(4, 20))]
        ids = ids_for(len(payloads))
        lookup = id_lookup_from_ids(ids)
        plain, indexed = PayloadStore(), PayloadStore()
        plain.extend(payloads)
        indexed.extend(payloads)
        for k in r.sample(KEYS, 3):
            for kind in r.sample(INDEX_KINDS, r.randint(1, 3)):
                indexed.create_index(k, kind)
        for _ in range(5):
            f = parse_filter({c: [_rand_cond(r, pool) for _ in range(r.randint(1, 2))]
                              for c in r.sample(["must", "should", "must_not"], r.randint(1, 2))})
            expected = [matches(f, p, ids[i]) for i, p in enumerate(payloads)]
            split_cases += 0 < sum(expected) < len(expected)
            for s in (plain, indexed):
                assert compile(f, s, id_lookup=lookup).to_mask().tolist() == expected, (f, payloads)
    assert split_cases > 500  # of 2000 filters


def test_has_id_lists_are_sorted_deduplicated_and_find_every_row_of_an_id():
    c = parse_filter({"must": [{"has_id": [9, 3, 9, 2**64 - 1, 3]}]}).must[0]
    assert c.ids == {3, 9, 2**64 - 1} and c.int_array().tolist() == [3, 9, 2**64 - 1]
    assert c.str_ids() == []
    mixed = parse_filter({"must": [{"has_id": [U1.upper(), 7]}]}).must[0]
    assert mixed.int_array().tolist() == [7] and mixed.str_ids() == [U1]
    # a segment holding a replaced id twice: both rows (deletion bits then drop the old one)
    lookup = id_lookup_from_ids([5, 9, U1, 5, 2**64 - 1])
    assert sorted(lookup(c).tolist()) == [1, 4]
    assert sorted(lookup(parse_filter({"must": [{"has_id": [5, U1, 6]}]}).must[0]).tolist()) == [0, 2, 3]
    assert lookup(parse_filter({"must": [{"has_id": []}]}).must[0]).tolist() == []
    assert id_lookup_from_ids([])(c).tolist() == []


BERLIN, PARIS, TOKYO = {"lon": 13.405, "lat": 52.52}, {"lon": 2.3522, "lat": 48.8566}, \
    {"lon": 139.69, "lat": 35.69}
GEO_PAYLOADS = [{"at": BERLIN}, {"at": [TOKYO, PARIS]}, {"at": TOKYO}, {"at": "Berlin"},
                {"at": {"lon": 179.9, "lat": 0.0}}, {}, {"at": [1, 2, None, 3]},
                {"at": {**TOKYO, "name": "Tokyo"}}]


@pytest.mark.parametrize("cond, expected", [
    ({"geo_radius": {"center": BERLIN, "radius": 900_000}}, [0, 1]),  # Paris is 878 km away
    ({"geo_radius": {"center": BERLIN, "radius": 870_000}}, [0]),
    ({"geo_bounding_box": {"top_left": {"lon": 0, "lat": 60},
                           "bottom_right": {"lon": 20, "lat": 40}}}, [0, 1]),
    ({"geo_bounding_box": {"top_left": {"lon": 170, "lat": 10},  # across the antimeridian
                           "bottom_right": {"lon": -170, "lat": -10}}}, [4]),
    ({"geo_polygon": {"exterior": {"points": [{"lon": 0, "lat": 40}, {"lon": 20, "lat": 40},
                                              {"lon": 20, "lat": 60}, {"lon": 0, "lat": 60}]},
                      "interiors": [{"points": [{"lon": 10, "lat": 50}, {"lon": 15, "lat": 50},
                                                {"lon": 15, "lat": 55}, {"lon": 10, "lat": 55},
                                                {"lon": 10, "lat": 50}]}]}}, [1]),  # a hole: Berlin
    ({"values_count": {"gte": 2}}, [1, 6]),
    ({"values_count": {"lt": 1}}, [5]),
    ({"values_count": {"gt": 3, "lte": 4}}, [6]),  # a null in an array counts, as in Qdrant
    ({"geo_radius": {"center": TOKYO, "radius": 1_000}}, [1, 2, 7]),  # other keys beside
])
def test_geo_and_values_count(cond, expected):
    store = PayloadStore()
    store.extend(GEO_PAYLOADS)
    f = {"must": [{"key": "at", **cond}]}
    assert [i for i, p in enumerate(GEO_PAYLOADS) if matches(f, p)] == expected
    assert np.flatnonzero(compile(f, store).to_mask()).tolist() == expected
    assert 0.0 <= estimate_selectivity(f, store) <= 1.0


DIETS = [{"diet": [{"food": "meat", "likes": True}, {"food": "veg", "likes": False}]},
         {"diet": [{"food": "meat", "likes": False}]}, {"diet": {"food": "meat", "likes": False}},
         {"diet": ["meat"]}, {}]


def test_nested_conditions_hold_for_one_element():
    """A flat filter over diet[] may match two elements; nested needs one that passes all."""
    inner = {"must": [{"key": "food", "match": {"value": "meat"}},
                      {"key": "likes", "match": {"value": False}}]}
    flat = {"must": [{"key": "diet[].food", "match": {"value": "meat"}},
                     {"key": "diet[].likes", "match": {"value": False}}]}
    nested = {"must": [{"nested": {"key": "diet", "filter": inner}}]}
    store = PayloadStore()
    store.extend(DIETS)
    for f, want in ((flat, [0, 1, 2]), (nested, [1, 2])):
        assert [i for i, p in enumerate(DIETS) if matches(f, p)] == want
        assert np.flatnonzero(compile(f, store).to_mask()).tolist() == want


def test_has_vector_is_answered_by_the_segment():
    store = PayloadStore()
    store.extend([{}, {}, {}, {}])
    f = {"should": [{"has_vector": "img"}, {"has_id": [0]}]}
    bits = compile(f, store, id_lookup=id_lookup_from_ids([0, 1, 2, 3]),
                   vector_lookup=lambda name: np.array([2, 3]) if name == "img" else np.array([]))
    assert np.flatnonzero(bits.to_mask()).tolist() == [0, 2, 3]
    assert estimate_selectivity({"must": [{"has_vector": "img"}]}, store,
                                vector_lookup=lambda name: np.array([2, 3])) == 0.5
    with pytest.raises(InvalidArgument, match="no vector lookup"):
        compile({"must": [{"has_vector": "img"}]}, store)
    half = estimate_selectivity({"min_should": {"conditions": [  # never sampled: estimated
        {"has_vector": "img"}, {"is_empty": {"key": "a"}}], "min_count": 2}}, store,
        vector_lookup=lambda name: np.array([2, 3]))
    assert half == pytest.approx(0.5)
    with pytest.raises(InvalidArgument, match="has_vector: expected a vector field name"):
        parse_filter({"must": [{"has_vector": 3}]})


def test_a_full_text_index_makes_match_text_ask_for_every_word(tmp_path):
    texts = [{"t": "The quick brown fox"}, {"t": ["quick thinking", "a brown study"]},
             {"t": "quickly browning"}, {"t": 7}, {}]
    store = PayloadStore()
    store.extend(texts)
    f = {"must": [{"key": "t", "match": {"text": "Brown QUICK"}}]}
    assert np.flatnonzero(compile(f, store).to_mask()).tolist() == []  # substring: none
    store.create_index("t", "text")
    assert np.flatnonzero(compile(f, store).to_mask()).tolist() == [0, 1]
    assert estimate_selectivity(f, store) == pytest.approx(2 / 5)
    sub = {"must": [{"key": "t", "match": {"text": "quick"}}]}
    assert np.flatnonzero(compile(sub, store).to_mask()).tolist() == [0, 1]  # not "quickly"
    # it persists with the segment, and a collection re-opens it
    db = quiver.connect(tmp_path)
    col = db.create_collection("t", 2, segment_size=4)
    col.upsert(list(range(5)), np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0]], texts)
    col.create_payload_index("t", "text")
    col.flush()
    db.close()
    col = quiver.connect(tmp_path).get_collection("t")
    assert sorted(p.id for p in col.scroll(filter=f)[0]) == [0, 1]
    assert col.info()["payload_indexes"] == {"t": "text"}
