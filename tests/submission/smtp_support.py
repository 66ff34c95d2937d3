"""What the submission server tests share: fakes, clients, helpers.

The fakes record every call so tests can say what the server asked. The
raw client speaks bytes over a real socket, for the misbehaving clients
that smtplib and aiosmtplib will not imitate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailcarrier.settings import Settings
from mailcarrier.submission.principal import Accepted, Principal, Refusal

USER = "alice"
PASSWORD = "s3cret-pass"
SENDER = "donotreply@contoso.example"
ALICE = Principal("res-1", "contoso", "app-1", "password", USER)
TRUSTED = Principal("res-2", "printers", None, "trusted")


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


class FakeAuthenticator:
    """Knows one user; trusts the addresses it is given."""

    def __init__(self, trusted: tuple[str, ...] = ()) -> None:
        self.users = {USER: PASSWORD}
        self.trusted_ips = trusted
        self.logins: list[tuple[str, str]] = []
        self.trust_queries: list[str] = []
        self.broken = False

    async def login(self, username: str, password: str) -> Principal | None:
        self.logins.append((username, password))
        if self.broken:
            raise RuntimeError("database unavailable")
        return ALICE if self.users.get(username) == password else None

    async def trusted(self, peer_ip: str) -> Principal | None:
        self.trust_queries.append(peer_ip)
        return TRUSTED if peer_ip in self.trusted_ips else None


@dataclass(frozen=True)
class Submission:
    principal: Principal
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    smtputf8: bool


@dataclass
class FakeAcceptor:
    """Accepts everything unless told otherwise; keeps what it accepted."""

    refused_senders: dict[str, Refusal] = field(default_factory=dict)
    result: Refusal | None = None
    fail: bool = False
    gate: asyncio.Event | None = None
    sender_checks: list[tuple[Principal, str]] = field(default_factory=list)
    accepted: list[Submission] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def check_sender(self, principal: Principal, address: str) -> Refusal | None:
        self.sender_checks.append((principal, address))
        return self.refused_senders.get(address)

    async def accept(
        self,
        principal: Principal,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        *,
        smtputf8: bool,
    ) -> Accepted | Refusal:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("disk full")
        if self.result is not None:
            return self.result
        self.accepted.append(
            Submission(principal, mail_from, rcpt_tos, content, smtputf8)
        )
        number = len(self.accepted)
        return Accepted(f"msg-{number}", f"<{number}@contoso.example>")

    @property
    def contents(self) -> list[bytes]:
        return [submission.content for submission in self.accepted]


@dataclass
class Harness:
    port: int
    settings: Settings
    authenticator: FakeAuthenticator
    acceptor: FakeAcceptor
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


StartServer = Callable[..., Awaitable[Harness]]


@dataclass(frozen=True)
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return self.lines[-1]

    @property
    def keywords(self) -> list[str]:
        return [line[4:] for line in self.lines[1:]]


class RawClient:
    """An SMTP client that sends exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, harness: Harness, *, tls: bool = False, greeting: bool = True
    ) -> RawClient:
        context = harness.client_context if tls else None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            harness.port,
            ssl=context,
            server_hostname="localhost" if context else None,
        )
        client = cls(reader, writer)
        if greeting:
            assert (await client.reply()).code == 220
        return client

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def reply(self, timeout: float = 2.0) -> Reply:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"closed by the server after {lines}")
            line = raw.decode().rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                return Reply(int(line[:3]), lines)

    async def command(self, line: str) -> Reply:
        await self.send(line + "\r\n")
        return await self.reply()

    async def starttls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context, server_hostname="localhost")

    async def read_until_closed(self, timeout: float) -> bytes:
        """Everything the server still sends, once it has closed; else raise."""
        data = b""
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(4096):
                data += chunk
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def plain_response(
    user: str = USER, password: str = PASSWORD, authzid: str = ""
) -> str:
    blob = f"{authzid}\0{user}\0{password}".encode()
    return base64.b64encode(blob).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def secure_client(harness: Harness) -> RawClient:
    """Connected, STARTTLS done, EHLO answered; not authenticated."""
    client = await RawClient.connect(harness)
    assert (await client.command("EHLO client.test")).code == 250
    assert (await client.command("STARTTLS")).code == 220
    await client.starttls(harness.client_context)
    assert (await client.command("EHLO client.test")).code == 250
    return client


async def logged_in_client(harness: Harness) -> RawClient:
    """A client ready for MAIL: STARTTLS and AUTH PLAIN done."""
    client = await secure_client(harness)
    reply = await client.command(f"AUTH PLAIN {plain_response()}")
    assert reply.code == 235, reply
    return client


def message(sender: str = SENDER, body: str = "Hello.\r\n", *headers: str) -> bytes:
    lines = [f"From: {sender}", "To: bob@example.net", "Subject: hi", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


async def send_message(
    client: RawClient,
    content: bytes,
    *,
    sender: str = SENDER,
    recipients: tuple[str, ...] = ("bob@example.net",),
) -> Reply:
    """One full transaction; ``content`` is sent as is, then ``.<CRLF>``."""
    assert (await client.command(f"MAIL FROM:<{sender}>")).code == 250
    for recipient in recipients:
        assert (await client.command(f"RCPT TO:<{recipient}>")).code == 250
    assert (await client.command("DATA")).code == 354
    await client.send(content + b".\r\n")
    return await client.reply()
