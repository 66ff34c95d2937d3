"""Tests for the DKIM signer: known answers, canonical forms, and dkimpy as verifier."""

from __future__ import annotations

import base64
import hashlib
import re
import string
import time
from pathlib import Path

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcarrier.delivery.dkim import (
    DEFAULT_SIGNED_HEADERS,
    DkimKey,
    DkimSigner,
    DkimSignError,
    sign_message,
)
from mailcarrier.domains.dkim_keys import generate_private_key_pem, public_key_record

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
EMPTY_SHA256 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

BASIC = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Noon at the usual place?\r\n"
)


# ----------------------------------------------------------------- helpers


def data_dir(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"shared test data not present: {path}")
    return path


def crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def tags(header: bytes) -> dict[str, str]:
    """The tags of a DKIM-Signature field, with all whitespace removed."""
    value = header.partition(b":")[2]
    out = {}
    for spec in value.split(b";"):
        name, _, tag_value = spec.partition(b"=")
        if name.strip():
            out[name.strip().decode()] = re.sub(rb"\s", b"", tag_value).decode()
    return out


def dkimpy_verifies(message: bytes, key: DkimKey, record: str | bytes) -> bool:
    """dkimpy's verdict, with DNS answering only the key's own record name."""
    if isinstance(record, str):
        record = record.encode("ascii")
    expected = f"{key.selector}._domainkey.{key.domain}."

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        name = name.decode() if isinstance(name, bytes) else name
        return record if name.rstrip(".") + "." == expected else None

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def body_hash_of(key: DkimKey, body: bytes) -> str:
    header = DkimSigner(key).sign(b"From: a@example.com\r\n\r\n" + body)
    return tags(header)["bh"]


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def relaxed_field(raw: bytes) -> bytes:
    name, _, value = raw.partition(b":")
    value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.strip().lower() + b":" + value


def relaxed_unsigned_header(header: bytes) -> bytes:
    """Independent relaxed form of a DKIM-Signature field with b= emptied."""
    value = header.removesuffix(b"\r\n").partition(b":")[2].replace(b"\r\n", b"")
    value = re.sub(rb"([;\s]b=)[^;]*$", rb"\1", value)
    return relaxed_field(b"DKIM-Signature:" + value)


@pytest.fixture(scope="module")
def key() -> DkimKey:
    return DkimKey("example.com", "mc2024", generate_private_key_pem())


@pytest.fixture(scope="module")
def record(key: DkimKey) -> str:
    return public_key_record(key.private_key_pem)


# ----------------------------------------------------- known answers: Postal


def read_postal_vector(path: Path) -> tuple[dict[str, str], bytes]:
    """Split a vector into its front matter (flat keys, one `|` block) and message."""
    front, _, message = path.read_bytes().partition(b"\n---\n")
    meta: dict[str, str] = {}
    block = ""
    for line in front.decode("ascii").splitlines():
        if line.startswith("  ") and block:
            meta[block] += line[2:] + "\n"
            continue
        name, _, value = line.partition(":")
        block = name if value.strip() == "|" else ""
        meta[name] = "" if block else value.strip()
    return meta, crlf(message)


@pytest.mark.parametrize("name", ["email1.msg", "email2.msg"])
def test_postal_vector_is_reproduced_byte_for_byte(name: str) -> None:
    meta, message = read_postal_vector(data_dir("dkim-postal") / name)
    key = DkimKey(meta["domain"], meta["dkim_identifier"], meta["private_key"].encode())
    signer = DkimSigner(
        key,
        headers=meta["headers"].split(":"),
        oversign_from=False,
        fold_header_list=False,
    )
    got = tags(signer.sign(message, timestamp=int(meta["time"])))
    assert got["h"] == meta["headers"]
    assert got["bh"] == meta["bh"]
    assert got["b"] == meta["b"]


# ------------------------------------------------ canonical forms (RFC 6376)


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        pytest.param(b"", b"", id="empty-body"),
        pytest.param(b"\r\n", b"", id="one-empty-line"),
        pytest.param(b"\r\n\r\n \t\r\n", b"", id="only-blank-lines"),
        pytest.param(b" C \r\nD \t E\r\n\r\n\r\n", b" C\r\nD E\r\n", id="rfc-3.4.5"),
        pytest.param(b"abc", b"abc\r\n", id="no-final-crlf"),
        pytest.param(b"Hello Alice\r\n        ", b"Hello Alice\r\n", id="wsp-tail"),
        pytest.param(b"a\r\n\r\nb\r\n", b"a\r\n\r\nb\r\n", id="inner-empty-line"),
        pytest.param(b"\t\tlead\r\n", b" lead\r\n", id="leading-tabs"),
        pytest.param(b"a\n\r\n\r\n", b"a\n\r\n", id="bare-lf-is-content"),
        pytest.param(b"x \r\r\n", b"x \r\r\n", id="bare-cr-is-content"),
        pytest.param(b"caf\xc3\xa9  \xff\t\r\n", b"caf\xc3\xa9 \xff\r\n", id="8bit"),
    ],
)
def test_body_hash_is_sha256_of_the_relaxed_body(
    key: DkimKey, body: bytes, canonical: bytes
) -> None:
    assert body_hash_of(key, body) == b64_sha256(canonical)


def test_empty_body_hashes_to_the_sha256_of_nothing(key: DkimKey) -> None:
    assert body_hash_of(key, b"") == EMPTY_SHA256


def test_message_without_an_empty_line_has_an_empty_body(key: DkimKey) -> None:
    header = DkimSigner(key).sign(b"From: a@example.com\r\nSubject: hi\r\n")
    assert tags(header)["bh"] == EMPTY_SHA256


def test_rfc_example_headers_are_signed_in_their_relaxed_form(key: DkimKey) -> None:
    message = b"From: a@example.com\r\nA: X\r\nB : Y\t\r\n\tZ  \r\n\r\nbody\r\n"
    signer = DkimSigner(key, headers=["from", "a", "b"], oversign_from=False)
    header = signer.sign(message, timestamp=1_700_000_000)
    signed = b"from:a@example.com\r\na:X\r\nb:Y Z\r\n" + relaxed_unsigned_header(header)
    public = key.private_key.public_key()
    signature = base64.b64decode(tags(header)["b"])
    public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())


def test_repeated_headers_are_taken_from_the_bottom_up(key: DkimKey) -> None:
    message = b"From: a@example.com\r\nX-N: top\r\nX-N: bottom\r\n\r\n"
    signer = DkimSigner(key, headers=["from", "x-n"], oversign_from=False)
    header = signer.sign(message, timestamp=1_700_000_000)
    signed = b"from:a@example.com\r\nx-n:bottom\r\nx-n:top\r\n"
    signature = base64.b64decode(tags(header)["b"])
    key.private_key.public_key().verify(
        signature,
        signed + relaxed_unsigned_header(header),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


# -------------------------------------------------------- the header itself


def test_tags_come_in_a_fixed_order_with_the_required_values(key: DkimKey) -> None:
    got = tags(DkimSigner(key).sign(BASIC, timestamp=1_700_000_000))
    assert list(got) == ["v", "a", "c", "d", "s", "t", "bh", "h", "b"]
    assert (got["v"], got["a"], got["c"]) == ("1", "rsa-sha256", "relaxed/relaxed")
    assert (got["d"], got["s"], got["t"]) == ("example.com", "mc2024", "1700000000")


def test_timestamp_defaults_to_now(key: DkimKey) -> None:
    before = int(time.time())
    stamped = int(tags(DkimSigner(key).sign(BASIC))["t"])
    assert before <= stamped <= int(time.time())


def test_header_list_names_present_headers_and_from_once_more(key: DkimKey) -> None:
    h = tags(DkimSigner(key).sign(BASIC))["h"]
    assert h == (
        "from:from:to:subject:date:message-id:mime-version:content-type"
    )


def test_header_list_overs_signs_from_when_the_message_has_two(key: DkimKey) -> None:
    message = b"From: a@example.com\r\nFrom: b@example.com\r\n\r\n"
    assert tags(DkimSigner(key).sign(message))["h"] == "from:from:from"


def test_header_list_names_a_repeated_header_once_per_instance(key: DkimKey) -> None:
    message = b"From: a@example.com\r\nTo: x@e.org\r\nto: y@e.org\r\n\r\n"
    assert tags(DkimSigner(key).sign(message))["h"] == "from:from:to:to"


def test_explicit_header_list_without_oversigning_names_from_once(
    key: DkimKey,
) -> None:
    signer = DkimSigner(key, headers=["Subject", "FROM"], oversign_from=False)
    assert tags(signer.sign(BASIC))["h"] == "subject:from"


def test_default_headers_cover_the_ones_receivers_expect() -> None:
    required = {"from", "to", "cc", "subject", "date", "message-id"}
    required |= {"mime-version", "content-type", "list-unsubscribe-post"}
    assert required <= set(DEFAULT_SIGNED_HEADERS)


def full_header_message() -> bytes:
    fields = b"".join(
        name.title().encode() + b": value-of-" + name.encode() + b"\r\n"
        for name in DEFAULT_SIGNED_HEADERS
    )
    return fields + b"\r\nbody\r\n"


def test_every_signature_line_fits_78_columns(key: DkimKey) -> None:
    header = DkimSigner(key).sign(full_header_message())
    lines = header.removesuffix(b"\r\n").split(b"\r\n")
    assert len(lines) > 3
    assert all(len(line.expandtabs(8)) <= 78 for line in lines)
    assert all(line.startswith(b"\t") for line in lines[1:])


def test_signature_header_ends_in_one_crlf_and_has_no_bare_line_ends(
    key: DkimKey,
) -> None:
    header = DkimSigner(key).sign(full_header_message())
    assert header.startswith(b"DKIM-Signature: v=1;")
    assert header.endswith(b"\r\n") and not header.endswith(b"\r\n\r\n")
    assert header.count(b"\n") == header.count(b"\r\n") == header.count(b"\r")


def test_header_list_stays_on_one_line_when_its_folding_is_off(key: DkimKey) -> None:
    signer = DkimSigner(key, fold_header_list=False)
    header = signer.sign(full_header_message())
    h_lines = [line for line in header.split(b"\r\n") if b"\th=" in line]
    assert h_lines == [b"\th=" + tags(header)["h"].encode() + b";"]


def test_sign_message_prepends_the_signature_to_the_message(key: DkimKey) -> None:
    signed = sign_message(key, BASIC, timestamp=1_700_000_000)
    header = DkimSigner(key).sign(BASIC, timestamp=1_700_000_000)
    assert signed == header + BASIC


def test_sign_message_adds_the_final_crlf_smtp_would_add(key: DkimKey) -> None:
    signed = sign_message(key, BASIC.removesuffix(b"\r\n"))
    assert signed.endswith(b"\r\n\r\nNoon at the usual place?\r\n")


# ------------------------------------------------------------ refusals, keys


def test_message_without_from_is_refused(key: DkimKey) -> None:
    with pytest.raises(DkimSignError, match="no From"):
        DkimSigner(key).sign(b"To: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n")


def test_header_list_without_from_is_refused(key: DkimKey) -> None:
    with pytest.raises(ValueError, match="must include From"):
        DkimSigner(key, headers=["to", "subject"])


def test_header_list_given_as_one_string_is_refused(key: DkimKey) -> None:
    with pytest.raises(TypeError):
        DkimSigner(key, headers="from:to")


def test_header_name_with_a_colon_is_refused(key: DkimKey) -> None:
    with pytest.raises(ValueError, match="not a header field name"):
        DkimSigner(key, headers=["from", "to:"])


def test_negative_timestamp_is_refused(key: DkimKey) -> None:
    with pytest.raises(ValueError, match="negative"):
        DkimSigner(key).sign(BASIC, timestamp=-1)


def test_key_repr_does_not_reveal_the_private_key(key: DkimKey) -> None:
    assert "PRIVATE" not in repr(key) and "mc2024" in repr(key)


def test_key_is_parsed_once_and_kept(key: DkimKey) -> None:
    assert key.private_key is key.private_key
    assert key.private_key.key_size == 2048


def test_key_that_is_not_rsa_is_refused() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="not an RSA"):
        DkimSigner(DkimKey("example.com", "ed", pem))


def test_domain_with_non_ascii_letters_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ASCII DNS name"):
        DkimKey("exämple.com", "sel", b"")


def test_selector_with_a_semicolon_is_refused() -> None:
    with pytest.raises(ValueError, match="not an ASCII DNS name"):
        DkimKey("example.com", "sel;x", b"")


# ------------------------------------------------- dkimpy as the verifier


def test_dkimpy_verifies_a_signed_basic_message(key: DkimKey, record: str) -> None:
    assert dkimpy_verifies(sign_message(key, BASIC), key, record)


def test_dkimpy_rejects_a_message_whose_body_changed(key: DkimKey, record: str) -> None:
    signed = sign_message(key, BASIC).replace(b"Noon", b"Nine")
    assert not dkimpy_verifies(signed, key, record)


def test_dkimpy_verifies_the_rfc_example_signed_with_its_test_key() -> None:
    folder = data_dir("dkim-dkimpy")
    key = DkimKey("example.com", "test", (folder / "test.private").read_bytes())
    message = crlf((folder / "rfc6376.msg").read_bytes())
    record = (folder / "test.txt").read_bytes().strip()
    assert dkimpy_verifies(sign_message(key, message), key, record)


def test_dkimpy_verifies_its_test_message_signed_with_its_test_key() -> None:
    folder = data_dir("dkim-dkimpy")
    key = DkimKey("example.com", "test", (folder / "test.private").read_bytes())
    message = crlf((folder / "test.message").read_bytes())
    record = (folder / "test.txt").read_bytes().strip()
    assert dkimpy_verifies(sign_message(key, message), key, record)


def test_dkimpy_verifies_a_message_signed_with_the_kumomta_pkcs1_key() -> None:
    pem = (data_dir("dkim-kumomta") / "keys" / "2022.private").read_bytes()
    key = DkimKey("example.com", "s20", pem)
    record = public_key_record(pem)
    assert dkimpy_verifies(sign_message(key, BASIC), key, record)


def test_dkimpy_verifies_a_message_with_utf8_headers_and_body(
    key: DkimKey, record: str
) -> None:
    message = (
        "From: Jöhn Dœ <jöhn@exämple.com>\r\n"
        "To: Zoë <zoë@例え.jp>\r\n"
        "Subject: Grüße  aus \t Köln —\r\n"
        "\tnoch mehr ☃\r\n"
        "\r\n"
        "Schöne Grüße,  \t\r\n"
        "日本語のテキスト\r\n"
        "\r\n"
    ).encode("utf-8")
    assert dkimpy_verifies(sign_message(key, message), key, record)


def test_dkimpy_verifies_a_message_with_latin1_header_bytes(
    key: DkimKey, record: str
) -> None:
    message = (
        b"From: J\xf6rg <j@example.com>\r\nSubject: Gr\xfc\xdfe\r\n\r\n\xe9t\xe9\r\n"
    )
    assert dkimpy_verifies(sign_message(key, message), key, record)


def mime_corpus() -> list[Path]:
    return sorted(
        path
        for folder in DATA.glob("mime-*")
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith("LICENSE")
    )


def as_wire_message(path: Path) -> bytes:
    """The file as it would be submitted: CRLF, no mbox line, a From present."""
    data = crlf(path.read_bytes())
    if data.startswith(b"From "):
        data = data.partition(b"\r\n")[2]
    head = data.partition(b"\r\n\r\n")[0]
    if not re.search(rb"(?im)^from[ \t]*:", head):
        data = b"From: corpus@example.com\r\n" + data
    return data


@pytest.mark.parametrize(
    "path", mime_corpus(), ids=lambda path: str(path.relative_to(DATA))
)
def test_dkimpy_verifies_every_mime_corpus_message(
    key: DkimKey, record: str, path: Path
) -> None:
    assert dkimpy_verifies(sign_message(key, as_wire_message(path)), key, record)


def test_mime_corpus_is_present_and_large() -> None:
    if not DATA.is_dir():
        pytest.skip(f"shared test data not present: {DATA}")
    assert len(mime_corpus()) >= 60


# ----------------------------------------------------------- over-signing


def test_dkimpy_rejects_a_second_from_added_above_the_first(
    key: DkimKey, record: str
) -> None:
    forged = add_from_above(sign_message(key, BASIC))
    assert not dkimpy_verifies(forged, key, record)


def test_dkimpy_rejects_a_second_from_added_below_the_headers(
    key: DkimKey, record: str
) -> None:
    extra = b"\r\nFrom: Mallory <m@evil.example>\r\n\r\n"
    forged = sign_message(key, BASIC).replace(b"\r\n\r\n", extra, 1)
    assert not dkimpy_verifies(forged, key, record)


def add_from_above(signed: bytes) -> bytes:
    header, _, rest = signed.partition(b"\r\nFrom:")
    return header + b"\r\nFrom: Mallory <m@evil.example>\r\nFrom:" + rest


def header_signature_verifies(message: bytes, key: DkimKey) -> bool:
    """A literal RFC 6376 check of b= (header hash only), for the first field.

    dkimpy cannot show what over-signing buys: its verifier appends one more
    ``from`` to every h= on its own. This check follows the RFC to the letter.
    """
    head = message.partition(b"\r\n\r\n")[0]
    signature_field, *fields = re.split(rb"\r\n(?![ \t])", head)
    pool = [relaxed_field(raw) for raw in fields]
    picked = []
    for name in tags(signature_field)["h"].encode().split(b":"):
        for index in range(len(pool) - 1, -1, -1):
            if pool[index].partition(b":")[0] == name:
                picked.append(pool.pop(index) + b"\r\n")
                break
    signed = b"".join(picked) + relaxed_unsigned_header(signature_field)
    signature = base64.b64decode(tags(signature_field)["b"])
    public = key.private_key.public_key()
    try:
        public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_literal_verifier_accepts_an_untouched_message(key: DkimKey) -> None:
    assert header_signature_verifies(sign_message(key, BASIC), key)


def test_literal_verifier_rejects_a_from_added_above_an_oversigned_from(
    key: DkimKey,
) -> None:
    assert not header_signature_verifies(add_from_above(sign_message(key, BASIC)), key)


def test_without_oversigning_a_from_added_above_passes_a_literal_verifier(
    key: DkimKey,
) -> None:
    """The control for the test above: it is the over-signing that catches it."""
    signed = DkimSigner(key, oversign_from=False).sign(BASIC) + BASIC
    assert header_signature_verifies(add_from_above(signed), key)


# ------------------------------------------------ whitespace, by hypothesis

WORD = st.text(
    alphabet=string.ascii_letters + string.digits + "<>@.,=\"'()-éß☃",
    min_size=1,
    max_size=8,
)
INNER_WSP = st.sampled_from([" ", "  ", "\t", " \t ", "\t\t"])
FOLD = st.sampled_from(["\r\n ", "\r\n\t", " \r\n ", "\r\n  \t"])
TRAILING_WSP = st.sampled_from(["", "", " ", "\t", "  \t "])
NAME_CASE = st.sampled_from([str.title, str.lower, str.upper])


@st.composite
def header_value(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORD, min_size=1, max_size=6))
    out = draw(st.sampled_from(["", " ", "  ", "\t"])) + words[0]
    for word in words[1:]:
        out += draw(st.one_of(INNER_WSP, FOLD)) + word
    return out + draw(TRAILING_WSP)


@st.composite
def body_line(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(TRAILING_WSP)
    words = draw(st.lists(WORD, min_size=1, max_size=8))
    line = draw(st.sampled_from(["", " ", "\t"]))
    for word in words[:-1]:
        line += word + draw(INNER_WSP)
    return line + words[-1] + draw(TRAILING_WSP)


@st.composite
def whitespace_message(draw: st.DrawFn) -> bytes:
    names = ["From", "To", "Subject", "Cc", "X-Unsigned"]
    present = draw(st.lists(st.sampled_from(names[1:]), unique=True))
    fields = ["From"] + draw(st.permutations(present))
    head = "".join(
        draw(NAME_CASE)(name) + ":" + draw(header_value()) + "\r\n" for name in fields
    )
    lines = draw(st.lists(body_line(), max_size=8))
    trailing = draw(st.lists(TRAILING_WSP, max_size=3))
    body = "\r\n".join(lines + trailing)
    if body and draw(st.booleans()):
        body += "\r\n"
    return (head + "\r\n" + body).encode("utf-8")


@settings(max_examples=80, deadline=None)
@given(message=whitespace_message())
def test_dkimpy_verifies_messages_with_any_whitespace_layout(
    key: DkimKey, record: str, message: bytes
) -> None:
    assert dkimpy_verifies(sign_message(key, message), key, record)
