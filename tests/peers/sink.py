"""An SMTP sink for tests and benchmarks, with scripted misbehaviour.

`SmtpSink` listens on 127.0.0.1 and an ephemeral port and runs its own asyncio
event loop in a background thread, so synchronous tests, async tests and a
service under test in another process can all talk to it. It records every
completed DATA transfer (envelope, exact dot-unstuffed CRLF bytes, peer, TLS,
times) behind thread-safe accessors:

    with SmtpSink() as sink:                      # behaviour "accept"
        send_something_to(sink.host, sink.port)
        [message] = sink.wait_for(1, timeout=5)
        assert message.recipients == ("rcpt@example.test",)

    with SmtpSink("tempfail_then_accept", failures=2, per="recipient") as sink:
        ...

Behaviours (a name plus options, or a `Behaviour` instance; subclass
`Behaviour` for anything else): accept, reject_550 (at="rcpt" | "data"),
tempfail_then_accept (failures=N, per="message" | "recipient"), greeting_421,
close_on_connect, slow_data (delay=seconds). A per-recipient `rcpt_hook`
callable can override the reply to any RCPT.

The server is a small SMTP implementation on raw asyncio streams rather than
aiosmtpd, because aiosmtpd cannot answer the connection with 421 or close
before its greeting, and because the accept path must stay cheap enough to
sink well over 1000 messages per second. It batches its replies like a
pipelining server (replies go out when no complete command is left to read).

Limits: a test peer, not an MTA. No AUTH, CHUNKING/BDAT, DSN or implicit TLS;
the end of DATA must be CRLF.CRLF (a bare LF before the dot is not an end of
data); command lines are capped at 4096 bytes; the message size is only capped
when `size_limit` is set. `pipelined` on a message is best effort: True proves
the client pipelined, False does not prove it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import ipaddress
import json
import logging
import re
import signal
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "BEHAVIOURS",
    "Accept",
    "Behaviour",
    "CloseOnConnect",
    "Greeting421",
    "ReceivedMessage",
    "Reject550",
    "Reply",
    "Session",
    "SinkStats",
    "SlowData",
    "SmtpSink",
    "TempfailThenAccept",
    "make_behaviour",
    "smtp_sink",
    "smtp_sink_factory",
]

_log = logging.getLogger(__name__)

MAX_LINE = 4096
_READ_SIZE = 256 * 1024
_MAIL_RE = re.compile(r"FROM:\s*<([^<>]*)>\s*(.*)\Z", re.IGNORECASE | re.DOTALL)
_RCPT_RE = re.compile(r"TO:\s*<([^<>]+)>\s*(.*)\Z", re.IGNORECASE | re.DOTALL)


class Reply(NamedTuple):
    """An SMTP reply; a text with newlines becomes a multi-line reply."""

    code: int
    text: str

    def encode(self) -> bytes:
        lines = self.text.split("\n")
        head = "".join(f"{self.code}-{line}\r\n" for line in lines[:-1])
        return f"{head}{self.code} {lines[-1]}\r\n".encode()


ReplyLike = Reply | tuple[int, str]
RcptHook = Callable[[str], ReplyLike | None]

OK = Reply(250, "2.0.0 OK")
OK_SENDER = Reply(250, "2.1.0 Sender OK")
OK_RECIPIENT = Reply(250, "2.1.5 Recipient OK")
OK_QUEUED = Reply(250, "2.0.0 OK: queued")
TEMPFAIL = Reply(451, "4.3.0 Temporary failure, please try again later")
SERVICE_NOT_AVAILABLE = Reply(421, "4.3.2 Service not available")


def as_reply(value: ReplyLike) -> Reply:
    return value if isinstance(value, Reply) else Reply(int(value[0]), value[1])


# -- recorded data ---------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """State of one client connection, as the behaviour hooks see it."""

    connection_id: int
    peer: tuple[str, int]
    hostname: str
    tls: bool = False
    tls_version: str | None = None
    helo: str | None = None
    esmtp: bool = False
    sender: str | None = None
    mail_options: tuple[str, ...] = ()
    recipients: list[str] = field(default_factory=list)
    pipelined: bool = False
    transactions: int = 0

    def reset_transaction(self) -> None:
        self.sender = None
        self.mail_options = ()
        self.recipients = []
        self.pipelined = False


@dataclass(eq=False)
class ReceivedMessage:
    """One completed DATA transfer; `data` is dot-unstuffed, CRLF line ends.

    `data` holds only the header section when the sink runs with
    keep_body=False; `size` is always the full size.
    """

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    size: int
    peer: tuple[str, int]
    tls: bool
    helo: str | None
    mail_options: tuple[str, ...]
    connection_id: int
    pipelined: bool
    received_at: float
    replied_at: float = 0.0
    reply: Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.reply is not None and 200 <= self.reply.code < 300

    @property
    def has_8bit(self) -> bool:
        return not self.data.isascii()

    @cached_property
    def _headers(self) -> list[tuple[str, str]]:
        return parse_headers(self.data)

    def header(self, name: str) -> str | None:
        """The first header of that name, unfolded and stripped, or None."""
        wanted = name.lower()
        for key, value in self._headers:
            if key == wanted:
                return value
        return None

    @property
    def message_id(self) -> str | None:
        return self.header("message-id")


def parse_headers(data: bytes) -> list[tuple[str, str]]:
    """(lower-cased name, unfolded value) pairs of the header section."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[: end + 2]
    text = block.decode("utf-8", "surrogateescape")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", text)
    headers = []
    for line in unfolded.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name and " " not in name:
            headers.append((name.strip().lower(), value.strip()))
    return headers


@dataclass(frozen=True)
class SinkStats:
    """Counters; `transactions` counts accepted MAIL commands."""

    connections: int = 0
    tls_sessions: int = 0
    transactions: int = 0
    recipients_accepted: int = 0
    recipients_rejected: int = 0
    data_transfers: int = 0
    messages: int = 0


# -- behaviours ------------------------------------------------------------------


class Behaviour:
    """Decides the replies. Every hook runs in the sink's event loop thread.

    Returning None from `on_connect` closes without a greeting; returning None
    from `on_data` closes without replying (the message is still recorded).
    """

    name = "accept"

    async def on_connect(self, session: Session) -> Reply | None:
        return Reply(220, f"{session.hostname} ESMTP mailcarrier test sink")

    async def on_mail(self, session: Session, sender: str) -> Reply:
        return OK_SENDER

    async def on_rcpt(self, session: Session, recipient: str) -> Reply:
        return OK_RECIPIENT

    async def on_data(self, session: Session, message: ReceivedMessage) -> Reply | None:
        return OK_QUEUED


class Accept(Behaviour):
    """250 for everything."""


class Reject550(Behaviour):
    """550 5.1.1 to every RCPT (at="rcpt") or 550 5.7.1 after DATA (at="data")."""

    name = "reject_550"

    def __init__(self, at: Literal["rcpt", "data"] = "rcpt") -> None:
        if at not in ("rcpt", "data"):
            raise ValueError("at must be 'rcpt' or 'data'")
        self.at = at

    async def on_rcpt(self, session: Session, recipient: str) -> Reply:
        if self.at == "rcpt":
            return Reply(550, f"5.1.1 <{recipient}>: Recipient address rejected")
        return OK_RECIPIENT

    async def on_data(self, session: Session, message: ReceivedMessage) -> Reply:
        if self.at == "data":
            return Reply(550, "5.7.1 Message rejected by policy")
        return OK_QUEUED


class TempfailThenAccept(Behaviour):
    """451 4.3.0 for the first `failures` attempts, then 250.

    per="message": counted per Message-ID (or per content hash if there is
    none) and answered after the final dot. per="recipient": counted per
    recipient address (case-insensitive) and answered to RCPT.
    """

    name = "tempfail_then_accept"

    def __init__(
        self, failures: int = 1, per: Literal["message", "recipient"] = "message"
    ) -> None:
        if per not in ("message", "recipient"):
            raise ValueError("per must be 'message' or 'recipient'")
        self.failures = failures
        self.per = per
        self.attempts: Counter[str] = Counter()

    def _fails(self, key: str) -> bool:
        self.attempts[key] += 1
        return self.attempts[key] <= self.failures

    async def on_rcpt(self, session: Session, recipient: str) -> Reply:
        if self.per == "recipient" and self._fails(recipient.lower()):
            return TEMPFAIL
        return OK_RECIPIENT

    async def on_data(self, session: Session, message: ReceivedMessage) -> Reply:
        if self.per == "message" and self._fails(_message_key(message)):
            return TEMPFAIL
        return OK_QUEUED


def _message_key(message: ReceivedMessage) -> str:
    return message.message_id or hashlib.sha256(message.data).hexdigest()


class Greeting421(Behaviour):
    """Answers the connection with 421 4.3.2 and closes it."""

    name = "greeting_421"

    async def on_connect(self, session: Session) -> Reply:
        return SERVICE_NOT_AVAILABLE


class CloseOnConnect(Behaviour):
    """Accepts the TCP connection and closes it at once, without a greeting."""

    name = "close_on_connect"

    async def on_connect(self, session: Session) -> None:
        return None


class SlowData(Behaviour):
    """Holds the reply to the final dot for `delay` seconds, then 250."""

    name = "slow_data"

    def __init__(self, delay: float = 30.0) -> None:
        self.delay = delay

    async def on_data(self, session: Session, message: ReceivedMessage) -> Reply:
        await asyncio.sleep(self.delay)
        return OK_QUEUED


BEHAVIOURS: dict[str, type[Behaviour]] = {
    "accept": Accept,
    "reject_550": Reject550,
    "tempfail_then_accept": TempfailThenAccept,
    "greeting_421": Greeting421,
    "close_on_connect": CloseOnConnect,
    "slow_data": SlowData,
}


def make_behaviour(behaviour: str | Behaviour, **options: Any) -> Behaviour:
    """A behaviour from its name and options, or the given instance."""
    if isinstance(behaviour, Behaviour):
        if options:
            raise TypeError("options only go with a behaviour name")
        return behaviour
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; one of {list(BEHAVIOURS)}")
    return BEHAVIOURS[behaviour](**options)


# -- TLS -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def self_signed_certificate(hostname: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for hostname, localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(alt_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


# -- protocol --------------------------------------------------------------------


class _Closed(Exception):
    """The client went away (or must be dropped)."""


class _Connection:
    """One SMTP conversation: an input buffer, batched output, and the commands."""

    def __init__(
        self,
        sink: SmtpSink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
    ) -> None:
        self.sink = sink
        self.reader = reader
        self.writer = writer
        self.session = session
        self.buf = bytearray()
        self.out: list[bytes] = []

    # I/O ---------------------------------------------------------------------
    async def flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            await self.writer.drain()

    def send(self, reply: ReplyLike) -> None:
        self.out.append(as_reply(reply).encode())

    async def _fill(self) -> None:
        await self.flush()
        chunk = await self.reader.read(_READ_SIZE)
        if not chunk:
            raise _Closed
        self.buf += chunk

    async def read_line(self) -> bytes:
        searched = 0
        while (end := self.buf.find(b"\n", searched)) < 0:
            if len(self.buf) > MAX_LINE:
                self.send(Reply(500, "5.5.2 Line too long"))
                raise _Closed
            searched = len(self.buf)
            await self._fill()
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    async def read_data(self) -> bytes:
        """Message content up to CRLF.CRLF, dot-unstuffed, keeping its last CRLF."""
        while len(self.buf) < 3:
            await self._fill()
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return b""
        searched = 0
        while (end := self.buf.find(b"\r\n.\r\n", searched)) < 0:
            searched = max(0, len(self.buf) - 4)
            await self._fill()
        content = bytes(self.buf[: end + 2])
        del self.buf[: end + 5]
        return _unstuff(content)

    def more_pending(self) -> bool:
        return b"\n" in self.buf

    # conversation ------------------------------------------------------------
    async def run(self) -> None:
        greeting = await self.sink.behaviour.on_connect(self.session)
        if greeting is None:
            return
        greeting = as_reply(greeting)
        self.send(greeting)
        if greeting.code != 220:
            return
        while await self.dispatch(await self.read_line()):
            pass

    async def dispatch(self, line: bytes) -> bool:
        """Handle one command line; False ends the connection."""
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        handler = self._handlers.get(verb.upper())
        if handler is None:
            self.send(Reply(500, "5.5.2 Error: command not recognized"))
            return True
        return await handler(self, arg.strip())

    async def ehlo(self, arg: str) -> bool:
        if not arg:
            self.send(Reply(501, "5.5.4 Syntax: EHLO hostname"))
            return True
        self._greeted(arg, esmtp=True)
        lines = [f"{self.sink.hostname} greets {arg}", *self.sink._extensions(self)]
        self.send(Reply(250, "\n".join(lines)))
        return True

    async def helo(self, arg: str) -> bool:
        if not arg:
            self.send(Reply(501, "5.5.4 Syntax: HELO hostname"))
            return True
        self._greeted(arg, esmtp=False)
        self.send(Reply(250, self.sink.hostname))
        return True

    def _greeted(self, name: str, esmtp: bool) -> None:
        self.session.helo = name
        self.session.esmtp = esmtp
        self.session.reset_transaction()

    async def mail(self, arg: str) -> bool:
        self.send(await self._mail_reply(arg))
        return True

    async def _mail_reply(self, arg: str) -> Reply:
        session = self.session
        if session.helo is None:
            return Reply(503, "5.5.1 Error: send HELO/EHLO first")
        if session.sender is not None:
            return Reply(503, "5.5.1 Error: nested MAIL command")
        if self.sink.require_starttls and not session.tls:
            return Reply(530, "5.7.0 Must issue a STARTTLS command first")
        match = _MAIL_RE.match(arg)
        if match is None:
            return Reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
        sender, options = match.group(1), tuple(match.group(2).split())
        problem = self.sink._check_mail_options(sender, options)
        if problem is not None:
            return problem
        reply = as_reply(await self.sink.behaviour.on_mail(session, sender))
        if 200 <= reply.code < 300:
            session.sender, session.mail_options = sender, options
            session.pipelined = self.more_pending()
            session.transactions += 1
            self.sink._count("transactions")
        return reply

    async def rcpt(self, arg: str) -> bool:
        self.send(await self._rcpt_reply(arg))
        return True

    async def _rcpt_reply(self, arg: str) -> Reply:
        session = self.session
        if session.sender is None:
            return Reply(503, "5.5.1 Error: need MAIL command")
        match = _RCPT_RE.match(arg)
        if match is None:
            return Reply(501, "5.5.4 Syntax: RCPT TO:<address>")
        recipient, options = match.group(1), match.group(2).split()
        if options:
            return Reply(555, f"5.5.4 Unsupported parameter {options[0]}")
        utf8 = _has_option(session.mail_options, "SMTPUTF8")
        if not recipient.isascii() and not utf8:
            return Reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
        session.pipelined = session.pipelined or self.more_pending()
        reply = await self.sink._recipient_reply(session, recipient)
        if 200 <= reply.code < 300:
            session.recipients.append(recipient)
            self.sink._count("recipients_accepted")
        else:
            self.sink._count("recipients_rejected")
        return reply

    async def data(self, arg: str) -> bool:
        session = self.session
        problem = self._data_problem(arg)
        if problem is not None:
            self.send(problem)
            return True
        self.send(Reply(354, "End data with <CR><LF>.<CR><LF>"))
        content = await self.read_data()
        message = self.sink._new_message(session, content, time.time())
        reply = await self.sink._data_reply(session, message)
        self.sink._record(message, reply)
        session.reset_transaction()
        if reply is None:
            return False
        self.send(reply)
        return True

    def _data_problem(self, arg: str) -> Reply | None:
        if arg:
            return Reply(501, "5.5.4 Syntax: DATA")
        if self.session.sender is None:
            return Reply(503, "5.5.1 Error: need MAIL command")
        if not self.session.recipients:
            return Reply(554, "5.5.1 Error: no valid recipients")
        return None

    async def rset(self, arg: str) -> bool:
        self.session.reset_transaction()
        self.send(OK)
        return True

    async def noop(self, arg: str) -> bool:
        self.send(OK)
        return True

    async def vrfy(self, arg: str) -> bool:
        self.send(Reply(252, "2.0.0 Cannot VRFY user"))
        return True

    async def help(self, arg: str) -> bool:
        self.send(Reply(214, "2.0.0 See RFC 5321"))
        return True

    async def quit(self, arg: str) -> bool:
        self.send(Reply(221, "2.0.0 Bye"))
        return False

    async def starttls(self, arg: str) -> bool:
        context = self.sink.tls_context
        if context is None or self.session.tls:
            self.send(Reply(502, "5.5.1 Error: command not implemented"))
            return True
        if arg:
            self.send(Reply(501, "5.5.4 Syntax: STARTTLS"))
            return True
        self.send(Reply(220, "2.0.0 Ready to start TLS"))
        await self.flush()
        self.buf.clear()
        try:
            await self.writer.start_tls(context)
        except (ssl.SSLError, OSError) as error:
            raise _Closed from error
        self._tls_started()
        return True

    def _tls_started(self) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        self.session.tls = True
        self.session.tls_version = ssl_object.version() if ssl_object else None
        self.session.helo = None
        self.session.reset_transaction()
        self.sink._count("tls_sessions")

    _handlers = {
        "EHLO": ehlo,
        "HELO": helo,
        "MAIL": mail,
        "RCPT": rcpt,
        "DATA": data,
        "RSET": rset,
        "NOOP": noop,
        "VRFY": vrfy,
        "HELP": help,
        "QUIT": quit,
        "STARTTLS": starttls,
    }


def _unstuff(content: bytes) -> bytes:
    if content.startswith(b".."):
        content = content[1:]
    return content.replace(b"\r\n..", b"\r\n.")


def _has_option(options: tuple[str, ...], name: str) -> bool:
    return any(option.partition("=")[0].upper() == name for option in options)


# -- the sink --------------------------------------------------------------------


class SmtpSink:
    """SMTP server in a background thread, recording what it receives."""

    def __init__(
        self,
        behaviour: str | Behaviour = "accept",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostname: str = "sink.test",
        starttls: bool = False,
        require_starttls: bool = False,
        eightbitmime: bool = True,
        smtputf8: bool = True,
        pipelining: bool = True,
        size_limit: int | None = None,
        keep_body: bool = True,
        rcpt_hook: RcptHook | None = None,
        **behaviour_options: Any,
    ) -> None:
        self.behaviour = make_behaviour(behaviour, **behaviour_options)
        self.host, self.port, self._requested_port = host, 0, port
        self.hostname = hostname
        self.require_starttls = require_starttls
        self.eightbitmime, self.smtputf8 = eightbitmime, smtputf8
        self.pipelining, self.size_limit = pipelining, size_limit
        self.keep_body = keep_body
        self.rcpt_hook = rcpt_hook
        self.certificate_pem: bytes | None = None
        self.tls_context: ssl.SSLContext | None = None
        if starttls or require_starttls:
            self.certificate_pem, key_pem = self_signed_certificate(hostname)
            self.tls_context = _server_context(self.certificate_pem, key_pem)
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._attempts: list[ReceivedMessage] = []
        self._stats: dict[str, int] = dict.fromkeys(asdict(SinkStats()), 0)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- protocol decisions (called from the loop thread) ---------------------
    def _extensions(self, connection: _Connection) -> list[str]:
        names = []
        if self.pipelining:
            names.append("PIPELINING")
        if self.size_limit is not None:
            names.append(f"SIZE {self.size_limit}")
        if self.eightbitmime:
            names.append("8BITMIME")
        if self.smtputf8:
            names.append("SMTPUTF8")
        if self.tls_context is not None and not connection.session.tls:
            names.append("STARTTLS")
        return [*names, "ENHANCEDSTATUSCODES"]

    def _check_mail_options(
        self, sender: str, options: tuple[str, ...]
    ) -> Reply | None:
        """Reply for an unsupported or violated MAIL parameter, else None."""
        for option in options:
            problem = self._check_mail_option(option)
            if problem is not None:
                return problem
        if not sender.isascii() and not _has_option(options, "SMTPUTF8"):
            return Reply(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
        return None

    def _check_mail_option(self, option: str) -> Reply | None:
        key, _, value = option.partition("=")
        key, value = key.upper(), value.upper()
        eight_bit_ok = value == "8BITMIME" and self.eightbitmime
        if key == "BODY" and (value == "7BIT" or eight_bit_ok):
            return None
        if key == "SMTPUTF8" and self.smtputf8 and not value:
            return None
        if key == "SIZE" and self.size_limit is not None and value.isdigit():
            if int(value) > self.size_limit:
                return Reply(552, "5.3.4 Message size exceeds fixed limit")
            return None
        return Reply(555, f"5.5.4 Unsupported parameter {option}")

    async def _recipient_reply(self, session: Session, recipient: str) -> Reply:
        if self.rcpt_hook is not None:
            override = self.rcpt_hook(recipient)
            if override is not None:
                return as_reply(override)
        return as_reply(await self.behaviour.on_rcpt(session, recipient))

    async def _data_reply(
        self, session: Session, message: ReceivedMessage
    ) -> Reply | None:
        if self.size_limit is not None and message.size > self.size_limit:
            return Reply(552, "5.3.4 Message size exceeds fixed limit")
        reply = await self.behaviour.on_data(session, message)
        return None if reply is None else as_reply(reply)

    def _new_message(
        self, session: Session, content: bytes, received_at: float
    ) -> ReceivedMessage:
        kept = content if self.keep_body else _header_section(content)
        return ReceivedMessage(
            sender=session.sender or "",
            recipients=tuple(session.recipients),
            data=kept,
            size=len(content),
            peer=session.peer,
            tls=session.tls,
            helo=session.helo,
            mail_options=session.mail_options,
            connection_id=session.connection_id,
            pipelined=session.pipelined,
            received_at=received_at,
        )

    def _record(self, message: ReceivedMessage, reply: Reply | None) -> None:
        message.reply, message.replied_at = reply, time.time()
        with self._cond:
            self._attempts.append(message)
            self._stats["data_transfers"] += 1
            if message.accepted:
                self._messages.append(message)
                self._stats["messages"] += 1
            self._cond.notify_all()

    def _count(self, counter: str) -> None:
        with self._cond:
            self._stats[counter] += 1

    # -- thread-safe accessors ------------------------------------------------
    def messages(self) -> list[ReceivedMessage]:
        """Messages whose final dot got a 2xx reply, in arrival order."""
        with self._cond:
            return list(self._messages)

    def attempts(self) -> list[ReceivedMessage]:
        """Every completed DATA transfer, whatever the reply (or none)."""
        with self._cond:
            return list(self._attempts)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until `count` messages were accepted; raise TimeoutError if not."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages) >= count, timeout):
                got = len(self._messages)
                raise TimeoutError(f"expected {count} messages, got {got}")
            return list(self._messages)

    def wait_until(
        self, predicate: Callable[[SmtpSink], bool], timeout: float = 10.0
    ) -> None:
        """Poll `predicate(sink)` until true; raise TimeoutError if it never is."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(0.01)

    def count_by_message_id(self) -> dict[str, int]:
        """Accepted copies per Message-ID (messages without one are left out)."""
        counts = Counter(m.message_id for m in self.messages())
        counts.pop(None, None)
        return dict(counts)

    def stats(self) -> SinkStats:
        with self._cond:
            return SinkStats(**self._stats)

    @property
    def connections(self) -> int:
        return self.stats().connections

    @property
    def transactions(self) -> int:
        return self.stats().transactions

    def clear(self) -> None:
        """Forget recorded messages and reset the counters."""
        with self._cond:
            self._messages.clear()
            self._attempts.clear()
            self._stats = dict.fromkeys(self._stats, 0)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this sink's certificate."""
        if self.certificate_pem is None:
            raise RuntimeError("this sink has no STARTTLS")
        return ssl.create_default_context(cadata=self.certificate_pem.decode())

    # -- lifecycle ------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> SmtpSink:
        if self._thread is not None:
            raise RuntimeError("SmtpSink already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run,
            args=(ready, errors),
            name=f"smtp-sink-{self.behaviour.name}",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(timeout) or errors:
            self._thread.join(timeout)
            self._thread = None
            raise RuntimeError(f"SmtpSink failed to start: {errors}")
        return self

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(self._listen())
        except Exception as error:  # reported to start()
            errors.append(error)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(
            self._handle, self.host, self._requested_port, backlog=1024
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), 2)
        except asyncio.TimeoutError:
            _log.warning("smtp sink: server did not close in time")
        await asyncio.sleep(0)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        connection = _Connection(self, reader, writer, self._new_session(writer))
        try:
            await connection.run()
            await connection.flush()
        except (_Closed, ConnectionError, ssl.SSLError):
            await _flush_quietly(connection)
        except asyncio.CancelledError:
            pass  # stop(): end quietly, asyncio 3.11 streams log cancelled tasks
        except Exception:
            _log.exception("smtp sink: connection failed")
        finally:
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)

    def _new_session(self, writer: asyncio.StreamWriter) -> Session:
        with self._cond:
            self._stats["connections"] += 1
            number = self._stats["connections"]
        peer = writer.get_extra_info("peername")
        return Session(number, (peer[0], peer[1]), self.hostname)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("SmtpSink thread did not stop")
        self._thread, self._loop, self._server = None, None, None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


async def _flush_quietly(connection: _Connection) -> None:
    try:
        await connection.flush()
    except (ConnectionError, ssl.SSLError, RuntimeError):
        pass


def _header_section(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    return content if end < 0 else content[: end + 4]


# -- pytest fixtures (import them into a conftest) -------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A started accepting sink, stopped after the test."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def smtp_sink_factory() -> Iterator[Callable[..., SmtpSink]]:
    """make(behaviour, **options) -> started sink; all are stopped afterwards."""
    sinks: list[SmtpSink] = []

    def make(behaviour: str | Behaviour = "accept", **options: Any) -> SmtpSink:
        sink = SmtpSink(behaviour, **options).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()


# -- standalone use (benchmarks) -------------------------------------------------


def _option(text: str) -> tuple[str, Any]:
    key, _, raw = text.partition("=")
    value: Any = raw
    for kind in (int, float):
        try:
            value = kind(raw)
            break
        except ValueError:
            continue
    return key, value


def main(argv: list[str] | None = None) -> None:
    """Run a sink until SIGINT/SIGTERM, then print its counters as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--behaviour", default="accept", choices=list(BEHAVIOURS))
    parser.add_argument("--option", action="append", default=[], type=_option)
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--keep-body", action="store_true")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    sink = SmtpSink(
        args.behaviour,
        host=args.host,
        port=args.port,
        starttls=args.starttls,
        keep_body=args.keep_body,
        **dict(args.option),
    )
    with sink:
        print(f"smtp sink listening on {sink.host}:{sink.port}", flush=True)
        stopped.wait()
    counts = sink.count_by_message_id()
    summary = {**asdict(sink.stats()), "unique_message_ids": len(counts)}
    summary["duplicates"] = sum(n - 1 for n in counts.values())
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
