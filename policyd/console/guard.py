"""The console's HTTP edge: who may call it, what a state-changing call must carry, and the headers
every answer gets.

Checked for every request under /ui, before any route runs:
- the peer is on `admin_allow` (as for /status and /metrics), else 403;
- the Host header is an IP address, `localhost` or the name policyd was told to bind: a page on
  another site that rebinds its own name to 127.0.0.1 (DNS rebinding) gets 403, not the console;
- a method other than GET/HEAD must be POST (405), send `Content-Type: application/json` (415;
  a cross-site form cannot send that without a CORS preflight, which the console never answers),
  and, when the browser names them, come from the console's own origin: `Origin` equal to the
  request's scheme://host and `Sec-Fetch-Site` same-origin or none (403).
Every answer carries a strict Content-Security-Policy (scripts and styles from the console's own
files only: no inline script, no eval, no other origin), and no API answer is cached.

Edit calls also need a bearer token (see `tokens`); that check belongs to the routes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("policyd.console")

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
NO_STORE = (b"cache-control", b"no-store")
REVALIDATE = (b"cache-control", b"no-cache")
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _host_name(host: str) -> str:
    """The name part of a Host header: `[::1]:9000` -> `::1`, `example:9000` -> `example`."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_allowed_host(host: str, names: frozenset[str]) -> bool:
    name = _host_name(host).lower()
    if name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


class ConsoleGuard:
    """ASGI middleware in front of the console's routes (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, allows: Callable[[str | None], bool], hosts: Iterable[str]) -> None:
        self.app = app
        self.allows = allows
        self.hosts = frozenset({"localhost", *(h.lower() for h in hosts)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        path = scope["path"]
        api = "/api/" in path
        extra = (
            NO_STORE if api or not path.startswith(f"{scope.get('root_path', '')}/static/") else REVALIDATE,
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in (b"cache-control",)
                ]
                message["headers"] = [*headers, *SECURITY_HEADERS, *extra]
            await send(message)

        if refusal is not None:
            status, text = refusal
            body = orjson.dumps({"error": text, "code": "refused"})
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        client = scope.get("client")
        peer = client[0] if client else None
        if not self.allows(peer):
            log.warning("refused the console to %s: not on admin_allow", peer or "?")
            return 403, f"client {peer or '?'} may not use the console (admin_allow)"
        host = _header(scope, b"host") or ""
        if not is_allowed_host(host, self.hosts):
            log.warning("refused the console to %s: Host %r is not this server's", peer, host[:100])
            return 403, (
                f"Host {host[:100]!r} is not an IP address, localhost or policyd's own host name; "
                "open the console by address"
            )
        method = scope["method"]
        if method in SAFE_METHODS:
            return None
        if method != "POST":
            return 405, f"{method} is not used by the console; state-changing calls are POST"
        content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return 415, "a console POST sends Content-Type: application/json"
        origin = _header(scope, b"origin")
        own = f"{scope.get('scheme', 'http')}://{host}"
        if origin is not None and origin.lower() != own.lower():
            log.warning("refused a console POST from %s: Origin %r is not %s", peer, origin[:100], own)
            return 403, f"cross-origin request refused: Origin {origin[:100]!r} is not {own}"
        fetch_site = _header(scope, b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            log.warning("refused a console POST from %s: Sec-Fetch-Site %s", peer, fetch_site[:40])
            return 403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:40]})"
        return None
