"""Validate an ACS ``POST /emails:send`` JSON body into an ``EmailRequest``.

What: ``parse_send_request`` takes the raw request bytes and the HTTP request
headers and returns ``(EmailRequest, ParsedExtras)``, or raises ``ApiError``
carrying an ACS-shaped error (``ApiError.body()``). Field names follow the
2025-09-01 OpenAPI ``EmailMessage`` (plus ``attachments[].contentId``, which the
SDK sends from api-version 2024-07-01-preview on). Every accepted request is one
that ``mime.build_message`` can render: the checks here are a superset of the
``ValueError`` checks there.

What not: no authentication, no api-version handling, no check that the sender
belongs to a verified, linked domain (the caller knows the sender usernames and
fills ``sender_display_name``), no ``x-ms-acsemail-validate-message-id`` logic,
no rate limits, no legacy 2021-10-01-preview body.

Decisions (the reference marks these UNCONFIRMED or does not say):

- Error codes: every 400 uses ``BadRequest`` (the only 400 code observed), with
  the observed message prefix "Request body validation error. See property
  '<target>'." followed by what to fix. An oversized body is 413
  ``RequestEntityTooLarge`` (no code documented). ``body()`` returns
  ``{"error": {"code", "message", "target", "details": [], "innererror": None}}``
  (common ``ErrorResponse`` plus the observed ``innererror``).
- ``content.plainText`` and ``content.html`` are both optional, as in the spec
  (only ``subject`` is required); with neither the message has an empty
  text/plain body. ``null`` is accepted for any optional property.
- Unknown properties are ignored (the spec sets no
  ``additionalProperties: false``); so is ``senderDisplayName`` of
  2025-01-15-preview.
- Recipient limit: ``max_recipients`` counts unique addresses (case-insensitive)
  across to, cc and bcc, like the logs' ``UniqueRecipientsCount``.
- Attachment types: the DOC-MIME table is the allow-list, compared on the whole
  lower-cased ``contentType`` (parameters such as ``; charset=`` are not allowed).
- The ``x-ms-acsemail-*`` switches are honoured from the HTTP request headers and
  from the JSON ``headers`` map (where DOC-HEADERS puts them); the value must be
  ``true`` or ``1`` (case-insensitive). They are consumed here and never copied
  into the message.
- "Invalid attachment" (droppable under ``x-ms-acsemail-suppress-invalid-
  attachment``) means bad base64, a type outside the allow-list or a malformed
  ``contentId``. A missing or non-string ``name``/``contentType``/
  ``contentInBase64`` and control characters in ``name`` are schema errors and
  always 400.
- Duplicate ``contentId`` values are compared exactly (after stripping ``<>``).
  Under ``x-ms-acsemail-ignore-duplicate-content-id`` both attachments are kept.
- Custom headers may not set From, Sender, To, Cc, Bcc, Reply-To, Subject, Date,
  Message-ID, MIME-Version, Return-Path, DKIM-Signature or any Content-* header
  (case-insensitive), nor repeat a name in another case. ACS itself lets a
  caller supply a Message-ID; mailcarrier does not, yet.
- Addresses: ASCII dot-atom local part (no quoted strings, no SMTPUTF8), a
  domain of at least two labels (internationalised domains allowed), at most
  254 characters; display names, subject, header names and values must not
  contain CR, LF, other C0 controls but TAB, DEL, U+0085, U+2028 or U+2029.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailcarrier.api.mime import Attachment, EmailRequest, Mailbox

__all__ = ["ALLOWED_CONTENT_TYPES", "ApiError", "ParsedExtras", "parse_send_request"]

MAX_BYTES = 10 * 1024 * 1024
MAX_RECIPIENTS = 50
SUPPRESS_INVALID_ATTACHMENT = "x-ms-acsemail-suppress-invalid-attachment"
IGNORE_DUPLICATE_CONTENT_ID = "x-ms-acsemail-ignore-duplicate-content-id"
_SWITCH_PREFIX = "x-ms-acsemail-"
_TRUE_VALUES = frozenset({"true", "1"})

ALLOWED_CONTENT_TYPES = frozenset(
    {
        "video/3gpp", "video/3gpp2", "application/x-7z-compressed", "audio/aac",
        "video/x-msvideo", "image/bmp", "text/csv", "application/msword",
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-fontobject", "application/epub+zip", "image/gif",
        "application/gzip", "image/vnd.microsoft.icon", "text/calendar",
        "image/jpeg", "application/json", "audio/midi", "audio/mpeg", "video/mp4",
        "video/mpeg", "audio/ogg", "video/ogg", "application/ogg",
        "application/onenote", "audio/opus", "font/otf", "application/pdf",
        "image/png", "application/vnd.ms-powerpoint.slideshow.macroenabled.12",
        "application/vnd.openxmlformats-officedocument.presentationml.slideshow",
        "application/vnd.ms-powerpoint",
        "application/vnd.ms-powerpoint.presentation.macroenabled.12",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.ms-publisher", "application/x-rar-compressed",
        "application/vnd.ms-outlook", "application/rtf", "image/svg+xml",
        "application/x-tar", "image/tiff", "font/ttf", "text/plain",
        "application/vnd.visio", "audio/wav", "audio/webm", "video/webm",
        "image/webp", "audio/x-ms-wma", "video/x-ms-wmv", "font/woff",
        "font/woff2", "application/vnd.ms-excel",
        "application/vnd.ms-excel.sheet.binary.macroenabled.12",
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/xml", "text/xml", "application/zip",
    }
)  # fmt: skip

_FORBIDDEN_HEADERS = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date",
        "message-id", "mime-version", "return-path", "dkim-signature",
    }
)  # fmt: skip
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_CONTENT_ID = re.compile(r"[!-;=?-~]+")  # printable ASCII but '<' and '>'
_MAX_ADDRESS = 254
_MAX_LOCAL = 64


@dataclass(frozen=True)
class ApiError(Exception):
    """A request the service refuses, with the ACS error it answers with."""

    status: int
    code: str
    message: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, Any]:
        """Return the JSON error body (common ``ErrorResponse`` shape)."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "target": self.target,
                "details": [],
                "innererror": None,
            }
        }


@dataclass(frozen=True)
class ParsedExtras:
    """What the caller needs besides the message itself."""

    sender_address: str
    recipients: tuple[str, ...]  # unique to+cc+bcc, first spelling, in order
    to_count: int
    cc_count: int
    bcc_count: int
    attachment_count: int  # attachments kept
    attachments_dropped: int  # invalid ones dropped under the suppress switch
    user_engagement_tracking_disabled: bool


def _bad(target: str | None, fix: str) -> ApiError:
    prefix = "Request body validation error."
    if target is not None:
        prefix += f" See property '{target}'."
    return ApiError(400, "BadRequest", f"{prefix} {fix}", target)


def parse_send_request(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    max_bytes: int = MAX_BYTES,
    max_recipients: int = MAX_RECIPIENTS,
) -> tuple[EmailRequest, ParsedExtras]:
    """Validate the raw body of ``POST /emails:send``; raise ``ApiError`` if bad."""
    body = _load(raw, max_bytes)
    custom = _custom_headers(body.get("headers"))
    switches = _switches(headers, custom)
    sender = _address(body.get("senderAddress"), "senderAddress")
    subject, plain_text, html = _content(body.get("content"))
    to, cc, bcc = _recipients(body.get("recipients"))
    unique = _unique([*to, *cc, *bcc])
    if len(unique) > max_recipients:
        raise _bad(
            "recipients",
            f"At most {max_recipients} unique recipients are allowed across to, "
            f"cc and bcc; this request has {len(unique)}.",
        )
    reply_to = _mailbox_list(body.get("replyTo"), "replyTo", required=False)
    attachments, dropped = _attachments(body.get("attachments"), switches)
    tracking_off = _optional_bool(body, "userEngagementTrackingDisabled")
    request = EmailRequest(
        sender=sender,
        sender_display_name="",
        subject=subject,
        plain_text=plain_text,
        html=html,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        headers={k: v for k, v in custom.items() if not _is_switch(k)},
        attachments=attachments,
    )
    extras = ParsedExtras(
        sender_address=sender,
        recipients=unique,
        to_count=len(to),
        cc_count=len(cc),
        bcc_count=len(bcc),
        attachment_count=len(attachments),
        attachments_dropped=dropped,
        user_engagement_tracking_disabled=tracking_off,
    )
    return request, extras


# Body -------------------------------------------------------------------------


def _load(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise ApiError(
            413,
            "RequestEntityTooLarge",
            f"The request body is {len(raw)} bytes; the limit is {max_bytes} bytes "
            "including base64 attachments. Send smaller or fewer attachments.",
            None,
        )
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(None, "The body must be a UTF-8 JSON object.") from None
    if not isinstance(body, dict):
        raise _bad(None, "The body must be a JSON object, not a JSON array or value.")
    return body


def _string(value: object, target: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if value is None:
        raise _bad(target, "This property is required and must be a string.")
    if not isinstance(value, str):
        raise _bad(target, "This property must be a string.")
    return value


def _line(value: object, target: str, *, required: bool = True) -> str | None:
    """A string that goes into a header: no line breaks or control characters."""
    text = _string(value, target, required=required)
    if text is not None and _CONTROLS.search(text):
        raise _bad(
            target, "Remove CR, LF and other control characters from this value."
        )
    return text


def _object(value: object, target: str, *, required: bool) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _bad(target, "This property is required and must be a JSON object.")
    return value


def _list(value: object, target: str, *, required: bool) -> list[Any]:
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise _bad(target, "This property must be a JSON array.")
    return value


def _optional_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(key, "This property must be true or false.")
    return value


def _content(value: object) -> tuple[str, str | None, str | None]:
    content = _object(value, "content", required=True)
    subject = _line(content.get("subject"), "content.subject") or ""
    plain_text = _string(content.get("plainText"), "content.plainText", required=False)
    html = _string(content.get("html"), "content.html", required=False)
    return subject, plain_text, html


# Addresses --------------------------------------------------------------------


def _address(value: object, target: str) -> str:
    address = _line(value, target) or ""
    if not _is_bare_address(address):
        raise _bad(
            target,
            "Give a bare email address such as user@example.com, without a "
            "display name, angle brackets, spaces or quotes.",
        )
    return address


def _is_bare_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    if not at or len(address) > _MAX_ADDRESS or len(local) > _MAX_LOCAL:
        return False
    if not _LOCAL_PART.fullmatch(local):
        return False
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return _DOMAIN.fullmatch(ascii_domain) is not None


def _mailbox(value: object, target: str) -> Mailbox:
    entry = _object(value, target, required=True)
    address = _address(entry.get("address"), f"{target}.address")
    name = _line(entry.get("displayName"), f"{target}.displayName", required=False)
    return Mailbox(address, name or "")


def _mailbox_list(value: object, target: str, *, required: bool) -> list[Mailbox]:
    entries = _list(value, target, required=required)
    return [_mailbox(entry, f"{target}[{i}]") for i, entry in enumerate(entries)]


def _recipients(
    value: object,
) -> tuple[list[Mailbox], list[Mailbox], list[Mailbox]]:
    recipients = _object(value, "recipients", required=True)
    to = _mailbox_list(recipients.get("to"), "recipients.to", required=True)
    if not to:
        raise _bad("recipients.to", "Give at least one To recipient.")
    cc = _mailbox_list(recipients.get("cc"), "recipients.cc", required=False)
    bcc = _mailbox_list(recipients.get("bcc"), "recipients.bcc", required=False)
    return to, cc, bcc


def _unique(boxes: list[Mailbox]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for box in boxes:
        seen.setdefault(box.address.lower(), box.address)
    return tuple(seen.values())


# Custom headers and switches --------------------------------------------------


def _custom_headers(value: object) -> dict[str, str]:
    raw = _object(value, "headers", required=False)
    result: dict[str, str] = {}
    seen: set[str] = set()
    for name, header_value in raw.items():
        target = f"headers.{name}"
        _check_header_name(name, target, seen)
        result[name] = _line(header_value, target) or ""
    return result


def _check_header_name(name: str, target: str, seen: set[str]) -> None:
    if not _FIELD_NAME.fullmatch(name):
        raise _bad(
            target,
            "A header name must be printable ASCII without spaces, control "
            "characters or ':' (RFC 5322 field name).",
        )
    key = name.lower()
    if key in _FORBIDDEN_HEADERS or key.startswith("content-"):
        raise _bad(target, "This header is set by the service; remove it.")
    if key in seen:
        raise _bad(target, "This header is given twice (names ignore case).")
    seen.add(key)


def _is_switch(name: str) -> bool:
    return name.lower().startswith(_SWITCH_PREFIX)


def _switches(http: Mapping[str, str], custom: dict[str, str]) -> frozenset[str]:
    """Names (lower case) of the ``x-ms-acsemail-*`` switches that are on."""
    on: set[str] = set()
    for name, value in [*http.items(), *custom.items()]:
        is_str = isinstance(name, str) and isinstance(value, str)
        if is_str and _is_switch(name) and value.strip().lower() in _TRUE_VALUES:
            on.add(name.lower())
    return frozenset(on)


# Attachments ------------------------------------------------------------------


class _InvalidAttachment(Exception):
    def __init__(self, target: str, fix: str) -> None:
        super().__init__(fix)
        self.target = target
        self.fix = fix


def _attachments(
    value: object, switches: frozenset[str]
) -> tuple[list[Attachment], int]:
    entries = _list(value, "attachments", required=False)
    suppress = SUPPRESS_INVALID_ATTACHMENT in switches
    kept: dict[int, Attachment] = {}  # by index in the request
    for i, entry in enumerate(entries):
        try:
            kept[i] = _attachment(entry, f"attachments[{i}]")
        except _InvalidAttachment as exc:
            if not suppress:
                raise _bad(exc.target, exc.fix) from None
    if IGNORE_DUPLICATE_CONTENT_ID not in switches:
        _check_duplicate_ids(kept)
    return list(kept.values()), len(entries) - len(kept)


def _attachment(value: object, target: str) -> Attachment:
    entry = _object(value, target, required=True)
    name = _line(entry.get("name"), f"{target}.name") or ""
    content_type = _string(entry.get("contentType"), f"{target}.contentType") or ""
    encoded = _string(entry.get("contentInBase64"), f"{target}.contentInBase64")
    content_id = _content_id(entry.get("contentId"), f"{target}.contentId")
    if content_type.strip().lower() not in ALLOWED_CONTENT_TYPES:
        raise _InvalidAttachment(
            f"{target}.contentType",
            f"The content type {content_type!r} is not allowed; use a supported "
            "MIME type such as application/pdf, or set header "
            f"{SUPPRESS_INVALID_ATTACHMENT}: true to drop invalid attachments.",
        )
    content = _decode(encoded or "", f"{target}.contentInBase64")
    return Attachment(name, content_type.strip(), content, content_id)


def _decode(encoded: str, target: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _InvalidAttachment(
            target, "This must be standard base64 (A-Z a-z 0-9 + /, '=' padding)."
        ) from None


def _content_id(value: object, target: str) -> str | None:
    text = _line(value, target, required=False)
    if text is None:
        return None
    if not _CONTENT_ID.fullmatch(text.strip("<>")):
        raise _InvalidAttachment(
            target,
            "A contentId must be printable ASCII without spaces, such as "
            "logo@example.com, and is referenced as cid:logo@example.com.",
        )
    return text


def _check_duplicate_ids(attachments: dict[int, Attachment]) -> None:
    seen: set[str] = set()
    for i, attachment in attachments.items():
        if attachment.content_id is None:
            continue
        key = attachment.content_id.strip("<>")
        if key in seen:
            raise _bad(
                f"attachments[{i}].contentId",
                "Each contentId must be unique, or set header "
                f"{IGNORE_DUPLICATE_CONTENT_ID}: true.",
            )
        seen.add(key)
