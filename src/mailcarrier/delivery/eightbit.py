"""Turn an 8-bit message into a 7-bit one for a server without 8BITMIME.

A message whose bytes are not all ASCII may only be sent as is to a server
that advertises 8BITMIME (RFC 6152). For any other server the content is
re-encoded first, before it is DKIM-signed (a signature over the 8-bit form
would not survive the conversion):

- leaf parts with 8-bit data, or labelled 8bit/binary, or with lines over
  998 octets (RFC 5322 2.1.1) are re-encoded: text/* as quoted-printable,
  everything else as base64 (RFC 2045 6.7, 6.8), with their
  Content-Transfer-Encoding header changed to match; the decoded content
  is unchanged byte for byte (text line ends become CRLF);
- multipart and message/* containers labelled 8bit or binary are
  relabelled 7bit once their parts are 7-bit (RFC 2045 6.4);
- header fields with raw 8-bit bytes are re-folded with RFC 2047 encoded
  words (RFC 2231 for MIME parameters), as UTF-8 when the bytes are UTF-8
  and as the "unknown-8bit" charset (RFC 1428) otherwise;
- 8-bit bytes in a multipart preamble or epilogue (never shown to readers)
  become "?".

Parsing and serialising use the standard `email` package with the compat32
policy, which keeps everything it is not asked to change as it was.

What this does not do: it never runs on 7-bit input (returned unchanged),
and it is no way to send an internationalised message (RFC 6532, raw UTF-8
in addresses) to a server without SMTPUTF8: such a message must not be
downgraded but bounced (5.6.7), which the SMTP client does.

Limitations: the output always has CRLF line ends; a text part without a
charset keeps its (wrong) label, as no charset can be known for sure; a
message with no Content-Type at all gets "text/plain" with charset utf-8 or
unknown-8bit; address headers with 8-bit local parts cannot be made valid
(see above).
"""

from __future__ import annotations

import base64
import binascii
import email.charset
import email.header
import email.policy
import logging
import re
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from io import BytesIO

__all__ = ["downgrade_to_7bit", "needs_8bitmime"]

log = logging.getLogger(__name__)

CRLF = "\r\n"
MAX_LINE_OCTETS = 998
EIGHT_BIT_LABELS = frozenset({"8bit", "binary"})
CTE = "Content-Transfer-Encoding"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONG_LINE = re.compile(rf"[^\r\n]{{{MAX_LINE_OCTETS + 1}}}")

# Re-folds one 8-bit header field into encoded words, respecting its
# structure (phrases, quoted strings, MIME parameters).
_HEADER_POLICY = email.policy.default.clone(
    linesep=CRLF, utf8=False, refold_source="all", max_line_length=78
)


def needs_8bitmime(message: bytes) -> bool:
    """True when any byte of `message` is 0x80 or above."""
    return not message.isascii()


def downgrade_to_7bit(message: bytes) -> bytes:
    """The same message with every 8-bit part and header made 7-bit.

    A message that is already all ASCII is returned unchanged.
    """
    if message.isascii():
        return message
    parsed = BytesParser(policy=_SEVEN_BIT).parsebytes(message)
    top_is_reencoded = not parsed.is_multipart() and _leaf_needs_encoding(parsed)
    for part in parsed.walk():
        _downgrade_part(part)
    if top_is_reencoded:
        _add_mime_headers(parsed)
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_SEVEN_BIT).flatten(parsed)
    return out.getvalue()


# -- bodies ----------------------------------------------------------------------


def _downgrade_part(part: Message) -> None:
    if part.is_multipart():
        _downgrade_container(part)
    elif _leaf_needs_encoding(part):
        _reencode_leaf(part)


def _downgrade_container(part: Message) -> None:
    """Relabel an 8bit/binary container and clean its preamble and epilogue."""
    if part.get(CTE, "").strip().lower() in EIGHT_BIT_LABELS:
        _set_header(part, CTE, "7bit")
    part.preamble = _ascii_or_marks(part.preamble)
    part.epilogue = _ascii_or_marks(part.epilogue)


def _ascii_or_marks(text: str | None) -> str | None:
    if text is None or text.isascii():
        return text
    return text.encode("ascii", "replace").decode("ascii")


def _leaf_needs_encoding(part: Message) -> bool:
    payload = part.get_payload()
    if not isinstance(payload, str):
        return False
    label = part.get(CTE, "").strip().lower()
    return (
        not payload.isascii()
        or label in EIGHT_BIT_LABELS
        or _LONG_LINE.search(payload) is not None
    )


def _reencode_leaf(part: Message) -> None:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    if part.get_content_maintype() == "text":
        encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        label = "quoted-printable"
    else:
        encoded = base64.encodebytes(data)
        label = "base64"
    part.set_payload(encoded.decode("ascii"))
    _set_header(part, CTE, label)
    log.debug("re-encoded a %s part as %s", part.get_content_type(), label)


def _add_mime_headers(message: Message) -> None:
    """Give a re-encoded single-part message the MIME headers it now needs."""
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"
    if "Content-Type" not in message:
        data = message.get_payload(decode=True)
        assert isinstance(data, bytes)
        charset = "utf-8" if _is_utf8(data) else "unknown-8bit"
        message["Content-Type"] = f'text/plain; charset="{charset}"'


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _set_header(part: Message, name: str, value: str) -> None:
    """Set one header, in place when it exists once, else replacing all."""
    if len(part.get_all(name, [])) == 1:
        part.replace_header(name, value)
        return
    del part[name]
    part[name] = value


# -- headers ---------------------------------------------------------------------


class _SevenBitPolicy(email.policy.Compat32):
    """compat32, CRLF, ASCII fields kept as they are, 8-bit ones encoded.

    The parser keeps 8-bit header bytes as surrogate escapes in str values;
    `fold_binary` (what BytesGenerator calls for each field) encodes them.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        if not isinstance(value, str):
            return super().fold_binary(name, value)
        if not value.isascii():
            return _encode_header(name, value).encode("ascii")
        # An ASCII field is written as it came, only its line ends made CRLF
        # (compat32 would re-wrap long ones).
        value = _LINE_BREAK.sub(self.linesep, value)
        return f"{name}: {value}{self.linesep}".encode("ascii")


_SEVEN_BIT = _SevenBitPolicy(linesep=CRLF, cte_type="7bit")


def _encode_header(name: str, value: str) -> str:
    """One header field, folded, with its 8-bit bytes as encoded words."""
    raw = value.encode("ascii", "surrogateescape")
    text = raw.decode("utf-8") if _is_utf8(raw) else value
    try:
        folded = str(_HEADER_POLICY.fold(name, text))
    except Exception:  # the stdlib folder has choked on odd fields before
        log.debug("could not re-fold %s; encoding it whole", name, exc_info=True)
        folded = ""
    if folded.isascii() and folded:
        return folded
    return _encode_whole(name, value)


def _encode_whole(name: str, value: str) -> str:
    """Fallback: the whole value as unknown-8bit encoded words."""
    charset = email.charset.Charset("unknown-8bit")
    header = email.header.Header(
        _LINE_BREAK.sub(" ", value), charset=charset, header_name=name
    )
    return f"{name}: {header.encode(linesep=CRLF)}{CRLF}"
