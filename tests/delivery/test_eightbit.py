"""8-bit to 7-bit downgrade: real-world messages and synthetic edge cases."""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import re
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcarrier.delivery.eightbit import downgrade_to_7bit, needs_8bitmime

CORPUS = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mime-mikel-mail"
).resolve()


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*/*.eml")) if CORPUS.is_dir() else []


def corpus_params(eight_bit: bool) -> list[object]:
    files = [f for f in corpus_files() if needs_8bitmime(f.read_bytes()) == eight_bit]
    if not files:
        reason = f"shared test data not present: {CORPUS}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(f, id=f"{f.parent.name}/{f.name}") for f in files]


def corpus(name: str) -> bytes:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"shared test data not present: {path}")
    return path.read_bytes()


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def leaves(message: Message) -> list[Message]:
    return [part for part in message.walk() if not part.is_multipart()]


def decoded(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    if part.get_content_maintype() == "text":
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data


def header_text(message: Message, name: str) -> str:
    value = message[name]
    assert value is not None, name
    return str(email.header.make_header(email.header.decode_header(value)))


def assert_valid_7bit(data: bytes) -> None:
    assert data.isascii()
    assert not needs_8bitmime(data)
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def assert_same_content(before: bytes, after: bytes) -> None:
    old, new = parse(before), parse(after)
    assert [p.get_content_type() for p in old.walk()] == [
        p.get_content_type() for p in new.walk()
    ]
    for old_leaf, new_leaf in zip(leaves(old), leaves(new), strict=True):
        assert decoded(new_leaf) == decoded(old_leaf)


# -- needs_8bitmime ---------------------------------------------------------------


def test_ascii_message_does_not_need_8bitmime() -> None:
    assert not needs_8bitmime(b"Subject: hi\r\n\r\nplain\r\n")


def test_one_high_byte_needs_8bitmime() -> None:
    assert needs_8bitmime(b"Subject: hi\r\n\r\ncaf\xc3\xa9\r\n")
    assert needs_8bitmime(b"\x80")


@given(st.binary(max_size=300))
def test_needs_8bitmime_means_some_byte_at_or_above_0x80(data: bytes) -> None:
    assert needs_8bitmime(data) == any(byte >= 0x80 for byte in data)


# -- the corpus -------------------------------------------------------------------


@pytest.mark.parametrize("path", corpus_params(eight_bit=False))
def test_seven_bit_message_is_returned_unchanged(path: Path) -> None:
    data = path.read_bytes()
    assert downgrade_to_7bit(data) == data


@pytest.mark.parametrize("path", corpus_params(eight_bit=True))
def test_eight_bit_message_becomes_7bit_with_the_same_content(path: Path) -> None:
    data = path.read_bytes()
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    assert_same_content(data, result)
    assert downgrade_to_7bit(result) == result


def test_shift_jis_body_is_quoted_printable_and_decodes_to_the_same_text() -> None:
    data = corpus("multi_charset/japanese_shift_jis.eml")
    result = parse(downgrade_to_7bit(data))
    assert result["Content-Transfer-Encoding"] == "quoted-printable"
    assert result.get_content_charset() == "shift_jis"
    text = decoded(result).decode("shift_jis")
    original = decoded(parse(data)).decode("shift_jis")
    assert text.splitlines() == original.splitlines()
    assert "\u3042\u3044\u3046\u3048\u304a" in text  # the first line: a i u e o


def test_korean_body_keeps_its_charset_and_text() -> None:
    data = corpus("multi_charset/ks_c_5601-1987.eml")
    result = parse(downgrade_to_7bit(data))
    original = parse(data)
    charset = original.get_content_charset()
    assert charset is not None
    assert result.get_content_charset() == charset
    assert decoded(result).decode(charset) == decoded(original).decode(charset)


def test_utf8_headers_become_encoded_words_with_the_same_text() -> None:
    result = parse(downgrade_to_7bit(corpus("rfc6532/utf8_headers.eml")))
    assert header_text(result, "Subject") == "S\u00e4ying Hello"
    assert "J\u00f6hn Doe" in header_text(result, "From")
    assert "M\u00e4ry Smith" in header_text(result, "To")


def test_emoji_subject_is_kept_through_encoded_words() -> None:
    result = parse(downgrade_to_7bit(corpus("attachment_emails/attachment_pdf.eml")))
    assert header_text(result, "Subject") == (
        "Another PDF with \U0001f389 Unicode chars in it \U0001f37f"
    )


def test_latin1_subject_bytes_survive_as_unknown_8bit() -> None:
    data = corpus("error_emails/invalid_subject_characters.eml")
    result = parse(downgrade_to_7bit(data))
    pieces = email.header.decode_header(result["Subject"])
    raw = b"".join(
        piece if isinstance(piece, bytes) else piece.encode("ascii")
        for piece, _charset in pieces
    )
    assert b"Forma\xe7\xe3o FrenetikPolis" in raw
    assert any(charset == "unknown-8bit" for _piece, charset in pieces)


def test_quoted_display_name_with_8bit_is_encoded_outside_the_quotes() -> None:
    result = parse(downgrade_to_7bit(corpus("error_emails/encoding_madness.eml")))
    assert "KLAUS- H\u00c4NSCHEL" in header_text(result, "Reply-To")


def test_8bit_filename_parameter_becomes_rfc2231() -> None:
    data = corpus("attachment_emails/attachment_nonascii_filename.eml")
    result = parse(downgrade_to_7bit(data))
    attachment = leaves(result)[1]
    assert attachment.get_filename() == "ci\u00eble.txt"
    assert "filename*=utf-8''ci%C3%ABle.txt" in attachment["Content-Disposition"]


def test_unrelated_headers_keep_their_folding() -> None:
    data = corpus("attachment_emails/attachment_pdf_non_ascii.eml")
    result = downgrade_to_7bit(data)
    received = re.search(rb"Received: from localhost.*?\r\n(?=\S)", data, re.S)
    assert received is not None
    assert received.group(0) in result


# -- synthetic cases --------------------------------------------------------------


def test_bare_8bit_message_gets_mime_headers_and_quoted_printable() -> None:
    data = b"From: a@example.com\r\nSubject: hi\r\n\r\nCaf\xc3\xa9 au lait\r\n"
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    message = parse(result)
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert b"Caf=C3=A9 au lait" in result
    assert message.get_payload(decode=True) == b"Caf\xc3\xa9 au lait\r\n"


def test_bare_non_utf8_body_is_labelled_unknown_8bit() -> None:
    data = b"Subject: hi\r\n\r\nCaf\xe9\r\n"
    message = parse(downgrade_to_7bit(data))
    assert message.get_content_charset() == "unknown-8bit"


def test_binary_attachment_becomes_base64_with_identical_bytes() -> None:
    blob = bytes(range(256)) * 4
    data = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nH\xc3\xa9llo\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + blob.replace(b"\r", b"").replace(b"\n", b"")
        + b"\r\n--b1--\r\n"
    )
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    text, attachment = leaves(parse(result))
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert_same_content(data, result)


def test_nested_message_is_downgraded_and_relabelled_7bit() -> None:
    inner = (
        b"Subject: inner \xc3\xbc\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
    )
    data = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"pre\xc3\xa4mble\r\n--outer\r\nContent-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + inner + b"--outer--\r\n"
    )
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    message = parse(result)
    assert message["Content-Transfer-Encoding"] == "7bit"
    attached = message.get_payload(0)
    assert isinstance(attached, Message)
    assert attached["Content-Transfer-Encoding"] == "7bit"
    inner_message = attached.get_payload(0)
    assert isinstance(inner_message, Message)
    assert header_text(inner_message, "Subject") == "inner \u00fc"
    assert inner_message.get_payload(decode=True) == b"Gr\xc3\xbc\xc3\x9fe"
    assert message.preamble is not None and "?" in message.preamble


def test_long_7bit_line_in_an_8bit_message_is_wrapped_by_quoted_printable() -> None:
    long_line = b"x" * 1500
    data = (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + long_line + b"\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9\r\n--b--\r\n"
    )
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    assert_same_content(data, result)


def test_lf_only_message_comes_out_with_crlf() -> None:
    data = b"Subject: caf\xc3\xa9\nContent-Type: text/plain; charset=utf-8\n\nl1\nl2\n"
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    assert result.endswith(b"l1\r\nl2\r\n")


def test_quoted_printable_part_with_raw_8bit_keeps_its_decoded_bytes() -> None:
    data = (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"raw \xc3\xa9 and escaped =C3=A9\r\n"
    )
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    body = parse(result).get_payload(decode=True)
    assert body == b"raw \xc3\xa9 and escaped \xc3\xa9\r\n"


@given(st.text(max_size=400), st.binary(max_size=400))
def test_any_text_and_attachment_round_trip(text: str, blob: bytes) -> None:
    body = text.replace("\r", "").replace("\n", "\r\n").encode("utf-8")
    data = (
        b"MIME-Version: 1.0\r\n"
        b"Subject: t\xc3\xa9st\r\n"
        b'Content-Type: multipart/mixed; boundary="=_b"\r\n\r\n'
        b"--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n"
        b"--=_b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(blob)
        + b"--=_b--\r\n"
    )
    result = downgrade_to_7bit(data)
    assert_valid_7bit(result)
    text_part, blob_part = leaves(parse(result))
    assert decoded(text_part) == body  # the CRLF before "--=_b" is not content
    assert blob_part.get_payload(decode=True) == blob
