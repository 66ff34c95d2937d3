"""HMAC-SHA256 request authentication: reference vectors, the SDK, refusals."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcarrier.identity.hmac_auth import (
    DENIED,
    INVALID_AUTH,
    INVALID_HASH,
    UNAUTHORIZED,
    HmacError,
    content_hash,
    parse_authorization,
    parse_connection_string,
    sign,
    string_to_sign,
    verify_request,
)

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
OTHER_KEY = base64.b64encode(b"another key, 32 bytes long......").decode()
HOST = "contoso.communication.azure.com"
DATE = "Tue, 02 Dec 2025 10:00:00 GMT"
NOW = datetime(2025, 12, 2, 10, 0, 0, tzinfo=UTC)
SEND_PATH = "/emails:send?api-version=2025-09-01"
GET_PATH = (
    "/emails/operations/8540c0de-899f-5cce-acb5-3ec493af3800?api-version=2025-09-01"
)
SEND_BODY = (
    b'{"senderAddress": "DoNotReply@contoso.com", "recipients": {"to": '
    b'[{"address": "a@example.com", "displayName": "A"}]}, "content": '
    b'{"subject": "Hi", "plainText": "Hello"}}'
)
SEND_HASH = "izgeGRfylBYBEk5lpt615XxEAc472JTwJTo4a4sR728="
SEND_SIG = "uGpRs0yu18CP8aCg8DfiMj9VREulUM9bUnYXb30ZZFw="
EMPTY_HASH = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
GET_SIG = "Y9Y6wrJzux9KFhP1hKCFXqL/XeSMEI54gxlbaq6Ujno="
PREFIX = "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="


def signed_headers(
    method: str = "POST",
    path: str = SEND_PATH,
    body: bytes = SEND_BODY,
    *,
    key: str = KEY,
    date: str = DATE,
    host: str = HOST,
) -> dict[str, str]:
    hashed = content_hash(body)
    signature = sign(key, string_to_sign(method, path, date, host, hashed))
    return {
        "Host": host,
        "x-ms-date": date,
        "x-ms-content-sha256": hashed,
        "Authorization": PREFIX + signature,
    }


def verify(
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = SEND_PATH,
    body: bytes = SEND_BODY,
    keys: tuple[str, ...] = (KEY,),
    now: datetime = NOW,
) -> int:
    return verify_request(
        method=method,
        path_and_query=path,
        headers=headers,
        body=body,
        keys=keys,
        now=now,
    )


def refused(headers: dict[str, str], **kwargs: object) -> HmacError:
    with pytest.raises(HmacError) as info:
        verify(headers, **kwargs)  # type: ignore[arg-type]
    assert info.value.status == 401
    return info.value


# --- reference test vectors -------------------------------------------------


def test_vector_send_body_is_169_bytes() -> None:
    assert len(SEND_BODY) == 169


def test_vector_send_content_hash() -> None:
    assert content_hash(SEND_BODY) == SEND_HASH


def test_vector_send_string_to_sign() -> None:
    expected = f"POST\n{SEND_PATH}\n{DATE};{HOST};{SEND_HASH}"
    assert string_to_sign("post", SEND_PATH, DATE, HOST, SEND_HASH) == expected


def test_vector_send_signature() -> None:
    string = string_to_sign("POST", SEND_PATH, DATE, HOST, SEND_HASH)
    assert sign(KEY, string) == SEND_SIG


def test_vector_send_authorization_header() -> None:
    assert signed_headers()["Authorization"] == PREFIX + SEND_SIG


def test_vector_send_verifies() -> None:
    headers = {"Host": HOST, "x-ms-date": DATE, "x-ms-content-sha256": SEND_HASH}
    headers["Authorization"] = PREFIX + SEND_SIG
    assert verify(headers) == 0


def test_vector_empty_body_hash() -> None:
    assert content_hash(b"") == EMPTY_HASH


def test_vector_get_signature() -> None:
    string = string_to_sign("GET", GET_PATH, DATE, HOST, EMPTY_HASH)
    assert sign(KEY, string) == GET_SIG


def test_vector_get_verifies() -> None:
    headers = {"Host": HOST, "x-ms-date": DATE, "x-ms-content-sha256": EMPTY_HASH}
    headers["Authorization"] = PREFIX + GET_SIG
    assert verify(headers, method="GET", path=GET_PATH, body=b"") == 0


# --- the SDK's own signing code ---------------------------------------------


def sdk_sign(
    monkeypatch: pytest.MonkeyPatch, method: str, url: str, body: str | None
) -> dict[str, str]:
    policy = pytest.importorskip("azure.communication.email._shared.policy")
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.pipeline.transport import HttpRequest

    monkeypatch.setattr(policy, "get_current_utc_time", lambda: DATE)
    request = HttpRequest(method, url, data=body)
    hmac_policy = policy.HMACCredentialsPolicy(f"https://{HOST}", KEY)
    hmac_policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return dict(request.headers)


def test_sdk_signed_send_matches_vector_and_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"https://{HOST}{SEND_PATH}"
    headers = sdk_sign(monkeypatch, "POST", url, SEND_BODY.decode())
    assert headers["Authorization"] == PREFIX + SEND_SIG
    assert verify({"Host": HOST, **headers}) == 0


def test_sdk_signed_get_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = sdk_sign(monkeypatch, "GET", f"https://{HOST}{GET_PATH}", None)
    assert headers["Authorization"] == PREFIX + GET_SIG
    assert verify({"Host": HOST, **headers}, method="GET", path=GET_PATH, body=b"") == 0


def test_sdk_signed_with_port_and_unicode_body(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = pytest.importorskip("azure.communication.email._shared.policy")
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.pipeline.transport import HttpRequest

    monkeypatch.setattr(policy, "get_current_utc_time", lambda: DATE)
    body = '{"content": {"subject": "Grüße ✉"}}'
    request = HttpRequest("POST", f"http://localhost:8443{SEND_PATH}", data=body)
    hmac_policy = policy.HMACCredentialsPolicy("http://localhost:8443", KEY)
    hmac_policy.on_request(PipelineRequest(request, PipelineContext(None)))
    headers = {"Host": "localhost:8443", **request.headers}
    assert verify(headers, body=body.encode()) == 0
    assert refused({**headers, "Host": "localhost"}, body=body.encode()).code == DENIED


# --- refusals -----------------------------------------------------------------


def test_tampered_body_is_refused() -> None:
    error = refused(signed_headers(), body=SEND_BODY + b" ")
    assert error.code == INVALID_HASH


def test_tampered_body_with_matching_hash_is_denied() -> None:
    headers = signed_headers()
    tampered = SEND_BODY.replace(b"Hello", b"Pwned")
    headers["x-ms-content-sha256"] = content_hash(tampered)
    assert refused(headers, body=tampered).code == DENIED


def test_wrong_hash_header_is_refused() -> None:
    headers = {**signed_headers(), "x-ms-content-sha256": EMPTY_HASH}
    assert refused(headers).code == INVALID_HASH


def test_missing_hash_header_is_refused() -> None:
    headers = signed_headers()
    del headers["x-ms-content-sha256"]
    assert refused(headers).code == INVALID_HASH


def test_stale_date_is_refused() -> None:
    error = refused(signed_headers(), now=NOW + timedelta(minutes=5, seconds=1))
    assert error.code == INVALID_AUTH
    assert "5 minutes" in error.message


def test_future_date_is_refused() -> None:
    error = refused(signed_headers(), now=NOW - timedelta(minutes=5, seconds=1))
    assert error.code == INVALID_AUTH


def test_skew_of_exactly_five_minutes_is_accepted() -> None:
    assert verify(signed_headers(), now=NOW + timedelta(minutes=5)) == 0
    assert verify(signed_headers(), now=NOW - timedelta(minutes=5)) == 0


def test_naive_now_is_taken_as_utc() -> None:
    assert verify(signed_headers(), now=NOW.replace(tzinfo=None)) == 0


def test_date_header_fallback() -> None:
    headers = signed_headers()
    headers["Date"] = headers.pop("x-ms-date")
    assert verify(headers) == 0


def test_x_ms_date_wins_over_date() -> None:
    headers = {**signed_headers(), "Date": "Mon, 01 Jan 2024 00:00:00 GMT"}
    assert verify(headers) == 0


def test_missing_date_is_refused() -> None:
    headers = signed_headers()
    del headers["x-ms-date"]
    assert refused(headers).code == INVALID_AUTH


@pytest.mark.parametrize(
    "date",
    [
        "2025-12-02T10:00:00Z",
        "Tue, 02 Dec 2025 10:00:00 UTC",
        "Tue, 2 Dec 2025 10:00:00 GMT",
        "Tue, 31 Feb 2025 10:00:00 GMT",
        "Tue, 02 Dec 2025 25:00:00 GMT",
        "tomorrow",
    ],
)
def test_unparsable_date_is_refused(date: str) -> None:
    assert refused(signed_headers(date=date)).code == INVALID_AUTH


def test_secondary_key_matches_with_index_one() -> None:
    headers = signed_headers(key=OTHER_KEY)
    assert verify(headers, keys=(KEY, OTHER_KEY)) == 1


def test_primary_index_zero_when_both_keys_listed() -> None:
    assert verify(signed_headers(), keys=(KEY, OTHER_KEY)) == 0


def test_key_not_in_list_is_denied() -> None:
    error = refused(signed_headers(key=OTHER_KEY), keys=(KEY,))
    assert error.code == DENIED
    assert error.message == "Denied by the resource provider."


def test_no_keys_is_denied() -> None:
    assert refused(signed_headers(), keys=()).code == DENIED


def test_invalid_configured_key_raises_value_error() -> None:
    with pytest.raises(ValueError):
        verify(signed_headers(), keys=("not base64!",))


def test_headers_are_case_insensitive() -> None:
    headers = {name.upper(): value for name, value in signed_headers().items()}
    assert verify(headers) == 0


def test_wrong_method_or_path_or_host_is_denied() -> None:
    headers = signed_headers()
    assert refused(headers, method="PUT").code == DENIED
    assert refused(headers, path="/emails:send?api-version=2024").code == DENIED
    assert refused({**headers, "Host": f"{HOST}:443"}).code == DENIED


def test_missing_host_is_refused() -> None:
    headers = signed_headers()
    del headers["Host"]
    assert refused(headers).code == INVALID_AUTH


def test_host_with_port_is_signed() -> None:
    headers = signed_headers(host="localhost:8080")
    assert verify(headers) == 0


def test_percent_decoded_path_is_accepted() -> None:
    sent = "/emails:send?api-version=2025-09-01&x=a%3Ab"
    headers = signed_headers(path="/emails:send?api-version=2025-09-01&x=a:b")
    assert verify(headers, path=sent) == 0


def test_missing_authorization_is_unauthorized() -> None:
    headers = signed_headers()
    del headers["Authorization"]
    assert refused(headers).code == UNAUTHORIZED


@pytest.mark.parametrize(
    "header",
    [
        "Bearer eyJ0eXAiOiJKV1QifQ",
        "HMAC-SHA256",
        "HMAC-SHA256 ",
        PREFIX.replace("SHA256", "SHA1") + SEND_SIG,
        f"HMAC-SHA256 Signature={SEND_SIG}",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=!!",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=AAAA",
        f"HMAC-SHA256 SignedHeaders=&Signature={SEND_SIG}",
        f"HMAC-SHA256 SignedHeaders=a;;b&Signature={SEND_SIG}",
        f"{PREFIX}{SEND_SIG}&Signature={SEND_SIG}",
        f"{PREFIX}{SEND_SIG}&Credential=x",
        f"{PREFIX}{SEND_SIG}&junk",
    ],
)
def test_malformed_authorization_is_refused(header: str) -> None:
    with pytest.raises(HmacError) as info:
        parse_authorization(header)
    assert info.value.code == INVALID_AUTH
    error = refused({**signed_headers(), "Authorization": header})
    assert error.code == INVALID_AUTH


@pytest.mark.parametrize(
    "names",
    [
        "x-ms-date;host",
        "host;x-ms-date;x-ms-content-sha256",
        "x-ms-date;host;x-ms-content-sha256;content-type",
        "date;host;x-ms-content-sha256",
    ],
)
def test_wrong_signed_headers_are_refused(names: str) -> None:
    header = f"HMAC-SHA256 SignedHeaders={names}&Signature={SEND_SIG}"
    assert parse_authorization(header)[0] == names.split(";")
    error = refused({**signed_headers(), "Authorization": header})
    assert error.code == INVALID_AUTH


def test_signed_headers_in_any_letter_case() -> None:
    headers = signed_headers()
    header = headers["Authorization"].replace("x-ms-date;host", "X-MS-Date;Host")
    headers["Authorization"] = header.replace("HMAC-SHA256", "hmac-sha256")
    assert verify(headers) == 0


def test_parse_authorization_returns_names_and_signature() -> None:
    names, signature = parse_authorization(PREFIX + SEND_SIG)
    assert names == ["x-ms-date", "host", "x-ms-content-sha256"]
    assert signature == SEND_SIG


# --- connection string ---------------------------------------------------------


def test_connection_string_parses() -> None:
    text = f"endpoint=https://{HOST}/;accesskey={KEY}"
    assert parse_connection_string(text) == (f"https://{HOST}", KEY)


def test_connection_string_names_any_case_any_order() -> None:
    text = f"AccessKey={KEY};Endpoint=https://{HOST}:8443//;extra=1"
    assert parse_connection_string(text) == (f"https://{HOST}:8443", KEY)


def test_connection_string_key_splits_on_first_equals() -> None:
    text = f"endpoint=https://{HOST};accesskey=abc=="
    assert parse_connection_string(text)[1] == "abc=="


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"endpoint=https://{HOST}/",
        f"accesskey={KEY}",
        f"endpoint=;accesskey={KEY}",
        f"endpoint=https://{HOST}/;accesskey=",
        f"endpoint https://{HOST}/;accesskey {KEY}",
    ],
)
def test_connection_string_incomplete_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_connection_string(text)


# --- round trip ------------------------------------------------------------------

path_chars = st.characters(
    min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#%"
)


@given(
    body=st.binary(max_size=2048),
    path=st.text(path_chars, min_size=0, max_size=60).map(lambda p: "/" + p),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "patch"]),
    key=st.binary(min_size=1, max_size=64).map(
        lambda raw: base64.b64encode(raw).decode()
    ),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_sign_then_verify_round_trip(
    body: bytes, path: str, method: str, key: str, port: int | None
) -> None:
    host = HOST if port is None else f"{HOST}:{port}"
    headers = signed_headers(method, path, body, key=key, host=host)
    keys = (OTHER_KEY, key)
    assert verify(headers, method=method, path=path, body=body, keys=keys) == 1
    if body:
        tampered = bytes([body[0] ^ 1]) + body[1:]
        with pytest.raises(HmacError):
            verify(headers, method=method, path=path, body=tampered, keys=keys)
