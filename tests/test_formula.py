"""Qdrant score formulas (server/qdrant/formula.py) against plain NumPy, on a hand-made scope:
every operator, variables and their defaults, conditions, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from quiver.engine.errors import InvalidArgument
from quiver.engine.points import Point
from quiver.server.qdrant.formula import Scope, compile_formula, rescore

PAYLOADS = [{"n": 2, "tag": "h1", "at": {"lon": 13.4, "lat": 52.5}, "ts": "2026-01-02T00:00:00Z"},
            {"n": [7, 1], "tag": "p", "ts": "2026-01-01T12:00:00Z"},
            {"tag": ["h1", "h2"], "at": {"lon": 2.35, "lat": 48.86}}]
U = "00000000-0000-0000-0000-00000000abcd"
SCORES = np.array([[0.9, 0.1], [0.5, np.nan], [0.2, 0.3]])


def run(expr, defaults=None, n_prefetch=2):
    scope = Scope(PAYLOADS, [1, 2, U], SCORES, defaults or {})
    with np.errstate(all="ignore"):
        return compile_formula(expr, n_prefetch)(scope)


def test_arithmetic_variables_and_defaults():
    np.testing.assert_allclose(run("$score"), [0.9, 0.5, 0.2])
    np.testing.assert_allclose(run("$score[1]"), [0.1, 0.0, 0.3])  # not found: 0
    np.testing.assert_allclose(run("$score[1]", {"$score[1]": -1}), [0.1, -1.0, 0.3])
    np.testing.assert_allclose(run("n"), [2, 7, 0])  # a list's first number; missing: 0
    np.testing.assert_allclose(run("n", {"n": 5}), [2, 7, 5])
    np.testing.assert_allclose(run({"sum": ["$score", {"mult": [2, "n"]}, 1]}), [5.9, 15.5, 1.2])
    np.testing.assert_allclose(run({"max": ["n", 3]}), [3, 7, 3])
    np.testing.assert_allclose(run({"min": ["n", 3]}), [2, 3, 0])
    np.testing.assert_allclose(run({"neg": "n"}), [-2, -7, 0])
    np.testing.assert_allclose(run({"abs": {"neg": "n"}}), [2, 7, 0])
    np.testing.assert_allclose(run({"sqrt": "n"}), np.sqrt([2, 7, 0]))
    np.testing.assert_allclose(run({"pow": {"base": "n", "exponent": 2}}), [4, 49, 0])
    np.testing.assert_allclose(run({"exp": "$score"}), np.exp([0.9, 0.5, 0.2]))
    np.testing.assert_allclose(run({"ln": "$score"}), np.log([0.9, 0.5, 0.2]))
    np.testing.assert_allclose(run({"log10": {"sum": ["n", 1]}}), np.log10([3, 8, 1]))
    np.testing.assert_allclose(run({"acosh": {"sum": ["n", 1]}}), np.arccosh([3, 8, 1]))
    np.testing.assert_allclose(run({"div": {"left": 1, "right": "n", "by_zero_default": -5}}),
                               [0.5, 1 / 7, -5])
    assert np.isnan(run({"div": {"left": 1, "right": "n"}})[2])


def test_conditions_datetimes_geo_and_decays():
    h1 = {"key": "tag", "match": {"value": "h1"}}
    np.testing.assert_allclose(run(h1), [1, 0, 1])  # an array holding it passes too
    np.testing.assert_allclose(run({"must_not": [h1]}), [0, 1, 0])
    np.testing.assert_allclose(run({"has_id": [U]}), [0, 0, 1])
    np.testing.assert_allclose(run({"sum": ["$score", {"mult": [0.5, h1]}]}), [1.4, 0.5, 0.7])
    day = 86_400.0
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    np.testing.assert_allclose(run({"datetime": "2026-01-01T00:00:00Z"}), [t0] * 3)
    np.testing.assert_allclose(run({"datetime_key": "ts"}), [t0 + day, t0 + day / 2, 0])
    berlin_paris = 877_000.0
    d = run({"geo_distance": {"origin": {"lon": 13.4, "lat": 52.5}, "to": "at"}}, {"at": -1})
    assert d[0] < 1 and abs(d[2] - berlin_paris) < 10_000 and d[1] == -1
    x = np.array([2.0, 7.0, 0.0])
    lin = run({"lin_decay": {"x": "n", "target": 4, "scale": 2, "midpoint": 0.25}})
    np.testing.assert_allclose(lin, np.maximum(0, 1 - 0.75 * np.abs(x - 4) / 2))
    exp = run({"exp_decay": {"x": "n", "target": 4, "scale": 2}})
    np.testing.assert_allclose(exp, 0.5 ** (np.abs(x - 4) / 2))
    gauss = run({"gauss_decay": {"x": "n", "target": 4, "scale": 2, "midpoint": 0.1}})
    np.testing.assert_allclose(gauss, 0.1 ** ((x - 4) ** 2 / 4))
    assert run({"exp_decay": {"x": "n", "target": "n"}}).tolist() == [1.0, 1.0, 1.0]  # at target: 1
    fresh = run({"exp_decay": {"x": {"datetime_key": "ts"}, "target": {"datetime": "2026-01-02T00:00:00Z"},
                               "scale": day}})
    np.testing.assert_allclose(fresh[:2], [1.0, 0.5 ** 0.5])


@pytest.mark.parametrize("expr, words", [
    ({"bogus": 1}, "operator"),
    ("$scores", "unknown variable"),
    ("$score[2]", "prefetch 2, but the query has 2"),
    ({"sum": []}, "non-empty list"),
    ({"div": {"left": 1}}, "missing right"),
    ({"pow": {"base": 1, "exponent": 2, "x": 3}}, "unknown x"),
    ({"exp_decay": {"x": "n", "scale": 0}}, "scale: expected a number above 0"),
    ({"gauss_decay": {"x": "n", "midpoint": 1}}, "midpoint: expected a number in (0, 1)"),
    ({"datetime": "yesterday"}, "ISO-8601"),
    ({"geo_distance": {"origin": {"lon": 500, "lat": 0}, "to": "at"}}, "origin"),
    (True, "expected a number"),
    (math.inf, "not a finite number"),
    ([1, 2], "expected a number, a variable or an expression"),
])
def test_bad_formulas_are_refused_before_any_search(expr, words):
    with pytest.raises(InvalidArgument) as exc:
        compile_formula(expr, 2)
    assert words in str(exc.value) and str(exc.value).startswith("query.formula")


def test_rescore_orders_the_prefetched_points_and_names_a_non_finite_one():
    lists = [[Point(1, 0.9), Point(2, 0.5)], [Point(U, 0.3), Point(1, 0.1)]]
    payloads = {1: PAYLOADS[0], 2: PAYLOADS[1], U: PAYLOADS[2]}
    ranked = rescore(compile_formula({"sum": ["$score", "$score[1]", "n"]}, 2), lists, payloads, {})
    assert [(p.id, round(p.score, 6)) for p in ranked] == [(2, 7.5), (1, 3.0), (U, 0.3)]
    with pytest.raises(InvalidArgument, match=f"not a finite number for point '{U}'"):
        rescore(compile_formula({"ln": "n"}, 2), lists, payloads, {})
    with pytest.raises(InvalidArgument, match=r"defaults\.n: expected a number"):
        rescore(compile_formula("n", 2), lists, payloads, {"n": "x"})
