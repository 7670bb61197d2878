"""TLS and client-address allowlists, through real HTTP."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import SHIPPED_POLICIES, PolicydProcess, fixture


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "policyd-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_serves_https(policyd_server: Callable[..., PolicydProcess], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = policyd_server(
        SHIPPED_POLICIES,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        tls_ca=cert,
    )
    assert server.url.startswith("https://")
    answer = server.post(fixture("NewUserConn-tcp"))
    assert answer.json() == {"reject": True, "reject_reason": "visitors from 198.51.100.23 are blocked"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)


def test_handler_refuses_peers_off_the_allowlist(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server(env={"POLICYD_HANDLER_ALLOW": "10.0.0.0/8, 192.0.2.1"})
    refused = server.post(fixture("Ping-basic"))
    assert refused.status_code == 403
    assert refused.json() == {"error": "client 127.0.0.1 may not call /handler"}
    assert server.client.get("/status").status_code == 200  # admin endpoints are not restricted
    assert server.client.get("/healthz").status_code == 200


def test_handler_serves_peers_on_the_allowlist(policyd_server: Callable[..., PolicydProcess]) -> None:
    server = policyd_server(env={"POLICYD_HANDLER_ALLOW": "10.0.0.0/8,127.0.0.0/8"})
    assert server.post(fixture("Ping-basic")).json() == {"reject": False, "unchange": True}


def test_admin_allowlist_guards_status_and_metrics_only(
    policyd_server: Callable[..., PolicydProcess],
) -> None:
    server = policyd_server(env={"POLICYD_ADMIN_ALLOW": "10.0.0.0/8"})
    assert server.client.get("/status").status_code == 403
    assert server.client.get("/metrics").status_code == 403
    assert server.client.get("/readyz").status_code == 200
    assert server.post(fixture("Ping-basic")).status_code == 200
