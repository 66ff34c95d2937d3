"""Tests of the test peers: the DNS server through dnspython, the SMTP sinks
through smtplib, aiosmtplib and raw sockets. One situation per test."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import aiosmtplib
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest

from tests.peers.dns import DnsServer, dns_server
from tests.peers.sink import (
    Behaviour,
    ReceivedMessage,
    Reply,
    Session,
    SmtpSink,
    smtp_sink,
    smtp_sink_factory,
)

# The fixtures are imported above; listing them marks them as used.
__all__ = ["dns_server", "smtp_sink", "smtp_sink_factory"]

SENDER = "sender@example.test"
RCPT = "rcpt@example.test"


def _message(message_id: str = "<m1@example.test>", body: str = "hello") -> bytes:
    head = f"From: {SENDER}\r\nTo: {RCPT}\r\nMessage-ID: {message_id}\r\n"
    return f"{head}Subject: test\r\n\r\n{body}\r\n".encode()


def _send(sink: SmtpSink, data: bytes, rcpts: list[str] | None = None) -> dict:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        return client.sendmail(SENDER, rcpts or [RCPT], data)


def _port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(threading.enumerate()) - before == set()


# -- DNS -------------------------------------------------------------------------


async def test_dns_resolves_mx(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.", ttl=300)
    answer = await dns_server.resolver().resolve("example.test", "MX")
    found = sorted((r.preference, r.exchange.to_text()) for r in answer)
    assert found == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert answer.rrset.ttl == 60


async def test_dns_resolves_a(dns_server: DnsServer) -> None:
    dns_server.add("mx1.example.test", "A", "127.0.0.1")
    answer = await dns_server.resolver().resolve("mx1.example.test", "A")
    assert [r.address for r in answer] == ["127.0.0.1"]


async def test_dns_resolves_aaaa(dns_server: DnsServer) -> None:
    dns_server.add("mx1.example.test", "AAAA", "::1")
    answer = await dns_server.resolver().resolve("mx1.example.test", "AAAA")
    assert [r.address for r in answer] == ["::1"]


async def test_dns_resolves_short_txt(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    answer = await dns_server.resolver().resolve("example.test", "TXT")
    assert [r.strings for r in answer] == [(b"v=spf1 ip4:127.0.0.1 -all",)]


async def test_dns_splits_long_txt_and_client_retries_over_tcp(
    dns_server: DnsServer,
) -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    dns_server.add("s1._domainkey.example.test", "TXT", value)
    answer = await dns_server.resolver().resolve("s1._domainkey.example.test", "TXT")
    [record] = list(answer)
    assert [len(part) for part in record.strings] == [255, 255, 108]
    assert b"".join(record.strings) == value.encode()
    assert [q.protocol for q in dns_server.queries()] == ["udp", "tcp"]


async def test_dns_null_mx(dns_server: DnsServer) -> None:
    dns_server.add("nomail.example.test", "MX", "0 .")
    answer = await dns_server.resolver().resolve("nomail.example.test", "MX")
    assert [(r.preference, r.exchange.to_text()) for r in answer] == [(0, ".")]


async def test_dns_unknown_name_is_nxdomain(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await dns_server.resolver().resolve("missing.example.test", "MX")


async def test_dns_known_name_without_type_is_noanswer(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    with pytest.raises(dns.resolver.NoAnswer):
        await dns_server.resolver().resolve("example.test", "MX")


async def test_dns_noanswer_carries_soa_for_negative_caching(
    dns_server: DnsServer,
) -> None:
    soa = "ns1.example.test. hostmaster.example.test. 7 3600 600 86400 120"
    dns_server.add("example.test", "SOA", soa)
    dns_server.add("www.example.test", "A", "127.0.0.1")
    query = dns.message.make_query("www.example.test", "MX")
    response = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_server.port)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    [authority] = response.authority
    assert authority.name.to_text() == "example.test."
    assert authority[0].minimum == 120


async def test_dns_answers_are_authoritative(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    query = dns.message.make_query("example.test", "A")
    response = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_server.port)
    assert response.flags & dns.flags.AA


async def test_dns_answers_over_tcp(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    query = dns.message.make_query("example.test", "A")
    response = await dns.asyncquery.tcp(query, "127.0.0.1", port=dns_server.port)
    assert [r.address for r in response.answer[0]] == ["127.0.0.2"]


async def test_dns_names_are_case_insensitive(dns_server: DnsServer) -> None:
    dns_server.add("MiXeD.Example.TEST", "A", "127.0.0.3")
    answer = await dns_server.resolver().resolve("mixed.EXAMPLE.test", "A")
    assert [r.address for r in answer] == ["127.0.0.3"]


async def test_dns_empty_non_terminal_is_noanswer(dns_server: DnsServer) -> None:
    dns_server.add("a.b.example.test", "A", "127.0.0.1")
    with pytest.raises(dns.resolver.NoAnswer):
        await dns_server.resolver().resolve("b.example.test", "A")


async def test_dns_cname_is_chased(dns_server: DnsServer) -> None:
    dns_server.add("mail.example.test", "CNAME", "mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.4")
    answer = await dns_server.resolver().resolve("mail.example.test", "A")
    assert answer.canonical_name.to_text() == "mx1.example.test."
    assert [r.address for r in answer] == ["127.0.0.4"]


async def test_dns_remove_name_makes_it_nxdomain(dns_server: DnsServer) -> None:
    dns_server.add("gone.example.test", "A", "127.0.0.1")
    dns_server.add("gone.example.test", "MX", "10 mx.example.test.")
    assert dns_server.remove("gone.example.test") == 2
    with pytest.raises(dns.resolver.NXDOMAIN):
        await dns_server.resolver().resolve("gone.example.test", "A")


async def test_dns_remove_one_type_keeps_the_others(dns_server: DnsServer) -> None:
    dns_server.add("both.example.test", "A", "127.0.0.1")
    dns_server.add("both.example.test", "MX", "10 mx.example.test.")
    assert dns_server.remove("both.example.test", "mx") == 1
    resolver = dns_server.resolver()
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("both.example.test", "MX")
    assert len(await resolver.resolve("both.example.test", "A")) == 1


async def test_dns_replace_swaps_records(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    dns_server.replace("example.test", "A", "127.0.0.8", "127.0.0.9")
    answer = await dns_server.resolver().resolve("example.test", "A")
    assert sorted(r.address for r in answer) == ["127.0.0.8", "127.0.0.9"]


async def test_dns_scripted_servfail(dns_server: DnsServer) -> None:
    dns_server.add("broken.example.test", "MX", "10 mx.example.test.")
    dns_server.fail("broken.example.test")
    with pytest.raises(dns.resolver.NoNameservers) as raised:
        await dns_server.resolver().resolve("broken.example.test", "MX")
    assert "SERVFAIL" in str(raised.value)


async def test_dns_scripted_timeout(dns_server: DnsServer) -> None:
    dns_server.fail("slow.example.test", "timeout")
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        await dns_server.resolver(timeout=0.3).resolve("slow.example.test", "A")
    assert time.monotonic() - started >= 0.3


def test_dns_sync_resolver(dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "5 mx.example.test.")
    answer = dns_server.sync_resolver().resolve("example.test", "MX")
    assert [r.preference for r in answer] == [5]


def test_dns_rejects_invalid_values() -> None:
    server = DnsServer()
    with pytest.raises(ValueError):
        server.add("example.test", "A", "not-an-address")
    with pytest.raises(ValueError):
        server.add("example.test", "MX", "mx.example.test.")
    with pytest.raises(ValueError):
        server.add("example.test", "SRV", "0 0 25 mx.example.test.")


def test_dns_stop_releases_the_port() -> None:
    server = DnsServer().start()
    port = server.port
    server.stop()
    assert _port_is_closed(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))


# -- SMTP sink: recording ----------------------------------------------------------


def test_sink_records_envelope_and_exact_data(smtp_sink: SmtpSink) -> None:
    data = _message()
    before = time.time()
    assert _send(smtp_sink, data, [RCPT, "other@example.test"]) == {}
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert message.sender == SENDER
    assert message.recipients == (RCPT, "other@example.test")
    assert message.data == data
    assert message.size == len(data)
    assert message.peer[0] == "127.0.0.1"
    assert message.tls is False
    assert before <= message.received_at <= message.replied_at <= time.time()
    assert message.reply == Reply(250, "2.0.0 OK: queued")


def test_sink_unstuffs_dots_and_keeps_crlf(smtp_sink: SmtpSink) -> None:
    raw = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    stuffed = b"..first\r\nmiddle\r\n..\r\n...three\r\n.\r\nQUIT\r\n"
    _converse(smtp_sink, b"EHLO raw.test\r\n" + raw, stuffed)
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert message.data == b".first\r\nmiddle\r\n.\r\n..three\r\n"


def test_sink_records_an_empty_message(smtp_sink: SmtpSink) -> None:
    commands = b"EHLO raw.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    _converse(smtp_sink, commands, b".\r\nQUIT\r\n")
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert (message.sender, message.data) == ("", b"")


def _converse(sink: SmtpSink, commands: bytes, content: bytes) -> bytes:
    """Send pipelined commands, wait for 354, send content, read until close."""
    with socket.create_connection(sink.address, timeout=5) as conn:
        conn.sendall(commands)
        received = b""
        while b"354 " not in received:
            received += conn.recv(4096)
        conn.sendall(content)
        while chunk := conn.recv(4096):
            received += chunk
    return received


def test_sink_marks_pipelined_transactions(smtp_sink: SmtpSink) -> None:
    commands = b"EHLO raw.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
    replies = _converse(smtp_sink, commands + b"DATA\r\n", b"hi\r\n.\r\nQUIT\r\n")
    codes = [line[:4] for line in replies.split(b"\r\n") if line]
    assert codes[-5:] == [b"250 ", b"250 ", b"354 ", b"250 ", b"221 "]
    assert smtp_sink.wait_for(1, timeout=5)[0].pipelined is True


def test_sink_unpipelined_client_is_not_marked(smtp_sink: SmtpSink) -> None:
    _send(smtp_sink, _message())
    assert smtp_sink.wait_for(1, timeout=5)[0].pipelined is False


def test_sink_counts_by_message_id(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
        for message_id in ("<a@x>", "<b@x>", "<a@x>"):
            client.sendmail(SENDER, [RCPT], _message(message_id))
    smtp_sink.wait_for(3, timeout=5)
    assert smtp_sink.count_by_message_id() == {"<a@x>": 2, "<b@x>": 1}


def test_sink_parses_folded_headers(smtp_sink: SmtpSink) -> None:
    data = b"Message-ID:\r\n <folded@x>\r\nSubject: a\r\n b\r\n\r\nbody\r\n"
    _send(smtp_sink, data)
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert message.message_id == "<folded@x>"
    assert message.header("subject") == "a b"


def test_sink_counts_connections_and_transactions(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
        client.sendmail(SENDER, [RCPT], _message("<1@x>"))
        client.sendmail(SENDER, [RCPT], _message("<2@x>"))
    _send(smtp_sink, _message("<3@x>"))
    smtp_sink.wait_for(3, timeout=5)
    assert (smtp_sink.connections, smtp_sink.transactions) == (2, 3)


def test_sink_wait_for_times_out(smtp_sink: SmtpSink) -> None:
    with pytest.raises(TimeoutError, match="expected 1 messages, got 0"):
        smtp_sink.wait_for(1, timeout=0.1)


def test_sink_clear_forgets_messages_and_counters(smtp_sink: SmtpSink) -> None:
    _send(smtp_sink, _message())
    smtp_sink.wait_for(1, timeout=5)
    smtp_sink.clear()
    assert (smtp_sink.messages(), smtp_sink.connections) == ([], 0)


def test_sink_keep_body_false_keeps_headers_only() -> None:
    with SmtpSink(keep_body=False) as sink:
        data = _message(body="x" * 1000)
        _send(sink, data)
        [message] = sink.wait_for(1, timeout=5)
    assert message.size == len(data)
    assert message.data == data[: data.index(b"\r\n\r\n") + 4]
    assert message.message_id == "<m1@example.test>"


def test_sink_accepts_concurrent_clients(smtp_sink: SmtpSink) -> None:
    def client(number: int) -> None:
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as conn:
            for index in range(25):
                conn.sendmail(SENDER, [RCPT], _message(f"<{number}.{index}@x>"))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(smtp_sink.wait_for(200, timeout=10)) == 200
    assert len(smtp_sink.count_by_message_id()) == 200
    assert smtp_sink.connections == 8


def test_sink_stop_releases_port_and_thread() -> None:
    sink = SmtpSink().start()
    port = sink.port
    sink.stop()
    assert _port_is_closed(port)
    assert not any(t.name.startswith("smtp-sink") for t in threading.enumerate())


def test_sink_stop_cuts_open_connections() -> None:
    sink = SmtpSink().start()
    client = smtplib.SMTP(sink.host, sink.port, timeout=5)
    client.ehlo()
    sink.stop()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()


def test_sink_factory_fixture_starts_sinks(
    smtp_sink_factory: Callable[..., SmtpSink],
) -> None:
    first = smtp_sink_factory()
    second = smtp_sink_factory("reject_550")
    assert first.port != second.port
    _send(first, _message())
    assert len(first.wait_for(1, timeout=5)) == 1


# -- SMTP sink: extensions ---------------------------------------------------------


def test_sink_advertises_default_extensions(smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
        client.ehlo()
        assert {"pipelining", "8bitmime", "smtputf8"} <= set(client.esmtp_features)
        assert "starttls" not in client.esmtp_features


@pytest.mark.parametrize("switch", ["eightbitmime", "smtputf8", "pipelining"])
def test_sink_extension_can_be_switched_off(switch: str) -> None:
    feature = {"eightbitmime": "8bitmime"}.get(switch, switch)
    with SmtpSink(**{switch: False}) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.ehlo()
            assert feature not in client.esmtp_features


def test_sink_without_8bitmime_refuses_body_8bitmime() -> None:
    with SmtpSink(eightbitmime=False) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.ehlo()
            code, text = client.mail(SENDER, ["BODY=8BITMIME"])
    assert (code, text) == (555, b"5.5.4 Unsupported parameter BODY=8BITMIME")


def test_sink_records_8bit_content_and_body_option(smtp_sink: SmtpSink) -> None:
    data = "Subject: café\r\n\r\nnaïve\r\n".encode()
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=5) as client:
        client.sendmail(SENDER, [RCPT], data, mail_options=["BODY=8BITMIME"])
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert message.has_8bit and message.mail_options == ("BODY=8BITMIME",)


def test_sink_without_smtputf8_refuses_non_ascii_sender() -> None:
    with SmtpSink(smtputf8=False) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.ehlo()
            client.command_encoding = "utf-8"
            code, _ = client.mail("jörg@example.test")
    assert code == 553


def test_sink_with_size_limit_rejects_large_message() -> None:
    with SmtpSink(size_limit=100) as sink:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            _send(sink, _message(body="x" * 200))
    assert refused.value.smtp_code == 552


# -- SMTP sink: behaviours -------------------------------------------------------


def test_reject_550_refuses_recipients() -> None:
    with SmtpSink("reject_550") as sink:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            _send(sink, _message())
        stats = sink.stats()
    code, text = refused.value.recipients[RCPT]
    assert (code, text[:5]) == (550, b"5.1.1")
    assert (stats.recipients_rejected, stats.data_transfers) == (1, 0)


def test_reject_550_after_data() -> None:
    with SmtpSink("reject_550", at="data") as sink:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            _send(sink, _message())
        attempts, messages = sink.attempts(), sink.messages()
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
    assert [a.reply.code for a in attempts if a.reply] == [550]
    assert messages == []


def test_tempfail_per_message_then_accept() -> None:
    codes = []
    with SmtpSink("tempfail_then_accept", failures=2) as sink:
        for _ in range(3):
            try:
                _send(sink, _message("<retry@x>"))
                codes.append(250)
            except smtplib.SMTPDataError as error:
                codes.append(error.smtp_code)
        counts = sink.count_by_message_id()
    assert codes == [451, 451, 250]
    assert counts == {"<retry@x>": 1}


def test_tempfail_per_recipient_then_accept() -> None:
    with SmtpSink("tempfail_then_accept", per="recipient") as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.ehlo()
            client.mail(SENDER)
            first = client.rcpt(RCPT)
            second = client.rcpt(RCPT)
    assert first == (451, b"4.3.0 Temporary failure, please try again later")
    assert second[0] == 250


def test_greeting_421_refuses_the_connection() -> None:
    with SmtpSink("greeting_421") as sink:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(sink.host, sink.port, timeout=5)
        connections = sink.connections
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error == b"4.3.2 Service not available"
    assert connections == 1


def test_greeting_421_closes_after_the_reply() -> None:
    with SmtpSink("greeting_421") as sink:
        with socket.create_connection(sink.address, timeout=5) as conn:
            received = b""
            while chunk := conn.recv(4096):
                received += chunk
    assert received == b"421 4.3.2 Service not available\r\n"


def test_close_on_connect_sends_nothing() -> None:
    with SmtpSink("close_on_connect") as sink:
        with socket.create_connection(sink.address, timeout=5) as conn:
            assert conn.recv(4096) == b""
        assert sink.connections == 1


def test_close_on_connect_fails_smtplib() -> None:
    with SmtpSink("close_on_connect") as sink:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtplib.SMTP(sink.host, sink.port, timeout=5)


def test_slow_data_holds_the_final_reply() -> None:
    with SmtpSink("slow_data", delay=0.5) as sink:
        started = time.monotonic()
        _send(sink, _message())
        elapsed = time.monotonic() - started
        [message] = sink.messages()
    assert elapsed >= 0.5
    assert message.replied_at - message.received_at >= 0.5


def test_slow_data_records_after_the_client_gave_up() -> None:
    with SmtpSink("slow_data", delay=0.6) as sink:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            with smtplib.SMTP(sink.host, sink.port, timeout=0.2) as client:
                client.sendmail(SENDER, [RCPT], _message("<late@x>"))
        assert sink.messages() == []
        [message] = sink.wait_for(1, timeout=5)
    assert message.message_id == "<late@x>"
    assert message.replied_at - message.received_at >= 0.6


def test_slow_data_default_delay_is_30_seconds() -> None:
    sink = SmtpSink("slow_data")
    assert sink.behaviour.delay == 30.0


def test_stop_does_not_wait_for_a_slow_reply() -> None:
    sink = SmtpSink("slow_data").start()
    client = smtplib.SMTP(sink.host, sink.port, timeout=5)
    client.ehlo()
    client.mail(SENDER)
    client.rcpt(RCPT)
    client.putcmd("data")
    client.getreply()
    client.send(_message() + b".\r\n")
    sink.wait_until(lambda s: s.transactions == 1, timeout=5)
    started = time.monotonic()
    sink.stop()
    client.close()
    assert time.monotonic() - started < 2


def test_rcpt_hook_rules_per_recipient(smtp_sink: SmtpSink) -> None:
    def rules(rcpt: str) -> tuple[int, str] | None:
        return (550, "5.1.1 No such user") if rcpt.startswith("bad") else None

    smtp_sink.rcpt_hook = rules
    refused = _send(smtp_sink, _message(), ["bad@example.test", RCPT])
    [message] = smtp_sink.wait_for(1, timeout=5)
    assert refused == {"bad@example.test": (550, b"5.1.1 No such user")}
    assert message.recipients == (RCPT,)


def test_custom_behaviour_subclass() -> None:
    class SlowGreeting(Behaviour):
        async def on_connect(self, session: Session) -> Reply:
            await asyncio.sleep(0.3)
            return Reply(220, "late hello")

    with SmtpSink(SlowGreeting()) as sink:
        started = time.monotonic()
        _send(sink, _message())
        assert time.monotonic() - started >= 0.3


def test_on_data_returning_none_drops_the_connection() -> None:
    class DropAfterData(Behaviour):
        async def on_data(self, session: Session, message: ReceivedMessage) -> None:
            return None

    with SmtpSink(DropAfterData()) as sink:
        with pytest.raises(smtplib.SMTPServerDisconnected):
            _send(sink, _message())
        [attempt] = sink.attempts()
    assert attempt.reply is None and sink.messages() == []


def test_unknown_behaviour_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown behaviour"):
        SmtpSink("bounce_everything")


# -- SMTP sink: STARTTLS -----------------------------------------------------------


async def test_starttls_with_aiosmtplib_is_recorded() -> None:
    with SmtpSink(starttls=True) as sink:
        client = aiosmtplib.SMTP(
            hostname=sink.host,
            port=sink.port,
            start_tls=False,
            tls_context=sink.client_ssl_context(),
        )
        async with client:
            await client.ehlo()
            assert client.supports_extension("starttls")
            await client.starttls()
            assert not client.supports_extension("starttls")
            await client.sendmail(SENDER, [RCPT], _message())
        [message] = await asyncio.to_thread(sink.wait_for, 1, 5)
    assert message.tls is True
    assert sink.stats().tls_sessions == 1


async def test_require_starttls_refuses_plain_mail() -> None:
    with SmtpSink(require_starttls=True) as sink:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, start_tls=False)
        async with client:
            await client.ehlo()
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.mail(SENDER)
    assert refused.value.code == 530


async def test_starttls_opportunistic_client_without_verification() -> None:
    with SmtpSink(starttls=True) as sink:
        async with aiosmtplib.SMTP(
            hostname=sink.host, port=sink.port, validate_certs=False
        ) as client:
            await client.sendmail(SENDER, [RCPT], _message())
        [message] = await asyncio.to_thread(sink.wait_for, 1, 5)
    assert message.tls is True
