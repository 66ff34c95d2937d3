"""Build the exact MIME bytes for a validated ACS Email send request.

What: ``build_message`` is a pure function that turns an ``EmailRequest`` (the
already-validated body of ``POST /emails:send``) into an RFC 5322 message ready to
be accepted and delivered. It sets From (with the sender username's display
name), To, Cc, Reply-To, Subject, Date, Message-ID, MIME-Version and the custom
headers, and nests the body as follows (RFC 2045-2046, 2387, 2392)::

    multipart/mixed                      only with regular attachments
      multipart/related                  only with inline (content_id) attachments
        multipart/alternative            only with both plain text and HTML
          text/plain
          text/html
        inline parts (Content-ID: <id>, Content-Disposition: inline)
      attachment parts (Content-Disposition: attachment)

Wire guarantees: the output is pure ASCII (7-bit clean), every line ends in CRLF
and is at most 998 octets; non-ASCII display names and subjects use RFC 2047
encoded-words (UTF-8); attachment file names use RFC 2231 ``filename*=`` plus an
RFC 2047-encoded ``name=`` on Content-Type for clients that expect it. Text parts
are 7bit when short printable ASCII, quoted-printable otherwise; attachments are
base64 with 76-character lines. Any CR or LF in an address, display name,
subject, header name or header value raises ``ValueError`` (defence in depth
against header injection; the API validates first); so do other control
characters and the Unicode line separators (U+0085, U+2028, U+2029), which the
stdlib refuses in headers anyway.

What not: no validation of ACS rules (recipient counts, sizes, attachment
types, reserved ``x-ms-acsemail-*`` switches), no DKIM signing, no envelope, no
tracking rewrite. Bcc recipients never appear in the output; the caller passes
them to the envelope.

Known limits: leading and trailing whitespace of the subject, and runs of
whitespace in display names, are not preserved (RFC 5322 folding semantics).
Addresses must have an ASCII local part (no SMTPUTF8, RFC 6531);
internationalised domains are converted to IDNA 2003 A-labels. Line endings in
text bodies are normalised (CR, LF and CRLF all become CRLF). Custom headers
that would duplicate a header set here (From, To, Subject, Content-*, ...) are
rejected with ``ValueError``. The stdlib folds long headers itself (long
subjects and header values become encoded-words); the one case it cannot fold
under 998 octets, an ASCII display name with a run of ~990 characters without
whitespace, raises ``ValueError`` from the final wire check instead.
"""

from __future__ import annotations

import base64
import email.policy
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart

__all__ = ["Attachment", "EmailRequest", "Mailbox", "build_message"]

POLICY = email.policy.SMTP.clone(
    linesep="\r\n",
    max_line_length=78,
    cte_type="7bit",
    raise_on_defect=True,
    refold_source="none",  # keeps the pre-folded raw Content-Type of attachments
)
MAX_LINE_OCTETS = 998
_SHORT_LINE = 78
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but ':'
_MSG_ID = re.compile(r"<[!-;=?-~]+>")  # printable ASCII, no '<' or '>' inside
_PRINTABLE_ASCII = re.compile(r"[\t\r\n\x20-\x7e]*")
# CR, LF, other C0 controls but TAB, DEL, and what str.splitlines() treats as breaks
_BREAKS_OR_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_PLAIN_NAME = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but '"' and '\\'
_SHORT_NAME = 60
_EW_MAX_BYTES = 45  # 60 base64 chars + "=?utf-8?b?" + "?=" = 72 <= 75 (RFC 2047)
_RESERVED = frozenset(
    name.lower()
    for name in (
        "From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date",
        "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
        "Content-Disposition", "Content-ID", "Return-Path",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Mailbox:
    """One recipient or reply-to mailbox."""

    address: str
    display_name: str = ""


@dataclass(frozen=True)
class Attachment:
    """One attachment; with ``content_id`` it is inline (``cid:`` in the HTML)."""

    name: str
    content_type: str
    content: bytes
    content_id: str | None = None


@dataclass(frozen=True)
class EmailRequest:
    """A validated ACS send request, reduced to what the message needs."""

    sender: str
    sender_display_name: str
    subject: str
    plain_text: str | None
    html: str | None
    to: list[Mailbox] = field(default_factory=list)
    cc: list[Mailbox] = field(default_factory=list)
    bcc: list[Mailbox] = field(default_factory=list)
    reply_to: list[Mailbox] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)


def build_message(request: EmailRequest, *, message_id: str, date: datetime) -> bytes:
    """Return the complete message as CRLF, 7-bit clean bytes."""
    msg = EmailMessage(policy=POLICY)
    _set_headers(msg, request, message_id, date)
    _adopt(msg, _body_tree(request))
    data = msg.as_bytes(policy=POLICY)
    _check_wire(data)
    return data


def _body_tree(request: EmailRequest) -> MIMEPart:
    node = _text_node(request.plain_text, request.html)
    inline = [a for a in request.attachments if a.content_id is not None]
    regular = [a for a in request.attachments if a.content_id is None]
    if inline:
        node = _multipart("related", [node, *map(_inline_part, inline)])
    if regular:
        node = _multipart("mixed", [node, *map(_attachment_part, regular)])
    return node


def _multipart(subtype: str, parts: list[MIMEPart]) -> MIMEPart:
    container = MIMEPart(policy=POLICY)
    container["Content-Type"] = f"multipart/{subtype}"
    for part in parts:
        container.attach(part)
    return container


def _adopt(msg: EmailMessage, tree: MIMEPart) -> None:
    """Move the root of the body tree into the message that holds the headers."""
    for name, value in tree.items():
        msg[name] = value
    msg.set_payload(tree.get_payload())


# Headers ----------------------------------------------------------------------


def _set_headers(
    msg: EmailMessage, request: EmailRequest, message_id: str, date: datetime
) -> None:
    msg["From"] = _address(Mailbox(request.sender, request.sender_display_name))
    if request.to:
        msg["To"] = [_address(box) for box in request.to]
    if request.cc:
        msg["Cc"] = [_address(box) for box in request.cc]
    if request.reply_to:
        msg["Reply-To"] = [_address(box) for box in request.reply_to]
    msg["Subject"] = _single_line(request.subject, "subject")
    msg["Date"] = _aware(date)
    msg["Message-ID"] = _message_id(message_id)
    msg["MIME-Version"] = "1.0"
    _set_custom_headers(msg, request.headers)


def _single_line(value: str, what: str) -> str:
    if _BREAKS_OR_CONTROLS.search(value):
        raise ValueError(f"{what} must not contain CR, LF or other control characters")
    return value


def _address(box: Mailbox) -> Address:
    name = _single_line(box.display_name, "display name")
    addr = _single_line(box.address, "address")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or not local.isascii():
        raise ValueError(f"unsupported address: {addr!r}")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid domain in address: {addr!r}") from exc
    return Address(display_name=name, addr_spec=f"{local}@{ascii_domain}")


def _aware(date: datetime) -> datetime:
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    return date


def _message_id(message_id: str) -> str:
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError(f"message_id must look like <id@domain>: {message_id!r}")
    return message_id


def _set_custom_headers(msg: EmailMessage, headers: dict[str, str]) -> None:
    seen: set[str] = set()
    for name, value in headers.items():
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid header name: {name!r}")
        key = name.lower()
        if key in _RESERVED or key in seen:
            raise ValueError(f"header may not be set or repeated: {name!r}")
        seen.add(key)
        msg[name] = _single_line(value, f"value of header {name!r}")


# Body -------------------------------------------------------------------------


def _text_node(plain_text: str | None, html: str | None) -> MIMEPart:
    if plain_text is None and html is None:
        plain_text = ""
    parts = [
        _text_part(text, subtype)
        for text, subtype in ((plain_text, "plain"), (html, "html"))
        if text is not None
    ]
    return parts[0] if len(parts) == 1 else _multipart("alternative", parts)


def _text_part(text: str, subtype: str) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    part.set_content(text, subtype=subtype, charset="utf-8", cte=_text_cte(text))
    return part


def _text_cte(text: str) -> str:
    if not _PRINTABLE_ASCII.fullmatch(text):
        return "quoted-printable"
    lines = re.split("\r\n|\r|\n", text)
    short = all(len(line) <= _SHORT_LINE for line in lines)
    return "7bit" if short else "quoted-printable"


# Attachments ------------------------------------------------------------------


def _inline_part(attachment: Attachment) -> MIMEPart:
    cid = _content_id(attachment.content_id or "")
    return _binary_part(attachment, disposition="inline", cid=cid)


def _attachment_part(attachment: Attachment) -> MIMEPart:
    return _binary_part(attachment, disposition="attachment", cid=None)


def _binary_part(
    attachment: Attachment, *, disposition: str, cid: str | None
) -> MIMEPart:
    name = _single_line(attachment.name, "attachment name")
    maintype, subtype = _split_type(attachment.content_type)
    part = MIMEPart(policy=POLICY)
    part.set_content(
        attachment.content,
        maintype,
        subtype,
        disposition=disposition,
        filename=name,
        cid=cid,
    )
    # The header registry would decode an encoded-word in name= and re-emit it as
    # RFC 2231, so this header is stored pre-folded and emitted verbatim.
    del part["Content-Type"]
    part.set_raw("Content-Type", f'{maintype}/{subtype};\n name="{_name_param(name)}"')
    return part


def _split_type(content_type: str) -> tuple[str, str]:
    maintype, slash, subtype = content_type.strip().partition("/")
    token = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
    if not slash or not token.fullmatch(maintype) or not token.fullmatch(subtype):
        raise ValueError(f"invalid attachment content type: {content_type!r}")
    return maintype.lower(), subtype.lower()


def _content_id(content_id: str) -> str:
    cid = _single_line(content_id, "content id").strip("<>")
    if not cid or not _MSG_ID.fullmatch(f"<{cid}>"):
        raise ValueError(f"invalid content id: {content_id!r}")
    return f"<{cid}>"


def _name_param(name: str) -> str:
    """Return the value for ``name="..."``: short plain ASCII as is, else RFC 2047."""
    if len(name) <= _SHORT_NAME and _PLAIN_NAME.fullmatch(name):
        return name
    return "\n ".join(_encoded_words(name))


def _encoded_words(text: str) -> list[str]:
    """Split ``text`` into UTF-8 B encoded-words of at most 75 characters."""
    words: list[str] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _EW_MAX_BYTES:
            words.append(_encoded_word(chunk))
            chunk = b""
        chunk += encoded
    words.append(_encoded_word(chunk))
    return words


def _encoded_word(data: bytes) -> str:
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


# Output check -----------------------------------------------------------------


def _check_wire(data: bytes) -> None:
    """Refuse to return anything that breaks the line or 7-bit rules."""
    if not data.isascii():
        raise ValueError("message is not 7-bit clean")
    if not data.endswith(b"\r\n"):
        raise ValueError("message does not end with CRLF")
    for line in data[:-2].split(b"\r\n"):
        if b"\r" in line or b"\n" in line:
            raise ValueError("message contains a bare CR or LF")
        if len(line) > MAX_LINE_OCTETS:
            raise ValueError("message has a line longer than 998 octets")
