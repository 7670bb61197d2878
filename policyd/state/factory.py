"""One backend from the `state` setting: `memory`, or `redis://[:password@]host:port/db`
(`rediss://` for TLS, `unix:///path/to/redis.sock?db=0` for a socket)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from policyd.state.backend import Backend
from policyd.state.memory import MemoryBackend
from policyd.state.tracking import Expiry

MEMORY = "memory"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def check_spec(spec: str) -> str:
    """The spec itself, or ValueError saying what a state spec looks like."""
    if spec == MEMORY or spec.startswith(REDIS_SCHEMES):
        return spec
    raise ValueError(
        f"expected 'memory', 'redis://[:password@]host:port/db' or 'unix:///path.sock', got {spec!r}"
    )


def is_shared(spec: str) -> bool:
    """Whether processes started with this spec share one state (Redis) or each keep their own."""
    return spec != MEMORY


def open_backend(spec: str, *, expiry: Expiry, timeout_s: float, replica: str) -> Backend:
    """The backend for a checked spec; Redis is connected lazily (nothing blocks here)."""
    check_spec(spec)
    if spec == MEMORY:
        return MemoryBackend(expiry, timeout_s)
    from policyd.state.redisstore import RedisBackend  # redis-py is imported only when used

    return RedisBackend(spec, expiry, timeout_s, replica)


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***: what /status, logs and workers' env show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
