"""Tests for the ACS request -> MIME bytes builder."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcarrier.api.mime import Attachment, EmailRequest, Mailbox, build_message

DATE = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
MSG_ID = "<0f8e6a2c-1b2d-4c3e-9f00-123456789abc@mail.example.com>"


def make_request(**changes: object) -> EmailRequest:
    base = EmailRequest(
        sender="DoNotReply@example.com",
        sender_display_name="Contoso",
        subject="Hello",
        plain_text="Hello there",
        html=None,
        to=[Mailbox("alice@example.org", "Alice")],
        cc=[],
        bcc=[],
        reply_to=[],
        headers={},
        attachments=[],
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def build(request: EmailRequest) -> bytes:
    return build_message(request, message_id=MSG_ID, date=DATE)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def assert_wire_rules(data: bytes) -> None:
    assert data.isascii()
    assert data.endswith(b"\r\n")
    for line in data[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998


def display_name(data: bytes, header: str) -> str:
    """Decode the first display name of ``header`` per RFC 2047 section 6.2.

    ``policy.default``'s phrase parser puts a space between adjacent encoded-words
    (RFC 2047 says that whitespace is ignored), so long names use the older,
    correct decoder on the raw header.
    """
    raw = email.message_from_bytes(data, policy=email.policy.compat32)[header]
    decoded = str(make_header(decode_header(raw)))
    name = decoded.rpartition(" <")[0].strip()
    if name.startswith('"') and name.endswith('"'):
        name = unquote(name)
    return name


def squash(text: str) -> str:
    return "".join(text.split())


def text_of(part: object) -> str:
    content = part.get_content()  # type: ignore[attr-defined]
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def structure(part: EmailMessage) -> object:
    if part.is_multipart():
        children = [structure(p) for p in part.iter_parts()]  # type: ignore[arg-type]
        return (part.get_content_type(), children)
    return part.get_content_type()


def test_plain_only() -> None:
    data = build(make_request())
    msg = parse(data)
    assert structure(msg) == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert text_of(msg) == "Hello there\n"
    assert msg["Message-ID"] == MSG_ID
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == DATE
    assert msg["From"].addresses[0].display_name == "Contoso"
    assert msg["From"].addresses[0].addr_spec == "DoNotReply@example.com"
    assert_wire_rules(data)


def test_html_only() -> None:
    msg = parse(build(make_request(plain_text=None, html="<p>Hi</p>")))
    assert structure(msg) == "text/html"
    assert text_of(msg) == "<p>Hi</p>\n"


def test_plain_and_html_alternative_text_first() -> None:
    msg = parse(build(make_request(plain_text="Hi", html="<b>Hi</b>")))
    assert structure(msg) == ("multipart/alternative", ["text/plain", "text/html"])
    plain, html = msg.iter_parts()
    assert text_of(plain) == "Hi\n"  # type: ignore[attr-defined]
    assert text_of(html) == "<b>Hi</b>\n"  # type: ignore[attr-defined]


def test_no_body_gives_empty_text_part() -> None:
    msg = parse(build(make_request(plain_text=None, html=None)))
    assert structure(msg) == "text/plain"


@pytest.mark.parametrize(
    "name", ["Überweisung 2026 – März.pdf", "日本語.txt", "report.pdf", 'a "q".txt']
)
def test_attachment_names_and_bytes_round_trip(name: str) -> None:
    content = bytes(range(256)) * 40
    att = Attachment(name=name, content_type="application/pdf", content=content)
    data = build(make_request(attachments=[att]))
    assert_wire_rules(data)
    msg = parse(data)
    assert structure(msg) == ("multipart/mixed", ["text/plain", "application/pdf"])
    part = next(msg.iter_attachments())
    assert part.get_filename() == name
    assert part.get_content() == content
    assert part["Content-Transfer-Encoding"] == "base64"
    assert str(part.get_content_type()) == "application/pdf"
    assert part["Content-Type"].params["name"] == name
    assert part.get_content_disposition() == "attachment"
    body = part.get_payload().splitlines()  # type: ignore[union-attr]
    assert all(len(line) <= 76 for line in body)
    assert len(body[0]) == 76


def test_non_ascii_name_uses_rfc2231_and_rfc2047() -> None:
    att = Attachment("日本語.txt", "text/plain", "日本".encode())
    data = build(make_request(attachments=[att]))
    assert b"filename*=utf-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt" in data
    assert b'name="=?utf-8?b?5pel5pys6KqeLnR4dA==?="' in data


def test_long_non_ascii_name_round_trips() -> None:
    name = "Überweisungsbestätigung " * 6 + ".pdf"
    att = Attachment(name, "application/pdf", b"x")
    data = build(make_request(attachments=[att]))
    assert_wire_rules(data)
    part = next(parse(data).iter_attachments())
    assert part.get_filename() == name
    assert squash(part["Content-Type"].params["name"]) == squash(name)


def test_inline_image_in_related() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    att = Attachment("logo.png", "image/png", png, content_id="logo")
    html = '<img src="cid:logo">'
    msg = parse(build(make_request(plain_text=None, html=html, attachments=[att])))
    assert structure(msg) == ("multipart/related", ["text/html", "image/png"])
    html_part, image = msg.iter_parts()
    assert "cid:logo" in text_of(html_part)
    assert image["Content-ID"] == "<logo>"
    assert image.get_content_disposition() == "inline"  # type: ignore[attr-defined]
    assert image.get_content() == png  # type: ignore[attr-defined]


def test_mixed_related_alternative_nesting() -> None:
    inline = Attachment("logo.png", "image/png", b"img", content_id="logo@x")
    regular = Attachment("a.pdf", "application/pdf", b"pdf")
    request = make_request(
        plain_text="Hi", html='<img src="cid:logo@x">', attachments=[regular, inline]
    )
    msg = parse(build(request))
    assert structure(msg) == (
        "multipart/mixed",
        [
            (
                "multipart/related",
                [("multipart/alternative", ["text/plain", "text/html"]), "image/png"],
            ),
            "application/pdf",
        ],
    )
    related = next(msg.iter_parts())
    image = list(related.iter_parts())[1]  # type: ignore[attr-defined]
    assert image["Content-ID"] == "<logo@x>"
    assert [p.get_filename() for p in msg.iter_attachments()] == ["a.pdf"]


def test_bcc_never_in_output() -> None:
    request = make_request(bcc=[Mailbox("secret@hidden.example", "Secret Person")])
    data = build(request)
    assert b"secret" not in data.lower()
    assert b"bcc" not in data.lower()
    assert parse(data)["Bcc"] is None


def test_cc_and_reply_to_present() -> None:
    request = make_request(
        cc=[Mailbox("c1@example.org", "C One"), Mailbox("c2@example.org")],
        reply_to=[Mailbox("help@example.com", "Help Desk")],
    )
    msg = parse(build(request))
    assert [a.addr_spec for a in msg["Cc"].addresses] == [
        "c1@example.org",
        "c2@example.org",
    ]
    assert msg["Cc"].addresses[0].display_name == "C One"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert msg["Reply-To"].addresses[0].display_name == "Help Desk"


def test_no_cc_or_reply_to_headers_when_empty() -> None:
    msg = parse(build(make_request()))
    assert msg["Cc"] is None
    assert msg["Reply-To"] is None


@pytest.mark.parametrize(
    "text",
    [
        "請求書のお知らせ（2026年3月分）",
        "مرحبا بكم في خدمتنا الجديدة",
        "Party time 🎉🎂 — ça va? 👍🏽",
        'Quote "and" comma, <angle> @at (paren)',
    ],
)
def test_international_subject_and_display_names(text: str) -> None:
    request = make_request(
        subject=text,
        sender_display_name=text,
        to=[Mailbox("a@example.org", text)],
        cc=[Mailbox("b@example.org", text)],
        reply_to=[Mailbox("c@example.org", text)],
    )
    data = build(request)
    assert_wire_rules(data)
    msg = parse(data)
    assert msg["Subject"] == text
    for name in ("From", "To", "Cc", "Reply-To"):
        assert display_name(data, name) == text
        assert squash(msg[name].addresses[0].display_name) == squash(text)


def test_long_single_line_html_stays_under_998() -> None:
    html = "<p>" + "x" * 5000 + "</p>"
    data = build(make_request(plain_text=None, html=html))
    assert_wire_rules(data)
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(msg) == html + "\n"


def test_long_headers_fold_under_998() -> None:
    request = make_request(
        subject="S" * 3000,
        to=[Mailbox("b@example.org", "ü" * 500)],
        headers={"X-Long": "v" * 3000},
        attachments=[Attachment("a" * 500 + ".pdf", "application/pdf", b"x")],
    )
    data = build(request)
    assert_wire_rules(data)
    msg = parse(data)
    assert msg["Subject"] == "S" * 3000
    assert msg["X-Long"] == "v" * 3000
    assert next(msg.iter_attachments()).get_filename() == "a" * 500 + ".pdf"


def test_unfoldable_display_name_raises() -> None:
    with pytest.raises(ValueError):
        build(make_request(sender_display_name="N" * 2000))


def test_non_ascii_body_is_quoted_printable() -> None:
    data = build(make_request(plain_text="Grüße aus Köln ☕"))
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(msg) == "Grüße aus Köln ☕\n"
    assert_wire_rules(data)


def test_lines_are_crlf_and_output_ascii() -> None:
    request = make_request(
        plain_text="one\ntwo\r\nthree\rfour",
        html="<p>ü</p>\n<p>é</p>",
        attachments=[Attachment("ü.bin", "application/octet-stream", b"\n\r\n\r")],
    )
    data = build(request)
    assert_wire_rules(data)
    assert data.replace(b"\r\n", b"").count(b"\n") == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Hi\r\nBcc: victim@example.org"},
        {"subject": "Hi\nX-Evil: 1"},
        {"subject": "Hi\rX-Evil: 1"},
        {"subject": "Hi\u2028there"},
        {"subject": "nul\x00byte"},
        {"sender_display_name": "Evil\r\nX-Injected: yes"},
        {"to": [Mailbox("a@example.org", "A\rB")]},
        {"to": [Mailbox("a@example.org\r\nX-A: 1")]},
        {"reply_to": [Mailbox("r@example.org", "R\nS")]},
        {"headers": {"X-Custom": "v\r\nBcc: victim@example.org"}},
        {"headers": {"X-Custom\r\nX-Other": "v"}},
        {"attachments": [Attachment("a\r\n.pdf", "application/pdf", b"")]},
    ],
)
def test_crlf_injection_raises(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build(make_request(**changes))


@pytest.mark.parametrize(
    "headers",
    [
        {"Subject": "other"},
        {"bcc": "x@example.org"},
        {"X-A": "1", "x-a": "2"},
        {"Bad Name": "1"},
        {"Bad:Name": "1"},
    ],
)
def test_bad_custom_headers_raise(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(make_request(headers=headers))


def test_custom_headers_appear_exactly_once() -> None:
    headers = {
        "x-priority": "1",
        "ClientCorrelationId": "123",
        "X-Note": "Grüße",
    }
    data = build(make_request(headers=headers))
    msg = parse(data)
    for name, value in headers.items():
        assert len(msg.get_all(name) or []) == 1
        assert msg[name] == value
    assert data.lower().count(b"\r\nx-priority:") == 1


def test_invalid_message_id_and_naive_date_raise() -> None:
    with pytest.raises(ValueError):
        build_message(make_request(), message_id="abc@example.com", date=DATE)
    with pytest.raises(ValueError):
        build_message(make_request(), message_id="<a\r\n@b>", date=DATE)
    with pytest.raises(ValueError):
        build_message(make_request(), message_id=MSG_ID, date=datetime(2026, 1, 1))


def test_output_is_deterministic_apart_from_boundaries() -> None:
    one = build(make_request(plain_text="Hi", html="<p>Hi</p>"))
    two = build(make_request(plain_text="Hi", html="<p>Hi</p>"))
    assert one.count(b"\r\n") == two.count(b"\r\n")


no_breaks = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=200
)
body_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=1000)


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=80, deadline=None)
@given(subject=no_breaks, name=no_breaks, plain=body_text, html=body_text)
def test_random_unicode_round_trips(
    subject: str, name: str, plain: str, html: str
) -> None:
    request = make_request(
        subject=subject,
        sender_display_name=name,
        to=[Mailbox("a@example.org", name)],
        plain_text=plain,
        html=html,
    )
    data = build(request)
    assert_wire_rules(data)
    msg = parse(data)
    assert msg["Subject"] == subject.lstrip(" \t")
    assert squash(msg["From"].addresses[0].display_name) == squash(name)
    assert squash(msg["To"].addresses[0].display_name) == squash(name)
    plain_part, html_part = msg.iter_parts()
    got_plain = text_of(plain_part)
    got_html = text_of(html_part)
    assert got_plain.rstrip("\n") == normalise_newlines(plain).rstrip("\n")
    assert got_html.rstrip("\n") == normalise_newlines(html).rstrip("\n")


@settings(max_examples=60, deadline=None)
@given(name=no_breaks.filter(lambda s: s == s.strip() != ""), content=st.binary())
def test_random_attachment_names_round_trip(name: str, content: bytes) -> None:
    att = Attachment(name, "application/octet-stream", content)
    data = build(make_request(attachments=[att]))
    assert_wire_rules(data)
    part = next(parse(data).iter_attachments())
    # get_filename() strips a surrounding <...>, so read the parameter itself.
    assert part["Content-Disposition"].params["filename"] == name
    assert part.get_content() == content
