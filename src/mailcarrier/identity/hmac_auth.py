"""HMAC-SHA256 request authentication, as the official ACS Email SDK signs.

What: pure functions that rebuild the SDK's string to sign, sign it with an
access key, parse its ``Authorization`` header, verify a whole request
against the resource's keys, and parse an ACS connection string.

The SDK signs ``METHOD\\npath?query\\ndate;host;content-hash`` with
HMAC-SHA256 keyed by the base64-decoded access key, and sends::

    x-ms-date: Tue, 02 Dec 2025 10:00:00 GMT
    x-ms-content-sha256: <base64 SHA-256 of the body>
    Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256
                   &Signature=<base64 HMAC>

What not: no I/O, no HTTP framework, no key storage, no Entra ID bearer
tokens. A ``Bearer`` header is simply "malformed" here; the API layer
decides which scheme to try.

Errors: every refusal is an ``HmacError`` with ``status`` 401 and a
``code``/``message`` meant for the ACS error body (``{"error": {...}}``
plus ``x-ms-error-code``):

- ``Unauthorized``: no ``Authorization`` header at all.
- ``InvalidAuthenticationInfo``: the header is not the SDK's HMAC form,
  ``SignedHeaders`` is not exactly ``x-ms-date;host;x-ms-content-sha256``
  (letter case free, order fixed), ``Host`` is missing, or the date is
  missing, unparsable or outside the allowed clock skew (that message
  mirrors the one ACS is observed to send).
- ``InvalidContentHash``: ``x-ms-content-sha256`` is missing or is not the
  hash of the raw body bytes.
- ``Denied``: no key produces the signature ("Denied by the resource
  provider.", as ACS is observed to answer).

Known limits:

- The date must be RFC 1123 with ``GMT`` (what every SDK sends); the
  weekday name is checked for form, not against the date.
- The signed host is the request's ``Host`` header (with the port when
  present); behind a proxy that rewrites ``Host`` the caller must pass the
  original value.
- The path is tried as sent and, when different, percent-decoded (the
  async SDK client signs the decoded form).
- There is no replay cache: a captured request verifies again within the
  skew window. Idempotency (``Operation-Id``) is the API's business.
- Keys that are not valid base64 raise ``ValueError``: that is a
  configuration fault, not a client one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

SCHEME = "HMAC-SHA256"
SIGNED_HEADERS = ("x-ms-date", "host", "x-ms-content-sha256")
MAX_SKEW = timedelta(minutes=5)

UNAUTHORIZED = "Unauthorized"
INVALID_AUTH = "InvalidAuthenticationInfo"
INVALID_HASH = "InvalidContentHash"
DENIED = "Denied"

_SKEW_MESSAGE = (
    "The given request could not be resolved. The time difference between the "
    "originating client and the server is greater than the allowed margin of "
    "{minutes:g} minutes."
)
_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_RFC1123 = re.compile(
    rf"(?:{_DAYS}), (\d{{2}}) ({'|'.join(_MONTHS)}) (\d{{4}}) "
    r"(\d{2}):(\d{2}):(\d{2}) GMT"
)


class HmacError(Exception):
    """A refused request; ``code`` and ``message`` go into the ACS error body."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def string_to_sign(
    method: str, path_and_query: str, date: str, host: str, content_hash: str
) -> str:
    """The exact string the SDK signs."""
    return f"{method.upper()}\n{path_and_query}\n{date};{host};{content_hash}"


def content_hash(body: bytes) -> str:
    """Base64 SHA-256 of the raw body bytes (the ``x-ms-content-sha256`` value)."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def _digest(key: bytes, string: str) -> bytes:
    return hmac.new(key, string.encode("utf-8"), hashlib.sha256).digest()


def _decode_key(key_b64: str) -> bytes:
    try:
        return base64.b64decode(key_b64, validate=True)
    except binascii.Error as exc:
        raise ValueError("access key is not valid base64") from exc


def sign(key_b64: str, string: str) -> str:
    """Base64 HMAC-SHA256 of ``string`` with the base64-decoded key."""
    digest = _digest(_decode_key(key_b64), string)
    return base64.b64encode(digest).decode("ascii")


def _malformed(detail: str) -> HmacError:
    return HmacError(INVALID_AUTH, f"Malformed Authorization header: {detail}.")


def _split_params(params: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in params.split("&"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not value:
            raise _malformed(f"expected name=value, got {part!r}")
        if name in found:
            raise _malformed(f"{name} given twice")
        found[name] = value.strip()
    return found


def _check_signature(signature: str) -> None:
    try:
        raw = base64.b64decode(signature, validate=True)
    except binascii.Error:
        raise _malformed("Signature is not base64") from None
    if len(raw) != hashlib.sha256().digest_size:
        raise _malformed("Signature is not a SHA-256 HMAC")


def parse_authorization(header: str) -> tuple[list[str], str]:
    """Split ``HMAC-SHA256 SignedHeaders=a;b;c&Signature=<b64>``.

    Returns the signed header names (as given) and the base64 signature.
    The scheme name is matched without regard to letter case.
    """
    scheme, _, params = header.strip().partition(" ")
    if scheme.upper() != SCHEME:
        raise _malformed(f"scheme must be {SCHEME}")
    found = _split_params(params.strip())
    if set(found) != {"SignedHeaders", "Signature"}:
        raise _malformed("expected exactly SignedHeaders and Signature")
    names = found["SignedHeaders"].split(";")
    if any(not name for name in names):
        raise _malformed("empty name in SignedHeaders")
    _check_signature(found["Signature"])
    return names, found["Signature"]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _parse_date(text: str) -> datetime:
    match = _RFC1123.fullmatch(text.strip())
    if match is None:
        raise HmacError(INVALID_AUTH, f"Date is not in RFC 1123 format: {text!r}.")
    day, month, year, hour, minute, second = match.groups()
    try:
        return datetime(
            int(year), _MONTHS.index(month) + 1, int(day),
            int(hour), int(minute), int(second), tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        raise HmacError(INVALID_AUTH, f"Date is not a valid date: {text!r}.") from None


def _request_date(
    headers: Mapping[str, str], now: datetime, max_skew: timedelta
) -> str:
    text = _header(headers, "x-ms-date") or _header(headers, "date")
    if not text:
        raise HmacError(INVALID_AUTH, "The x-ms-date or Date header is required.")
    when = _parse_date(text)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if abs(now - when) > max_skew:
        minutes = max_skew.total_seconds() / 60
        raise HmacError(INVALID_AUTH, _SKEW_MESSAGE.format(minutes=minutes))
    return text


def _check_content_hash(headers: Mapping[str, str], body: bytes) -> str:
    sent = _header(headers, "x-ms-content-sha256")
    if not sent:
        raise HmacError(INVALID_HASH, "The x-ms-content-sha256 header is required.")
    expected = content_hash(body)
    if not hmac.compare_digest(sent.strip().encode(), expected.encode()):
        raise HmacError(
            INVALID_HASH, "The x-ms-content-sha256 header does not match the body."
        )
    return sent.strip()


def _auth_header(headers: Mapping[str, str]) -> tuple[list[str], str]:
    header = _header(headers, "authorization")
    if not header:
        raise HmacError(UNAUTHORIZED, "The Authorization header is required.")
    names, signature = parse_authorization(header)
    if [name.lower() for name in names] != list(SIGNED_HEADERS):
        raise HmacError(
            INVALID_AUTH, "SignedHeaders must be " + ";".join(SIGNED_HEADERS) + "."
        )
    return names, signature


def _match_key(keys: Sequence[str], strings: Sequence[str], signature: str) -> int:
    """Index of the key that signed, checking every key and every string."""
    sent = base64.b64decode(signature)
    matched = -1
    for index, key_b64 in enumerate(keys):
        key = _decode_key(key_b64)
        for string in strings:
            if hmac.compare_digest(_digest(key, string), sent) and matched < 0:
                matched = index
    return matched


def verify_request(
    *,
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[str],
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
) -> int:
    """Verify an SDK-signed request; return the index of the key that matched.

    ``path_and_query`` is the request target as sent (percent-encoded),
    ``headers`` is looked up without regard to case, ``body`` is the raw
    bytes received. Raises ``HmacError`` on any refusal.
    """
    _, signature = _auth_header(headers)
    host = _header(headers, "host")
    if not host:
        raise HmacError(INVALID_AUTH, "The Host header is required.")
    date = _request_date(headers, now, max_skew)
    hashed = _check_content_hash(headers, body)
    paths = dict.fromkeys([path_and_query, unquote(path_and_query)])
    strings = [string_to_sign(method, p, date, host.strip(), hashed) for p in paths]
    index = _match_key(keys, strings, signature)
    if index < 0:
        raise HmacError(DENIED, "Denied by the resource provider.")
    return index


def parse_connection_string(text: str) -> tuple[str, str]:
    """``endpoint=https://host/;accesskey=<b64>`` -> (endpoint, access key).

    Same rules as the SDK: split on ``;``, each element on its first ``=``,
    names compared without case, trailing ``/`` stripped from the endpoint;
    both parts are required, else ``ValueError``.
    """
    endpoint = access_key = ""
    for element in text.split(";"):
        name, _, value = element.partition("=")
        if name.lower() == "endpoint":
            endpoint = value.rstrip("/")
        elif name.lower() == "accesskey":
            access_key = value
    if not endpoint or not access_key:
        raise ValueError(
            "Invalid connection string; expected "
            "endpoint=https://<resource>/;accesskey=<key>"
        )
    return endpoint, access_key
