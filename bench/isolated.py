"""An engine that lives in a child process, for peers that may kill the process they run in.

Intel SVS's LVQ and LeanVec abort the whole process on non-Intel CPUs, with no exception to
catch. Run in a child, such a peer can only take its child down: the runner sees an error
for that engine and goes on with the others. Timing happens in the child too (``batch_qps``,
``latency_ms``), so the pipe between the processes is never on the clock, and the child
blocks on its pipe while the other engines of an interleaved round run.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing as mp
import traceback
from typing import Any

import numpy as np

from .engines import Engine


class ChildExited(RuntimeError):
    """The child process died (for SVS LVQ/LeanVec: most likely not an Intel CPU)."""


def _serve(conn, cls: type[Engine], args: tuple) -> None:
    """The child's loop: make the engine, then answer (method, args, kwargs) calls."""
    try:
        eng = cls(*args)
        conn.send(("ok", (eng.engine, eng.index, eng.param)))
    except Exception as exc:
        conn.send(("err", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            method, a, kw = conn.recv()
        except EOFError:
            return
        if method == "quit":
            eng.close()
            return
        try:
            conn.send(("ok", getattr(eng, method)(*a, **kw)))
        except Exception as exc:
            conn.send(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))


class IsolatedEngine(Engine):
    """``cls(*args)`` run in a spawned child; every Engine method is a call over a pipe."""

    def __init__(self, cls: type[Engine], *args: Any):
        inspect.signature(cls).bind(*args)  # a bad peer spec fails here, not in the child
        super().__init__(*args[:2])
        self.index = cls.__name__
        ctx = mp.get_context("spawn")  # the parent's Numba/OpenMP threads must not be forked
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, cls, args), daemon=True)
        self._proc.start()
        child.close()
        self.engine, self.index, self.param = self._answer()

    def _answer(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise ChildExited(f"{self.index}: its process exited with code "
                              f"{self._proc.exitcode} (its error is above; SVS LVQ/LeanVec end "
                              f"the process on non-Intel CPUs)") from None
        if status == "err":
            raise RuntimeError(value)
        return value

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._proc is None:
            raise RuntimeError(f"{self.index}: closed")
        self._conn.send((method, args, kwargs))
        return self._answer()

    def build(self, x: np.ndarray) -> None:
        self.timed_build(x)

    def timed_build(self, x: np.ndarray) -> float:
        self._call("__setattr__", "learn", self.learn)  # the runner sets it after __init__
        return self._call("timed_build", x)  # timed there: the pipe's copy is not the build

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        return self._call("search", q, k, **params)

    def batch_qps(self, queries: np.ndarray, k: int, params: dict, reps: int) -> float:
        return self._call("batch_qps", queries, k, params, reps)

    def latency_ms(self, queries: np.ndarray, k: int, params: dict) -> np.ndarray:
        return self._call("latency_ms", queries, k, params)

    def memory(self) -> int:
        return self._call("memory")

    def set_threads(self, n: int) -> None:
        self._call("set_threads", n)

    def warmup(self, x: np.ndarray, q: np.ndarray) -> None:
        self._call("warmup", x, q)

    def close(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(("quit", (), {}))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()
        self._proc = self._conn = None
