"""Decoding what an SMTP client sends during AUTH PLAIN and AUTH LOGIN.

Pure functions without I/O: base64 responses (RFC 4954 section 4), the
PLAIN message (RFC 4616) and the LOGIN user name and password
(draft-murchison-sasl-login). Each failure is a ``SaslError`` carrying the
reply the server sends for it.

Not here: the challenge/response exchange and the AUTH command's state
rules (``server.py``), checking credentials (the ``Authenticator``), and the
token mechanisms XOAUTH2 and OAUTHBEARER, which are added beside PLAIN and
LOGIN as further ``auth_<MECH>`` methods of the server.

Nothing in this module logs; a password never leaves it except inside a
``PlainCredentials``, whose repr hides it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from mailcarrier.submission import replies

# The LOGIN mechanism's challenges, sent base64-encoded as clients expect.
USERNAME_CHALLENGE = b"Username:"
PASSWORD_CHALLENGE = b"Password:"


class SaslError(Exception):
    """A client's authentication data was refused; ``reply`` says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class PlainCredentials:
    authzid: str
    username: str
    password: str = field(repr=False)


def is_abort(response: bytes) -> bool:
    """Whether a challenge response is the client's cancel line ``*``."""
    return response.strip() == b"*"


def decode_response(response: bytes | str) -> bytes:
    """Decode one base64 response; ``=`` alone is an empty response."""
    text = response.strip()
    if text in ("=", b"="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SaslError(replies.AUTH_BAD_BASE64_501_5_5_2) from exc


def decode_text(data: bytes) -> str:
    """A user name or password as text: UTF-8 and free of NUL (RFC 4616)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslError(replies.AUTH_MALFORMED_501_5_5_2) from exc
    if "\0" in text:
        raise SaslError(replies.AUTH_MALFORMED_501_5_5_2)
    return text


def parse_plain(message: bytes) -> PlainCredentials:
    """Split a PLAIN message ``[authzid] NUL authcid NUL passwd``.

    An authzid other than empty or the user's own name is refused: there
    is no proxy authorization in mailcarrier (RFC 4616 section 2).
    """
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError(replies.AUTH_MALFORMED_501_5_5_2)
    authzid, username, password = (decode_text(part) for part in parts)
    if not username or not password:
        raise SaslError(replies.AUTH_MALFORMED_501_5_5_2)
    if authzid and authzid != username:
        raise SaslError(replies.AUTHZID_REFUSED_535_5_7_3)
    return PlainCredentials(authzid, username, password)
