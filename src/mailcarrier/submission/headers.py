"""The header section of a submitted message, read the way DKIM reads it.

The header section is everything up to the first empty line. Every line
in it must be a header field (``name:``, RFC 5322 2.2) or the continuation
of one; anything else makes the message malformed, because a parser that
stopped at such a line would see fewer fields than the DKIM signer, which
signs every field up to the empty line. In particular a second ``From``
hidden after a broken line, or spelled ``From :`` (the obsolete syntax of
RFC 5322 4.5), is still a second From here.

The From field must hold a mailbox list (RFC 5322 3.6.2): group syntax is
refused. Display names may carry bytes that are not UTF-8 (legacy mail);
they are kept as they are, only the addresses must be text.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


class HeaderProblem(ValueError):
    """The header section can't be accepted; ``kind`` says which reply fits."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind  # malformed | no_from | many_from | bad_from


def header_block(content: bytes) -> bytes:
    if content.startswith(b"\r\n"):
        return b""
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 2]


def header_fields(content: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of every field in the header section."""
    fields: list[tuple[str, bytes]] = []
    for line in header_block(content).split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise HeaderProblem("malformed", "the header section starts with a "
                                    "continuation line")
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        match = _FIELD.match(line)
        if match is None:
            raise HeaderProblem(
                "malformed", f"header line {line[:40]!r} is not a 'Name: value' field"
            )
        name = match.group(1).decode("ascii").lower()
        fields.append((name, line[match.end():]))
    return fields


def _is_text(address: str) -> bool:
    """Non-empty and free of the escapes that stand for undecodable bytes."""
    return bool(address) and not any("\udc80" <= ch <= "\udcff" for ch in address)


def from_addresses(content: bytes) -> list[str]:
    """The addresses of the single From field, in order, without repeats."""
    values = [value for name, value in header_fields(content) if name == "from"]
    if not values:
        raise HeaderProblem("no_from", "the message has no From header field")
    if len(values) > 1:
        raise HeaderProblem("many_from", "the message has more than one From field")
    text = values[0].decode("utf-8", "surrogateescape").strip()
    bare = _COMMENT.sub(" ", _QUOTED.sub('""', text))
    if ":" in bare or ";" in bare:
        raise HeaderProblem("bad_from", "From holds a group; it must list mailboxes")
    addresses = [address for _name, address in getaddresses([text])]
    if not addresses or not all(map(_is_text, addresses)):
        raise HeaderProblem("bad_from", "From has no valid address")
    return list(dict.fromkeys(addresses))
