"""DATA: where a message ends, what it contains, and what refuses it.

Only ``<CRLF>.<CRLF>`` ends a message. The SMTP smuggling spellings of an
end (``<LF>.<CRLF>`` and friends) neither end a message nor let a second
one start; a bare CR or LF anywhere refuses the message after the real end.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcarrier.submission import replies
from mailcarrier.submission.server import (
    CommandRefused,
    MessageData,
    read_message_data,
)

from .smtp_support import (
    SENDER,
    Harness,
    RawClient,
    StartServer,
    logged_in_client,
    send_message,
)

HEAD = b"From: donotreply@contoso.example\r\nSubject: hi\r\n\r\n"
SMUGGLED = (
    b"MAIL FROM:<ceo@fabrikam.example>\r\n"
    b"RCPT TO:<victim@example.net>\r\n"
    b"DATA\r\n"
    b"From: ceo@fabrikam.example\r\n\r\nPay this invoice.\r\n"
)


async def start_data(client: RawClient) -> None:
    assert (await client.command(f"MAIL FROM:<{SENDER}>")).code == 250
    assert (await client.command("RCPT TO:<bob@example.net>")).code == 250
    assert (await client.command("DATA")).text == replies.START_DATA_354


async def assert_no_reply(client: RawClient) -> None:
    with pytest.raises(TimeoutError):
        await client.reply(timeout=0.15)


# What reaches accept() --------------------------------------------------------------


async def test_content_is_the_exact_bytes_dot_unstuffed(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    wire = HEAD + b"..hidden\r\nend.\r\n. \r\n...\r\n\r\n \r\n.a.\r\n"

    reply = await send_message(client, wire)

    assert reply.code == 250
    assert smtpd.acceptor.contents == [
        HEAD + b".hidden\r\nend.\r\n \r\n..\r\n\r\n \r\na.\r\n"
    ]
    await client.close()


async def test_a_leading_dot_on_the_first_line_is_unstuffed(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    assert (await send_message(client, b"..X-B: 2\r\n" + HEAD)).code == 250

    assert smtpd.acceptor.contents == [b".X-B: 2\r\n" + HEAD]
    await client.close()


async def test_a_dot_right_after_data_ends_an_empty_message(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    await client.send(b".\r\n")

    assert (await client.reply()).text == replies.NO_FROM_HEADER_550_5_6_0
    assert smtpd.acceptor.accepted == []
    await client.close()


async def test_end_of_data_split_over_many_writes_is_found(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    for piece in (HEAD + b"body\r", b"\n", b".", b"\r", b"\n"):
        await client.send(piece)
        await asyncio.sleep(0.01)

    assert (await client.reply()).code == 250
    assert smtpd.acceptor.contents == [HEAD + b"body\r\n"]
    await client.close()


async def test_a_large_message_without_dots_arrives_whole(
    start_server: StartServer,
) -> None:
    harness = await start_server(max_message_size=1_000_000)
    client = await logged_in_client(harness)
    body = b"".join(b"%076d\r\n" % n for n in range(10_000))  # 780 kB

    assert (await send_message(client, HEAD + body)).code == 250
    assert harness.acceptor.contents == [HEAD + body]
    await client.close()


# SMTP smuggling: only <CRLF>.<CRLF> ends the data -------------------------------------

SMUGGLING = {
    "LF.CRLF": b"\n.\r\n",
    "LF.LF": b"\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CRLF.CR": b"\r\n.\r",
}


async def smuggle(harness: Harness, ending: bytes) -> None:
    """Send a fake end of data with a second transaction behind it."""
    client = await logged_in_client(harness)
    await start_data(client)

    await client.send(HEAD + b"Hello" + ending + SMUGGLED)
    await assert_no_reply(client)
    await client.send(b".\r\n")

    assert (await client.reply()).text == (
        "550 5.6.11 Bare LF or CR in message; use CRLF line endings"
    )
    assert (await client.command("NOOP")).text == replies.OK_250_2_0_0
    assert harness.acceptor.accepted == []
    assert [a for _, a in harness.acceptor.sender_checks] == [SENDER]
    await client.close()


async def test_lf_dot_crlf_neither_ends_nor_starts_a_message(smtpd: Harness) -> None:
    await smuggle(smtpd, SMUGGLING["LF.CRLF"])


async def test_lf_dot_lf_neither_ends_nor_starts_a_message(smtpd: Harness) -> None:
    await smuggle(smtpd, SMUGGLING["LF.LF"])


async def test_cr_dot_crlf_neither_ends_nor_starts_a_message(smtpd: Harness) -> None:
    await smuggle(smtpd, SMUGGLING["CR.CRLF"])


async def test_crlf_dot_lf_neither_ends_nor_starts_a_message(smtpd: Harness) -> None:
    await smuggle(smtpd, SMUGGLING["CRLF.LF"])


async def test_crlf_dot_cr_neither_ends_nor_starts_a_message(smtpd: Harness) -> None:
    await smuggle(smtpd, SMUGGLING["CRLF.CR"])


@pytest.mark.parametrize("ending", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_fake_end_split_across_writes_does_not_end_the_data(
    smtpd: Harness, ending: bytes
) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    await client.send(HEAD + b"Hello")
    for byte in ending:
        await client.send(bytes([byte]))
        await asyncio.sleep(0.005)
    await assert_no_reply(client)
    await client.send(b"\r\n.\r\n")

    assert (await client.reply()).text == replies.BARE_LINE_ENDING_550_5_6_11
    assert smtpd.acceptor.accepted == []
    await client.close()


async def test_a_real_end_with_a_pipelined_transaction_gives_two_messages(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    await client.send(HEAD + b"Hello\r\n.\r\n" + SMUGGLED + b".\r\n")
    codes = [(await client.reply()).code for _ in range(5)]

    assert codes == [250, 250, 250, 354, 250]
    assert smtpd.acceptor.contents == [
        HEAD + b"Hello\r\n",
        b"From: ceo@fabrikam.example\r\n\r\nPay this invoice.\r\n",
    ]
    await client.close()


@pytest.mark.parametrize(
    "body",
    [b"one\ntwo\r\n", b"one\rtwo\r\n", b"one\r\r\n", b"one\n\r\n", b"\n", b"x\r"],
    ids=["LF", "CR", "CR-CRLF", "LF-CRLF", "only-LF", "CR-at-end"],
)
async def test_bare_lf_or_cr_refuses_the_message(smtpd: Harness, body: bytes) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    await client.send(HEAD + body + b"\r\n.\r\n")

    assert (await client.reply()).text == replies.BARE_LINE_ENDING_550_5_6_11
    assert smtpd.acceptor.accepted == []
    assert (await send_message(client, HEAD + b"fine\r\n")).code == 250
    await client.close()


# Limits ------------------------------------------------------------------------------


async def test_lines_up_to_the_limit_pass_and_longer_ones_refuse(
    smtpd: Harness,
) -> None:
    client = await logged_in_client(smtpd)
    longest = b"x" * 998 + b"\r\n"  # 1000 octets (RFC 5321 4.5.3.1.6)
    stuffed = b"." + longest  # plus a transparency dot

    assert (await send_message(client, HEAD + longest + stuffed)).code == 250
    reply = await send_message(client, HEAD + b"y" * 1000 + b"\r\n")

    assert reply.text == (
        "500 5.5.6 Line too long; message lines are limited to 1000 octets"
    )
    assert smtpd.acceptor.contents == [HEAD + longest + longest]
    await client.close()


async def test_a_huge_line_is_read_to_the_end_and_refused(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)

    reply = await send_message(client, HEAD + b"z" * 300_000 + b"\r\n")

    assert reply.text == replies.DATA_LINE_TOO_LONG_500_5_5_6
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_message_over_the_size_limit_is_refused_after_the_dot(
    start_server: StartServer,
) -> None:
    harness = await start_server(max_message_size=2048)
    client = await logged_in_client(harness)
    filler = b"a" * 48 + b"\r\n"
    body = filler * ((2048 - len(HEAD)) // 50)
    exact = HEAD + body + b"b" * (2048 - len(HEAD) - len(body) - 2) + b"\r\n"
    assert len(exact) == 2048

    assert (await send_message(client, exact)).code == 250
    reply = await send_message(client, exact + b"b\r\n")

    assert reply.text == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert harness.acceptor.contents == [exact]
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_connection_lost_during_data_stores_nothing(smtpd: Harness) -> None:
    client = await logged_in_client(smtpd)
    await start_data(client)

    await client.send(HEAD + b"half a message\r\n")
    await client.close()
    await asyncio.sleep(0.05)

    assert smtpd.acceptor.accepted == []


# The reader against a reference ----------------------------------------------


def expected_outcome(raw: bytes, max_size: int) -> bytes | str:
    """The content or refusal for message text, the slow and obvious way."""
    if len(raw) > max_size:
        return replies.MESSAGE_TOO_BIG_552_5_3_4
    if re.search(rb"\r(?!\n)|(?<!\r)\n", raw):
        return replies.BARE_LINE_ENDING_550_5_6_11
    lines = raw.split(b"\r\n")
    if any(len(line) > 999 for line in lines):
        return replies.DATA_LINE_TOO_LONG_500_5_5_6
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines)


def reference(stream: bytes, max_size: int) -> tuple[bytes | str, bytes] | None:
    """What DATA must yield and leave unread; None if it never ends."""
    text = b"\r\n" + stream
    end = text.find(b"\r\n.\r\n")
    if end < 0:
        return None
    return expected_outcome(text[2 : end + 2], max_size), text[end + 5 :]


def outcome(data: MessageData) -> bytes | str:
    try:
        return data.content()
    except CommandRefused as refused:
        return refused.reply


def cut(text: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    return [text[a:b] for a, b in itertools.pairwise(edges)]


def test_a_crlf_split_between_pieces_is_not_bare() -> None:
    data = MessageData(10_000)
    for piece in (b"From: a@b.example\r", b"\n\r", b"\nHi\r", b"\n"):
        data.feed(piece)

    assert data.content() == b"From: a@b.example\r\n\r\nHi\r\n"


def test_a_long_line_split_between_pieces_is_too_long() -> None:
    data = MessageData(10_000)
    for piece in (b"a\r\n" + b"x" * 600, b"x" * 400 + b"\r\nb\r\n"):
        data.feed(piece)

    assert outcome(data) == replies.DATA_LINE_TOO_LONG_500_5_5_6


_TEXT = st.lists(
    st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"x" * 600]),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None, database=None)
@given(
    raw=_TEXT,
    cuts=st.lists(st.integers(0, 6000), max_size=8),
    max_size=st.sampled_from([0, 10, 100_000]),
)
def test_message_data_does_not_care_where_the_text_is_cut(
    raw: bytes, cuts: list[int], max_size: int
) -> None:
    data = MessageData(max_size)
    for piece in cut(raw, cuts):
        data.feed(piece)

    assert outcome(data) == expected_outcome(raw, max_size)


async def run_reader(
    chunks: list[bytes], limit: int, max_size: int
) -> tuple[bytes | str, bytes] | None:
    reader = asyncio.StreamReader(limit=limit)

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    data = MessageData(max_size)
    try:
        await read_message_data(reader, data, lambda: None)
    except asyncio.IncompleteReadError:
        await feeder
        return None
    await feeder
    return outcome(data), await reader.read()


_PARTS = st.sampled_from(
    [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"x" * 300]
)


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    parts=st.lists(_PARTS, max_size=40),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    limit=st.integers(3, 80),
    max_size=st.sampled_from([0, 5, 100, 100_000]),
)
def test_the_data_reader_agrees_with_the_reference(
    parts: list[bytes], cuts: list[int], limit: int, max_size: int
) -> None:
    stream = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"

    got = asyncio.run(run_reader(cut(stream, cuts), limit, max_size))

    assert got == reference(stream, max_size)
