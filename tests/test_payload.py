"""Payload store: validation, dotted paths, typed columns, each index kind, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from quiver.engine.errors import CorruptData, InvalidArgument
from quiver.engine.payload import (
    INT64_MAX,
    INT64_MIN,
    PayloadStore,
    canonical_payload,
    elements,
    parse_datetime,
    raw_values,
    split_key,
)

DOCS = [
    {"city": "Berlin", "year": 1990, "tags": ["a", "b"], "meta": {"author": "ann"}},
    {"city": "Paris", "year": 2001.5, "tags": "a", "when": "2024-01-01T00:00:00Z"},
    {"city": None, "year": [1980, 2020], "meta": [{"author": "bob"}, {"author": "ann"}]},
    {"ok": True, "when": "2024-01-01T01:00:00+02:00", "tags": []},
    {},
    {"city": ["Berlin", "Berlin"], "ok": [False, True], "when": "2023-06-01", "year": True},
]


def store(docs=DOCS) -> PayloadStore:
    s = PayloadStore()
    assert s.extend(docs) == range(len(docs))
    return s


def test_canonical_payload_validates_and_copies():
    src = {"a": (1, np.int64(2)), "b": {"c": np.float32(0.5)}, "d": np.bool_(True)}
    out = canonical_payload(src)
    assert out == {"a": [1, 2], "b": {"c": 0.5}, "d": True}
    assert type(out["a"][1]) is int and type(out["d"]) is bool
    assert canonical_payload(None) == {}
    for bad, where in [({"a": float("nan")}, "payload.a"), ({"a": [1, {2: 3}]}, "payload.a[1]"),
                       ({"a": object()}, "payload.a"), ({"a": 2**64}, "payload.a"), ([1], "payload")]:
        with pytest.raises(InvalidArgument, match=where.replace("[", r"\[").replace("]", r"\]")):
            canonical_payload(bad)


def test_paths_and_elements():
    p = {"a": {"b": [1, None, [2]]}, "m": [{"x": 1}, {"x": [2, 3]}, 4, {"y": 5}], "n": None}
    assert split_key("m[].x") == ("m", "x")
    assert raw_values(p, split_key("a.b")) == [[1, None, [2]]]
    assert list(elements(p, split_key("a.b"))) == [1, [2]]  # one level flattened, nulls dropped
    assert raw_values(p, split_key("m.x")) == [1, [2, 3]]
    assert list(elements(p, split_key("m[].x"))) == [1, 2, 3]
    assert raw_values(p, split_key("n")) == [None] and list(elements(p, split_key("n"))) == []
    assert raw_values(p, split_key("zz.q")) == []
    for bad in ["", "a..b", ".a"]:
        with pytest.raises(InvalidArgument):
            split_key(bad)


def test_parse_datetime_is_utc():
    assert parse_datetime("1970-01-01T00:00:01Z") == 1_000_000
    assert parse_datetime("1970-01-01T00:00:01") == 1_000_000  # naive = UTC
    assert parse_datetime("1970-01-01T02:00:01+02:00") == 1_000_000
    assert parse_datetime("1969-12-31") == -86_400_000_000
    assert parse_datetime("yesterday") is None and parse_datetime("2024") is None


def test_append_get_iter():
    s = store()
    assert len(s) == len(DOCS) and s.get(0) == DOCS[0] and s.get(4) == {}
    assert s.append(None) == len(DOCS) and s.get(len(DOCS)) == {}
    assert list(s) == [*DOCS, {}]
    with pytest.raises(IndexError):
        s.get(len(s))
    with pytest.raises(InvalidArgument, match=r"payloads\[1\]"):
        s.extend([{}, "nope"])


def test_column_types():
    col = store().column("year")
    assert col.typed("int")[0].tolist() == [0, 2, 2] and col.typed("int")[1].tolist() == [1990, 1980, 2020]
    assert col.typed("float")[0].tolist() == [1] and col.typed("bool")[0].tolist() == [5]
    c2 = store().column("city")
    assert c2.typed("null")[0].tolist() == [2] and sorted(set(c2.present().tolist())) == [0, 1, 5]
    p, us = store().column("when").datetimes()
    assert p.tolist() == [1, 3, 5] and us[0] - us[1] == 3_600_000_000


@pytest.mark.parametrize("kind", ["keyword", "integer", "float", "bool", "datetime"])
def test_index_kinds(kind):
    s = store()
    idx = s.create_index({"keyword": "city", "integer": "year", "float": "year", "bool": "ok",
                          "datetime": "when"}[kind], kind)
    assert idx.n == len(DOCS)
    if kind == "keyword":
        assert idx.eq("Berlin").tolist() == [0, 5] and idx.count_eq("Berlin") == 2
        assert idx.eq("Rome").tolist() == [] and idx.eq(3).tolist() == []
    elif kind == "integer":
        assert idx.eq(2020).tolist() == [2] and idx.count_eq(2**70) == 0
        assert sorted(idx.between(1985, True, 2020, False).tolist()) == [0]
        assert sorted(idx.between(None, True, None, True).tolist()) == [0, 2, 2]
    elif kind == "float":
        assert sorted(idx.between(1990, False, None, True).tolist()) == [1, 2]
        assert idx.count_between(1980.0, True, 1990.0, True) == 2
    elif kind == "bool":
        assert idx.eq(True).tolist() == [3, 5] and idx.eq(False).tolist() == [5]
    else:
        t = parse_datetime("2024-01-01T00:00:00Z")
        assert idx.eq(t).tolist() == [1] and idx.count_eq(t - 3_600_000_000) == 1
        assert sorted(idx.between(None, True, t, False).tolist()) == [3, 5]


def test_integer_index_extremes():
    s = PayloadStore()
    s.extend([{"v": INT64_MAX}, {"v": INT64_MIN}, {"v": INT64_MAX - 1}])
    idx = s.create_index("v", "integer")
    assert idx.eq(INT64_MAX).tolist() == [0] and idx.eq(INT64_MIN).tolist() == [1]
    assert sorted(idx.between(INT64_MAX - 1, True, None, True).tolist()) == [0, 2]


def test_index_follows_appends_and_drops():
    s = store()
    s.create_index("city", "keyword")
    s.append({"city": "Berlin"})
    assert s.index("city", "keyword").eq("Berlin").tolist() == [0, 5, 6]
    assert s.column("city").n == len(s)
    s.drop_index("city")
    assert s.index("city", "keyword") is None and s.indexes() == []
    with pytest.raises(InvalidArgument, match="index kind"):
        s.create_index("city", "hex")


def test_persistence_roundtrip(tmp_path):
    s = store()
    s.create_index("city", "keyword")
    s.create_index("year", "integer")
    s.save(tmp_path / "p")
    t = PayloadStore.load(tmp_path / "p")
    assert list(t) == DOCS and sorted(t.indexes()) == [("city", "keyword"), ("year", "integer")]
    assert t.index("city", "keyword").eq("Berlin").tolist() == [0, 5]
    # a sealed base plus an appended tail, saved again
    t.append({"city": "Berlin", "year": 7})
    assert t.index("year", "integer").eq(7).tolist() == [6] and t.get(6)["year"] == 7
    meta, arrays = t.to_arrays()
    u = PayloadStore.from_arrays(meta, arrays)
    assert list(u) == [*DOCS, {"city": "Berlin", "year": 7}]
    assert u.index("city", "keyword").eq("Berlin").tolist() == [0, 5, 6]
    arrays["payload_offsets"] = arrays["payload_offsets"][:-1]
    with pytest.raises(CorruptData):
        PayloadStore.from_arrays(meta, arrays)


def test_concurrent_appends_and_reads():
    """Filters read columns/indexes while another thread appends: snapshots stay consistent."""
    import threading

    from quiver.engine.filters import compile, matches

    s = PayloadStore()
    s.create_index("k", "keyword")
    flt = {"must": [{"key": "k", "match": {"value": "a"}}, {"key": "v", "range": {"gte": 3}}]}
    errors = []

    def writer():
        for i in range(300):
            s.extend([{"k": "ab"[i % 2], "v": i % 7}, {"k": ["a", "c"], "v": [i % 5, 9]}])

    def reader():
        try:
            for _ in range(200):
                got = compile(flt, s).positions()
                assert all(matches(flt, s.get(int(p))) for p in got)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = [i for i, p in enumerate(s) if matches(flt, p)]
    assert compile(flt, s).positions().tolist() == expected


# --- with_payload projections --------------------------------------------------------------


def test_payload_projection_include_exclude_and_errors():
    from quiver.engine.projection import ALL, payload_projection

    doc = {"title": "t", "text": "long", "meta": {"author": "a", "year": 2020, "tags": ["x"]},
           "n": None}
    assert payload_projection(False) is None and payload_projection(True) is ALL
    assert payload_projection(np.bool_(True)) is ALL
    assert payload_projection(True)(doc) is doc
    assert payload_projection(["title", "meta.author", "nope", "text.x"])(doc) == {
        "title": "t", "meta": {"author": "a"}}
    assert payload_projection({"include": ["meta", "meta.year", "n"]})(doc) == {
        "meta": doc["meta"], "n": None}
    assert payload_projection({"exclude": ["text", "meta.tags", "nope.x"]})(doc) == {
        "title": "t", "meta": {"author": "a", "year": 2020}, "n": None}
    assert payload_projection([])(doc) == {} and payload_projection(["a"])(None) is None
    # the stored payload is never modified
    assert doc == {"title": "t", "text": "long", "meta": {"author": "a", "year": 2020,
                                                         "tags": ["x"]}, "n": None}
    for bad, msg in [({"only": ["a"]}, "with_payload: expected"), ([1], r"with_payload\[0\]"),
                     (["a..b"], r"with_payload\[0\]: key"), ({"include": "a"}, "include: expected"),
                     (["tags[].x"], "inside arrays"),
                     ("title", "with_payload: expected"), (None, "with_payload: expected")]:
        with pytest.raises(InvalidArgument, match=msg):
            payload_projection(bad)
