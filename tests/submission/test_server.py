"""The submission server over real sockets: TLS, gates, commands, mail.

AUTH exchanges are in test_auth.py and the DATA stream (dot handling,
smuggling) in test_data.py.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import warnings

import aiosmtplib
import pytest

from mailcarrier.submission import replies
from mailcarrier.submission.principal import Refusal

from .smtp_support import (
    ALICE,
    PASSWORD,
    SENDER,
    TRUSTED,
    USER,
    Harness,
    RawClient,
    StartServer,
    logged_in_client,
    message,
    plain_response,
    secure_client,
    send_message,
)

# TLS ------------------------------------------------------------------------------


async def test_ehlo_before_tls_offers_starttls_and_not_auth(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    reply = await client.command("EHLO client.test")

    assert reply.code == 250
    assert reply.lines[0] == "250-mx.contoso.test"
    assert "STARTTLS" in reply.keywords
    assert not [k for k in reply.keywords if k.startswith("AUTH")]
    await client.close()


async def test_ehlo_after_starttls_offers_auth_and_not_starttls(
    smtpd: Harness,
) -> None:
    client = await RawClient.connect(smtpd)
    await client.command("EHLO client.test")
    assert (await client.command("STARTTLS")).text == replies.READY_FOR_TLS_220_2_0_0
    await client.starttls(smtpd.client_context)

    reply = await client.command("EHLO client.test")

    assert "AUTH LOGIN PLAIN" in reply.keywords
    assert "STARTTLS" not in reply.keywords
    await client.close()


async def test_ehlo_advertises_the_extensions(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    reply = await client.command("EHLO client.test")

    size = smtpd.settings.max_message_size
    for keyword in (
        "PIPELINING",
        f"SIZE {size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ):
        assert keyword in reply.keywords
    await client.close()


async def test_implicit_tls_session_offers_auth_and_accepts_mail(
    start_server: StartServer,
) -> None:
    harness = await start_server(implicit_tls=True)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=harness.port,
        use_tls=True,
        tls_context=harness.client_context,
    )
    await client.connect()
    await client.ehlo()

    assert "starttls" not in client.esmtp_extensions
    assert set(client.server_auth_methods) == {"plain", "login"}
    await client.login(USER, PASSWORD)
    await client.sendmail(SENDER, ["bob@example.net"], message())
    await client.quit()

    assert [s.rcpt_tos for s in harness.acceptor.accepted] == [["bob@example.net"]]


async def test_smtplib_sends_with_starttls_and_login(smtpd: Harness) -> None:
    def send() -> dict:
        with smtplib.SMTP("127.0.0.1", smtpd.port, local_hostname="c.test") as smtp:
            smtp.starttls(context=smtpd.client_context)
            smtp.login(USER, PASSWORD)
            return smtp.sendmail(SENDER, ["bob@example.net"], message())

    assert await asyncio.to_thread(send) == {}
    [submission] = smtpd.acceptor.accepted
    assert submission.principal == ALICE
    assert submission.content == message()


async def test_the_context_is_raised_to_tls_1_2(start_server: StartServer) -> None:
    harness = await start_server(implicit_tls=True)
    assert harness.server_context.minimum_version == ssl.TLSVersion.TLSv1_2

    old = harness.client_context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection(
            "127.0.0.1", harness.port, ssl=old, server_hostname="localhost"
        )


async def test_plain_client_on_the_implicit_tls_port_is_dropped_after_timeout(
    start_server: StartServer,
) -> None:
    harness = await start_server(implicit_tls=True, tls_handshake_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(2):
        assert await reader.read() == b""

    assert 0.15 < loop.time() - started < 1.5
    writer.close()


async def test_plain_smtp_on_the_implicit_tls_port_is_dropped(
    start_server: StartServer,
) -> None:
    harness = await start_server(implicit_tls=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)

    writer.write(b"EHLO client.test\r\n")
    async with asyncio.timeout(1):
        data = await reader.read()

    assert b"250" not in data
    writer.close()


async def test_stalled_starttls_handshake_is_dropped_after_timeout(
    start_server: StartServer,
) -> None:
    harness = await start_server(tls_handshake_timeout=0.2)
    client = await RawClient.connect(harness)
    await client.command("EHLO client.test")
    assert (await client.command("STARTTLS")).code == 220

    assert await client.read_until_closed(timeout=1.5) == b""


async def test_silent_client_is_told_and_dropped_after_idle_timeout(
    start_server: StartServer,
) -> None:
    harness = await start_server(smtp_idle_timeout=0.2)
    client = await RawClient.connect(harness)

    data = await client.read_until_closed(timeout=1.5)

    assert data == f"{replies.IDLE_TIMEOUT_421_4_4_2}\r\n".encode()


async def test_starttls_twice_is_refused(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    reply = await client.command("STARTTLS")

    assert reply.text == replies.TLS_ALREADY_ACTIVE_503_5_5_1
    await client.close()


# Before TLS and before AUTH ---------------------------------------------------------


async def test_mail_before_starttls_is_refused(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)
    await client.command("EHLO client.test")

    reply = await client.command(f"MAIL FROM:<{SENDER}>")

    assert reply.text == "530 5.7.0 Must issue a STARTTLS command first"
    assert smtpd.acceptor.sender_checks == []
    await client.close()


@pytest.mark.parametrize(
    "line", ["AUTH PLAIN", "RCPT TO:<bob@example.net>", "DATA", "VRFY bob"]
)
async def test_other_commands_before_starttls_are_refused(
    smtpd: Harness, line: str
) -> None:
    client = await RawClient.connect(smtpd)
    await client.command("EHLO client.test")

    assert (await client.command(line)).text == replies.MUST_STARTTLS_530_5_7_0
    await client.close()


async def test_helo_noop_rset_and_quit_work_before_starttls(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    assert (await client.command("HELO client.test")).text == "250 mx.contoso.test"
    assert (await client.command("NOOP")).text == replies.OK_250_2_0_0
    assert (await client.command("RSET")).text == replies.OK_250_2_0_0
    assert (await client.command("QUIT")).text == replies.BYE_221_2_0_0
    assert await client.read_until_closed(timeout=1) == b""


async def test_mail_after_tls_without_auth_is_refused(smtpd: Harness) -> None:
    client = await secure_client(smtpd)

    reply = await client.command(f"MAIL FROM:<{SENDER}>")

    assert reply.text == "530 5.7.0 Authentication required"
    assert smtpd.acceptor.sender_checks == []
    await client.close()


async def test_trusted_network_sends_without_tls_or_auth(
    start_server: StartServer,
) -> None:
    harness = await start_server(trusted=("127.0.0.1",))
    client = await RawClient.connect(harness)
    await client.command("EHLO printer.test")

    reply = await send_message(client, message())

    assert reply.text == "250 2.0.0 OK queued as msg-1"
    assert harness.authenticator.trust_queries == ["127.0.0.1"]
    assert harness.acceptor.accepted[0].principal == TRUSTED
    assert harness.acceptor.sender_checks[0] == (TRUSTED, SENDER)
    await client.close()


async def test_pipelined_commands_behind_starttls_are_discarded(
    smtpd: Harness,
) -> None:
    client = await RawClient.connect(smtpd)
    await client.command("EHLO client.test")

    await client.send(
        "STARTTLS\r\n"
        "EHLO evil.test\r\n"
        f"AUTH PLAIN {plain_response()}\r\n"
        f"MAIL FROM:<{SENDER}>\r\n"
    )
    assert (await client.reply()).text == replies.READY_FOR_TLS_220_2_0_0
    await client.starttls(smtpd.client_context)

    # Had the injected lines run, NOOP would not get the first reply, the
    # session would be authenticated and MAIL would be nested.
    assert (await client.command("NOOP")).text == replies.OK_250_2_0_0
    assert (await client.command("MAIL FROM:<a@b.example>")).text == (
        replies.NEEDS_HELO_503_5_5_1
    )
    await client.command("EHLO client.test")
    assert (await client.command("MAIL FROM:<a@b.example>")).text == (
        replies.AUTH_REQUIRED_530_5_7_0
    )
    assert smtpd.authenticator.logins == []
    assert smtpd.acceptor.sender_checks == []
    await client.close()


async def test_starttls_forgets_the_ehlo_before_it(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)
    await client.command("EHLO client.test")
    await client.command("STARTTLS")
    await client.starttls(smtpd.client_context)

    reply = await client.command(f"AUTH PLAIN {plain_response()}")

    assert reply.text == replies.AUTH_NEEDS_EHLO_503_5_5_1
    await client.close()


# Command syntax -----------------------------------------------------------------------


async def test_unknown_command_is_refused(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    for line in ("HELP", "EXPN staff", "XCLIENT ADDR=1.2.3.4", "BDAT 10 LAST"):
        assert (await client.command(line)).text == "500 5.5.1 Command unrecognized"
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_empty_and_non_utf8_lines_are_refused(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    assert (await client.command("")).text == replies.EMPTY_COMMAND_500_5_5_2
    await client.send(b"NOOP \xff\xfe\r\n")
    assert (await client.reply()).text == replies.NOT_UTF8_500_5_5_2
    await client.close()


async def test_command_line_over_512_octets_is_refused(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    assert (await client.command("NOOP " + "x" * 505)).code == 250  # 512 octets
    assert (await client.command("NOOP " + "x" * 506)).text == (
        "500 5.5.6 Line too long"
    )
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_endless_line_is_refused_and_the_session_goes_on(
    smtpd: Harness,
) -> None:
    client = await RawClient.connect(smtpd)

    await client.send(b"NOOP " + b"x" * 300_000 + b"\r\nNOOP\r\n")

    assert (await client.reply()).text == replies.LINE_TOO_LONG_500_5_5_6
    assert (await client.reply()).text == replies.OK_250_2_0_0
    await client.close()


async def test_a_client_sending_nonsense_is_disconnected(smtpd: Harness) -> None:
    client = await RawClient.connect(smtpd)

    await client.send("BOGUS\r\n" * 10)

    data = await client.read_until_closed(timeout=1)
    assert data.count(b"500 5.5.1") == 10
    assert data.endswith(f"{replies.TOO_MANY_ERRORS_421_4_7_0}\r\n".encode())


@pytest.mark.parametrize("line", ["EHLO", "HELO"])
async def test_greeting_without_a_name_is_refused(smtpd: Harness, line: str) -> None:
    client = await RawClient.connect(smtpd)

    assert (await client.command(line)).code == 501
    await client.close()


# MAIL and RCPT ------------------------------------------------------------------------


async def test_mail_from_asks_the_acceptor_about_the_sender(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    reply = await client.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME SIZE=100")

    assert reply.text == replies.SENDER_OK_250_2_1_0
    assert smtpd.acceptor.sender_checks == [(ALICE, SENDER)]
    await client.close()


async def test_refused_sender_gets_the_acceptors_reply(smtpd: Harness) -> None:
    refusal = Refusal(550, "5.1.7", "Sender domain is not linked to contoso")
    smtpd.acceptor.refused_senders["eve@fabrikam.example"] = refusal
    client = await logged_in_client(smtpd)

    reply = await client.command("MAIL FROM:<eve@fabrikam.example>")

    assert reply.text == "550 5.1.7 Sender domain is not linked to contoso"
    assert (await client.command("RCPT TO:<bob@example.net>")).text == (
        replies.NEEDS_MAIL_503_5_5_1
    )
    await client.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("MAIL FROM:", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL TO:<a@b.example>", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL FROM:<a@b.example", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL FROM:<a@b.example>x", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL FROM:<a b@c.example>", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL FROM:<@route.example>", replies.MAIL_SYNTAX_501_5_5_4),
        ("MAIL FROM:<>", replies.NULL_SENDER_553_5_1_7),
        ("MAIL FROM:<not-an-address>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<a@b@c.example>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<a..b@c.example>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<a@-c.example>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<a@[192.0.2.1]>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<\x01@c.example>", replies.BAD_SENDER_553_5_1_7),
        (f"MAIL FROM:<{'a' * 65}@c.example>", replies.BAD_SENDER_553_5_1_7),
        ("MAIL FROM:<a@c.example> SIZE=ten", replies.BAD_SIZE_501_5_5_4),
        ("MAIL FROM:<a@c.example> SIZE", replies.BAD_SIZE_501_5_5_4),
        ("MAIL FROM:<a@c.example> BODY=BINARYMIME", replies.BAD_BODY_501_5_5_4),
        ("MAIL FROM:<a@c.example> SMTPUTF8=yes", replies.BAD_PARAMETER_501_5_5_4),
        ("MAIL FROM:<a@c.example> SIZE=1 SIZE=2", replies.BAD_PARAMETER_501_5_5_4),
        ("MAIL FROM:<a@c.example> =x", replies.BAD_PARAMETER_501_5_5_4),
        ("MAIL FROM:<a@c.example> RET=HDRS", replies.UNKNOWN_PARAMETER_555_5_5_4),
    ],
)
async def test_bad_mail_from_is_refused_with_an_enhanced_code(
    smtpd: Harness, line: str, expected: str
) -> None:
    client = await logged_in_client(smtpd)

    assert (await client.command(line)).text == expected
    assert smtpd.acceptor.sender_checks == []
    assert (await client.command("NOOP")).code == 250
    await client.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("RCPT TO:", replies.RCPT_SYNTAX_501_5_5_4),
        ("RCPT FROM:<bob@example.net>", replies.RCPT_SYNTAX_501_5_5_4),
        ("RCPT TO:<bob@example.net", replies.RCPT_SYNTAX_501_5_5_4),
        ("RCPT TO:<>", replies.BAD_RECIPIENT_553_5_1_3),
        ("RCPT TO:<Postmaster>", replies.BAD_RECIPIENT_553_5_1_3),
        ("RCPT TO:<bob@example..net>", replies.BAD_RECIPIENT_553_5_1_3),
        ("RCPT TO:<bob@example.net> NOTIFY=NEVER", replies.UNKNOWN_PARAMETER_555_5_5_4),
    ],
)
async def test_bad_rcpt_to_is_refused_with_an_enhanced_code(
    smtpd: Harness, line: str, expected: str
) -> None:
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")

    assert (await client.command(line)).text == expected
    assert (await client.command("RCPT TO:<bob@example.net>")).code == 250
    await client.close()


@pytest.mark.parametrize(
    "address",
    [
        '"john smith"@example.net',
        "o'brien+tag@example.net",
        "user@xn--bcher-kva.example",
        "DoNotReply@4f1c.mailcarrier.localhost",
        "bob@example.test",
    ],
)
async def test_unusual_but_valid_recipients_are_accepted(
    smtpd: Harness, address: str
) -> None:
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")

    assert (await client.command(f"RCPT TO:<{address}>")).code == 250
    await client.close()


async def test_mail_tolerates_a_space_a_bare_address_and_a_source_route(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)

    assert (await client.command(f"mail from: <{SENDER}>")).code == 250
    assert (await client.command("RCPT TO:<@relay.example:bob@example.net>")).code == (
        250
    )
    assert (await client.command("RSET")).code == 250
    assert (await client.command(f"MAIL FROM:{SENDER}")).code == 250
    assert [a for _, a in smtpd.acceptor.sender_checks] == [SENDER, SENDER]
    await client.close()


async def test_nested_mail_and_out_of_order_commands_are_refused(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)

    assert (await client.command("RCPT TO:<bob@example.net>")).text == (
        replies.NEEDS_MAIL_503_5_5_1
    )
    assert (await client.command("DATA")).text == replies.NEEDS_MAIL_503_5_5_1
    await client.command(f"MAIL FROM:<{SENDER}>")
    assert (await client.command(f"MAIL FROM:<{SENDER}>")).text == (
        replies.NESTED_MAIL_503_5_5_1
    )
    assert (await client.command("DATA")).text == replies.NEEDS_RCPT_503_5_5_1
    await client.close()


async def test_mail_size_over_the_limit_is_refused_at_mail_time(
    start_server: StartServer,
) -> None:
    harness = await start_server(max_message_size=10_000)
    client = await logged_in_client(harness)

    assert (await client.command("EHLO c.test")).keywords.count("SIZE 10000") == 1
    assert (await client.command(f"MAIL FROM:<{SENDER}> SIZE=10001")).text == (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    )
    assert (await client.command(f"MAIL FROM:<{SENDER}> SIZE=10000")).code == 250
    await client.close()


async def test_the_51st_recipient_is_refused_and_the_first_50_are_kept(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")
    recipients = [f"user{n}@example.net" for n in range(51)]

    replies_seen = [await client.command(f"RCPT TO:<{r}>") for r in recipients]
    await client.command("DATA")
    await client.send(message() + b".\r\n")

    assert [r.code for r in replies_seen[:50]] == [250] * 50
    assert replies_seen[50].text == "452 4.5.3 Too many recipients"
    assert (await client.reply()).code == 250
    assert smtpd.acceptor.accepted[0].rcpt_tos == recipients[:50]
    await client.close()


async def test_non_ascii_address_needs_smtputf8(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    reply = await client.command("MAIL FROM:<jörg@bücher.example>")
    assert reply.text == "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
    await client.command(f"MAIL FROM:<{SENDER}>")
    reply = await client.command("RCPT TO:<jörg@bücher.example>")
    assert reply.text == replies.NON_ASCII_ADDRESS_553_5_6_7
    await client.close()


async def test_smtputf8_message_is_accepted_and_flagged(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    content = message("jörg@bücher.example", "Grüße\r\n")

    assert (await client.command("MAIL FROM:<jörg@bücher.example> SMTPUTF8")).code == (
        250
    )
    assert (await client.command("RCPT TO:<zoë@example.net>")).code == 250
    await client.command("DATA")
    await client.send(content + b".\r\n")

    assert (await client.reply()).code == 250
    [submission] = smtpd.acceptor.accepted
    assert submission.smtputf8 is True
    assert submission.mail_from == "jörg@bücher.example"
    assert submission.rcpt_tos == ["zoë@example.net"]
    assert submission.content == content
    assert [a for _, a in smtpd.acceptor.sender_checks] == ["jörg@bücher.example"] * 2
    await client.close()


async def test_helo_session_takes_no_mail_parameters(
    start_server: StartServer,
) -> None:
    harness = await start_server(trusted=("127.0.0.1",))
    client = await RawClient.connect(harness)
    await client.command("HELO old.test")

    reply = await client.command(f"MAIL FROM:<{SENDER}> SIZE=10")

    assert reply.text == replies.UNKNOWN_PARAMETER_555_5_5_4
    assert (await client.command(f"MAIL FROM:<{SENDER}>")).code == 250
    await client.close()


# Transactions -----------------------------------------------------------------------


async def test_several_transactions_with_and_without_rset(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    assert (await send_message(client, message(body="one\r\n"))).code == 250
    assert (await send_message(client, message(body="two\r\n"))).code == 250
    await client.command(f"MAIL FROM:<{SENDER}>")
    await client.command("RCPT TO:<carol@example.net>")
    assert (await client.command("RSET")).code == 250
    reply = await send_message(client, message(body="three\r\n"))

    assert reply.text == "250 2.0.0 OK queued as msg-3"
    assert [s.content.rsplit(b"\r\n\r\n")[1] for s in smtpd.acceptor.accepted] == [
        b"one\r\n",
        b"two\r\n",
        b"three\r\n",
    ]
    assert [s.rcpt_tos for s in smtpd.acceptor.accepted] == [["bob@example.net"]] * 3
    await client.close()


async def test_pipelined_commands_get_replies_in_order(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    await client.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@example.net>\r\n"
        "RCPT TO:<bad@@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    )
    codes = [(await client.reply()).code for _ in range(5)]
    await client.send(
        message(body="first\r\n")
        + b".\r\n"
        + f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n".encode()
    )
    codes += [(await client.reply()).code for _ in range(4)]
    await client.send(message(body="second\r\n") + b".\r\nQUIT\r\n")
    codes += [(await client.reply()).code for _ in range(2)]

    assert codes == [250, 250, 553, 250, 354, 250, 250, 250, 354, 250, 221]
    assert [s.rcpt_tos for s in smtpd.acceptor.accepted] == [
        ["a@example.net", "b@example.net"],
        ["c@example.net"],
    ]


async def test_aiosmtplib_sends_many_messages_on_one_connection(
    smtpd: Harness,
) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=smtpd.port,
        start_tls=True,
        tls_context=smtpd.client_context,
    )
    await client.connect()
    await client.login(USER, PASSWORD)
    for n in range(5):
        await client.sendmail(SENDER, [f"r{n}@example.net"], message(body=f"{n}\r\n"))
    await client.quit()

    assert len(smtpd.acceptor.accepted) == 5


# DATA outcomes ---------------------------------------------------------------------


async def test_accept_gets_the_envelope_and_the_reply_names_the_message(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)

    reply = await send_message(
        client, message(), recipients=("bob@example.net", "carol@example.net")
    )

    assert reply.text == "250 2.0.0 OK queued as msg-1"
    [submission] = smtpd.acceptor.accepted
    assert submission.principal == ALICE
    assert submission.mail_from == SENDER
    assert submission.rcpt_tos == ["bob@example.net", "carol@example.net"]
    assert submission.smtputf8 is False
    await client.close()


async def test_250_comes_only_after_accept_returns(smtpd: Harness) -> None:
    smtpd.acceptor.gate = asyncio.Event()
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")
    await client.command("RCPT TO:<bob@example.net>")
    await client.command("DATA")
    await client.send(message() + b".\r\n")

    await asyncio.wait_for(smtpd.acceptor.entered.wait(), 1)
    with pytest.raises(TimeoutError):
        await client.reply(timeout=0.2)
    smtpd.acceptor.gate.set()

    assert (await client.reply()).code == 250
    await client.close()


async def test_accept_refusal_is_sent_as_is(smtpd: Harness) -> None:
    smtpd.acceptor.result = Refusal(452, "4.7.1", "Quota exceeded, try later")
    client = await logged_in_client(smtpd)

    reply = await send_message(client, message())

    assert reply.text == "452 4.7.1 Quota exceeded, try later"
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_accept_failure_is_a_temporary_error_never_250(smtpd: Harness) -> None:
    smtpd.acceptor.fail = True
    client = await logged_in_client(smtpd)

    reply = await send_message(client, message())

    assert reply.text == replies.TEMPORARY_FAILURE_451_4_3_0
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_header_from_is_checked_with_the_acceptor(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    content = message('"Contoso" <news@contoso.example>, other@contoso.example')

    assert (await send_message(client, content)).code == 250
    assert [a for _, a in smtpd.acceptor.sender_checks] == [
        SENDER,
        "news@contoso.example",
        "other@contoso.example",
    ]
    await client.close()


async def test_refused_header_from_refuses_the_message(smtpd: Harness) -> None:
    refusal = Refusal(550, "5.7.1", "Not your sender address")
    smtpd.acceptor.refused_senders["ceo@fabrikam.example"] = refusal
    client = await logged_in_client(smtpd)

    reply = await send_message(client, message("ceo@fabrikam.example"))

    assert reply.text == "550 5.7.1 Not your sender address"
    assert smtpd.acceptor.accepted == []
    await client.close()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"To: bob@example.net\r\n\r\nHi\r\n", replies.NO_FROM_HEADER_550_5_6_0),
        (b"\r\nFrom: a@b.example\r\n", replies.NO_FROM_HEADER_550_5_6_0),
        (
            b"From: a@contoso.example\r\nFrom: b@contoso.example\r\n\r\nHi\r\n",
            replies.MANY_FROM_HEADERS_550_5_6_0,
        ),
        (b"From: not an address\r\n\r\nHi\r\n", replies.BAD_FROM_HEADER_550_5_6_0),
        (b"From: <>\r\n\r\nHi\r\n", replies.BAD_FROM_HEADER_550_5_6_0),
        (b"From: undisclosed:;\r\n\r\nHi\r\n", replies.BAD_FROM_HEADER_550_5_6_0),
        (b"From:\r\n\r\nHi\r\n", replies.BAD_FROM_HEADER_550_5_6_0),
        (
            b"From: \xff@contoso.example\r\n\r\nHi\r\n",
            replies.BAD_FROM_HEADER_550_5_6_0,
        ),
    ],
)
async def test_missing_or_unusable_header_from_is_refused(
    smtpd: Harness, content: bytes, expected: str
) -> None:
    client = await logged_in_client(smtpd)

    assert (await send_message(client, content)).text == expected
    assert smtpd.acceptor.accepted == []
    assert (await client.command("NOOP")).code == 250
    await client.close()


@pytest.mark.parametrize(
    "content",
    [
        # The obsolete "Name :" spelling is still a From field to DKIM.
        b"From: a@contoso.example\r\nFrom : ceo@bank.example\r\n\r\nHi\r\n",
        b"From: a@contoso.example\r\nfrom:ceo@bank.example\r\n\r\nHi\r\n",
    ],
)
async def test_a_second_from_in_any_spelling_is_refused(
    smtpd: Harness, content: bytes
) -> None:
    client = await logged_in_client(smtpd)

    reply = await send_message(client, content)

    assert reply.text == replies.MANY_FROM_HEADERS_550_5_6_0
    assert smtpd.acceptor.accepted == []
    await client.close()


async def test_a_from_hidden_behind_a_broken_header_line_is_refused(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)
    content = (b"From: a@contoso.example\r\nBogus line\r\n"
               b"From: ceo@bank.example\r\n\r\nHi\r\n")

    reply = await send_message(client, content)

    assert reply.code == 550
    assert reply.text.startswith("550 5.6.0 Malformed header section")
    assert "Bogus line" in reply.text
    assert smtpd.acceptor.accepted == []
    await client.close()


async def test_a_from_in_group_syntax_is_refused(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    reply = await send_message(client, message(f"a:b:<{SENDER}>;"))

    assert reply.text == replies.BAD_FROM_HEADER_550_5_6_0
    assert smtpd.acceptor.accepted == []
    await client.close()


async def test_a_legacy_8bit_display_name_does_not_hide_a_valid_sender(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)
    content = b"From: caf\xe9 <" + SENDER.encode() + b">\r\n\r\nHi\r\n"

    assert (await send_message(client, content)).code == 250
    assert [a for _, a in smtpd.acceptor.sender_checks][-1] == SENDER
    await client.close()


async def test_data_takes_no_parameters(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")
    await client.command("RCPT TO:<bob@example.net>")

    assert (await client.command("DATA now")).text == replies.NO_PARAMETERS_501_5_5_4
    await client.close()


async def test_client_closing_during_accept_does_not_cancel_it(
    smtpd: Harness,
) -> None:
    smtpd.acceptor.gate = asyncio.Event()
    client = await logged_in_client(smtpd)
    await client.command(f"MAIL FROM:<{SENDER}>")
    await client.command("RCPT TO:<bob@example.net>")
    await client.command("DATA")
    await client.send(message() + b".\r\n")
    await asyncio.wait_for(smtpd.acceptor.entered.wait(), 1)

    client.writer.transport.abort()
    await asyncio.sleep(0.05)
    smtpd.acceptor.gate.set()
    await asyncio.sleep(0.05)

    assert len(smtpd.acceptor.accepted) == 1


async def test_a_stopping_service_answers_421_and_closes_the_session(
    smtpd: Harness,
) -> None:
    smtpd.acceptor.result = replies.SHUTTING_DOWN
    client = await logged_in_client(smtpd)

    reply = await send_message(client, message())

    assert reply.text == "421 4.3.2 Service shutting down, try again later"
    assert await client.read_until_closed(timeout=1) == b""
