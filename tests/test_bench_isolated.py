"""IsolatedEngine: a peer in a child process answers as it would in-process, and a peer that
kills its process (SVS LVQ on a non-Intel CPU) is an error for that engine alone."""

import os

import numpy as np
import pytest
from quiver.bench.engines import Engine
from quiver.bench.isolated import ChildExited, IsolatedEngine


class ExactIP(Engine):
    """Brute-force inner product: the reference the child's answers are checked against."""

    engine, index = "test", "ExactIP"

    def build(self, x):
        self.x = np.ascontiguousarray(x, np.float32)

    def search(self, q, k, **params):
        return np.argsort(-(q @ self.x.T), axis=1, kind="stable")[:, :k]

    def memory(self):
        return self.x.nbytes + (0 if self.learn is None else self.learn.nbytes)


class DiesOnBuild(ExactIP):
    def build(self, x):
        os._exit(3)


def test_child_answers_as_in_process():
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((300, 8), np.float32), rng.standard_normal((20, 8), np.float32)
    eng = IsolatedEngine(ExactIP, 8, "ip")
    try:
        assert (eng.engine, eng.index) == ("test", "ExactIP")
        eng.learn = q  # set after construction, as the runner does: it reaches the child
        eng.build(x)
        assert eng.memory() == x.nbytes + q.nbytes
        local = ExactIP(8, "ip")
        local.build(x)
        assert np.array_equal(eng.search(q, 5), local.search(q, 5))
        assert eng.batch_qps(q, 5, {}, 2) > 0
        assert eng.latency_ms(q[:3], 5, {}).shape == (3,)
        with pytest.raises(RuntimeError, match="TypeError"):  # an error travels back
            eng.search(q, "five")
        assert eng.search(q, 1).shape == (20, 1)  # and the child lives on
    finally:
        eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.search(q, 5)


def test_child_that_exits_is_an_error_not_an_exit():
    eng = IsolatedEngine(DiesOnBuild, 8, "ip")
    with pytest.raises(ChildExited, match="exited with code 3"):
        eng.build(np.zeros((4, 8), np.float32))
    eng.close()


def test_bad_arguments_fail_in_the_parent():
    with pytest.raises(TypeError):
        IsolatedEngine(ExactIP, 8, "ip", 1, 2)
