"""The outbound SMTP client against scripted sinks: outcomes, bytes, reuse."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from mailcarrier.delivery.client import Envelope, OutboundPool, RecipientResult
from mailcarrier.delivery.outcomes import Action
from mailcarrier.delivery.routing import Host
from mailcarrier.settings import Settings
from tests.peers.sink import Behaviour, Reply, Session, SmtpSink

SENDER = "bounces@sender.test"
ALICE = "alice@rcpt.test"
BOB = "bob@rcpt.test"

MESSAGE = (
    b"From: Sender <sender@sender.test>\r\n"
    b"To: alice@rcpt.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@sender.test>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"bye\r\n"
)
EIGHT_BIT = MESSAGE.replace(b"Hello,", b"Gr\xc3\xbc\xc3\x9fe,")
SEVEN_BIT = MESSAGE.replace(b"Hello,", b"Gr=C3=BC=C3=9Fe,")


# -- fixtures and helpers -----------------------------------------------------------


@pytest.fixture
def sinks() -> Iterator[Callable[..., SmtpSink]]:
    started: list[SmtpSink] = []

    def make(behaviour: str | Behaviour = "accept", **options: Any) -> SmtpSink:
        sink = SmtpSink(behaviour, **options).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        sink.stop()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "hostname": "client.test",
        "connect_timeout": 2.0,
        "command_timeout": 2.0,
        "data_timeout": 2.0,
        "connection_idle_timeout": 30.0,
        "per_destination_concurrency": 20,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def pool() -> AsyncIterator[OutboundPool]:
    outbound = OutboundPool(settings())
    yield outbound
    await outbound.close()


def host(sink: SmtpSink, name: str = "mx1.rcpt.test", preference: int = 10) -> Host:
    return Host(name, sink.host, sink.port, preference)


def refusing_host(name: str = "down.rcpt.test") -> Host:
    """A host on a local port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Host(name, "127.0.0.1", port, 5)


class Renderer:
    """render(eight_bit_ok) that records how it was called."""

    def __init__(self, eight_bit: bytes = MESSAGE, seven_bit: bytes | None = None):
        self.eight_bit = eight_bit
        self.seven_bit = seven_bit if seven_bit is not None else eight_bit
        self.calls: list[bool] = []

    def __call__(self, eight_bit_ok: bool) -> bytes:
        self.calls.append(eight_bit_ok)
        return self.eight_bit if eight_bit_ok else self.seven_bit


def envelope(
    *recipients: str,
    render: Callable[[bool], bytes] | None = None,
    smtputf8: bool = False,
    sender: str = SENDER,
) -> Envelope:
    return Envelope(
        mail_from=sender,
        recipients=list(recipients or (ALICE,)),
        smtputf8=smtputf8,
        render=render or Renderer(),
    )


async def deliver(
    pool: OutboundPool, hosts: list[Host], env: Envelope
) -> list[RecipientResult]:
    return await asyncio.wait_for(pool.deliver(hosts, env), timeout=15)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


class TempfailMailOnReusedConnection(Behaviour):
    """421 to MAIL on a connection that already carried a transaction."""

    name = "idle_421"

    async def on_mail(self, session: Session, sender: str) -> Reply:
        if session.transactions >= 1:
            return Reply(421, "4.4.2 Idle timeout, closing connection")
        return Reply(250, "2.1.0 OK")


# -- delivered ---------------------------------------------------------------------


async def test_message_is_delivered_byte_for_byte(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()

    [result] = await deliver(pool, [host(sink)], envelope())

    assert result == RecipientResult(
        ALICE,
        Action.DELIVERED,
        250,
        "2.0.0",
        "250 2.0.0 OK: queued",
        "mx1.rcpt.test",
        True,
    )
    [message] = sink.messages()
    assert message.data == MESSAGE
    assert message.sender == SENDER
    assert message.recipients == (ALICE,)
    assert message.helo == "client.test"
    assert message.mail_options == ()


async def test_all_recipients_go_in_one_transaction(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()

    results = await deliver(pool, [host(sink)], envelope(ALICE, BOB))

    assert [(r.recipient, r.action) for r in results] == [
        (ALICE, Action.DELIVERED),
        (BOB, Action.DELIVERED),
    ]
    [message] = sink.messages()
    assert message.recipients == (ALICE, BOB)
    assert sink.transactions == 1


async def test_empty_sender_is_sent_as_null_reverse_path(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()

    [result] = await deliver(pool, [host(sink)], envelope(sender=""))

    assert result.action is Action.DELIVERED
    assert sink.messages()[0].sender == ""


@pytest.mark.parametrize(
    "content",
    [
        b".starts with a dot\r\n\r\nbody\r\n",
        b"Subject: x\r\n\r\n.\r\n..\r\n...\r\n. \r\n",
        b"Subject: x\r\n\r\nno final line end",
        b"Subject: x\r\n\r\n",
    ],
)
async def test_dot_stuffing_keeps_every_line_intact(
    sinks: Callable[..., SmtpSink], pool: OutboundPool, content: bytes
) -> None:
    sink = sinks()

    await deliver(pool, [host(sink)], envelope(render=Renderer(content)))

    expected = content if content.endswith(b"\r\n") else content + b"\r\n"
    assert sink.messages()[0].data == expected


async def test_bare_line_ends_from_render_are_sent_as_crlf(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()
    render = Renderer(b"Subject: x\n\nline one\nline two")

    await deliver(pool, [host(sink)], envelope(render=render))

    assert sink.messages()[0].data == b"Subject: x\r\n\r\nline one\r\nline two\r\n"


async def test_starttls_is_used_when_offered_without_checking_the_certificate(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(starttls=True)

    [result] = await deliver(pool, [host(sink)], envelope())

    assert result.action is Action.DELIVERED
    [message] = sink.messages()
    assert message.tls
    assert message.data == MESSAGE
    assert message.helo == "client.test"  # EHLO again after STARTTLS
    assert sink.stats().tls_sessions == 1


async def test_size_is_declared_when_offered(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(size_limit=100_000)

    await deliver(pool, [host(sink)], envelope())

    assert sink.messages()[0].mail_options == (f"SIZE={len(MESSAGE)}",)


async def test_too_big_for_the_declared_size_bounces(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(size_limit=len(MESSAGE) - 1)

    [result] = await deliver(pool, [host(sink)], envelope())

    assert (result.action, result.code, result.enhanced) == (
        Action.BOUNCE,
        552,
        "5.3.4",
    )
    assert not result.data_sent


# -- 8BITMIME and SMTPUTF8 ---------------------------------------------------------


async def test_8bit_content_is_sent_with_body_8bitmime_when_offered(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()
    render = Renderer(EIGHT_BIT, SEVEN_BIT)

    [result] = await deliver(pool, [host(sink)], envelope(render=render))

    assert result.action is Action.DELIVERED
    assert render.calls == [True]
    [message] = sink.messages()
    assert message.data == EIGHT_BIT
    assert message.mail_options == ("BODY=8BITMIME",)


async def test_server_without_8bitmime_gets_the_7bit_rendering(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(eightbitmime=False)
    render = Renderer(EIGHT_BIT, SEVEN_BIT)

    [result] = await deliver(pool, [host(sink)], envelope(render=render))

    assert result.action is Action.DELIVERED
    assert render.calls == [False]
    [message] = sink.messages()
    assert message.data == SEVEN_BIT
    assert message.mail_options == ()


async def test_smtputf8_envelope_uses_smtputf8_when_offered(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()
    recipient = "j\u00f6rg@r\u00e9cipient.test"

    [result] = await deliver(
        pool, [host(sink)], envelope(recipient, smtputf8=True, sender="s@s.test")
    )

    assert result.action is Action.DELIVERED
    [message] = sink.messages()
    assert message.recipients == (recipient,)
    assert "SMTPUTF8" in message.mail_options


async def test_smtputf8_envelope_bounces_5_6_7_when_not_offered(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(smtputf8=False)
    recipient = "j\u00f6rg@r\u00e9cipient.test"

    hosts = [host(sink), host(sink, "mx2.rcpt.test")]

    [result] = await deliver(pool, hosts, envelope(recipient, smtputf8=True))

    assert result.action is Action.BOUNCE
    assert (result.code, result.enhanced) == (None, "5.6.7")
    assert result.response is not None and "SMTPUTF8" in result.response
    assert result.host == "mx1.rcpt.test"
    assert sink.transactions == 0


# -- refusals and deferrals --------------------------------------------------------


async def test_recipient_rejected_with_550_bounces_and_no_data_is_sent(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks("reject_550")

    [result] = await deliver(pool, [host(sink)], envelope())

    assert result == RecipientResult(
        ALICE,
        Action.BOUNCE,
        550,
        "5.1.1",
        f"550 5.1.1 <{ALICE}>: Recipient address rejected",
        "mx1.rcpt.test",
        False,
    )
    assert sink.attempts() == []


async def test_refused_recipient_does_not_stop_the_others(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    def hook(recipient: str) -> Reply | None:
        return Reply(550, "5.1.1 No such user") if recipient == BOB else None

    sink = sinks(rcpt_hook=hook)

    alice, bob = await deliver(pool, [host(sink)], envelope(ALICE, BOB))

    assert (alice.action, alice.data_sent) == (Action.DELIVERED, True)
    assert (bob.action, bob.code, bob.enhanced) == (Action.BOUNCE, 550, "5.1.1")
    assert not bob.data_sent
    assert sink.messages()[0].recipients == (ALICE,)


async def test_recipient_4xx_is_retried_later_without_trying_next_mx(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    first = sinks("tempfail_then_accept", failures=1, per="recipient")
    second = sinks()

    [result] = await deliver(
        pool, [host(first), host(second, "mx2.rcpt.test")], envelope()
    )

    assert (result.action, result.code, result.enhanced) == (Action.RETRY, 451, "4.3.0")
    assert not result.data_sent
    assert second.connections == 0


async def test_message_rejected_after_data_bounces(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks("reject_550", at="data")

    alice, bob = await deliver(pool, [host(sink)], envelope(ALICE, BOB))

    for result in (alice, bob):
        assert (result.action, result.code, result.enhanced) == (
            Action.BOUNCE,
            550,
            "5.7.1",
        )
        assert result.response == "550 5.7.1 Message rejected by policy"
        assert result.data_sent


async def test_tempfail_after_data_retries_then_delivers_on_the_same_connection(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks("tempfail_then_accept", failures=1)

    [first] = await deliver(pool, [host(sink)], envelope())
    [second] = await deliver(pool, [host(sink)], envelope())

    assert (first.action, first.code, first.data_sent) == (Action.RETRY, 451, True)
    assert first.response == "451 4.3.0 Temporary failure, please try again later"
    assert second.action is Action.DELIVERED
    assert sink.connections == 1
    assert len(sink.attempts()) == 2


# -- host trouble and the next MX ------------------------------------------------


async def test_first_mx_down_second_mx_used(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()

    [result] = await deliver(
        pool, [refusing_host(), host(sink, "mx2.rcpt.test", 20)], envelope()
    )

    assert result.action is Action.DELIVERED
    assert result.host == "mx2.rcpt.test"
    assert sink.messages()[0].data == MESSAGE


@pytest.mark.parametrize("behaviour", ["greeting_421", "close_on_connect"])
async def test_unwelcoming_first_mx_moves_on_to_the_next(
    sinks: Callable[..., SmtpSink], pool: OutboundPool, behaviour: str
) -> None:
    bad = sinks(behaviour)
    good = sinks()

    [result] = await deliver(
        pool, [host(bad), host(good, "mx2.rcpt.test", 20)], envelope()
    )

    assert (result.action, result.host) == (Action.DELIVERED, "mx2.rcpt.test")
    assert bad.connections == 1


async def test_greeting_421_on_the_last_mx_is_retried_not_bounced(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks("greeting_421")

    [result] = await deliver(pool, [host(sink)], envelope())

    assert result == RecipientResult(
        ALICE,
        Action.RETRY,
        421,
        "4.3.2",
        "421 4.3.2 Service not available",
        "mx1.rcpt.test",
        False,
    )


async def test_dropped_connection_on_the_last_mx_is_retried(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks("close_on_connect")

    [result] = await deliver(pool, [host(sink)], envelope())

    assert (result.action, result.code, result.enhanced) == (
        Action.RETRY,
        None,
        "4.4.1",
    )
    assert result.response is not None and "mx1.rcpt.test" in result.response


async def test_all_mx_down_is_retried_with_the_last_host_reported(
    pool: OutboundPool,
) -> None:
    hosts = [refusing_host("a.rcpt.test"), refusing_host("b.rcpt.test")]

    [result] = await deliver(pool, hosts, envelope())

    assert (result.action, result.host, result.data_sent) == (
        Action.RETRY,
        "b.rcpt.test",
        False,
    )
    assert result.response is not None and result.response.startswith(
        "connect to b.rcpt.test[127.0.0.1]"
    )


async def test_421_to_a_recipient_moves_all_recipients_to_the_next_mx(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    def hook(recipient: str) -> Reply | None:
        return Reply(421, "4.7.0 Try again later") if recipient == BOB else None

    first = sinks(rcpt_hook=hook)
    second = sinks()

    results = await deliver(
        pool, [host(first), host(second, "mx2.rcpt.test")], envelope(ALICE, BOB)
    )

    assert [(r.action, r.host) for r in results] == [
        (Action.DELIVERED, "mx2.rcpt.test"),
        (Action.DELIVERED, "mx2.rcpt.test"),
    ]
    assert first.attempts() == []


async def test_empty_route_is_retried(pool: OutboundPool) -> None:
    [result] = await pool.deliver([], envelope())

    assert (result.action, result.host) == (Action.RETRY, None)


# -- timeouts -------------------------------------------------------------------


async def test_slow_reply_to_the_dot_within_data_timeout_is_delivered(
    sinks: Callable[..., SmtpSink],
) -> None:
    sink = sinks("slow_data", delay=0.5)
    outbound = OutboundPool(settings(command_timeout=0.2, data_timeout=3.0))
    try:
        [result] = await deliver(outbound, [host(sink)], envelope())
    finally:
        await outbound.close()

    assert result.action is Action.DELIVERED


async def test_reply_to_the_dot_timing_out_is_retried_as_possibly_sent(
    sinks: Callable[..., SmtpSink],
) -> None:
    sink = sinks("slow_data", delay=1.0)
    outbound = OutboundPool(settings(data_timeout=0.2))
    try:
        [result] = await deliver(outbound, [host(sink)], envelope())
    finally:
        await outbound.close()

    assert (result.action, result.code, result.enhanced) == (
        Action.RETRY,
        None,
        "4.4.2",
    )
    assert result.data_sent
    assert result.response is not None and "end of DATA" in result.response


async def test_timeout_after_the_dot_keeps_data_sent_when_next_mx_delivers(
    sinks: Callable[..., SmtpSink],
) -> None:
    slow = sinks("slow_data", delay=1.0)
    good = sinks()
    outbound = OutboundPool(settings(data_timeout=0.2))
    try:
        [result] = await deliver(
            outbound, [host(slow), host(good, "mx2.rcpt.test")], envelope()
        )
    finally:
        await outbound.close()

    assert (result.action, result.host, result.data_sent) == (
        Action.DELIVERED,
        "mx2.rcpt.test",
        True,
    )


# -- connection reuse -----------------------------------------------------------


async def test_connection_is_reused_for_later_messages(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks()

    for _ in range(5):
        [result] = await deliver(pool, [host(sink)], envelope())
        assert result.action is Action.DELIVERED

    assert sink.connections == 1
    assert sink.transactions == 5


async def test_connection_is_reused_after_a_refused_recipient(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    def hook(recipient: str) -> Reply | None:
        return Reply(550, "5.1.1 No such user") if recipient == BOB else None

    sink = sinks(rcpt_hook=hook)

    [bounced] = await deliver(pool, [host(sink)], envelope(BOB))
    [delivered] = await deliver(pool, [host(sink)], envelope(ALICE))

    assert (bounced.action, delivered.action) == (Action.BOUNCE, Action.DELIVERED)
    assert sink.connections == 1


async def test_concurrent_deliveries_respect_the_destination_limit(
    sinks: Callable[..., SmtpSink],
) -> None:
    sink = sinks("slow_data", delay=0.05)
    outbound = OutboundPool(settings(per_destination_concurrency=3))
    try:
        results = await asyncio.gather(
            *(deliver(outbound, [host(sink)], envelope()) for _ in range(12))
        )
    finally:
        await outbound.close()

    assert all(r.action is Action.DELIVERED for [r] in results)
    assert len(sink.messages()) == 12
    assert sink.connections == 3


async def test_idle_connection_is_closed_after_the_idle_timeout(
    sinks: Callable[..., SmtpSink],
) -> None:
    sink = sinks()
    outbound = OutboundPool(settings(connection_idle_timeout=0.2))
    try:
        await deliver(outbound, [host(sink)], envelope())
        await asyncio.sleep(0.5)
        await deliver(outbound, [host(sink)], envelope())
    finally:
        await outbound.close()

    assert sink.connections == 2
    assert len(sink.messages()) == 2


async def test_connection_closed_by_the_server_while_idle_is_replaced_silently(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    first = sinks()
    await deliver(pool, [host(first)], envelope())
    port = first.port
    first.stop()  # drops the kept connection
    second = sinks(port=port)

    [result] = await deliver(pool, [host(second)], envelope())

    assert result.action is Action.DELIVERED
    assert second.connections == 1


async def test_421_to_mail_on_a_kept_connection_is_not_a_failure(
    sinks: Callable[..., SmtpSink], pool: OutboundPool
) -> None:
    sink = sinks(TempfailMailOnReusedConnection())

    [first] = await deliver(pool, [host(sink)], envelope())
    [second] = await deliver(pool, [host(sink)], envelope())

    assert (first.action, second.action) == (Action.DELIVERED, Action.DELIVERED)
    assert sink.connections == 2
    assert len(sink.messages()) == 2


async def test_close_quits_idle_connections(
    sinks: Callable[..., SmtpSink],
) -> None:
    sink = sinks()
    outbound = OutboundPool(settings())
    await deliver(outbound, [host(sink)], envelope())

    await outbound.close()

    assert sink.connections == 1
    [result] = await deliver(outbound, [host(sink)], envelope())
    assert result.action is Action.DELIVERED  # a closed pool still delivers
    await outbound.close()
    assert sink.connections == 2


async def test_render_is_called_once_per_kind_of_server(
    sinks: Callable[..., SmtpSink],
) -> None:
    slow = sinks("slow_data", delay=1.0, eightbitmime=False)
    good = sinks()
    render = Renderer(EIGHT_BIT, SEVEN_BIT)
    outbound = OutboundPool(settings(data_timeout=0.2))
    try:
        [result] = await deliver(
            outbound,
            [host(slow), host(slow, "again.rcpt.test"), host(good, "mx2.rcpt.test")],
            envelope(render=render),
        )
    finally:
        await outbound.close()

    assert result.action is Action.DELIVERED
    assert render.calls == [False, True]
    assert good.messages()[0].data == EIGHT_BIT
