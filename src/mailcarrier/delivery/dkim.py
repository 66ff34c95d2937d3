"""DKIM signing of outgoing messages (RFC 6376), rsa-sha256 with relaxed/relaxed.

What it does
    ``DkimSigner.sign`` takes a message as the exact bytes that go on the wire
    (CRLF line ends, not dot-stuffed) and returns one ``DKIM-Signature`` header
    field, folded with CRLF+TAB and ending in CRLF, to prepend to the message.
    ``sign_message`` returns that field and the message together.

    - Algorithm rsa-sha256 (RFC 6376 3.3; RFC 8301 for the key size floor).
      RSA runs in OpenSSL through ``cryptography``; the key is parsed once per
      ``DkimKey`` and kept.
    - Canonicalization relaxed/relaxed: headers per 3.4.2, body per 3.4.4
      (an empty body, or one made only of empty lines, hashes as the empty
      string). Whitespace handling is done with bytes operations and regular
      expressions over the whole body, never a Python loop over its lines.
    - Header hash (3.7, 5.4.2): the fields named in h=, a repeated name taking
      the instances from the bottom up, then this DKIM-Signature field itself,
      relaxed, with an empty b= value and no trailing CRLF.
    - h= names only the fields of ``headers`` that are present, each as many
      times as it occurs, so every instance is covered. From must be present
      (5.4) and is over-signed by default: h= names it once more than the
      message has From fields, so a From added later breaks the signature
      (8.15).
    - Tags, in this order: v, a, c, d, s, t, bh, h, b.
    - Everything stays bytes: 8-bit octets in headers or body (RFC 6532 mail,
      raw 8-bit MIME, broken charsets) are hashed exactly as they are.

What it deliberately doesn't do
    - Verify signatures; Ed25519 (RFC 8463); simple canonicalization; the
      optional tags l=, i=, x=, z= and q= (q=dns/txt is the default anyway).
    - Repair line endings: a bare CR or LF is hashed as an ordinary octet, so
      the caller hands over CRLF-normalised bytes.

Known limits
    - A message whose body does not end in CRLF is signed as if it did,
      because SMTP transfer adds that CRLF before the final dot and the
      receiver verifies what it received (3.4.4); ``sign_message`` adds it to
      the bytes it returns, a caller of ``DkimSigner.sign`` must send it too.
    - Lines are kept to 78 columns (a TAB counted as 8) except where a single
      d= or s= value is too long for a line of its own: only h= (at its
      colons) and b= (anywhere) may be folded inside their values.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "MIN_KEY_BITS",
    "DkimKey",
    "DkimSignError",
    "DkimSigner",
    "sign_message",
]

#: Header field names signed when present, lower-case; ``from`` is mandatory.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
)

#: Smallest RSA modulus accepted for signing (RFC 8301 3.2).
MIN_KEY_BITS = 1024

_FIELD_NAME = "DKIM-Signature"
_LINE_WIDTH = 78
_TAB_COLUMNS = 8

# RFC 5322 3.6.8 ftext: printable US-ASCII except the colon.
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
# RFC 6376 3.5 d= / s=: dot-separated letter-digit-hyphen labels.
_DNS_NAME_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
# A CRLF that is not followed by WSP ends a header field (RFC 5322 2.2.3).
_FIELD_END_RE = re.compile(rb"\r\n(?![ \t])")
_WSP_RE = re.compile(rb"[ \t]+")
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_SPACE_RUN_RE = re.compile(rb"  +")
_CRLF_RUN_AT_END_RE = re.compile(rb"(?:\r\n)*\Z")


class DkimSignError(ValueError):
    """The message cannot be signed as it is (for example: it has no From)."""


@dataclass(frozen=True)
class DkimKey:
    """A domain's signing key: d= and s= of the signature, and the RSA key."""

    domain: str
    selector: str
    private_key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for tag, value in (("domain", self.domain), ("selector", self.selector)):
            if not _DNS_NAME_RE.fullmatch(value):
                raise ValueError(f"DKIM {tag} is not an ASCII DNS name: {value!r}")

    @cached_property
    def private_key(self) -> rsa.RSAPrivateKey:
        """The parsed RSA key, loaded on first use and then kept."""
        key = serialization.load_pem_private_key(self.private_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("DKIM key is not an RSA private key")
        if key.key_size < MIN_KEY_BITS:
            raise ValueError(
                f"DKIM key has {key.key_size} bits; at least {MIN_KEY_BITS} needed"
            )
        return key


class DkimSigner:
    """Signs messages for one key with a fixed list of header names.

    ``headers`` are the field names to sign when present (case-insensitive,
    duplicates ignored); it must include ``from``. ``oversign_from`` lists
    From once more in h= than it occurs. ``fold_header_list`` allows folding
    the h= value at its colons; turning it off keeps h= on one line, which
    only matters to reproduce another signer's bytes exactly.
    """

    def __init__(
        self,
        key: DkimKey,
        *,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
        oversign_from: bool = True,
        fold_header_list: bool = True,
    ) -> None:
        self._key = key
        self._private_key = key.private_key
        self._names = _normalise_names(headers)
        self._oversign_from = oversign_from
        self._fold_header_list = fold_header_list
        self._leading_tags = (
            b"v=1;",
            b"a=rsa-sha256;",
            b"c=relaxed/relaxed;",
            b"d=" + key.domain.encode("ascii") + b";",
            b"s=" + key.selector.encode("ascii") + b";",
        )

    @property
    def key(self) -> DkimKey:
        return self._key

    def sign(self, message: bytes, *, timestamp: int | None = None) -> bytes:
        """Return the complete 'DKIM-Signature: ...\\r\\n' header line(s)
        (folded, CRLF line ends) to PREPEND to message.

        message is the exact wire bytes (CRLF line endings, not dot-stuffed).
        Raises DkimSignError when the message has no From field.
        """
        when = int(time.time()) if timestamp is None else timestamp
        if when < 0:
            raise ValueError(f"DKIM timestamp must not be negative: {when}")
        head, body = _split_message(message)
        fields = _index_fields(head)
        if b"from" not in fields:
            raise DkimSignError("message has no From header field to sign")
        signed = self._header_list(fields)
        writer = self._unsigned_field(when, _body_hash(body), signed)
        data = _canonical_headers(fields, signed) + _relaxed_field(writer.value())
        signature = self._private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        writer.add_breakable(base64.b64encode(signature))
        return writer.value() + b"\r\n"

    def _header_list(self, fields: dict[bytes, list[bytes]]) -> list[bytes]:
        """The h= names: each present name as often as it occurs."""
        names: list[bytes] = []
        for name in self._names:
            count = len(fields.get(name, ()))
            if name == b"from" and self._oversign_from:
                count += 1
            names.extend([name] * count)
        return names

    def _unsigned_field(
        self, when: int, body_hash: bytes, signed: list[bytes]
    ) -> _FoldedField:
        """The DKIM-Signature field up to and including an empty b=."""
        writer = _FoldedField(_FIELD_NAME.encode("ascii"))
        for tag in self._leading_tags:
            writer.add(tag)
        writer.add(b"t=%d;" % when)
        writer.add(b"bh=" + base64.b64encode(body_hash) + b";")
        header_list = b"h=" + b":".join(signed) + b";"
        if self._fold_header_list and not writer.fits(header_list):
            pieces = [name + b":" for name in signed[:-1]] + [signed[-1] + b";"]
            writer.add(b"h=" + pieces[0], new_line=True)
            for piece in pieces[1:]:
                writer.add(piece, b"")
        else:
            writer.add(header_list)
        writer.add(b"b=", new_line=True)
        return writer


def sign_message(
    key: DkimKey, message: bytes, *, timestamp: int | None = None
) -> bytes:
    """Return header + message (the exact bytes to send).

    A message that does not end in CRLF gets one, as SMTP would add it.
    """
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return DkimSigner(key).sign(message, timestamp=timestamp) + message


class _FoldedField:
    """Builds a header field folded with CRLF+TAB to fit ``_LINE_WIDTH``."""

    def __init__(self, name: bytes) -> None:
        self._parts = [name, b":"]
        self._column = len(name) + 1
        self._line_empty = False

    def add(
        self, token: bytes, separator: bytes = b" ", new_line: bool = False
    ) -> None:
        """Append a token that must not be split, folding before it if needed."""
        too_long = self._column + len(separator) + len(token) > _LINE_WIDTH
        if not self._line_empty and (new_line or too_long):
            self._fold()
        if self._line_empty:
            separator = b""
        self._parts += (separator, token)
        self._column += len(separator) + len(token)
        self._line_empty = False

    def fits(self, token: bytes) -> bool:
        """Whether a space and ``token`` fit on the current line."""
        return self._column + 1 + len(token) <= _LINE_WIDTH

    def add_breakable(self, data: bytes) -> None:
        """Append base64 text, which may be folded at any point (RFC 6376 3.5)."""
        while data:
            room = _LINE_WIDTH - self._column
            if room <= 0:
                self._fold()
                continue
            chunk, data = data[:room], data[room:]
            self._parts.append(chunk)
            self._column += len(chunk)
            self._line_empty = False

    def value(self) -> bytes:
        return b"".join(self._parts)

    def _fold(self) -> None:
        self._parts.append(b"\r\n\t")
        self._column = _TAB_COLUMNS
        self._line_empty = True


def _normalise_names(headers: Sequence[str]) -> tuple[bytes, ...]:
    if isinstance(headers, (str, bytes)):
        raise TypeError("headers must be a sequence of header names, not a string")
    names: dict[bytes, None] = {}
    for header in headers:
        if not _HEADER_NAME_RE.fullmatch(header):
            raise ValueError(f"not a header field name: {header!r}")
        names.setdefault(header.lower().encode("ascii"), None)
    if b"from" not in names:
        raise ValueError("the signed headers must include From (RFC 6376 5.4)")
    return tuple(names)


def _split_message(message: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line into header fields and body."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message.removesuffix(b"\r\n"), b""
    return message[:end], message[end + 4 :]


def _index_fields(head: bytes) -> dict[bytes, list[bytes]]:
    """Map each lower-case field name to its raw fields, top to bottom."""
    fields: dict[bytes, list[bytes]] = {}
    for raw in _FIELD_END_RE.split(head):
        name, colon, _ = raw.partition(b":")
        if colon:
            fields.setdefault(_canonical_name(name), []).append(raw)
    return fields


def _canonical_name(name: bytes) -> bytes:
    return name.replace(b"\r\n", b"").rstrip(b" \t").lower()


def _relaxed_field(raw: bytes) -> bytes:
    """RFC 6376 3.4.2 for one field, without the trailing CRLF."""
    name, _, value = raw.partition(b":")
    value = _WSP_RE.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return _canonical_name(name) + b":" + value


def _canonical_headers(fields: dict[bytes, list[bytes]], signed: list[bytes]) -> bytes:
    """The h= fields, relaxed, each instance taken from the bottom up (5.4.2)."""
    left = {name: len(fields.get(name, ())) for name in signed}
    out: list[bytes] = []
    for name in signed:
        if left[name]:
            left[name] -= 1
            out.append(_relaxed_field(fields[name][left[name]]) + b"\r\n")
    return b"".join(out)


def _body_hash(body: bytes) -> bytes:
    """SHA-256 of the body, relaxed (RFC 6376 3.4.4)."""
    if not body:
        return hashlib.sha256(b"").digest()
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    # Every WSP run becomes one SP, then a line's trailing WSP is that one SP.
    # The single-octet tests are memchr-fast and skip the work for base64.
    if b"\t" in body:
        body = body.translate(_TAB_TO_SPACE)
    if b" " in body:
        if b"  " in body:
            body = _SPACE_RUN_RE.sub(b" ", body)
        body = body.replace(b" \r\n", b"\r\n")
    content_end = len(body.rstrip(b"\r\n"))
    match = _CRLF_RUN_AT_END_RE.search(body, content_end)
    digest = hashlib.sha256()
    if match is not None and match.start() > 0:
        digest.update(memoryview(body)[: match.start()])
        digest.update(b"\r\n")
    return digest.digest()
