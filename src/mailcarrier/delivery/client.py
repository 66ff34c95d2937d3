"""Outbound SMTP: deliver one message to one domain's hosts, reusing connections.

`OutboundPool.deliver(hosts, envelope)` walks the route's hosts in order.
On each it runs one SMTP transaction for all the envelope's recipients
(they share a domain): MAIL FROM, one RCPT TO per recipient, DATA. Where
the attempt ends, and with which reply, goes through the outcome table
(`outcomes.decide`): a refused connection, a timeout or a 421 moves on to
the next host, a 4xx/5xx to RCPT settles that recipient only, and so on.
The result is one `RecipientResult` per recipient, never "next MX".

The conversation (RFC 5321, on aiosmtplib):

- EHLO with the `hostname` setting, HELO if EHLO is refused with 5xx;
- STARTTLS whenever it is offered (RFC 3207), then EHLO again;
- SIZE=n when offered (RFC 1870), BODY=8BITMIME when the content has 8-bit
  bytes and the server offers 8BITMIME (RFC 6152), SMTPUTF8 only when the
  envelope needs it (RFC 6531); a server without SMTPUTF8 for an envelope
  that needs it bounces the recipients with 5.6.7 at once (no downgrade of
  addresses exists);
- `envelope.render(eight_bit_ok)` is called with whether the server offers
  8BITMIME, and what it returns is sent as is (dot-stuffed; only stray
  bare CR or LF line ends are made CRLF, as SMTP requires);
- if no recipient is accepted there is no DATA; an unfinished transaction
  is ended with RSET so the connection can be used again.

Connections are kept per (address, port) after a transaction and reused
for later messages; at most `per_destination_concurrency` are open to one
destination at once (waiting callers queue); an idle one is closed with
QUIT after `connection_idle_timeout`, and any after `MAX_CONNECTION_AGE`.
A kept connection the server has closed meanwhile is noticed (it is gone,
or MAIL FROM gets no reply or a 421) and the transaction is started again
on a fresh connection without counting as a failure.

Timeouts: `connect_timeout` for the TCP connect and the greeting,
`command_timeout` for each command, `data_timeout` for the reply to the
final dot (RFC 5321 4.5.3.2.6 suggests 10 minutes).

Replies are kept verbatim (a multi-line reply joined with spaces), with
their enhanced status code (RFC 3463) when the server gives one. Failures
without a reply (connect, drop, timeout, TLS) get code None, a text that
says what happened, and an enhanced code of our own (4.4.1 no answer,
4.4.2 bad connection, 4.7.5 TLS failure).

What this module does not do: choose hosts (routing), sign or convert the
message (the caller's render), record results or log one line per
recipient (the worker), DSN parameters (RFC 3461).

Limitations:
- TLS is opportunistic: certificates are not verified and a failed
  handshake is a connection failure (next host, or retry), with no
  fallback to plaintext; there is no DANE or MTA-STS.
- Commands are not pipelined (RFC 2920): aiosmtplib reads one reply per
  command, so each command costs a round trip.
- No CHUNKING/BDAT or BINARYMIME: binary content cannot be sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiosmtplib import SMTP, SMTPResponse
from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from mailcarrier.delivery.outcomes import Action, Scope, decide
from mailcarrier.delivery.routing import Host
from mailcarrier.settings import Settings

__all__ = ["Envelope", "OutboundPool", "RecipientResult"]

log = logging.getLogger(__name__)

MAX_CONNECTION_AGE = 300.0  # seconds a connection is reused at most
QUIT_TIMEOUT = 5.0
SERVICE_NOT_AVAILABLE = 421

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_TRANSPORT_ERRORS = (SMTPServerDisconnected, SMTPTimeoutError, OSError, EOFError)


@dataclass(frozen=True)
class Envelope:
    """One message for recipients of one domain."""

    mail_from: str
    recipients: list[str]
    smtputf8: bool  # an address needs SMTPUTF8
    # render(eight_bit_ok) -> the exact (signed) bytes to send
    render: Callable[[bool], bytes]


@dataclass(frozen=True)
class RecipientResult:
    """The outcome of one delivery attempt for one recipient."""

    recipient: str
    action: Action  # DELIVERED, RETRY or BOUNCE
    code: int | None
    enhanced: str | None  # e.g. "5.1.1"
    response: str | None  # the remote reply, or what happened instead
    host: str | None  # the MX host name that gave it
    data_sent: bool  # the final dot went out on some connection


@dataclass(frozen=True)
class _Report:
    """Where and how a step ended.

    Either a failure for the recipients still pending, or the reply to the
    final dot that delivered them.
    """

    scope: Scope
    code: int | None
    enhanced: str | None
    response: str


class _StaleConnection(Exception):
    """A reused connection turned out to be closed by the server."""


# -- one delivery's bookkeeping ------------------------------------------------------


class _Delivery:
    """Per-call state: which recipients still wait, their results, the content."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.pending = list(range(len(envelope.recipients)))
        self.results: dict[int, RecipientResult] = {}
        self.data_sent: set[int] = set()
        self._rendered: dict[bool, bytes] = {}

    def content(self, eight_bit_ok: bool) -> bytes:
        if eight_bit_ok not in self._rendered:
            self._rendered[eight_bit_ok] = self.envelope.render(eight_bit_ok)
        return self._rendered[eight_bit_ok]

    def settle(
        self, index: int, action: Action, failure: _Report, host: Host | None
    ) -> None:
        self.results[index] = RecipientResult(
            self.envelope.recipients[index],
            action,
            failure.code,
            failure.enhanced,
            failure.response,
            host.name if host else None,
            index in self.data_sent,
        )
        self.pending.remove(index)

    def settle_pending(
        self, action: Action, failure: _Report, host: Host | None
    ) -> None:
        for index in list(self.pending):
            self.settle(index, action, failure, host)

    def ordered_results(self) -> list[RecipientResult]:
        return [self.results[index] for index in sorted(self.results)]


# -- connections ------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    smtp: SMTP
    host: Host
    opened: float = field(default_factory=time.monotonic)
    idle_timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return self.smtp.is_connected

    @property
    def too_old(self) -> bool:
        return time.monotonic() - self.opened > MAX_CONNECTION_AGE

    @property
    def label(self) -> str:
        return f"{self.host.name}[{self.host.address}]:{self.host.port}"


@dataclass(eq=False)
class _Destination:
    """The connections of one (address, port): a limit and the idle ones."""

    limit: asyncio.Semaphore
    idle: list[_Connection] = field(default_factory=list)
    users: int = 0


class OutboundPool:
    """Delivers messages over reused SMTP connections, one pool per process."""

    def __init__(self, settings: Settings) -> None:
        self._hostname = settings.hostname
        self._connect_timeout = settings.connect_timeout
        self._command_timeout = settings.command_timeout
        self._data_timeout = settings.data_timeout
        self._idle_timeout = settings.connection_idle_timeout
        self._per_destination = settings.per_destination_concurrency
        self._destinations: dict[tuple[str, int], _Destination] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._tls = _opportunistic_tls_context()
        self._closed = False

    async def deliver(
        self, hosts: Sequence[Host], envelope: Envelope
    ) -> list[RecipientResult]:
        """Try the hosts in order; one result per recipient, in their order."""
        delivery = _Delivery(envelope)
        if not hosts:
            no_route = _Report(Scope.CONNECTION, None, "4.4.4", "no host to try")
            delivery.settle_pending(Action.RETRY, no_route, None)
        for number, host in enumerate(hosts, start=1):
            if not delivery.pending:
                break
            last_mx = number == len(hosts)
            failure = await self._try_host(host, delivery, last_mx)
            if failure is None:
                continue
            action = decide(failure.scope, failure.code, last_mx=last_mx)
            log.debug("%s: %s -> %s", host.name, failure.response, action)
            if action is not Action.TRY_NEXT_MX:
                delivery.settle_pending(action, failure, host)
        return delivery.ordered_results()

    async def close(self) -> None:
        """Close every idle connection (QUIT) and refuse to keep any more."""
        self._closed = True
        for destination in self._destinations.values():
            while destination.idle:
                connection = destination.idle.pop()
                if connection.idle_timer is not None:
                    connection.idle_timer.cancel()
                self._quit_later(connection)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- one host ------------------------------------------------------------------

    async def _try_host(
        self, host: Host, delivery: _Delivery, last_mx: bool
    ) -> _Report | None:
        """One transaction on `host`; the failure left for the pending, if any."""
        key = (host.address, host.port)
        destination = self._destination(key)
        destination.users += 1
        try:
            async with destination.limit:
                return await self._transact_on_some_connection(
                    host, destination, delivery, last_mx
                )
        finally:
            destination.users -= 1
            if not destination.users and not destination.idle:
                self._destinations.pop(key, None)

    async def _transact_on_some_connection(
        self,
        host: Host,
        destination: _Destination,
        delivery: _Delivery,
        last_mx: bool,
    ) -> _Report | None:
        while True:
            connection = self._take_idle(destination)
            reused = connection is not None
            if connection is None:
                opened = await self._open(host)
                if isinstance(opened, _Report):
                    return opened
                connection = opened
            try:
                failure = await self._transaction(connection, delivery, last_mx, reused)
            except _StaleConnection:
                log.debug("%s: kept connection was closed; reconnecting", host.name)
                connection.smtp.close()
                continue
            except BaseException:
                connection.smtp.close()
                raise
            self._release(destination, connection)
            return failure

    def _destination(self, key: tuple[str, int]) -> _Destination:
        destination = self._destinations.get(key)
        if destination is None:
            destination = _Destination(asyncio.Semaphore(self._per_destination))
            self._destinations[key] = destination
        return destination

    # -- the idle pool -------------------------------------------------------------

    def _take_idle(self, destination: _Destination) -> _Connection | None:
        """The most recently used idle connection that is still open."""
        while destination.idle:
            connection = destination.idle.pop()
            if connection.idle_timer is not None:
                connection.idle_timer.cancel()
                connection.idle_timer = None
            if connection.is_open and not connection.too_old:
                log.debug("%s: reusing connection", connection.label)
                return connection
            self._quit_later(connection)
        return None

    def _release(self, destination: _Destination, connection: _Connection) -> None:
        """Keep an open connection for the next message, or close it."""
        if self._closed or not connection.is_open or connection.too_old:
            self._quit_later(connection)
            return
        loop = asyncio.get_running_loop()
        connection.idle_timer = loop.call_later(
            self._idle_timeout, self._expire, destination, connection
        )
        destination.idle.append(connection)

    def _expire(self, destination: _Destination, connection: _Connection) -> None:
        connection.idle_timer = None
        if connection in destination.idle:
            destination.idle.remove(connection)
            log.debug("%s: idle, closing", connection.label)
            self._quit_later(connection)
        key = (connection.host.address, connection.host.port)
        unused = not destination.users and not destination.idle
        if unused and self._destinations.get(key) is destination:
            del self._destinations[key]

    def _quit_later(self, connection: _Connection) -> None:
        """Say QUIT and close, in the background (nobody waits for it)."""
        if not connection.is_open:
            connection.smtp.close()
            return
        task = asyncio.get_running_loop().create_task(_quit(connection.smtp))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- opening a session -----------------------------------------------------------

    async def _open(self, host: Host) -> _Connection | _Report:
        """Connect, read the greeting, EHLO, STARTTLS when offered."""
        smtp = SMTP(
            hostname=host.address,
            port=host.port,
            local_hostname=self._hostname,
            timeout=self._command_timeout,
            start_tls=False,
        )
        connection = _Connection(smtp, host)
        try:
            failure = await self._connect(connection)
            if failure is None:
                failure = await self._greet(connection)
        except BaseException:
            smtp.close()
            raise
        if failure is not None:
            self._quit_later(connection)
            return failure
        return connection

    async def _connect(self, connection: _Connection) -> _Report | None:
        """TCP connect and the greeting."""
        try:
            await connection.smtp.connect(timeout=self._connect_timeout)
        except SMTPConnectResponseError as exc:
            return _from_reply(Scope.HOST, _response(exc))
        except SMTPResponseException as exc:
            return _protocol_error(connection, "the greeting", exc)
        except _TRANSPORT_ERRORS as exc:
            return _no_reply(connection, "4.4.1", f"connect to {connection.label}", exc)
        log.debug("%s: connected", connection.label)
        return None

    async def _greet(self, connection: _Connection) -> _Report | None:
        """EHLO, and STARTTLS then EHLO again when TLS is offered."""
        try:
            failure = await self._hello(connection.smtp)
            if failure or not connection.smtp.supports_extension("starttls"):
                return failure
            failure = await self._starttls(connection)
            return failure or await self._hello(connection.smtp)
        except SMTPResponseException as exc:
            return _protocol_error(connection, "EHLO", exc)
        except _TRANSPORT_ERRORS as exc:
            connection.smtp.close()
            text = f"lost connection with {connection.label} while greeting"
            return _no_reply(connection, "4.4.2", text, exc)

    async def _hello(self, smtp: SMTP) -> _Report | None:
        """EHLO, or HELO when EHLO is refused with a 5xx (RFC 5321 4.1.1.1)."""
        try:
            await smtp.ehlo()
            return None
        except SMTPHeloError as exc:
            if not (500 <= exc.code < 600 and smtp.is_connected):
                return _from_reply(Scope.HOST, _response(exc))
        try:
            await smtp.helo()
        except SMTPHeloError as exc:
            return _from_reply(Scope.HOST, _response(exc))
        return None

    async def _starttls(self, connection: _Connection) -> _Report | None:
        try:
            await connection.smtp.starttls(
                server_hostname=connection.host.name, tls_context=self._tls
            )
        except SMTPResponseException as exc:
            return _from_reply(Scope.HOST, _response(exc))
        except ssl.SSLError as exc:
            connection.smtp.close()
            text = f"TLS handshake with {connection.label} failed"
            return _no_reply(connection, "4.7.5", text, exc)
        log.debug("%s: TLS established", connection.label)
        return None

    # -- one transaction ---------------------------------------------------------

    async def _transaction(
        self,
        connection: _Connection,
        delivery: _Delivery,
        last_mx: bool,
        reused: bool,
    ) -> _Report | None:
        """MAIL, RCPT..., DATA on an open session; the failure for the rest.

        Raises _StaleConnection when a reused connection fails at MAIL FROM
        with no reply or a 421: the server had closed it while it was idle.
        """
        if _lacks_smtputf8(connection, delivery):
            return None
        progress = ["sending MAIL FROM"]
        try:
            failure = await self._converse(connection, delivery, last_mx, progress)
        except SMTPResponseException as exc:
            return _protocol_error(connection, progress[-1], exc)
        except _TRANSPORT_ERRORS as exc:
            connection.smtp.close()
            if reused and len(progress) == 1:
                raise _StaleConnection from exc
            stage = progress[-1]
            if delivery.data_sent.intersection(delivery.pending):
                stage = "waiting for the reply to the end of DATA"
            text = f"conversation with {connection.label} failed while {stage}"
            return _no_reply(connection, "4.4.2", text, exc)
        at_mail = len(progress) == 1
        if reused and at_mail and failure and failure.code == SERVICE_NOT_AVAILABLE:
            raise _StaleConnection
        return failure

    async def _converse(
        self,
        connection: _Connection,
        delivery: _Delivery,
        last_mx: bool,
        progress: list[str],
    ) -> _Report | None:
        """The commands of one transaction; `progress` names the current one."""
        failure = await self._mail(connection, delivery)
        if failure is not None:
            return failure
        progress.append("sending RCPT TO")
        failure, accepted = await self._recipients(connection, delivery, last_mx)
        if failure is not None or not accepted:
            await self._reset(connection)
            return failure
        progress.append("sending DATA")
        return await self._data(connection, delivery, accepted)

    async def _mail(
        self, connection: _Connection, delivery: _Delivery
    ) -> _Report | None:
        smtp = connection.smtp
        envelope = delivery.envelope
        content = delivery.content(smtp.supports_extension("8bitmime"))
        options = _mail_options(smtp, envelope, content)
        reply = await smtp.execute_command(
            b"MAIL", b"FROM:" + _path(envelope.mail_from), *options
        )
        if 200 <= reply.code < 300:
            return None
        return _from_reply(Scope.MESSAGE, reply)

    async def _recipients(
        self, connection: _Connection, delivery: _Delivery, last_mx: bool
    ) -> tuple[_Report | None, list[int]]:
        """RCPT TO for each pending recipient; refusals settle that recipient."""
        accepted: list[int] = []
        for index in list(delivery.pending):
            address = delivery.envelope.recipients[index]
            command = b"TO:" + _path(address)
            reply = await connection.smtp.execute_command(b"RCPT", command)
            if 200 <= reply.code < 300:
                accepted.append(index)
                continue
            failure = _from_reply(Scope.RECIPIENT, reply)
            action = decide(failure.scope, failure.code, last_mx=last_mx)
            if action is Action.TRY_NEXT_MX or not connection.is_open:
                return failure, accepted  # a 421: the host, not the recipient
            delivery.settle(index, action, failure, connection.host)
        return None, accepted

    async def _data(
        self, connection: _Connection, delivery: _Delivery, accepted: list[int]
    ) -> _Report | None:
        smtp = connection.smtp
        reply = await smtp.execute_command(b"DATA")
        if reply.code < 400 and reply.code != 354:  # confused: do not talk on
            smtp.close()
            text = f"unexpected reply to DATA: {_verbatim(reply)}"
            return _Report(Scope.MESSAGE, None, None, text)
        if reply.code != 354:
            await self._reset(connection)
            return _from_reply(Scope.MESSAGE, reply)

        eight_bit_ok = smtp.supports_extension("8bitmime")
        assert smtp.protocol is not None
        smtp.protocol.write(_wire_form(delivery.content(eight_bit_ok)))
        delivery.data_sent.update(accepted)
        final = await smtp.protocol.read_response(timeout=self._data_timeout)

        result = _from_reply(Scope.MESSAGE, final)
        if 200 <= final.code < 300:
            for index in accepted:
                delivery.settle(index, Action.DELIVERED, result, connection.host)
            return None
        if final.code == SERVICE_NOT_AVAILABLE:
            smtp.close()
        return result

    async def _reset(self, connection: _Connection) -> None:
        """RSET after an unfinished transaction; a failing RSET closes."""
        if not connection.is_open:
            return
        try:
            reply = await connection.smtp.execute_command(b"RSET")
        except (*_TRANSPORT_ERRORS, SMTPResponseException):
            reply = SMTPResponse(-1, "")
        if reply.code != 250:
            connection.smtp.close()


# -- helpers ----------------------------------------------------------------------


def _opportunistic_tls_context() -> ssl.SSLContext:
    # Limitation: opportunistic TLS (RFC 3207 4.1 allows it); the server's
    # certificate is not checked, so an active attacker can read the mail.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _quit(smtp: SMTP) -> None:
    try:
        await smtp.quit(timeout=QUIT_TIMEOUT)
    except Exception:  # the server may already be gone; we close anyway
        pass
    finally:
        smtp.close()


def _lacks_smtputf8(connection: _Connection, delivery: _Delivery) -> bool:
    """Bounce everyone (5.6.7) when SMTPUTF8 is needed but not offered.

    No downgrade exists for UTF-8 addresses (RFC 6531 3.4).
    """
    if not delivery.envelope.smtputf8:
        return False
    if connection.smtp.supports_extension("smtputf8"):
        return False
    text = f"SMTPUTF8 is required, but was not offered by {connection.label}"
    refusal = _Report(Scope.MESSAGE, None, "5.6.7", text)
    delivery.settle_pending(Action.BOUNCE, refusal, connection.host)
    return True


def _mail_options(smtp: SMTP, envelope: Envelope, content: bytes) -> list[bytes]:
    options = []
    if smtp.supports_extension("size"):
        options.append(b"SIZE=%d" % len(content))
    if not content.isascii() and smtp.supports_extension("8bitmime"):
        options.append(b"BODY=8BITMIME")
    if envelope.smtputf8:
        options.append(b"SMTPUTF8")
    return options


def _path(address: str) -> bytes:
    """<address> for MAIL/RCPT; UTF-8 bytes when the address needs SMTPUTF8."""
    return b"<" + address.encode("utf-8") + b">"


def _wire_form(content: bytes) -> bytes:
    """The content as DATA sends it: CRLF lines, dot-stuffed, then CRLF.CRLF.

    Counting is ~10x faster than a regular expression on the usual,
    already well-formed content; the regex runs only on stray line ends.
    """
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
        content = _LINE_END.sub(b"\r\n", content)
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\n.", b"\n..") + b".\r\n"


def _from_reply(scope: Scope, reply: SMTPResponse) -> _Report:
    """A result from a server reply, kept verbatim with its enhanced code.

    A code that cannot end the step (1xx, 3xx, garbage, and 2xx except for
    MESSAGE, where only the final dot's reply gets here with one) is kept
    in the text only: for `decide` it is no reply at all.
    """
    kind = reply.code // 100
    ends = kind in (4, 5) or (kind == 2 and scope is Scope.MESSAGE)
    code = reply.code if ends else None
    return _Report(scope, code, _enhanced(reply), _verbatim(reply))


def _response(exc: SMTPResponseException) -> SMTPResponse:
    return SMTPResponse(exc.code, exc.message)


def _verbatim(reply: SMTPResponse) -> str:
    """The reply as one line: "550 5.1.1 <x>: user unknown"."""
    text = " ".join(line.strip() for line in reply.message.splitlines())
    return f"{reply.code} {text}".rstrip()


def _enhanced(reply: SMTPResponse) -> str | None:
    """The RFC 3463 code at the start of a reply, if its class matches."""
    match = _ENHANCED.match(reply.message)
    if match is None or int(match.group(1)) != reply.code // 100:
        return None
    return match.group(0)


def _protocol_error(
    connection: _Connection, stage: str, exc: SMTPResponseException
) -> _Report:
    """A reply aiosmtplib could not parse: the session cannot go on."""
    connection.smtp.close()
    text = f"protocol error with {connection.label} at {stage}: {exc.message}"
    return _Report(Scope.CONNECTION, None, "4.5.0", text)


def _no_reply(
    connection: _Connection, enhanced: str, what: str, exc: BaseException
) -> _Report:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError) and "timed out" not in reason.lower():
        reason = f"timed out ({reason})"
    return _Report(Scope.CONNECTION, None, enhanced, f"{what}: {reason}")
