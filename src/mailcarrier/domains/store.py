"""Reading and writing domains, their DKIM keys and sender usernames.

Functions take an open connection and do not commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from mailcarrier.addresses import domain_to_ascii
from mailcarrier.domains.dkim_keys import generate_private_key_pem, public_key_record
from mailcarrier.identity.store import new_id, utcnow
from mailcarrier.storage.tables import dkim_keys, domains, sender_usernames

VERIFIED = "Verified"
MANAGED_SENDER = "donotreply"
MANAGED_SENDER_DISPLAY = "DoNotReply"
MANAGED_SELECTOR = "selector1"


@dataclass(frozen=True)
class SenderRecord:
    domain: str
    domain_kind: str
    verification_state: str
    resource_id: str | None
    username_exists: bool


async def domains_of_resource(conn: AsyncConnection, resource_id: str) -> list[Any]:
    result = await conn.execute(
        select(domains)
        .where(domains.c.resource_id == resource_id)
        .order_by(domains.c.created_at)
    )
    return list(result)


async def create_managed_domain(
    conn: AsyncConnection, resource_id: str, managed_zone: str
) -> Any:
    """A ``<uuid>.<managed zone>`` domain: verified from birth, one sender."""
    domain_id = new_id()
    name = f"{uuid.uuid4()}.{domain_to_ascii(managed_zone)}"
    now = utcnow()
    await conn.execute(
        domains.insert().values(
            id=domain_id,
            name=name,
            kind="managed",
            resource_id=resource_id,
            verification_state=VERIFIED,
            created_at=now,
        )
    )
    await add_dkim_key(conn, domain_id, MANAGED_SELECTOR, state="active")
    await conn.execute(
        sender_usernames.insert().values(
            id=new_id(),
            domain_id=domain_id,
            username=MANAGED_SENDER,
            display_name=MANAGED_SENDER_DISPLAY,
            created_at=now,
        )
    )
    return (await conn.execute(select(domains).where(domains.c.id == domain_id))).one()


async def add_dkim_key(
    conn: AsyncConnection, domain_id: str, selector: str, *, state: str
) -> Any:
    pem = generate_private_key_pem()
    key_id = new_id()
    await conn.execute(
        dkim_keys.insert().values(
            id=key_id,
            domain_id=domain_id,
            selector=selector,
            private_key_pem=pem.decode("ascii"),
            public_key_record=public_key_record(pem),
            state=state,
            created_at=utcnow(),
        )
    )
    return (await conn.execute(select(dkim_keys).where(dkim_keys.c.id == key_id))).one()


async def active_dkim_key(conn: AsyncConnection, domain: str) -> Any | None:
    """The key that signs mail of ``domain`` now (A-label, lower-case)."""
    result = await conn.execute(
        select(dkim_keys.c.selector, dkim_keys.c.private_key_pem,
               dkim_keys.c.public_key_record)
        .join(domains, domains.c.id == dkim_keys.c.domain_id)
        .where(domains.c.name == domain, dkim_keys.c.state == "active")
        .order_by(dkim_keys.c.created_at.desc())
        .limit(1)
    )
    return result.first()


async def sender_record(
    conn: AsyncConnection, local_part: str, domain: str
) -> SenderRecord | None:
    """What is known of sender ``local_part@domain``; None for an unknown domain."""
    row = (
        await conn.execute(select(domains).where(domains.c.name == domain))
    ).first()
    if row is None:
        return None
    username = await conn.scalar(
        select(sender_usernames.c.id).where(
            sender_usernames.c.domain_id == row.id,
            sender_usernames.c.username == local_part.lower(),
        )
    )
    return SenderRecord(
        domain=row.name,
        domain_kind=row.kind,
        verification_state=row.verification_state,
        resource_id=row.resource_id,
        username_exists=username is not None,
    )
