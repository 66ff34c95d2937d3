"""AUTH PLAIN and LOGIN: the decoders, and each exchange over a real socket."""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailcarrier.submission import auth, replies

from .smtp_support import (
    ALICE,
    PASSWORD,
    SENDER,
    USER,
    Harness,
    RawClient,
    StartServer,
    b64,
    logged_in_client,
    plain_response,
    secure_client,
)

USERNAME_334 = "334 VXNlcm5hbWU6"
PASSWORD_334 = "334 UGFzc3dvcmQ6"

# The decoders -------------------------------------------------------------------


def test_plain_message_splits_into_authzid_user_and_password() -> None:
    credentials = auth.parse_plain(b"\0alice\0pass word")

    assert (credentials.authzid, credentials.username) == ("", "alice")
    assert credentials.password == "pass word"
    assert "pass word" not in repr(credentials)


def test_plain_authzid_equal_to_the_user_is_accepted() -> None:
    assert auth.parse_plain(b"alice\0alice\0pw").username == "alice"


def test_plain_authzid_of_someone_else_is_refused() -> None:
    with pytest.raises(auth.SaslError) as caught:
        auth.parse_plain(b"bob\0alice\0pw")

    assert caught.value.reply == replies.AUTHZID_REFUSED_535_5_7_3


@pytest.mark.parametrize(
    "message",
    [b"alice\0pw", b"\0alice\0pw\0", b"\0\0pw", b"\0alice\0", b"\0al\xffice\0pw"],
)
def test_malformed_plain_message_is_refused(message: bytes) -> None:
    with pytest.raises(auth.SaslError) as caught:
        auth.parse_plain(message)

    assert caught.value.reply == replies.AUTH_MALFORMED_501_5_5_2


@pytest.mark.parametrize("text", ["not base64!", "=YWJj", "YW Jj", "YWJjZA"])
def test_malformed_base64_is_refused(text: str) -> None:
    with pytest.raises(auth.SaslError) as caught:
        auth.decode_response(text)

    assert caught.value.reply == "501 5.5.2 Cannot decode base64 data"


def test_a_lone_equals_sign_is_an_empty_response() -> None:
    assert auth.decode_response("=") == b""
    assert auth.decode_response(b"=\r\n") == b""


@given(st.binary(max_size=200))
def test_any_bytes_survive_the_base64_round_trip(data: bytes) -> None:
    assert auth.decode_response(base64.b64encode(data)) == data


@given(st.text(), st.text(), st.text())
def test_parse_plain_never_fails_other_than_with_a_reply(
    authzid: str, user: str, password: str
) -> None:
    message = f"{authzid}\0{user}\0{password}".encode()
    try:
        credentials = auth.parse_plain(message)
    except auth.SaslError as exc:
        assert exc.reply.split()[0] in ("501", "535")
    else:
        assert (credentials.username, credentials.password) == (user, password)


# Exchanges over the wire ------------------------------------------------------------


async def test_plain_with_initial_response(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == "235 2.7.0 Authentication successful"
    assert smtpd.authenticator.logins == [(USER, PASSWORD)]
    assert (await client.command(f"MAIL FROM:<{SENDER}>")).code == 250
    assert smtpd.acceptor.sender_checks == [(ALICE, SENDER)]
    await client.close()


async def test_plain_with_an_empty_challenge(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    challenge = await client.command("AUTH PLAIN")
    reply = await client.command(plain_response())

    assert challenge.lines == ["334 "]
    assert reply.code == 235
    await client.close()


async def test_plain_with_a_utf8_password(smtpd: Harness) -> None:
    smtpd.authenticator.users["zoë"] = "pässwörd"
    client = await secure_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response('zoë', 'pässwörd')}")

    assert reply.code == 235
    assert smtpd.authenticator.logins == [("zoë", "pässwörd")]
    await client.close()


async def test_login_with_the_user_name_up_front(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    challenge = await client.command(f"AUTH LOGIN {b64(USER)}")
    reply = await client.command(b64(PASSWORD))

    assert challenge.text == PASSWORD_334
    assert reply.code == 235
    assert smtpd.authenticator.logins == [(USER, PASSWORD)]
    await client.close()


async def test_login_with_both_challenges(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    assert (await client.command("auth login")).text == USERNAME_334
    assert (await client.command(b64(USER))).text == PASSWORD_334
    assert (await client.command(b64(PASSWORD))).code == 235
    await client.close()


async def test_smtplib_login_mechanism_sends_the_user_name_up_front(
    smtpd: Harness,
) -> None:
    def login() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", smtpd.port) as smtp:
            smtp.starttls(context=smtpd.client_context)
            smtp.ehlo()
            smtp.user, smtp.password = USER, PASSWORD
            return smtp.auth("LOGIN", smtp.auth_login)

    code, _ = await asyncio.to_thread(login)

    assert code == 235
    assert smtpd.authenticator.logins == [(USER, PASSWORD)]


@pytest.mark.parametrize(
    "exchange",
    [
        ["AUTH PLAIN"],
        ["AUTH LOGIN"],
        ["AUTH LOGIN", b64(USER)],
        [f"AUTH LOGIN {b64(USER)}"],
    ],
    ids=["plain", "login-username", "login-password", "login-initial-password"],
)
async def test_a_star_at_any_challenge_aborts(
    smtpd: Harness, exchange: list[str]
) -> None:
    client = await secure_client(smtpd)
    for line in exchange:
        assert (await client.command(line)).code == 334

    reply = await client.command("*")

    assert reply.text == "501 5.7.0 Authentication aborted"
    assert smtpd.authenticator.logins == []
    assert (await client.command(f"AUTH PLAIN {plain_response()}")).code == 235
    await client.close()


@pytest.mark.parametrize(
    "exchange",
    [
        ["AUTH PLAIN not-base64!"],
        ["AUTH PLAIN", "not-base64!"],
        ["AUTH LOGIN not-base64!"],
        ["AUTH LOGIN", "not-base64!"],
        ["AUTH LOGIN", b64(USER), "not-base64!"],
    ],
)
async def test_malformed_base64_anywhere_is_refused(
    smtpd: Harness, exchange: list[str]
) -> None:
    client = await secure_client(smtpd)
    *challenges, last = exchange
    for line in challenges:
        assert (await client.command(line)).code == 334

    reply = await client.command(last)

    assert reply.text == replies.AUTH_BAD_BASE64_501_5_5_2
    assert smtpd.authenticator.logins == []
    await client.close()


async def test_plain_with_a_foreign_authzid_is_refused_unchecked(
    smtpd: Harness,
) -> None:
    client = await secure_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response(authzid='bob')}")

    assert reply.text == replies.AUTHZID_REFUSED_535_5_7_3
    assert smtpd.authenticator.logins == []
    await client.close()


async def test_plain_with_the_users_own_authzid_is_accepted(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response(authzid=USER)}")

    assert reply.code == 235
    await client.close()


@pytest.mark.parametrize(
    "exchange",
    [
        [f"AUTH PLAIN {plain_response(password='wrong')}"],
        ["AUTH LOGIN", b64(USER), b64("wrong")],
        [f"AUTH LOGIN {b64('mallory')}", b64(PASSWORD)],
    ],
)
async def test_bad_credentials_are_refused_and_logged_without_the_password(
    smtpd: Harness, exchange: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    client = await secure_client(smtpd)
    caplog.set_level(logging.DEBUG, logger="mailcarrier")
    for line in exchange[:-1]:
        await client.command(line)

    reply = await client.command(exchange[-1])

    assert reply.text == "535 5.7.3 Authentication unsuccessful"
    [record] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert "failed for user" in record.getMessage()
    assert "127.0.0.1" in record.getMessage()
    user = smtpd.authenticator.logins[0][0]
    assert repr(user) in record.getMessage()
    for secret in ("wrong", PASSWORD, b64("wrong"), b64(PASSWORD), plain_response()):
        assert secret not in caplog.text
    assert (await client.command(f"MAIL FROM:<{SENDER}>")).code == 530
    await client.close()


async def test_auth_after_success_is_refused(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.ALREADY_AUTHENTICATED_503_5_5_1
    assert reply.code == 503
    await client.close()


async def test_unknown_mechanism_is_refused(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    for mechanism in ("CRAM-MD5", "XOAUTH2", "GSSAPI"):
        reply = await client.command(f"AUTH {mechanism}")
        assert reply.text == "504 5.5.4 Unrecognized authentication type"
    await client.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("AUTH", replies.AUTH_SYNTAX_501_5_5_4),
        ("AUTH PLAIN a b", replies.AUTH_SYNTAX_501_5_5_4),
    ],
)
async def test_auth_syntax_errors(smtpd: Harness, line: str, expected: str) -> None:
    client = await secure_client(smtpd)

    assert (await client.command(line)).text == expected
    await client.close()


async def test_auth_during_a_transaction_is_refused(
    start_server: StartServer,
) -> None:
    harness = await start_server(trusted=("127.0.0.1",))
    client = await secure_client(harness)
    await client.command(f"MAIL FROM:<{SENDER}>")

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.AUTH_IN_TRANSACTION_503_5_5_1
    await client.close()


async def test_auth_replaces_the_trusted_principal(start_server: StartServer) -> None:
    harness = await start_server(trusted=("127.0.0.1",))
    client = await secure_client(harness)

    assert (await client.command(f"AUTH PLAIN {plain_response()}")).code == 235
    await client.command(f"MAIL FROM:<{SENDER}>")

    assert harness.acceptor.sender_checks == [(ALICE, SENDER)]
    await client.close()


async def test_trusted_client_without_tls_may_not_auth(
    start_server: StartServer,
) -> None:
    harness = await start_server(trusted=("127.0.0.1",))
    client = await RawClient.connect(harness)
    await client.command("EHLO printer.test")

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.ENCRYPTION_REQUIRED_538_5_7_11
    await client.close()


async def test_authenticator_failure_is_a_temporary_error(smtpd: Harness) -> None:
    smtpd.authenticator.broken = True
    client = await secure_client(smtpd)

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.AUTH_TEMPORARY_FAILURE_454_4_7_0
    await client.close()


async def test_three_failures_end_the_session(smtpd: Harness) -> None:
    client = await secure_client(smtpd)
    bad = f"AUTH PLAIN {plain_response(password='guess')}"
    for _ in range(3):
        assert (await client.command(bad)).code == 535

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.AUTH_TOO_MANY_FAILURES_421_4_7_0
    assert await client.read_until_closed(timeout=1) == b""
    assert len(smtpd.authenticator.logins) == 3


async def test_long_initial_response_up_to_12288_octets_is_read(
    smtpd: Harness,
) -> None:
    client = await secure_client(smtpd)
    long_password = "p" * 8000
    smtpd.authenticator.users[USER] = long_password

    reply = await client.command(f"AUTH PLAIN {plain_response(password=long_password)}")

    assert reply.code == 235
    await client.close()


async def test_challenge_response_over_12288_octets_is_refused(
    smtpd: Harness,
) -> None:
    client = await secure_client(smtpd)
    await client.command("AUTH PLAIN")

    reply = await client.command("A" * 12288)

    assert reply.text == replies.LINE_TOO_LONG_500_5_5_6
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_an_address_with_too_many_failed_logins_is_refused_without_a_check(
    smtpd: Harness,
) -> None:
    bad = f"AUTH PLAIN {plain_response(password='guess')}"
    for _ in range(7):  # three failures per session, twenty per address
        client = await secure_client(smtpd)
        for _ in range(3):
            if len(smtpd.authenticator.logins) == 20:
                break
            assert (await client.command(bad)).code == 535
        await client.close()
    assert len(smtpd.authenticator.logins) == 20

    client = await secure_client(smtpd)
    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.code == 454
    assert reply.text.startswith("454 4.7.0 Too many failed logins from your address")
    assert len(smtpd.authenticator.logins) == 20  # the secret was not checked
    await client.close()
