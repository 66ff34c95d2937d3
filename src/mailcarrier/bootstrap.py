"""``mailcarrier init``: everything one needs to send, made once.

The first run creates the communication resource ``default`` with its two
access keys, a managed domain with its DKIM key and the ``DoNotReply``
sender, an application holding the ``Owner`` role on the resource, and an
SMTP username bound to that application. Later runs find all of these and
create only a fresh client secret, since secrets are kept hashed and can
be shown only when they are made.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from mailcarrier.domains import store as domain_store
from mailcarrier.identity import store as identity_store
from mailcarrier.settings import HostPort, Settings
from mailcarrier.storage.db import Database
from mailcarrier.tls import ensure_tls_files

DEFAULT_RESOURCE = "default"
DEFAULT_APPLICATION = "default"
DEFAULT_SMTP_USERNAME = "default"


def public_host(settings: Settings, address: HostPort | None) -> str:
    """The host clients should dial for a listener.

    A listener bound to one address is reached there; one bound to every
    address (0.0.0.0, ::) is reached by the service's hostname.
    """
    if address is None:
        return settings.hostname
    try:
        if ipaddress.ip_address(address.host).is_unspecified:
            return settings.hostname
    except ValueError:
        return address.host
    return address.host


async def is_initialized(db: Database) -> bool:
    async with db.read() as conn:
        return await identity_store.resource_by_name(conn, DEFAULT_RESOURCE) is not None


async def initialize(settings: Settings, db: Database) -> dict[str, Any]:
    """Create or find the default set-up; return the ``init --json`` object."""
    tls = ensure_tls_files(settings)
    async with db.write() as conn:
        resource = await identity_store.resource_by_name(conn, DEFAULT_RESOURCE)
        if resource is None:
            resource = await identity_store.create_resource(conn, DEFAULT_RESOURCE)
        domain = await _managed_domain(conn, settings, resource.id)
        key = await domain_store.active_dkim_key(conn, domain.name)
        app = await identity_store.application_by_name(conn, DEFAULT_APPLICATION)
        if app is None:
            app = await identity_store.create_application(conn, DEFAULT_APPLICATION)
        await identity_store.assign_role(conn, app.id, resource.id, "Owner")
        secret = await identity_store.add_client_secret(conn, app.id)
        if await identity_store.smtp_username_row(conn, DEFAULT_SMTP_USERNAME) is None:
            await identity_store.create_smtp_username(
                conn, resource.id, DEFAULT_SMTP_USERNAME, app.id
            )
    api_host = public_host(settings, settings.api_address)
    smtp_host = public_host(settings, settings.smtp_address)
    return {
        "resource": resource.name,
        "connectionString": (
            f"endpoint=https://{_bracket(api_host)}:{settings.api_address.port}/;"
            f"accesskey={resource.primary_key}"
        ),
        "senderAddress": f"DoNotReply@{domain.name}",
        "domain": domain.name,
        "caCertificate": str(tls.ca.resolve()) if tls.ca else None,
        "smtp": {
            "host": smtp_host,
            "port": settings.smtp_address.port if settings.smtp_address else None,
            "tlsPort": settings.smtps_address.port if settings.smtps_address else None,
            "username": DEFAULT_SMTP_USERNAME,
            "password": secret,
        },
        "application": {"clientId": app.id, "tenantId": app.tenant_id},
        "dkim": {
            "name": f"{key.selector}._domainkey.{domain.name}",
            "value": key.public_key_record,
        },
    }


async def _managed_domain(conn: Any, settings: Settings, resource_id: str) -> Any:
    for row in await domain_store.domains_of_resource(conn, resource_id):
        if row.kind == "managed":
            return row
    return await domain_store.create_managed_domain(
        conn, resource_id, settings.managed_zone
    )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
