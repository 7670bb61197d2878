"""The HTTP edge: what one connection may cost policyd before a request reaches the app.

uvicorn's httptools protocol bounds none of it: a connection that sends nothing, or headers
that never end, stays open for ever (300 of them used up a 256-fd limit), httptools buffers an
unfinished header without limit (8 connections sending 32 MB each grew RSS by 255 MB), and
`limit_concurrency` answers 503 only after reading the headers. `EdgeProtocol` is uvicorn's
protocol with the missing bounds, installed with uvicorn's `http=` option:

- a peer that no endpoint would serve (on neither `handler_allow` nor `admin_allow`, both set)
  is answered 403 and closed as it connects, before a byte of it is read;
- at most `max_connections` connections at once: one more is answered 503 and closed;
- the request line and headers must arrive within `header_timeout_s` of the connection, or of
  the request's first byte on a kept-alive connection (408), and hold at most
  `max_header_bytes` (431);
- the body must arrive within `body_timeout_s` of the headers (408);
- an idle kept-alive connection is closed after `keep_alive_timeout_s` (uvicorn's own timer).

A refused connection never reaches the app; each is counted in
`policyd_http_connections_refused_total{reason}`. The limits come from the app uvicorn serves
(`EDGE_ATTRIBUTE` on it), so every worker process has its own settings' values.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from starlette.types import Message
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.server import ServerState

from policyd.service.access import Allowlist
from policyd.service.settings import DEFAULTS, Settings

log = logging.getLogger("policyd")

# The attribute of the served app that holds its Edge (uvicorn's wrappers keep theirs as `.app`).
EDGE_ATTRIBUTE = "edge"
# Files policyd keeps open besides connections: listening sockets, policy files being read, the
# decision log, the watcher's inotify descriptors, the interpreter's own.
FD_HEADROOM = 64


class Refusal(enum.StrEnum):
    """Why the edge closed a connection: the `reason` label of the refusals metric."""

    ALLOWLIST = "allowlist"
    MAX_CONNECTIONS = "max_connections"
    HEADER_TIMEOUT = "header_timeout"
    HEADER_TOO_LARGE = "header_too_large"
    BODY_TIMEOUT = "body_timeout"


def _ignore(reason: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Edge:
    """The limits one server applies to its connections, and where refusals are counted."""

    connect_allow: Allowlist  # empty: any peer may connect
    max_connections: int
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    refused: Callable[[str], None] = _ignore

    @classmethod
    def from_settings(cls, settings: Settings, refused: Callable[[str], None] = _ignore) -> Edge:
        """A peer may connect if some endpoint serves it: any peer while one allowlist is empty."""
        both = settings.handler_allow and settings.admin_allow
        networks = (*settings.handler_allow, *settings.admin_allow) if both else ()
        return cls(
            Allowlist(networks),
            settings.max_connections,
            settings.max_header_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
            refused,
        )


DEFAULT_EDGE = Edge.from_settings(DEFAULTS)


def edge_of(app: Any) -> Edge:
    """The Edge of the served app (under uvicorn's wrappers), or the defaults' for any other app."""
    for _ in range(8):
        edge = getattr(app, EDGE_ATTRIBUTE, None)
        if isinstance(edge, Edge):
            return edge
        app = getattr(app, "app", None)
        if app is None:
            break
    return DEFAULT_EDGE


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing headers past the limit."""


def _response(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


class _Held:
    """Stands in for the transport while uvicorn writes a response's head: keeps the bytes."""

    __slots__ = ("closed", "parts")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.closed = False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def close(self) -> None:
        self.closed = True


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, with a response's status line and headers held back
    until its first body message and written with it: one write() (one send() system call)
    per response instead of two. uvicorn builds and checks both exactly as before (its own
    send() runs, against `_Held`); only when the bytes reach the socket changes."""

    _head: list[bytes] | None = None

    async def send(self, message: Message) -> None:  # type: ignore[override]
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started and not self.flow.write_paused:
            await self._held_send(message, [])
            return
        head = self._head
        if head is None or kind != "http.response.body":
            await super().send(message)  # type: ignore[arg-type]
            return
        self._head = None
        await self._held_send(message, head)

    async def _held_send(self, message: Message, parts: list[bytes]) -> None:
        transport = self.transport
        held = _Held(parts)
        self.transport = held  # type: ignore[assignment]
        try:
            await super().send(message)  # type: ignore[arg-type]
        finally:
            self.transport = transport
        if message["type"] == "http.response.start" and not held.closed:
            self._head = held.parts  # written with the body
            return
        if not self.disconnected:
            transport.write(b"".join(held.parts))
        if held.closed:
            transport.close()


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's bounds (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.edge = edge_of(self.app)
        self._refused = False
        self._reading_headers = False  # from a request's first byte until its headers are parsed
        self._headers_done = 0  # requests whose headers were parsed on this connection
        self._header_bytes = 0  # of the request line and headers parsed so far
        self._unparsed_bytes = 0  # of data received while headers were unfinished
        self._deadline: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        edge = self.edge
        peer = get_remote_addr(transport)
        host = peer[0] if peer else None
        if not edge.connect_allow.allows(host):
            self._refuse(transport, 403, f"client {host} may not connect", Refusal.ALLOWLIST)
            return
        if len(self.connections) >= edge.max_connections:
            message = f"too many connections (limit {edge.max_connections})"
            self._refuse(transport, 503, message, Refusal.MAX_CONNECTIONS)
            return
        super().connection_made(transport)
        self._arm(edge.header_timeout_s, Refusal.HEADER_TIMEOUT)

    def _refuse(self, transport: asyncio.Transport, status: int, message: str, reason: str) -> None:
        self._refused = True
        log.warning("closed a connection: %s", message)
        self.edge.refused(reason)
        transport.write(_response(status, message))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused and self.flow is None:  # refused as it connected: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        unfinished = self._reading_headers
        done = self._headers_done
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadersTooLarge):
                self._too_large()
            else:
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # httptools keeps an unfinished header to itself: count what it was given meanwhile.
        if unfinished and self._reading_headers and self._headers_done == done:
            self._unparsed_bytes += len(data)
            if self._unparsed_bytes > self.edge.max_header_bytes:
                self._too_large()

    def _bad_request(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _too_large(self) -> None:
        message = f"request headers exceed {self.edge.max_header_bytes} bytes"
        self._close_with(431, message, Refusal.HEADER_TOO_LARGE)

    def _close_with(self, status: int, message: str, reason: str) -> None:
        """Answer `status` unless a response has begun, and close the connection."""
        self._refused = True
        self._disarm()
        if self.transport.is_closing():
            return
        log.warning("closed a connection from %s: %s", self.client[0] if self.client else "?", message)
        self.edge.refused(reason)
        cycle = self.cycle  # this request's, or the previous one's while headers are read
        if cycle is None or not cycle.response_started or (self._reading_headers and cycle.response_complete):
            self.transport.write(_response(status, message))
        self.transport.close()

    # -- deadlines -----------------------------------------------------------------------------
    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, reason, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, reason: str, seconds: float) -> None:
        self._deadline = None
        part = "headers" if reason == Refusal.HEADER_TIMEOUT else "body"
        self._close_with(408, f"request {part} not received within {seconds:g} s", reason)

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = self._unparsed_bytes = 0
        if self._deadline is None:  # a kept-alive connection's next request: its own deadline
            self._arm(self.edge.header_timeout_s, Refusal.HEADER_TIMEOUT)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.edge.max_header_bytes:
            raise _HeadersTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF, as they came on the wire
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._headers_done += 1
        self._arm(self.edge.body_timeout_s, Refusal.BODY_TIMEOUT)
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:
            # The cycle's task has not run yet: from its first step it sends through
            # _OneWriteCycle.send (which only changes when the head is written).
            self.cycle.__class__ = _OneWriteCycle

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def ensure_fd_headroom(max_connections: int) -> None:
    """Raise the open-file limit to fit `max_connections`, or warn that it cannot.

    Past the limit accept() fails and the listening socket spins; the connection cap must come
    first. Workers inherit the raised limit.
    """
    needed = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open-file limit %d is below max_connections %d + %d: lower max_connections or raise "
            "the limit (ulimit -n, LimitNOFILE=)",
            target,
            max_connections,
            FD_HEADROOM,
        )
