"""Tests for the ACS send-body validator."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcarrier.api.mime import Attachment, Mailbox, build_message
from mailcarrier.api.validation import ApiError, parse_send_request

PDF = base64.b64encode(b"%PDF-1.4 hello").decode("ascii")
PNG = base64.b64encode(b"\x89PNG fake").decode("ascii")


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "senderAddress": "DoNotReply@contoso.com",
        "recipients": {"to": [{"address": "a@example.com", "displayName": "A"}]},
        "content": {"subject": "Hi", "plainText": "Hello"},
    }
    base.update(copy.deepcopy(changes))
    return base


def encode(data: object) -> bytes:
    return json.dumps(data).encode("utf-8")


def parse(data: object, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return parse_send_request(encode(data), headers or {}, **kw)


def refused(data: object, headers: dict[str, str] | None = None, **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(data, headers, **kw)
    return info.value


def assert_bad(error: ApiError, target: str | None) -> None:
    assert (error.status, error.code, error.target) == (400, "BadRequest", target)
    if target is not None:
        assert f"'{target}'" in error.message


def attachment(**changes: Any) -> dict[str, Any]:
    base = {"name": "a.pdf", "contentType": "application/pdf", "contentInBase64": PDF}
    base.update(changes)
    return base


# Happy path -------------------------------------------------------------------


def test_sdk_body_parses() -> None:
    raw = (
        b'{"senderAddress": "DoNotReply@contoso.com", "recipients": {"to": '
        b'[{"address": "a@example.com", "displayName": "A"}]}, "content": '
        b'{"subject": "Hi", "plainText": "Hello"}}'
    )
    request, extras = parse_send_request(raw, {})
    assert request.sender == "DoNotReply@contoso.com"
    assert request.sender_display_name == ""
    assert request.subject == "Hi"
    assert (request.plain_text, request.html) == ("Hello", None)
    assert request.to == [Mailbox("a@example.com", "A")]
    assert extras.sender_address == "DoNotReply@contoso.com"
    assert extras.recipients == ("a@example.com",)
    assert (extras.to_count, extras.cc_count, extras.bcc_count) == (1, 0, 0)
    assert extras.attachment_count == 0
    assert extras.user_engagement_tracking_disabled is False


def test_full_spec_example_shape() -> None:
    data = body(
        recipients={
            "to": [{"address": "a@example.com"}, {"address": "b@example.com"}],
            "cc": [{"address": "c@example.com", "displayName": "C"}],
            "bcc": [{"address": "d@example.com"}],
        },
        content={"subject": "S", "plainText": "p", "html": "<p>h</p>"},
        headers={"ClientCorrelationId": "123", "x-priority": "1"},
        attachments=[
            attachment(),
            attachment(
                name="l.png",
                contentType="image/png",
                contentInBase64=PNG,
                contentId="logo",
            ),
        ],
        replyTo=[{"address": "r@example.com", "displayName": "R"}],
        userEngagementTrackingDisabled=True,
    )
    request, extras = parse(data)
    assert request.html == "<p>h</p>"
    assert request.cc == [Mailbox("c@example.com", "C")]
    assert request.bcc == [Mailbox("d@example.com")]
    assert request.reply_to == [Mailbox("r@example.com", "R")]
    assert request.headers == {"ClientCorrelationId": "123", "x-priority": "1"}
    assert request.attachments == [
        Attachment("a.pdf", "application/pdf", b"%PDF-1.4 hello"),
        Attachment("l.png", "image/png", b"\x89PNG fake", "logo"),
    ]
    assert (extras.to_count, extras.cc_count, extras.bcc_count) == (2, 1, 1)
    assert extras.attachment_count == 2
    assert extras.user_engagement_tracking_disabled is True


def test_unknown_properties_and_nulls_are_ignored() -> None:
    data = body(
        futureField={"x": 1},
        senderDisplayName="Preview",
        replyTo=None,
        attachments=None,
        headers=None,
        userEngagementTrackingDisabled=None,
    )
    data["recipients"]["cc"] = None
    data["content"]["html"] = None
    request, extras = parse(data)
    assert request.reply_to == [] and request.attachments == []
    assert extras.user_engagement_tracking_disabled is False


def test_neither_plain_text_nor_html_is_accepted() -> None:
    request, _ = parse(body(content={"subject": "only a subject"}))
    assert (request.plain_text, request.html) == (None, None)


def test_unique_recipients_dedupe_case_insensitive_in_order() -> None:
    data = body(
        recipients={
            "to": [{"address": "A@example.com"}, {"address": "b@example.com"}],
            "cc": [{"address": "a@EXAMPLE.com"}],
            "bcc": [{"address": "c@example.com"}, {"address": "B@example.com"}],
        }
    )
    request, extras = parse(data)
    assert extras.recipients == ("A@example.com", "b@example.com", "c@example.com")
    assert (extras.to_count, extras.cc_count, extras.bcc_count) == (2, 1, 2)
    assert len(request.bcc) == 2


def test_internationalised_domain_and_plus_address() -> None:
    request, _ = parse(body(recipients={"to": [{"address": "x+tag@bücher.de"}]}))
    assert request.to[0].address == "x+tag@bücher.de"


# Body-level errors ------------------------------------------------------------


def test_body_over_limit_is_413() -> None:
    raw = encode(body(content={"subject": "s", "plainText": "x" * 500}))
    with pytest.raises(ApiError) as info:
        parse_send_request(raw, {}, max_bytes=len(raw) - 1)
    error = info.value
    assert (error.status, error.code, error.target) == (
        413,
        "RequestEntityTooLarge",
        None,
    )
    assert str(len(raw) - 1) in error.message
    parse_send_request(raw, {}, max_bytes=len(raw))


def test_default_limit_is_ten_megabytes() -> None:
    with pytest.raises(ApiError) as info:
        parse_send_request(b" " * (10 * 1024 * 1024 + 1), {})
    assert info.value.status == 413


@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff\xfe{}", b"[" * 100_000])
def test_not_json_is_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_send_request(raw, {})
    assert_bad(info.value, None)
    assert "JSON object" in info.value.message


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"text"', b"42", b"true"])
def test_json_that_is_not_an_object_is_400(raw: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_send_request(raw, {})
    assert_bad(info.value, None)


def test_error_body_shape() -> None:
    error = refused(body(senderAddress=None))
    assert error.body() == {
        "error": {
            "code": "BadRequest",
            "message": error.message,
            "target": "senderAddress",
            "details": [],
            "innererror": None,
        }
    }
    assert error.message.startswith(
        "Request body validation error. See property 'senderAddress'."
    )
    json.dumps(error.body())


# Sender -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        None,
        42,
        "",
        "Name <a@b.com>",
        "<a@b.com>",
        "a b@c.com",
        "nodomain",
        "a@localhost",
        "a@b..com",
        "@b.com",
        "a@",
        '"q"@b.com',
        "ü@b.com",
    ],
)
def test_bad_sender_address(sender: object) -> None:
    data = body()
    if sender is None:
        del data["senderAddress"]
    else:
        data["senderAddress"] = sender
    assert_bad(refused(data), "senderAddress")


def test_display_name_sender_message_says_what_to_fix() -> None:
    error = refused(body(senderAddress="Contoso <DoNotReply@contoso.com>"))
    assert "bare email address" in error.message


# Content ----------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "text", [], {"plainText": "no subject"}])
def test_missing_content_or_subject(content: object) -> None:
    target = "content" if not isinstance(content, dict) else "content.subject"
    assert_bad(refused(body(content=content)), target)


def test_subject_must_be_string() -> None:
    assert_bad(refused(body(content={"subject": 5})), "content.subject")


@pytest.mark.parametrize("key", ["plainText", "html"])
def test_bodies_must_be_strings(key: str) -> None:
    data = body(content={"subject": "s", key: ["x"]})
    assert_bad(refused(data), f"content.{key}")


# Recipients -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipients", "target"),
    [
        (None, "recipients"),
        ({}, "recipients.to"),
        ({"to": []}, "recipients.to"),
        ({"to": {"address": "a@example.com"}}, "recipients.to"),
        ({"to": ["a@example.com"]}, "recipients.to[0]"),
        ({"to": [{"displayName": "A"}]}, "recipients.to[0].address"),
        (
            {"to": [{"address": "a@example.com"}, {"address": "x"}]},
            "recipients.to[1].address",
        ),
        (
            {"to": [{"address": "a@example.com", "displayName": 3}]},
            "recipients.to[0].displayName",
        ),
        (
            {"to": [{"address": "a@example.com"}], "cc": [{"address": "bad"}]},
            "recipients.cc[0].address",
        ),
        (
            {"to": [{"address": "a@example.com"}], "bcc": "b@example.com"},
            "recipients.bcc",
        ),
    ],
)
def test_bad_recipients(recipients: object, target: str) -> None:
    assert_bad(refused(body(recipients=recipients)), target)


def recipients_of(count: int, *, dup: bool = False) -> dict[str, Any]:
    to = [{"address": f"u{i}@example.com"} for i in range(count)]
    cc = [{"address": f"U{i}@EXAMPLE.com"} for i in range(count)] if dup else []
    return {"to": to, "cc": cc}


def test_recipient_limit_counts_unique_addresses() -> None:
    parse(body(recipients=recipients_of(50, dup=True)))
    error = refused(body(recipients=recipients_of(51)))
    assert_bad(error, "recipients")
    assert "50" in error.message and "51" in error.message


def test_recipient_limit_spans_to_cc_bcc() -> None:
    data = body(
        recipients={
            "to": [{"address": "t@example.com"}],
            "cc": [{"address": "c@example.com"}],
            "bcc": [{"address": "b@example.com"}],
        }
    )
    assert_bad(refused(data, max_recipients=2), "recipients")
    parse(data, max_recipients=3)


def test_reply_to_is_validated_like_recipients() -> None:
    assert_bad(refused(body(replyTo=[{"address": "x y@z.com"}])), "replyTo[0].address")
    assert_bad(refused(body(replyTo={"address": "a@b.com"})), "replyTo")


def test_tracking_flag_must_be_bool() -> None:
    error = refused(body(userEngagementTrackingDisabled="true"))
    assert_bad(error, "userEngagementTrackingDisabled")


# Control characters -----------------------------------------------------------


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00", "\x7f", "\u2028"])
def test_control_characters_in_header_fields(bad: str) -> None:
    cases = [
        (body(senderAddress=f"a{bad}@b.com"), "senderAddress"),
        (
            body(recipients={"to": [{"address": f"a@b.com{bad}"}]}),
            "recipients.to[0].address",
        ),
        (
            body(
                recipients={"to": [{"address": "a@b.com", "displayName": f"A{bad}B"}]}
            ),
            "recipients.to[0].displayName",
        ),
        (body(content={"subject": f"Hi{bad}Bcc: x@evil.com"}), "content.subject"),
        (body(headers={"X-Tag": f"v{bad}Bcc: x@evil.com"}), "headers.X-Tag"),
        (body(headers={f"X{bad}Y": "v"}), f"headers.X{bad}Y"),
        (
            body(replyTo=[{"address": "r@b.com", "displayName": f"R{bad}"}]),
            "replyTo[0].displayName",
        ),
        (body(attachments=[attachment(name=f"a{bad}.pdf")]), "attachments[0].name"),
    ]
    for data, target in cases:
        error = refused(data)
        assert_bad(error, target)
        assert "control characters" in error.message or "address" in error.message


def test_tab_is_allowed_in_subject_and_body_may_have_newlines() -> None:
    request, _ = parse(body(content={"subject": "a\tb", "plainText": "l1\r\nl2"}))
    assert request.subject == "a\tb"


# Custom headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "From",
        "to",
        "CC",
        "Bcc",
        "Sender",
        "SUBJECT",
        "Date",
        "Message-ID",
        "dkim-signature",
        "Content-Type",
        "content-transfer-encoding",
        "Content-X",
        "Reply-To",
        "MIME-Version",
        "Return-Path",
    ],
)
def test_reserved_headers_are_refused(name: str) -> None:
    error = refused(body(headers={name: "x"}))
    assert_bad(error, f"headers.{name}")
    assert "remove it" in error.message


@pytest.mark.parametrize("name", ["", "X Tag", "X:Tag", "Ünicode", "X\tY"])
def test_header_names_must_be_field_names(name: str) -> None:
    assert_bad(refused(body(headers={name: "x"})), f"headers.{name}")


def test_header_value_must_be_string_and_names_unique() -> None:
    assert_bad(refused(body(headers={"X-A": 1})), "headers.X-A")
    assert_bad(refused(body(headers={"X-A": "1", "x-a": "2"})), "headers.x-a")
    assert_bad(refused(body(headers=["X-A"])), "headers")


def test_switch_headers_are_consumed_not_forwarded() -> None:
    data = body(
        headers={"x-ms-acsemail-suppress-invalid-attachment": "true", "X-Keep": "yes"}
    )
    request, _ = parse(data)
    assert request.headers == {"X-Keep": "yes"}


# Attachments ------------------------------------------------------------------

SUPPRESS = {"x-ms-acsemail-suppress-invalid-attachment": "true"}
IGNORE_DUP = {"x-ms-acsemail-ignore-duplicate-content-id": "TRUE"}


@pytest.mark.parametrize("field", ["name", "contentType", "contentInBase64"])
def test_attachment_required_fields(field: str) -> None:
    item = attachment()
    del item[field]
    target = f"attachments[0].{field}"
    assert_bad(refused(body(attachments=[item])), target)
    assert_bad(refused(body(attachments=[item]), SUPPRESS), target)


def test_attachment_list_and_items_shape() -> None:
    assert_bad(refused(body(attachments={"name": "a"})), "attachments")
    assert_bad(refused(body(attachments=["a.pdf"])), "attachments[0]")


@pytest.mark.parametrize("encoded", ["not base64!", "QUJD\n", "QUJ", "QUJD-_==", "é"])
def test_invalid_base64(encoded: str) -> None:
    data = body(attachments=[attachment(contentInBase64=encoded)])
    error = refused(data)
    assert_bad(error, "attachments[0].contentInBase64")
    assert "base64" in error.message


@pytest.mark.parametrize(
    "content_type",
    ["application/x-msdownload", "text/html", "application/pdf; x=y", "pdf", ""],
)
def test_content_type_outside_allow_list(content_type: str) -> None:
    data = body(attachments=[attachment(contentType=content_type)])
    error = refused(data)
    assert_bad(error, "attachments[0].contentType")
    assert "x-ms-acsemail-suppress-invalid-attachment" in error.message


def test_content_type_is_case_insensitive() -> None:
    request, _ = parse(body(attachments=[attachment(contentType="Application/PDF")]))
    assert request.attachments[0].content_type == "Application/PDF"


@pytest.mark.parametrize("headers_in", ["http", "json"])
def test_suppress_switch_drops_invalid_attachments(headers_in: str) -> None:
    items = [
        attachment(contentType="application/x-msdownload"),
        attachment(),
        attachment(contentInBase64="!!"),
    ]
    data = body(attachments=items)
    http: dict[str, str] = {}
    if headers_in == "http":
        http = {"X-MS-ACSEmail-Suppress-Invalid-Attachment": "True"}
    else:
        data["headers"] = SUPPRESS
    request, extras = parse(data, http)
    assert [a.name for a in request.attachments] == ["a.pdf"]
    assert (extras.attachment_count, extras.attachments_dropped) == (1, 2)


def test_suppress_switch_false_does_not_suppress() -> None:
    data = body(attachments=[attachment(contentInBase64="!!")])
    error = refused(data, {"x-ms-acsemail-suppress-invalid-attachment": "false"})
    assert_bad(error, "attachments[0].contentInBase64")


def test_duplicate_content_id() -> None:
    items = [attachment(contentId="logo"), attachment(contentId="<logo>")]
    error = refused(body(attachments=items))
    assert_bad(error, "attachments[1].contentId")
    assert "x-ms-acsemail-ignore-duplicate-content-id" in error.message
    request, _ = parse(body(attachments=items), IGNORE_DUP)
    assert len(request.attachments) == 2
    data = body(attachments=items, headers=IGNORE_DUP)
    assert len(parse(data)[0].attachments) == 2


def test_duplicate_content_id_target_uses_request_index() -> None:
    items = [
        attachment(contentInBase64="!!"),
        attachment(contentId="x"),
        attachment(contentId="x"),
    ]
    assert_bad(refused(body(attachments=items), SUPPRESS), "attachments[2].contentId")


@pytest.mark.parametrize("cid", ["", "a b", "<>", "a<b", 5])
def test_malformed_content_id(cid: object) -> None:
    data = body(attachments=[attachment(contentId=cid)])
    assert_bad(refused(data), "attachments[0].contentId")


# Properties -------------------------------------------------------------------

DATE = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)
MSG_ID = "<0f8e6a2c@mail.example.com>"

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
address_like = st.sampled_from(
    [
        "a@example.com",
        "B@Example.com",
        "x+y@bücher.de",
        "bad",
        "a\r\n@b.com",
        "Name <a@b.com>",
        "",
        "a@b",
    ]
) | st.text(max_size=20)
mailbox = st.fixed_dictionaries(
    {"address": address_like},
    optional={"displayName": st.none() | st.text(max_size=30) | json_leaf},
)
attachment_like = st.fixed_dictionaries(
    {
        "name": st.text(max_size=20),
        "contentType": st.sampled_from(["application/pdf", "image/png", "x/y"])
        | st.text(max_size=10),
        "contentInBase64": st.sampled_from([PDF, PNG, "", "!!"]) | st.text(max_size=8),
    },
    optional={"contentId": st.none() | st.text(max_size=10) | st.just("cid")},
)
structured = st.fixed_dictionaries(
    {
        "senderAddress": address_like,
        "recipients": st.fixed_dictionaries(
            {"to": st.lists(mailbox, max_size=3)},
            optional={
                "cc": st.lists(mailbox, max_size=2) | json_value,
                "bcc": st.lists(mailbox, max_size=2),
            },
        ),
        "content": st.fixed_dictionaries(
            {"subject": st.text(max_size=40) | json_leaf},
            optional={"plainText": st.text() | json_leaf, "html": st.text()},
        ),
    },
    optional={
        "headers": st.dictionaries(
            st.text(max_size=10), st.text(max_size=10) | json_leaf, max_size=3
        ),
        "attachments": st.lists(attachment_like, max_size=3) | json_value,
        "replyTo": st.lists(mailbox, max_size=2),
        "userEngagementTrackingDisabled": json_leaf,
        "extra": json_value,
    },
)
switch_headers = st.dictionaries(
    st.sampled_from(list(SUPPRESS) + list(IGNORE_DUP) + ["Other"]),
    st.sampled_from(["true", "false", "1", ""]),
)


def accepts_or_refuses(raw: bytes, headers: dict[str, str]) -> None:
    try:
        request, extras = parse_send_request(raw, headers, max_bytes=100_000)
    except ApiError as error:
        assert error.status in (400, 413)
        json.dumps(error.body())
        return
    assert len(extras.recipients) <= 50
    build_message(request, message_id=MSG_ID, date=DATE)  # never a ValueError


@settings(max_examples=300, deadline=None)
@given(json_value)
def test_arbitrary_json_never_crashes(value: object) -> None:
    try:
        raw = json.dumps(value).encode("utf-8")
    except ValueError:
        return
    accepts_or_refuses(raw, {})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured, switch_headers)
def test_structured_bodies_never_crash_and_accepted_ones_build(
    value: dict[str, Any], headers: dict[str, str]
) -> None:
    accepts_or_refuses(json.dumps(value).encode("utf-8"), headers)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    accepts_or_refuses(raw, {})
