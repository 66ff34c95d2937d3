"""Tests for DKIM key generation and the public key record."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailcarrier.domains.dkim_keys import (
    generate_private_key_pem,
    public_key_record,
    txt_strings,
)


@pytest.fixture(scope="module")
def pem() -> bytes:
    return generate_private_key_pem()


@pytest.fixture(scope="module")
def record(pem: bytes) -> str:
    return public_key_record(pem)


def parse_record(record: str) -> dict[str, str]:
    tags = [spec.strip().partition("=") for spec in record.split(";")]
    return {name.strip(): value.strip() for name, _, value in tags}


def test_generated_key_is_pkcs8_pem(pem: bytes) -> None:
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pem.rstrip().endswith(b"-----END PRIVATE KEY-----")


def test_generated_key_is_rsa_2048_with_exponent_65537(pem: bytes) -> None:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


def test_two_generated_keys_differ() -> None:
    assert generate_private_key_pem() != generate_private_key_pem()


def test_key_size_below_2048_is_refused() -> None:
    with pytest.raises(ValueError, match="2048..4096"):
        generate_private_key_pem(1024)


def test_record_has_version_first_then_key_type_and_public_key(record: str) -> None:
    assert record.startswith("v=DKIM1; k=rsa; p=")
    assert list(parse_record(record)) == ["v", "k", "p"]


def test_record_public_key_is_the_private_keys_public_half(
    pem: bytes, record: str
) -> None:
    der = base64.b64decode(parse_record(record)["p"], validate=True)
    public = serialization.load_der_public_key(der)
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    assert public.public_numbers() == private.public_key().public_numbers()


def test_record_of_a_pkcs1_key_matches_that_of_its_pkcs8_form(pem: bytes) -> None:
    key = serialization.load_pem_private_key(pem, password=None)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public_key_record(pkcs1) == public_key_record(pem)


def test_record_of_a_non_rsa_key_is_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an RSA"):
        public_key_record(pem)


def test_record_of_a_2048_bit_key_needs_two_txt_strings(record: str) -> None:
    chunks = txt_strings(record)
    assert len(chunks) == 2
    assert [len(chunk.encode("ascii")) for chunk in chunks] == [255, len(record) - 255]


def test_txt_strings_join_back_to_the_record(record: str) -> None:
    assert "".join(txt_strings(record)) == record


def test_txt_strings_of_a_4096_bit_record_are_each_at_most_255_octets() -> None:
    record = public_key_record(generate_private_key_pem(4096))
    chunks = txt_strings(record)
    assert len(chunks) == 3
    assert all(len(chunk.encode("ascii")) <= 255 for chunk in chunks)
    assert "".join(chunks) == record


def test_txt_strings_of_a_short_record_is_the_record_itself() -> None:
    assert txt_strings("v=DKIM1; p=") == ["v=DKIM1; p="]


def test_txt_strings_of_exactly_255_octets_is_one_string() -> None:
    assert txt_strings("a" * 255) == ["a" * 255]


def test_txt_strings_of_an_empty_record_is_one_empty_string() -> None:
    assert txt_strings("") == [""]


def test_txt_strings_of_a_non_ascii_record_is_refused() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        txt_strings("v=DKIM1; n=café")
