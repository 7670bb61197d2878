"""A response leaves in one write(): uvicorn's head held back until the body (service/edge.py).

uvicorn writes the status line and headers, then the body: two send() system calls per
response. `_OneWriteCycle` runs uvicorn's own send() for both and writes what it produced once.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl

from policyd.service.edge import _OneWriteCycle


class RecordingTransport:
    """The transport's side the cycle uses: what was written, in how many writes, and close()."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def cycle(transport: RecordingTransport, *, keep_alive: bool = True) -> _OneWriteCycle:
    return _OneWriteCycle(
        scope={"type": "http", "method": "POST", "path": "/handler", "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"server", b"policyd")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )


async def respond(c: _OneWriteCycle, *bodies: bytes) -> None:
    await c.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(b"".join(bodies)))],
        }
    )
    for n, body in enumerate(bodies):
        await c.send({"type": "http.response.body", "body": body, "more_body": n + 1 < len(bodies)})


def test_a_response_is_one_write_of_uvicorns_own_bytes() -> None:
    transport = RecordingTransport()
    asyncio.run(respond(cycle(transport), b'{"reject":false,"unchange":true}'))
    assert transport.writes == [
        b'HTTP/1.1 200 OK\r\nserver: policyd\r\ncontent-length: 32\r\n\r\n{"reject":false,"unchange":true}'
    ]
    assert not transport.closed


def test_a_closing_response_is_written_before_the_connection_closes() -> None:
    transport = RecordingTransport()
    asyncio.run(respond(cycle(transport, keep_alive=False), b"{}"))
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"connection: close\r\n\r\n{}")
    assert transport.closed


def test_a_streamed_body_sends_the_head_with_its_first_part() -> None:
    transport = RecordingTransport()
    asyncio.run(respond(cycle(transport), b"ab", b"cd"))
    assert len(transport.writes) == 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.writes[0].endswith(
        b"\r\n\r\nab"
    )
    assert transport.writes[1] == b"cd"
