"""Who may submit: SMTP username + client secret, or a trusted network.

Nothing is cached: every login reads the username, the role and the
secrets afresh, so removing a secret or a role takes effect at once.
Argon2 runs in a thread so that one login does not stall the sessions
sharing the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from mailcarrier.identity import store
from mailcarrier.identity.secrets import hash_secret, secret_hint, verify_secret
from mailcarrier.settings import Settings
from mailcarrier.storage.db import Database
from mailcarrier.submission.principal import Principal

log = logging.getLogger(__name__)

# Trusted networks name their resource; the name's resource is looked up
# again after this many seconds (a trusted client opens many sessions).
TRUSTED_CACHE_SECONDS = 5.0

# Checked when a username is unknown, so that an unknown name takes as
# long to refuse as a wrong secret (no username probing by timing).
_DUMMY_HASH = hash_secret("mailcarrier-not-a-secret")


class StoreAuthenticator:
    """The Authenticator of the submission server, backed by the database."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self._settings = settings
        self._db = db
        self._trusted_cache: dict[str, tuple[float, Principal | None]] = {}

    async def login(self, username: str, password: str) -> Principal | None:
        async with self._db.read() as conn:
            candidate = await store.login_candidate(
                conn, username, secret_hint(password)
            )
        hashes = candidate.secret_hashes if candidate else []
        if not hashes:
            # Pay for one hash anyway, but never accept: the dummy's secret
            # is public, so a match on it must not open a session.
            await asyncio.to_thread(verify_secret, _DUMMY_HASH, password)
            return None
        for secret_hash in hashes:
            if await asyncio.to_thread(verify_secret, secret_hash, password):
                assert candidate is not None
                return Principal(
                    resource_id=candidate.resource_id,
                    resource_name=candidate.resource_name,
                    application_id=candidate.application_id,
                    method="password",
                    username=username,
                )
        return None

    async def trusted(self, peer_ip: str) -> Principal | None:
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 client
        for entry in self._settings.trusted:
            if address.version == entry.network.version and address in entry.network:
                return await self._resource_principal(entry.resource)
        return None

    async def _resource_principal(self, name: str) -> Principal | None:
        cached = self._trusted_cache.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        principal = await self._load_resource_principal(name)
        self._trusted_cache[name] = (time.monotonic() + TRUSTED_CACHE_SECONDS, principal)
        return principal

    async def _load_resource_principal(self, name: str) -> Principal | None:
        async with self._db.read() as conn:
            resource = await store.resource_by_name(conn, name)
        if resource is None:
            log.warning(
                "trusted network names resource %r, which does not exist", name
            )
            return None
        return Principal(
            resource_id=resource.id,
            resource_name=resource.name,
            application_id=None,
            method="trusted",
        )
