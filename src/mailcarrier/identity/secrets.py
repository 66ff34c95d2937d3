"""Making and checking secrets: access keys, client secrets, their hashes.

Access keys are HMAC keys, so they are kept as issued. Client secrets are
shown once and stored as argon2id hashes; each carries a short clear
prefix (its *hint*, as Entra shows one) so that a login only pays for the
hashes whose hint matches instead of every secret of the application.
"""

from __future__ import annotations

import base64
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HINT_LENGTH = 3
# Client secrets are 240 random bits, so the hash guards a leaked database
# rather than guessable passwords; the OWASP minimum argon2id profile
# (19 MiB, 2 passes) costs about 20 ms here against 190 ms for the
# library's default, which keeps a flood of logins from starving others.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def new_access_key() -> str:
    """A base64 HMAC key of 64 random bytes, the shape ACS issues."""
    return base64.b64encode(secrets.token_bytes(64)).decode("ascii")


def new_client_secret() -> str:
    """A client secret: 40 URL-safe characters (240 bits of entropy)."""
    return secrets.token_urlsafe(30)


def secret_hint(secret: str) -> str:
    return secret[:HINT_LENGTH]


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    """Constant-time check of a secret against its argon2 hash."""
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False
