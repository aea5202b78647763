"""Server settings: storage path, limits and API keys (flags, environment or a JSON file)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.errors import InvalidArgument


@dataclass
class Settings:
    data: Path = Path("./quiver-data")
    max_body_bytes: int = 256 << 20
    max_batch: int = 10_000
    """Points per upsert, searches per batch request."""
    max_k: int = 10_000
    request_timeout: float = 60.0
    body_timeout: float = 30.0
    """Seconds a request's body may stall between two chunks before the answer is a 408."""
    api_keys: set[str] = field(default_factory=set)
    """Read-write keys. With no keys at all, the server is open (bind it to 127.0.0.1)."""
    read_only_keys: set[str] = field(default_factory=set)
    cors_origins: list[str] = field(default_factory=list)
    warmup: bool = True
    on_corrupt: str = "raise"
    """"truncate" opens collections whose log has a damaged record by cutting it there (the
    records after it are lost: ``quiver repair`` reports which first)."""
    workers: int = 16
    """Threads running engine calls; searches release the GIL inside the kernels."""
    cluster: str | None = None
    """A Ray cluster to spread sharded collections over ("auto", "local" or an address);
    None serves the embedded database alone."""

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.read_only_keys)

    @classmethod
    def from_env(cls, config_file: str | os.PathLike | None = None, **overrides) -> Settings:
        """Keys come from QUIVER_API_KEY / QUIVER_READ_ONLY_API_KEY (comma-separated), or a
        JSON config file {"api_keys": [...], "read_only_api_keys": [...], "max_body_bytes":
        ..., "max_batch": ..., "max_k": ..., "request_timeout": ..., "body_timeout": ...,
        "cors_origins": [...]}. Prefer these to --api-key, which shows in the process list."""
        s = cls()
        if config_file:
            try:
                cfg = json.loads(Path(config_file).read_text())
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"config: cannot read {config_file} ({exc})") from None
            s.api_keys |= set(cfg.get("api_keys", []))
            s.read_only_keys |= set(cfg.get("read_only_api_keys", []))
            for key in ("max_body_bytes", "max_batch", "max_k", "request_timeout", "body_timeout",
                        "cors_origins"):
                if key in cfg:
                    setattr(s, key, cfg[key])
        for var, target in (("QUIVER_API_KEY", s.api_keys),
                            ("QUIVER_READ_ONLY_API_KEY", s.read_only_keys)):
            target |= {k.strip() for k in os.environ.get(var, "").split(",") if k.strip()}
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        s.data = Path(s.data)
        return s
