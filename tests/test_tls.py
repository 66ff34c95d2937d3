"""TLS files: a private CA and a server certificate, made once, checked live."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest

from mailcarrier.settings import Settings, load_settings
from mailcarrier.tls import TlsFiles, ensure_tls_files, server_context


def settings_for(
    tmp_path: Path, hostname: str = "mail.example.test", **kw: str
) -> Settings:
    return load_settings(data_dir=tmp_path / "data", hostname=hostname, **kw)


def snapshot(files: TlsFiles) -> dict[str, bytes]:
    assert files.ca is not None
    return {p.name: p.read_bytes() for p in (files.cert, files.key, files.ca)}


async def handshake(files: TlsFiles, ca: Path, server_hostname: str) -> str:
    """Complete a TLS handshake over loopback; return the server's common name."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(
        serve, "127.0.0.1", 0, ssl=server_context(files)
    )
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca))
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=server_hostname
        )
        peer = writer.get_extra_info("peercert")
        writer.close()
        return dict(item[0] for item in peer["subject"])["commonName"]
    finally:
        server.close()
        await server.wait_closed()


def test_files_are_made_once_and_reused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = ensure_tls_files(settings)
    made = snapshot(first)

    second = ensure_tls_files(settings)

    assert second == first
    assert snapshot(second) == made


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    files = ensure_tls_files(settings_for(tmp_path))

    for key in (files.key, files.key.with_name("ca.key")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


async def test_the_server_certificate_verifies_for_the_hostname(
    tmp_path: Path,
) -> None:
    files = ensure_tls_files(settings_for(tmp_path))
    assert files.ca is not None

    assert await handshake(files, files.ca, "mail.example.test") == "mail.example.test"


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
async def test_the_server_certificate_verifies_for_the_loopback_names(
    tmp_path: Path, name: str
) -> None:
    files = ensure_tls_files(settings_for(tmp_path))
    assert files.ca is not None

    assert await handshake(files, files.ca, name) == "mail.example.test"


async def test_the_server_certificate_does_not_verify_for_another_name(
    tmp_path: Path,
) -> None:
    files = ensure_tls_files(settings_for(tmp_path))
    assert files.ca is not None

    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(files, files.ca, "other.example.test")


async def test_the_server_certificate_is_remade_when_the_hostname_changes(
    tmp_path: Path,
) -> None:
    before = snapshot(ensure_tls_files(settings_for(tmp_path, "old.example.test")))

    files = ensure_tls_files(settings_for(tmp_path, "new.example.test"))

    after = snapshot(files)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["server.pem"] != before["server.pem"]
    assert after["server.key"] != before["server.key"]
    assert files.ca is not None
    assert await handshake(files, files.ca, "new.example.test") == "new.example.test"


async def test_the_server_certificate_is_remade_when_the_ca_is_replaced(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    files = ensure_tls_files(settings)
    assert files.ca is not None
    files.ca.unlink()
    files.ca.with_name("ca.key").unlink()

    files = ensure_tls_files(settings)

    assert files.ca is not None
    assert await handshake(files, files.ca, "mail.example.test") == "mail.example.test"


def test_an_operator_certificate_is_used_as_it_is(tmp_path: Path) -> None:
    cert, key = tmp_path / "op-cert.pem", tmp_path / "op-key.pem"

    settings = settings_for(tmp_path, tls_cert=str(cert), tls_key=str(key))

    files = ensure_tls_files(settings)

    assert files == TlsFiles(cert, key, None)
    assert not (tmp_path / "data" / "tls").exists()


async def test_an_operator_certificate_is_served(tmp_path: Path) -> None:
    made = ensure_tls_files(settings_for(tmp_path / "elsewhere"))
    assert made.ca is not None

    files = ensure_tls_files(settings_for(
        tmp_path, tls_cert=str(made.cert), tls_key=str(made.key)
    ))

    assert await handshake(files, made.ca, "mail.example.test") == "mail.example.test"


def test_an_operator_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MAILCARRIER_TLS_KEY"):
        ensure_tls_files(settings_for(tmp_path, tls_cert=str(tmp_path / "c.pem")))
