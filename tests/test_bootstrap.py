"""``mailcarrier init``: the default set-up, made once and found again."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from mailcarrier.bootstrap import initialize, is_initialized
from mailcarrier.identity.auth import StoreAuthenticator
from mailcarrier.settings import Settings, load_settings
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import (
    applications,
    dkim_keys,
    domains,
    resources,
    role_assignments,
    smtp_usernames,
)


def make_settings(db: Database, tmp_path: Path, **overrides: Any) -> Settings:
    overrides.setdefault("hostname", "mail.example.test")
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=db.url.render_as_string(hide_password=False),
        **overrides,
    )


@pytest.fixture
def settings(db: Database, tmp_path: Path) -> Settings:
    return make_settings(db, tmp_path)


async def count(db: Database, table: Any) -> int:
    async with db.read() as conn:
        return await conn.scalar(select(func.count()).select_from(table))


async def test_init_twice_finds_the_same_setup_with_a_fresh_password(
    db: Database, settings: Settings
) -> None:
    first = await initialize(settings, db)
    second = await initialize(settings, db)

    for key in ("resource", "domain", "senderAddress", "connectionString",
                "application", "dkim"):
        assert first[key] == second[key], key
    assert first["smtp"]["username"] == second["smtp"]["username"] == "default"
    assert first["smtp"]["password"] != second["smtp"]["password"]
    for table in (resources, domains, applications, role_assignments,
                  smtp_usernames, dkim_keys):
        assert await count(db, table) == 1, table.name


async def test_both_passwords_of_two_inits_log_in(
    db: Database, settings: Settings
) -> None:
    first = await initialize(settings, db)
    second = await initialize(settings, db)
    auth = StoreAuthenticator(settings, db)

    for result in (first, second):
        principal = await auth.login("default", result["smtp"]["password"])
        assert principal is not None and principal.resource_name == "default"


async def test_is_initialized_says_whether_init_ran(
    db: Database, settings: Settings
) -> None:
    assert await is_initialized(db) is False

    await initialize(settings, db)

    assert await is_initialized(db) is True


async def test_init_json_has_exactly_the_documented_keys(
    db: Database, settings: Settings
) -> None:
    result = await initialize(settings, db)

    assert set(result) == {
        "resource", "connectionString", "senderAddress", "domain",
        "caCertificate", "smtp", "application", "dkim",
    }
    assert set(result["smtp"]) == {"host", "port", "tlsPort", "username", "password"}
    assert set(result["application"]) == {"clientId", "tenantId"}
    assert set(result["dkim"]) == {"name", "value"}


async def test_init_json_describes_the_default_listeners(
    db: Database, settings: Settings
) -> None:
    result = await initialize(settings, db)

    assert result["resource"] == "default"
    assert result["domain"].endswith(".mailcarrier.localhost")
    assert result["senderAddress"] == f"DoNotReply@{result['domain']}"
    async with db.read() as conn:
        key = await conn.scalar(select(resources.c.primary_key))
    assert result["connectionString"] == (
        f"endpoint=https://127.0.0.1:8443/;accesskey={key}")
    assert (result["smtp"]["host"], result["smtp"]["port"],
            result["smtp"]["tlsPort"]) == ("127.0.0.1", 2587, 2465)


async def test_listeners_on_every_address_are_reached_by_hostname(
    db: Database, tmp_path: Path
) -> None:
    settings = make_settings(
        db, tmp_path, api_listen="0.0.0.0:443", smtp_listen="[::]:587"
    )

    result = await initialize(settings, db)

    assert result["connectionString"].startswith(
        "endpoint=https://mail.example.test:443/;")
    assert result["smtp"]["host"] == "mail.example.test"


async def test_an_ipv6_api_listener_is_bracketed_in_the_connection_string(
    db: Database, tmp_path: Path
) -> None:
    settings = make_settings(db, tmp_path, api_listen="[::1]:8443")

    result = await initialize(settings, db)

    assert result["connectionString"].startswith("endpoint=https://[::1]:8443/;")


async def test_the_dkim_record_is_the_public_key_stored_for_the_domain(
    db: Database, settings: Settings
) -> None:
    result = await initialize(settings, db)

    async with db.read() as conn:
        row = (await conn.execute(
            select(dkim_keys.c.selector, dkim_keys.c.private_key_pem)
            .join(domains, domains.c.id == dkim_keys.c.domain_id)
            .where(domains.c.name == result["domain"])
        )).one()
    private = serialization.load_pem_private_key(row.private_key_pem.encode(), None)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert result["dkim"]["name"] == f"{row.selector}._domainkey.{result['domain']}"
    tags = dict(
        part.strip().split("=", 1) for part in result["dkim"]["value"].split(";")
    )
    assert (tags["v"], tags["k"]) == ("DKIM1", "rsa")
    assert base64.b64decode(tags["p"]) == der


async def test_the_ca_certificate_file_exists(
    db: Database, settings: Settings
) -> None:
    result = await initialize(settings, db)

    ca = Path(result["caCertificate"])
    assert ca.is_absolute() and ca.is_file()
    assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


async def test_an_operator_certificate_gives_no_ca_file(
    db: Database, tmp_path: Path
) -> None:
    settings = make_settings(
        db, tmp_path, tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")
    )

    result = await initialize(settings, db)

    assert result["caCertificate"] is None
