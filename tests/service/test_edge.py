"""The HTTP edge over real sockets against `policyd serve`: timeouts, header and connection limits,
peers refused as they connect, X-Forwarded-For ignored, bodies assembled in linear time."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from policyd.service.edge import Refusal
from policyd.service.metrics import REFUSAL_REASONS
from tests.helpers import read_response
from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture

PING = json.dumps(fixture("Ping-basic")).encode()


@contextmanager
def connection(server: PolicydProcess, source: str = "127.0.0.1") -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    try:
        yield sock
    finally:
        sock.close()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def post_ping(path: str = "/handler", headers: bytes = b"") -> bytes:
    return (
        b"POST %s?op=Ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (path.encode(), len(PING), headers, PING)
    )


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def refusals(server: PolicydProcess, source: str = "127.0.0.1") -> dict[str, float]:
    with connection(server, source) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = read_all(sock).decode()
    prefix = 'policyd_http_connections_refused_total{reason="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_the_refusal_reasons_are_the_metrics_labels() -> None:
    assert set(REFUSAL_REASONS) == {r.value for r in Refusal}


def test_unfinished_headers_are_dropped_after_the_header_timeout(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--header-timeout-s", "0.5")
    with connection(server) as silent, connection(server) as partial:
        partial.sendall(b"POST /handler?op=Ping HTTP/1.1\r\nHost: x\r\n")
        answer = read_all(partial)  # a server that kept waiting would be the socket's timeout
        assert status_of(answer) == 408
        assert b"request headers not received within 0.5 s" in answer
        assert read_all(silent).startswith(b"HTTP/1.1 408 ")  # connected and sent nothing
    assert refusals(server)["header_timeout"] == 2
    # A prompt request on a fresh connection is served as usual.
    with connection(server) as sock:
        sock.sendall(post_ping())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_kept_alive_connection_gets_a_fresh_header_deadline_per_request(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--header-timeout-s", "0.6", "--keep-alive-timeout-s", "30")
    with connection(server) as sock:
        for _ in range(3):  # 1.2 s in all: longer than one deadline
            sock.sendall(post_ping())
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.4)
        sock.sendall(b"POST /handler?op=Ping HTTP/1.1\r\n")  # then stalls mid-headers
        assert status_of(read_all(sock)) == 408


def test_oversized_headers_are_refused_sent_at_once_or_trickled(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--max-header-bytes", "4096")
    with connection(server) as sock:
        sock.sendall(post_ping(headers=b"X-Pad: %s\r\n" % (b"a" * 5000)))
        answer = read_all(sock)
    assert status_of(answer) == 431
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "request headers exceed 4096 bytes"}
    with connection(server) as sock:  # a header that never ends, 100 bytes at a time
        sock.sendall(b"POST /handler HTTP/1.1\r\nX-Pad: ")
        sent = 0
        try:
            while sent < 1_000_000:
                sock.sendall(b"a" * 100)
                sent += 100
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 100_000  # the server closed the connection soon after the limit
    assert refusals(server)["header_too_large"] == 2
    with connection(server) as sock:  # headers just inside the limit are served
        sock.sendall(post_ping(headers=b"X-Pad: %s\r\n" % (b"a" * 3500)))
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_a_body_that_stops_arriving_is_dropped_after_the_body_timeout(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--body-timeout-s", "0.5")
    with connection(server) as sock:
        sock.sendall(post_ping()[:-10])
        answer = read_all(sock)
    assert status_of(answer) == 408
    assert b"request body not received within 0.5 s" in answer
    assert refusals(server)["body_timeout"] == 1


def test_idle_kept_alive_connections_are_closed_after_the_keep_alive_timeout(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--keep-alive-timeout-s", "0.5")
    with connection(server) as sock:
        sock.sendall(post_ping())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert read_all(sock) == b""  # closed, not the socket's timeout (10 s)
        assert time.monotonic() - started > 0.3  # kept open until then


def test_connections_past_the_cap_are_answered_503_and_closed(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(SHIPPED_POLICIES, "--max-connections", "4", "--header-timeout-s", "30")
    server.client.close()  # its kept-alive connection from wait_ready() would take a place
    with connection(server) as first:
        held = [connection(server) for _ in range(3)]
        socks = [c.__enter__() for c in held]
        first.sendall(post_ping())
        assert read_response(first).startswith(b"HTTP/1.1 200 ")  # four open, one of them busy
        with connection(server) as extra:
            answer = read_all(extra)
        assert status_of(answer) == 503
        assert b"too many connections (limit 4)" in answer
        for c in held:
            c.__exit__(None, None, None)
        del socks
        time.sleep(0.2)
        with connection(server) as again:  # room again
            again.sendall(post_ping())
            assert read_response(again).startswith(b"HTTP/1.1 200 ")
    assert refusals(server)["max_connections"] == 1


def test_a_peer_on_no_allowlist_is_closed_before_its_headers_are_read(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    allowed = "127.0.0.2"
    env = {"POLICYD_HANDLER_ALLOW": allowed, "POLICYD_ADMIN_ALLOW": allowed}
    server = policyd_server(SHIPPED_POLICIES, "--header-timeout-s", "30", env=env, wait=False)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # wait_ready() asks from 127.0.0.1, which is refused
        try:
            with connection(server, allowed) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    break
        except OSError:
            time.sleep(0.05)
    with connection(server) as sock:  # sends nothing: the answer cannot depend on a request
        answer = read_all(sock)  # at once: the header timeout (30 s) is past the socket's (10 s)
    assert status_of(answer) == 403
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "client 127.0.0.1 may not connect"}
    with connection(server, allowed) as sock:
        sock.sendall(post_ping())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    assert refusals(server, allowed)["allowlist"] == 1


def test_x_forwarded_for_does_not_pass_the_allowlists(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path
) -> None:
    forged = b"X-Forwarded-For: 127.0.0.2\r\nForwarded: for=127.0.0.2\r\nX-Real-IP: 127.0.0.2\r\n"
    handler_only = policyd_server(SHIPPED_POLICIES, env={"POLICYD_HANDLER_ALLOW": "127.0.0.2"})
    with connection(handler_only) as sock:
        sock.sendall(post_ping(headers=forged))
        answer = read_response(sock)
    assert status_of(answer) == 403
    assert b"client 127.0.0.1 may not call /handler" in answer
    admin_only = policyd_server(SHIPPED_POLICIES, env={"POLICYD_ADMIN_ALLOW": "127.0.0.2"})
    for path in ("/status", "/metrics"):
        answer = httpx.get(admin_only.url + path, headers={"X-Forwarded-For": "127.0.0.2"}, timeout=10)
        assert answer.status_code == 403, path


def _cpu_ns(server: PolicydProcess) -> int:
    """CPU time the server's threads have used, from the kernel's accounting (nanoseconds)."""
    tasks = Path(f"/proc/{server.proc.pid}/task")
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks.iterdir())


def _trickle(server: PolicydProcess, size: int, pieces: int) -> int:
    """Send a body of `size` bytes in `pieces` separate sends; the server's CPU time for it."""
    # Padded with whitespace, which parsing skips: the CPU measured is the body's assembly.
    head, tail = b'{"op":"Ping","content":', b'{"user":{"user":"alice"}}}'
    body = head + b" " * (size - len(head) - len(tail)) + tail
    step = size // pieces
    with connection(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /handler?op=Ping HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.05)
        before = _cpu_ns(server)
        for start in range(0, len(body), step):
            sock.sendall(body[start : start + step])
            time.sleep(0.0005)  # each piece arrives on its own
        answer = read_response(sock)
        spent = _cpu_ns(server) - before
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return spent


def test_a_trickled_body_costs_cpu_linear_in_its_size(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    # The same number of pieces, 256x the bytes: the per-piece work (an event-loop wake-up, a
    # parser call, a receive) is the same, so a body assembled in linear time costs about the
    # same CPU (1.7x here, the kernel copying the larger pieces). `body += chunk` copied the body
    # so far on every piece, 4 GiB for 8 MiB in 8 KiB pieces, and cost 6-10x. (A 1 MiB body in
    # 1 KiB pieces copies only 512 MiB, less than the per-piece work costs: too close to call.)
    server = policyd_server(SHIPPED_POLICIES, "--max-body-bytes", str(2**24), "--decision-log", "off")
    _trickle(server, 2**15, 64)  # warm-up
    small = min(_trickle(server, 2**15, 1024) for _ in range(2))  # 32 KiB in 32-byte pieces
    large = min(_trickle(server, 2**23, 1024) for _ in range(2))  # 8 MiB in 8 KiB pieces
    assert large < 3 * small, (large, small)
