"""A real ``quiver serve`` process on 127.0.0.1 for the server and client tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``python -m quiver.cli serve`` in a subprocess; ``stop()`` sends SIGTERM and returns
    the exit code."""

    def __init__(self, data: Path, *args: str, api_keys: str = "", read_only_keys: str = ""):
        self.data = Path(data)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("QUIVER_API_KEY", "QUIVER_READ_ONLY_API_KEY")}
        self.env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
        if api_keys:
            self.env["QUIVER_API_KEY"] = api_keys
        if read_only_keys:
            self.env["QUIVER_READ_ONLY_API_KEY"] = read_only_keys
        self.log = self.data.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600.0) -> LiveServer:
        """Start and wait for /readyz. With a warm Numba cache that takes 1-2 s; on a machine
        that never compiled Quiver's kernels the server's warm-up compiles them (~80 s)."""
        cmd = [sys.executable, "-m", "quiver.cli", "serve", "--data", str(self.data),
               "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
               *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills and raises if it hangs)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"server ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def serve(tmp_path_factory, name: str, *args: str, **keys: str):
    """Fixture body: start a server, yield it, SIGTERM it and check it exited cleanly."""
    server = LiveServer(tmp_path_factory.mktemp(name) / "data", *args, **keys).start()
    try:
        yield server
    finally:
        rc = server.stop()
    assert rc == 0, f"server exited with {rc} after SIGTERM:\n{server.output()}"
