"""The HTTP edge's memory budget: policyd's RSS while every connection it allows holds the most
it may hold, against the same server idle.

    python -m benchmarks.edge [--connections N] [--max-body-bytes B] [--out FILE]

`policyd serve` (shipped policy, default settings but those given) is filled up to
`max_connections` connections three ways: each with unfinished headers one read short of
`max_header_bytes`; each with complete headers and a body one byte short of `max_body_bytes`
(both kept unfinished, inside the timeouts); and then one connection past the cap. Reported:
RSS before and while held, its peak (VmHWM), and how the connection past the cap was answered.
The figure to hold against a container's memory limit is the peak.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from policyd.service.settings import DEFAULTS
from tests.support import SHIPPED_POLICIES, free_port, stop_process

CHUNK = 64 * 1024  # bytes per send()


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def _send(sock: socket.socket, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        sock.sendall(data[start : start + CHUNK])


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with _connect(port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("policyd did not start")


def _hold(port: int, connections: int, payload: bytes) -> list[socket.socket]:
    socks = [_connect(port) for _ in range(connections)]
    for sock in socks:
        _send(sock, payload)
    time.sleep(0.5)  # let the server read what the kernel holds
    return socks


def measure(connections: int, max_body_bytes: int, max_header_bytes: int) -> dict[str, Any]:
    port = free_port()
    args = [sys.executable, "-m", "policyd", "serve", "--policies", str(SHIPPED_POLICIES)]
    args += ["--port", str(port), "--decision-log", "off", "--max-connections", str(connections)]
    args += ["--max-body-bytes", str(max_body_bytes), "--max-header-bytes", str(max_header_bytes)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port)
        idle = _kib(proc.pid, "VmRSS")
        head = b"POST /handler?op=NewProxy HTTP/1.1\r\nHost: x\r\nX-Pad: "
        unfinished = head + b"a" * (max_header_bytes - len(head) - 1)
        socks = _hold(port, connections, unfinished)
        with_headers = _kib(proc.pid, "VmRSS")
        for sock in socks:
            sock.close()
        time.sleep(0.5)
        request = (
            b"POST /handler?op=NewProxy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % max_body_bytes
        )
        socks = _hold(port, connections, request + b"[" + b"0," * ((max_body_bytes - 2) // 2))
        with_bodies = _kib(proc.pid, "VmRSS")
        extra = _connect(port)
        past_cap = extra.recv(200).split(b"\r\n", 1)[0].decode()
        extra.close()
        for sock in socks:
            sock.close()
        peak = _kib(proc.pid, "VmHWM")
    finally:
        stop_process(proc)
    return {
        "connections": connections,
        "max_body_bytes": max_body_bytes,
        "max_header_bytes": max_header_bytes,
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_unfinished_headers_mib": round(with_headers / 1024, 1),
        "rss_unfinished_bodies_mib": round(with_bodies / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "budget_mib": round(connections * (max_body_bytes + max_header_bytes) / 2**20, 1),
        "past_the_cap": past_cap,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=DEFAULTS.max_connections)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes)
    parser.add_argument("--max-header-bytes", type=int, default=DEFAULTS.max_header_bytes)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    row = measure(args.connections, args.max_body_bytes, args.max_header_bytes)
    for key, value in row.items():
        print(f"  {key:<28} {value}")
    if args.out:
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
