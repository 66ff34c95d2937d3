"""Reading and writing communication resources, applications and SMTP logins.

Functions take an open connection and do not commit: the caller decides
what one transaction holds.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mailcarrier.identity.secrets import (
    hash_secret,
    new_access_key,
    new_client_secret,
    secret_hint,
)
from mailcarrier.storage.tables import (
    applications,
    client_secrets,
    deployment,
    resources,
    role_assignments,
    smtp_usernames,
)

SEND_ROLES = ("Owner", "Sender")
DEFAULT_SECRET_LIFETIME = dt.timedelta(days=730)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


async def tenant_id(conn: AsyncConnection) -> str:
    """This deployment's tenant id, made on first use."""
    found = await conn.scalar(
        select(deployment.c.value).where(deployment.c.key == "tenant_id")
    )
    if found:
        return found
    value = new_id()
    await conn.execute(deployment.insert().values(key="tenant_id", value=value))
    return value


async def resource_by_name(conn: AsyncConnection, name: str) -> Any | None:
    result = await conn.execute(select(resources).where(resources.c.name == name))
    return result.first()


async def create_resource(conn: AsyncConnection, name: str) -> Any:
    await conn.execute(
        resources.insert().values(
            id=new_id(),
            name=name,
            primary_key=new_access_key(),
            secondary_key=new_access_key(),
            disable_local_auth=False,
            created_at=utcnow(),
        )
    )
    return await resource_by_name(conn, name)


async def application_by_name(conn: AsyncConnection, name: str) -> Any | None:
    result = await conn.execute(
        select(applications).where(applications.c.name == name)
    )
    return result.first()


async def create_application(conn: AsyncConnection, name: str) -> Any:
    await conn.execute(
        applications.insert().values(
            id=new_id(), tenant_id=await tenant_id(conn), name=name, created_at=utcnow()
        )
    )
    return await application_by_name(conn, name)


async def add_client_secret(
    conn: AsyncConnection,
    application_id: str,
    lifetime: dt.timedelta = DEFAULT_SECRET_LIFETIME,
) -> str:
    """Create a client secret and return it; only its hash is kept."""
    secret = new_client_secret()
    now = utcnow()
    await conn.execute(
        client_secrets.insert().values(
            id=new_id(),
            application_id=application_id,
            secret_hash=hash_secret(secret),
            hint=secret_hint(secret),
            expires_at=now + lifetime,
            created_at=now,
        )
    )
    return secret


async def assign_role(
    conn: AsyncConnection, application_id: str, resource_id: str, role: str
) -> None:
    exists = await conn.scalar(
        select(role_assignments.c.role).where(
            role_assignments.c.application_id == application_id,
            role_assignments.c.resource_id == resource_id,
            role_assignments.c.role == role,
        )
    )
    if not exists:
        await conn.execute(
            role_assignments.insert().values(
                application_id=application_id, resource_id=resource_id, role=role
            )
        )


async def smtp_username_row(conn: AsyncConnection, username: str) -> Any | None:
    result = await conn.execute(
        select(smtp_usernames).where(smtp_usernames.c.username == username.lower())
    )
    return result.first()


async def create_smtp_username(
    conn: AsyncConnection, resource_id: str, username: str, application_id: str
) -> Any:
    await conn.execute(
        smtp_usernames.insert().values(
            id=new_id(),
            resource_id=resource_id,
            username=username.lower(),
            application_id=application_id,
            created_at=utcnow(),
        )
    )
    return await smtp_username_row(conn, username)


@dataclass(frozen=True)
class LoginCandidate:
    """What a password login needs: whose it is and which hashes to try."""

    resource_id: str
    resource_name: str
    application_id: str
    secret_hashes: list[str]


async def login_candidate(
    conn: AsyncConnection, username: str, hint: str
) -> LoginCandidate | None:
    """The resource, application and unexpired secrets behind an SMTP username.

    Accepts the SMTP username resource and the older ACS forms
    ``<resource>.<application id>.<tenant id>`` and ``<resource>|<app>|<tenant>``.
    None when the username is unknown or its application holds no role
    allowing it to send on the resource.
    """
    bound = await _resolve_username(conn, username)
    if bound is None:
        return None
    resource_id, application_id = bound
    resource = (
        await conn.execute(select(resources).where(resources.c.id == resource_id))
    ).first()
    role = await conn.scalar(
        select(role_assignments.c.role).where(
            role_assignments.c.application_id == application_id,
            role_assignments.c.resource_id == resource_id,
            role_assignments.c.role.in_(SEND_ROLES),
        )
    )
    if resource is None or role is None:
        return None
    hashes = (
        await conn.scalars(
            select(client_secrets.c.secret_hash).where(
                client_secrets.c.application_id == application_id,
                client_secrets.c.hint == hint,
                client_secrets.c.expires_at > utcnow(),
            )
        )
    ).all()
    return LoginCandidate(resource.id, resource.name, application_id, list(hashes))


async def _resolve_username(
    conn: AsyncConnection, username: str
) -> tuple[str, str] | None:
    row = await smtp_username_row(conn, username)
    if row is not None:
        return row.resource_id, row.application_id
    for separator in ("|", "."):
        parts = username.rsplit(separator, 2)
        if len(parts) != 3:
            continue
        resource_name, app_id, tenant = parts
        resource = await resource_by_name(conn, resource_name)
        app = (
            await conn.execute(
                select(applications).where(applications.c.id == app_id.lower())
            )
        ).first()
        if resource and app and app.tenant_id == tenant.lower():
            return resource.id, app.id
    return None
