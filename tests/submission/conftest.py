"""Fixtures of the submission server tests: a certificate and servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailcarrier.settings import Settings
from mailcarrier.submission.server import start_submission

from .smtp_support import (
    Certificate,
    FakeAcceptor,
    FakeAuthenticator,
    Harness,
    StartServer,
)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed EC certificate for localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
async def start_server(certificate: Certificate) -> AsyncIterator[StartServer]:
    """Start a submission server; keyword arguments become settings."""
    servers: list[asyncio.base_events.Server] = []

    async def start(
        *, implicit_tls: bool = False, trusted: tuple[str, ...] = (), **overrides: Any
    ) -> Harness:
        values: dict[str, Any] = {
            "hostname": "mx.contoso.test",
            "smtp_idle_timeout": 5.0,
            "tls_handshake_timeout": 2.0,
        }
        values.update(overrides)
        harness = Harness(
            port=0,
            settings=Settings(**values),
            authenticator=FakeAuthenticator(trusted),
            acceptor=FakeAcceptor(),
            server_context=certificate.server_context(),
            client_context=certificate.client_context(),
        )
        server = await start_submission(
            settings=harness.settings,
            ssl_context=harness.server_context,
            authenticator=harness.authenticator,
            acceptor=harness.acceptor,
            implicit_tls=implicit_tls,
            host="127.0.0.1",
            port=0,
        )
        servers.append(server)
        harness.port = server.sockets[0].getsockname()[1]
        return harness

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0.01)  # let sessions that saw EOF finish


@pytest.fixture
async def smtpd(start_server: StartServer) -> Harness:
    return await start_server()
