"""DKIM key material for a sending domain: RSA keys and their DNS TXT record.

What it does
    - ``generate_private_key_pem``: a new RSA key (2048 bits unless asked
      otherwise, public exponent 65537) as unencrypted PKCS#8 PEM, ready for
      ``mailcarrier.delivery.dkim.DkimKey``.
    - ``public_key_record``: the key record to publish at
      ``<selector>._domainkey.<domain>``: ``v=DKIM1; k=rsa; p=<base64>``, p=
      being the DER SubjectPublicKeyInfo of the public key (RFC 6376 3.6.1).
    - ``txt_strings``: the record cut into character-strings of at most 255
      octets (RFC 1035 3.3.14), which verifiers join back without separators
      (RFC 6376 3.6.2.2).

What it deliberately doesn't do
    - Store, encrypt or rotate keys, or publish DNS records.
    - Ed25519 keys (RFC 8463), and the optional record tags h=, s=, t= and n=.

Known limits
    - Keys between 2048 and 4096 bits can be generated, but verifiers are only
      required to handle keys up to 2048 bits (RFC 6376 3.3.3); larger keys
      may fail at some receivers.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = [
    "MAX_GENERATED_BITS",
    "MIN_GENERATED_BITS",
    "TXT_STRING_OCTETS",
    "generate_private_key_pem",
    "public_key_record",
    "txt_strings",
]

#: RFC 8301 3.2: signers SHOULD use at least 2048 bits; we never make less.
MIN_GENERATED_BITS = 2048
MAX_GENERATED_BITS = 4096
#: Longest character-string in a TXT record (RFC 1035 3.3).
TXT_STRING_OCTETS = 255


def generate_private_key_pem(bits: int = 2048) -> bytes:
    """Generate an RSA private key and return it as unencrypted PKCS#8 PEM."""
    if not MIN_GENERATED_BITS <= bits <= MAX_GENERATED_BITS:
        raise ValueError(
            f"DKIM key size must be {MIN_GENERATED_BITS}..{MAX_GENERATED_BITS} "
            f"bits, not {bits}"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_key_record(private_key_pem: bytes) -> str:
    """Return the DKIM key record for an RSA private key (PKCS#8 or PKCS#1 PEM)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("DKIM key is not an RSA private key")
    der = key.public_key().public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def txt_strings(record: str) -> list[str]:
    """Split a TXT record value into character-strings of at most 255 octets."""
    if not record.isascii():
        raise ValueError("a DKIM key record must be ASCII")
    size = TXT_STRING_OCTETS
    return [record[i : i + size] for i in range(0, len(record), size)] or [""]
