"""SMTP logins and trusted networks, read afresh from the store each time."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from mailcarrier.bootstrap import initialize
from mailcarrier.identity import store
from mailcarrier.identity.auth import StoreAuthenticator
from mailcarrier.settings import Settings, load_settings
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import client_secrets, role_assignments


def make_settings(db: Database, tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=db.url.render_as_string(hide_password=False),
        hostname="mail.example.test",
        **overrides,
    )


@pytest.fixture
async def setup(db: Database, tmp_path: Path) -> dict[str, Any]:
    return await initialize(make_settings(db, tmp_path), db)


@pytest.fixture
def auth(db: Database, tmp_path: Path) -> StoreAuthenticator:
    settings = make_settings(
        db, tmp_path,
        trusted_networks="127.0.0.0/8=default, 10.9.0.0/16=nosuchresource",
    )
    return StoreAuthenticator(settings, db)


# Passwords -------------------------------------------------------------------


async def test_login_with_the_right_secret_gives_the_resource_principal(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    principal = await auth.login("default", setup["smtp"]["password"])

    assert principal is not None
    async with db.read() as conn:
        resource = await store.resource_by_name(conn, "default")
    assert (principal.resource_id, principal.resource_name) == (resource.id, "default")
    assert principal.application_id == setup["application"]["clientId"]
    assert (principal.method, principal.username) == ("password", "default")


async def test_login_matches_the_username_without_regard_to_case(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.login("DeFault", setup["smtp"]["password"]) is not None


async def test_login_with_a_wrong_secret_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    password = setup["smtp"]["password"]
    # Same hint (first characters), different secret.
    wrong = password[:3] + ("A" if password[3] != "A" else "B") + password[4:]

    assert await auth.login("default", wrong) is None


async def test_login_with_an_empty_secret_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.login("default", "") is None


async def test_login_with_an_unknown_username_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.login("nobody", setup["smtp"]["password"]) is None


async def test_login_with_the_internal_placeholder_secret_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    # The placeholder hash checked for unknown names must never open a session.
    assert await auth.login("default", "mailcarrier-not-a-secret") is None
    assert await auth.login("nobody", "mailcarrier-not-a-secret") is None


async def test_login_with_the_legacy_dotted_username_works(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    app = setup["application"]
    username = f"default.{app['clientId']}.{app['tenantId']}"

    principal = await auth.login(username, setup["smtp"]["password"])

    assert principal is not None
    assert principal.resource_name == "default"
    assert principal.application_id == app["clientId"]


async def test_login_with_the_legacy_piped_username_works(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    app = setup["application"]
    username = f"default|{app['clientId'].upper()}|{app['tenantId'].upper()}"

    principal = await auth.login(username, setup["smtp"]["password"])

    assert principal is not None and principal.resource_name == "default"


async def test_login_with_a_legacy_username_of_another_tenant_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    app = setup["application"]
    username = f"default.{app['clientId']}.00000000-0000-0000-0000-000000000000"

    assert await auth.login(username, setup["smtp"]["password"]) is None


async def test_login_with_another_applications_secret_is_refused(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    async with db.write() as conn:
        other = await store.create_application(conn, "other")
        other_secret = await store.add_client_secret(conn, other.id)

    assert await auth.login("default", other_secret) is None


async def test_removing_the_role_revokes_login_at_once(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    async with db.write() as conn:
        await conn.execute(delete(role_assignments))

    assert await auth.login("default", setup["smtp"]["password"]) is None


async def test_a_role_that_cannot_send_does_not_log_in(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    async with db.write() as conn:
        await conn.execute(update(role_assignments).values(role="Reader"))

    assert await auth.login("default", setup["smtp"]["password"]) is None


async def test_removing_the_secret_revokes_login_at_once(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    async with db.write() as conn:
        await conn.execute(delete(client_secrets))

    assert await auth.login("default", setup["smtp"]["password"]) is None


async def test_an_expired_secret_no_longer_logs_in(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    async with db.write() as conn:
        await conn.execute(update(client_secrets).values(expires_at=past))

    assert await auth.login("default", setup["smtp"]["password"]) is None


async def test_a_second_secret_logs_in_beside_the_first(
    auth: StoreAuthenticator, setup: dict[str, Any], db: Database
) -> None:
    async with db.write() as conn:
        second = await store.add_client_secret(
            conn, setup["application"]["clientId"]
        )

    assert await auth.login("default", second) is not None
    assert await auth.login("default", setup["smtp"]["password"]) is not None


# Trusted networks ------------------------------------------------------------


async def test_an_address_inside_a_trusted_network_gets_its_resource(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    principal = await auth.trusted("127.0.0.5")

    assert principal is not None
    assert (principal.resource_name, principal.method) == ("default", "trusted")
    assert principal.application_id is None


async def test_an_address_outside_every_trusted_network_gets_none(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.trusted("192.0.2.1") is None


async def test_an_ipv6_address_does_not_match_an_ipv4_network(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.trusted("::1") is None


async def test_a_trusted_network_naming_a_missing_resource_gets_none(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.trusted("10.9.1.1") is None


async def test_a_peer_that_is_not_an_ip_address_gets_none(
    auth: StoreAuthenticator, setup: dict[str, Any]
) -> None:
    assert await auth.trusted("localhost") is None
