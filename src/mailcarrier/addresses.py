"""Addresses and domain names compared the way mail compares them.

Domains are compared in their ASCII form (IDNA 2008 A-labels, with UTS 46
mapping so ``Bücher.example`` and ``xn--bcher-kva.example`` are one
domain), lower-case, without a trailing dot. Local parts are compared
case-insensitively for sender usernames (a policy of ours: RFC 5321 lets
the receiving side decide; senders are ours to define).
"""

from __future__ import annotations

import functools

import idna


class AddressError(ValueError):
    """Not a usable mailbox address; the text says why."""


@functools.lru_cache(maxsize=4096)
def domain_to_ascii(domain: str) -> str:
    name = domain.strip().rstrip(".")
    if not name:
        raise AddressError("empty domain")
    if name.startswith("[") and name.endswith("]"):
        return name.lower()  # address literal, RFC 5321 4.1.3
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except idna.IDNAError as exc:
        raise AddressError(f"domain {domain!r} is not a valid domain name: {exc}")


def split_address(address: str) -> tuple[str, str]:
    """Local part and ASCII domain of ``local@domain``."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"{address!r} is not an address of the form local@domain")
    return local, domain_to_ascii(domain)
