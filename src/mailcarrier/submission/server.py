"""The SMTP submission server: sessions on aiosmtpd, and how to start one.

``start_submission`` listens with STARTTLS (port 587 style) or implicit TLS
(port 465 style, RFC 8314) and runs one ``SubmissionSMTP`` per connection.
A session is refused everything but EHLO/HELO, STARTTLS, NOOP, RSET and
QUIT until TLS is up, unless the peer is in a trusted network; mail needs
AUTH (PLAIN or LOGIN, RFC 4954, RFC 4616) or that trust. The envelope
sender and every header From address are checked with the Acceptor, and a
message is answered 250 only once ``Acceptor.accept`` has stored it.

Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034), STARTTLS (RFC 3207),
AUTH (RFC 4954). Not offered: CHUNKING/BDAT, DSN, VRFY beyond 252, EXPN,
HELP. Token mechanisms (XOAUTH2, OAUTHBEARER) are added as further
``auth_<MECH>`` methods of ``SubmissionSMTP``, aiosmtpd's hook: such a
method takes ``(server, args)``, may use ``server.challenge_auth``, and
returns an ``AuthResult`` whose ``auth_data`` is the ``Principal``; EHLO then
advertises it after TLS.

What aiosmtpd 1.4.6 does that is replaced here, and why:

- The command loop (``_handle_client``): its gate before STARTTLS refuses
  HELO and RSET and has no way to let trusted networks through; its
  replies have no enhanced status codes; it logs every command at INFO;
  on an unexpected exception it replies with the exception's text and
  keeps reading, which after a half-read DATA would run message lines as
  commands. Here an unexpected error closes the session with 421.
- DATA: aiosmtpd reads it line by line and accepts bare LF and bare CR.
  ``read_message_data`` reads up to each ``.<CRLF>`` instead (Python work
  per occurrence, not per line), ends the data only on ``<CRLF>.<CRLF>``
  and refuses a message with a bare CR or LF, so no other end-of-data
  spelling can end a message or start a second one (SMTP smuggling).
- STARTTLS: the upgrade uses ``StreamWriter.start_tls`` with the handshake
  bounded by ``tls_handshake_timeout`` (aiosmtpd's has no bound but
  asyncio's default 60 s); what the client pipelined behind STARTTLS is
  dropped before the switch (RFC 3207 section 4.2; the STARTTLS command
  injection of CVE-2011-0411), and the session starts over after it.
- MAIL/RCPT parsing, AUTH (state rules, replies, secrets kept out of logs,
  a limit on failures), EHLO (AUTH only after TLS, also for implicit TLS,
  which aiosmtpd does not recognise as TLS), the idle timeout (now says
  421 before closing), and EOF/connection loss, which no longer cancel a
  session in the middle of ``accept()``: the loop ends at its next read.

Addresses are checked against the RFC 5321 Mailbox grammar (with RFC 6531
UTF-8), IDN domains with ``idna``. email-validator is not used here: it
refuses special-use domains such as ``.localhost`` and ``.test``, which the
default managed zone and test routes use.

Limits: command lines 512 octets (MAIL 1024, AUTH lines 12288, RFC 4954
section 4); message lines 1000 octets plus the transparency dot, measured
before the LF (so a 999-octet text line passes: lenient by one). SIZE is
counted on the wire bytes of DATA, dot-stuffing included. Address literals
(``user@[192.0.2.1]``) and the bare ``Postmaster`` recipient are refused.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import base64
import functools
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import idna
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope

from mailcarrier.settings import Settings
from mailcarrier.submission import auth, replies
from mailcarrier.submission.headers import HeaderProblem, from_addresses
from mailcarrier.submission.throttle import AuthThrottle
from mailcarrier.submission.principal import (
    Accepted,
    Acceptor,
    Authenticator,
    Principal,
    Refusal,
)

log = logging.getLogger(__name__)

# The StreamReader's buffer limit: the longest piece read at once, and
# the point where an unterminated line is given up as too long.
_READ_LIMIT = 64 * 1024
# RFC 5321 4.5.3.1.4: 512 octets with the CRLF. MAIL gets room for the
# parameters of SIZE, BODY, SMTPUTF8 and AUTH, which each raise the limit.
_COMMAND_LINE_LIMIT = 512
_LINE_LIMITS = {"MAIL": 1024, "AUTH": 12288}
# RFC 5321 4.5.3.1.6: 1000 octets with the CRLF, so 999 before the LF,
# plus one for a transparency dot.
_DATA_LINE_LIMIT = 1000
_MAX_BAD_COMMANDS = 10
_MAX_AUTH_FAILURES = 3

_COMMANDS = frozenset(
    {"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET"}
    | {"NOOP", "QUIT", "VRFY"}
)
# RFC 3207 section 4: what a client may do before TLS (RSET and HELO too).
_BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "QUIT", "RSET"})
_EXTENSIONS = ("PIPELINING", "SIZE {size}", "8BITMIME", "SMTPUTF8")


class CommandRefused(Exception):
    """A command is answered with ``reply`` instead of being carried out.

    ``bad`` counts towards the limit of nonsense a session may send;
    ``closes`` ends the session after the reply.
    """

    def __init__(self, reply: str, *, bad: bool = False, closes: bool = False):
        super().__init__(reply)
        self.reply = reply
        self.bad = bad
        self.closes = closes


# Addresses (RFC 5321 4.1.2, RFC 6531 3.3) ------------------------------------

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u0080-\ud7ff\ue000-\U0010ffff"
_ATOM = f"[{_ATEXT}{_UTF8}]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED_STRING = re.compile(
    rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
)
_LET_DIG = f"A-Za-z0-9{_UTF8}"
_LABEL = rf"[{_LET_DIG}](?:[{_LET_DIG}\-]*[{_LET_DIG}])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# <path> with quoted strings kept whole; no blanks outside them.
_ANGLE_PATH = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"\s])*)>')
_KEYWORD = re.compile(r"[A-Z0-9][A-Z0-9\-]*")


@functools.lru_cache(maxsize=4096)
def mailbox_is_valid(address: str) -> bool:
    """Whether ``address`` is an RFC 5321 Mailbox (UTF-8 allowed)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return False
    if not (_DOT_STRING.fullmatch(local) or _QUOTED_STRING.fullmatch(local)):
        return False
    if not _DOMAIN.fullmatch(domain):
        return False
    # RFC 5321 4.5.3.1: local part 64 octets, path 256 with the brackets.
    if len(local.encode()) > 64 or len(address.encode()) > 254:
        return False
    return domain.isascii() or _is_idn(domain)


def _is_idn(domain: str) -> bool:
    try:
        idna.encode(domain, uts46=True)
    except (idna.IDNAError, UnicodeError):
        return False
    return True


def split_path(text: str, syntax_reply: str) -> tuple[str, str]:
    """``<address> params`` into the address and the parameter text.

    A bare address without brackets is tolerated; a source route
    (``<@a,@b:user@c>``) is dropped, as RFC 5321 4.1.1.3 advises.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        match = _ANGLE_PATH.match(text)
        if match is None:
            raise CommandRefused(syntax_reply)
        path, rest = match.group(1), text[match.end() :]
        if rest and not rest.startswith(" "):
            raise CommandRefused(syntax_reply)
    else:
        path, _, rest = text.partition(" ")
        if not path:
            raise CommandRefused(syntax_reply)
    if path.startswith("@"):
        _, colon, path = path.partition(":")
        if not colon:
            raise CommandRefused(syntax_reply)
    return path, rest


def parse_parameters(text: str) -> dict[str, str | None]:
    """ESMTP parameters ``KEY[=value] ...``; keys upper-cased, each once."""
    parameters: dict[str, str | None] = {}
    for token in text.split():
        keyword, equals, value = token.partition("=")
        keyword = keyword.upper()
        if not _KEYWORD.fullmatch(keyword) or (equals and not value):
            raise CommandRefused(replies.BAD_PARAMETER_501_5_5_4)
        if keyword in parameters:
            raise CommandRefused(replies.BAD_PARAMETER_501_5_5_4)
        parameters[keyword] = value if equals else None
    return parameters


@dataclass(frozen=True)
class MailCommand:
    address: str
    smtputf8: bool
    size: int | None


def parse_mail(arg: str, *, extended: bool, max_size: int) -> MailCommand:
    """The argument of MAIL, checked; refusals raise ``CommandRefused``."""
    if arg[:5].upper() != "FROM:":
        raise CommandRefused(replies.MAIL_SYNTAX_501_5_5_4)
    address, rest = split_path(arg[5:], replies.MAIL_SYNTAX_501_5_5_4)
    parameters = parse_parameters(rest)
    if parameters and not extended:
        raise CommandRefused(replies.UNKNOWN_PARAMETER_555_5_5_4)
    smtputf8, size = _mail_parameters(parameters)
    if size is not None and size > max_size:
        raise CommandRefused(replies.MESSAGE_TOO_BIG_552_5_3_4)
    if not address:
        raise CommandRefused(replies.NULL_SENDER_553_5_1_7)
    if not mailbox_is_valid(address):
        raise CommandRefused(replies.BAD_SENDER_553_5_1_7)
    if not smtputf8 and not address.isascii():
        raise CommandRefused(replies.NON_ASCII_ADDRESS_553_5_6_7)
    return MailCommand(address, smtputf8, size)


def _mail_parameters(parameters: dict[str, str | None]) -> tuple[bool, int | None]:
    """SMTPUTF8 and SIZE of a MAIL command; BODY and AUTH are only checked."""
    smtputf8 = "SMTPUTF8" in parameters
    if parameters.pop("SMTPUTF8", None) is not None:
        raise CommandRefused(replies.BAD_PARAMETER_501_5_5_4)
    if "BODY" in parameters:
        body = parameters.pop("BODY") or ""
        if body.upper() not in ("7BIT", "8BITMIME"):
            raise CommandRefused(replies.BAD_BODY_501_5_5_4)
    # RFC 4954 section 5: the AUTH parameter is allowed and, here, ignored.
    parameters.pop("AUTH", None)
    size = None
    if "SIZE" in parameters:
        text = parameters.pop("SIZE") or ""
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise CommandRefused(replies.BAD_SIZE_501_5_5_4)
        size = int(text)
    if parameters:
        raise CommandRefused(replies.UNKNOWN_PARAMETER_555_5_5_4)
    return smtputf8, size


def parse_rcpt(arg: str, *, smtputf8: bool) -> str:
    """The recipient of RCPT, checked; no RCPT parameters are supported."""
    if arg[:3].upper() != "TO:":
        raise CommandRefused(replies.RCPT_SYNTAX_501_5_5_4)
    address, rest = split_path(arg[3:], replies.RCPT_SYNTAX_501_5_5_4)
    if parse_parameters(rest):
        raise CommandRefused(replies.UNKNOWN_PARAMETER_555_5_5_4)
    if not mailbox_is_valid(address):
        raise CommandRefused(replies.BAD_RECIPIENT_553_5_1_3)
    if not smtputf8 and not address.isascii():
        raise CommandRefused(replies.NON_ASCII_ADDRESS_553_5_6_7)
    return address


def header_senders(content: bytes) -> list[str]:
    """The addresses of the one From header field of a message.

    The header section is read by ``headers.from_addresses``, which sees
    every field the DKIM signer will sign (see its docstring).
    """
    try:
        addresses = from_addresses(content)
    except HeaderProblem as exc:
        raise CommandRefused(_HEADER_REPLIES[exc.kind].format(detail=exc)) from exc
    if not all(map(mailbox_is_valid, addresses)):
        raise CommandRefused(replies.BAD_FROM_HEADER_550_5_6_0)
    return addresses


_HEADER_REPLIES = {
    "malformed": replies.MALFORMED_HEADER_550_5_6_0,
    "no_from": replies.NO_FROM_HEADER_550_5_6_0,
    "many_from": replies.MANY_FROM_HEADERS_550_5_6_0,
    "bad_from": replies.BAD_FROM_HEADER_550_5_6_0,
}


# DATA (RFC 5321 4.1.1.4, 4.5.2) ----------------------------------------------


class MessageData:
    """The text of one DATA command, fed in consecutive pieces, without I/O.

    Tracks what decides the reply: the size, bare CR or LF anywhere (CR and
    LF counted against CRLF pairs, including pairs split between pieces),
    and the longest line. Pieces stop being kept as soon as the message is
    certain to be refused, so a refused message costs no memory.
    """

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._pieces: list[bytes] | None = []
        self._size = 0
        # The last two bytes seen; the DATA command's CRLF to begin with.
        self._tail = b"\r\n"
        self._crs = self._lfs = self._crlfs = 0
        self._run = 0  # octets of the line not yet ended by an LF
        self._too_long = False

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of message text."""
        if not chunk:
            return
        self._size += len(chunk)
        self._count_line_ends(chunk)
        self._measure_lines(chunk)
        self._tail = (self._tail + chunk[-2:])[-2:]
        if self._pieces is None:
            return
        if self._size > self._max_size or self._too_long or self._lfs != self._crlfs:
            self._pieces = None
        else:
            self._pieces.append(chunk)

    def feed_final(self, piece: bytes) -> bool:
        """Take a piece that ends in ``.<CRLF>``; True if it ends the data.

        The dot ends the data only when a CRLF comes right before it, in
        this piece or before it.
        """
        ends = (self._tail + piece[-5:-3])[-2:] == b"\r\n"
        self.feed(piece[:-3] if ends else piece)
        return ends

    def content(self) -> bytes:
        """The message, dot-unstuffed, or ``CommandRefused`` saying why not."""
        if self._size > self._max_size:
            raise CommandRefused(replies.MESSAGE_TOO_BIG_552_5_3_4)
        if self._crs != self._crlfs or self._lfs != self._crlfs:
            raise CommandRefused(replies.BARE_LINE_ENDING_550_5_6_11)
        if self._too_long or self._pieces is None:
            raise CommandRefused(replies.DATA_LINE_TOO_LONG_500_5_5_6)
        text = b"".join(self._pieces)
        if text.startswith(b"."):
            text = text[1:]
        return text.replace(b"\r\n.", b"\r\n")

    def _count_line_ends(self, chunk: bytes) -> None:
        self._crs += chunk.count(b"\r")
        self._lfs += chunk.count(b"\n")
        self._crlfs += chunk.count(b"\r\n")
        if chunk[0] == 0x0A and self._tail[-1] == 0x0D:
            self._crlfs += 1

    def _measure_lines(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if first < 0:
            self._run += len(chunk)
            longest = self._run
        else:
            last = chunk.rfind(b"\n")
            longest = self._run + first
            # Only a stretch longer than the limit can hold a long line.
            if last - first > _DATA_LINE_LIMIT:
                inner = chunk[first + 1 : last].split(b"\n")
                longest = max(longest, max(map(len, inner)))
            self._run = len(chunk) - last - 1
            longest = max(longest, self._run)
        if longest > _DATA_LINE_LIMIT:
            self._too_long = True


async def read_message_data(
    reader: asyncio.StreamReader, data: MessageData, progress: Callable[[], Any]
) -> None:
    """Read DATA text up to and including the final ``<CRLF>.<CRLF>``.

    Every ``.<CRLF>`` in the stream ends one read, so each is examined; a
    buffer-full without one is passed on whole. Bytes after the final dot
    stay in the reader for the next command (PIPELINING). Memory stays
    within the reader's limit plus what ``data`` keeps. Raises
    ``IncompleteReadError`` when the connection ends first.
    """
    while True:
        try:
            piece = await reader.readuntil(b".\r\n")
        except asyncio.LimitOverrunError as exc:
            data.feed(await reader.readexactly(exc.consumed))
        else:
            if data.feed_final(piece):
                return
        progress()


# The session --------------------------------------------------------------------


def _peer_ip(peername: Any) -> str:
    """The client's IP address as text, IPv4-mapped IPv6 as IPv4."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return str(peername[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


_AUTH_FAILED = AuthResult(success=False, handled=False)
_AUTH_HANDLED = AuthResult(success=False, handled=True)


class SubmissionSMTP(SMTP):
    """One submission session; aiosmtpd supplies transport, timer, AUTH hooks."""

    # aiosmtpd sizes its StreamReader with this; the SMTP line limits are
    # enforced on top of it.
    line_length_limit = _READ_LIMIT

    def __init__(
        self,
        *,
        settings: Settings,
        ssl_context: ssl.SSLContext,
        authenticator: Authenticator,
        acceptor: Acceptor,
        loop: asyncio.AbstractEventLoop,
        throttle: AuthThrottle | None = None,
    ) -> None:
        super().__init__(
            None,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            tls_context=ssl_context,
            timeout=settings.smtp_idle_timeout,
            loop=loop,
        )
        self._settings = settings
        self._ssl_context = ssl_context
        self._auth_source = authenticator
        self._acceptor = acceptor
        self._throttle = throttle or AuthThrottle()
        self._peer_ip = ""
        self._peer_text = "?"
        self._tls_active = False
        self._trusted: Principal | None = None
        self._principal: Principal | None = None
        self._authenticated = False
        self._bad_commands = 0
        self._auth_failures = 0
        self._quitting = False

    # Connection life ------------------------------------------------------

    async def _handle_client(self) -> None:
        try:
            await self._serve()
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("%s: connection ended: %r", self._peer_text, exc)
        except Exception:
            log.exception("%s: unexpected error; closing the session", self._peer_text)
            self._write_now(replies.INTERNAL_ERROR_421_4_3_0)
        finally:
            self._close()

    async def _serve(self) -> None:
        self._start_session()
        self._trusted = self._principal = await self._find_trust()
        await self.push(replies.GREETING_220.format(hostname=self.hostname))
        while not self._quitting:
            try:
                await self._one_command()
            except CommandRefused as refused:
                await self._refuse(refused)

    def _start_session(self) -> None:
        assert self.transport is not None
        self._tls_active = self.transport.get_extra_info("sslcontext") is not None
        peer = self.transport.get_extra_info("peername")
        self._peer_ip = _peer_ip(peer)
        self._peer_text = f"{self._peer_ip}:{peer[1]}" if self._peer_ip else "?"
        log.debug("%s: session started (tls=%s)", self._peer_text, self._tls_active)

    async def _find_trust(self) -> Principal | None:
        if not self._peer_ip:
            return None
        try:
            return await self._auth_source.trusted(self._peer_ip)
        except Exception:
            log.exception("%s: trusted-network lookup failed", self._peer_text)
            return None

    def _timeout_cb(self) -> None:
        log.debug("%s: idle timeout", self._peer_text)
        self._write_now(replies.IDLE_TIMEOUT_421_4_4_2)
        self._close()

    def eof_received(self) -> bool | None:
        # The reader sees the EOF; the session ends at its next read, after
        # answering what was already received (aiosmtpd cancels it instead).
        return asyncio.StreamReaderProtocol.eof_received(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        if self._original_transport is not None:
            self._original_transport.close()
        # Wakes a pending read with EOF or the error; a running accept()
        # finishes instead of being cancelled half-way.
        asyncio.StreamReaderProtocol.connection_lost(self, error)
        self.transport = None

    def _write_now(self, reply: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(reply.encode() + b"\r\n")

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # The command loop -----------------------------------------------------

    async def _one_command(self) -> None:
        line = await self._read_line()
        if line is None:
            raise CommandRefused(replies.LINE_TOO_LONG_500_5_5_6, bad=True)
        verb, arg = self._parse_command(line)
        trusted = self._trusted is not None
        if not (self._tls_active or trusted or verb in _BEFORE_TLS):
            raise CommandRefused(replies.MUST_STARTTLS_530_5_7_0)
        if log.isEnabledFor(logging.DEBUG):
            shown = arg.split(" ", 1)[0] + " ****" if verb == "AUTH" else arg
            log.debug("%s >> %s %s", self._peer_text, verb, shown)
        self._reset_timeout()
        await getattr(self, "smtp_" + verb)(arg)

    async def _read_line(self) -> bytes | None:
        """The next line, or None when it overran the buffer (then dropped)."""
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed
        while True:
            await self._reader.readexactly(consumed)
            try:
                await self._reader.readuntil(b"\n")
                return None
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    @staticmethod
    def _parse_command(line: bytes) -> tuple[str, str]:
        text = line.rstrip(b"\r\n")
        if not text:
            raise CommandRefused(replies.EMPTY_COMMAND_500_5_5_2, bad=True)
        verb_bytes, _, arg_bytes = text.partition(b" ")
        verb = verb_bytes.upper().decode("ascii", "replace")
        if verb not in _COMMANDS:
            raise CommandRefused(replies.UNKNOWN_COMMAND_500_5_5_1, bad=True)
        if len(line) > _LINE_LIMITS.get(verb, _COMMAND_LINE_LIMIT):
            raise CommandRefused(replies.LINE_TOO_LONG_500_5_5_6, bad=True)
        try:
            return verb, arg_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CommandRefused(replies.NOT_UTF8_500_5_5_2, bad=True) from None

    async def _refuse(self, refused: CommandRefused) -> None:
        await self.push(refused.reply)
        if refused.closes:
            self._quitting = True
        elif refused.bad:
            self._bad_commands += 1
            if self._bad_commands >= _MAX_BAD_COMMANDS:
                await self.push(replies.TOO_MANY_ERRORS_421_4_7_0)
                self._quitting = True

    # Session commands -----------------------------------------------------

    async def smtp_HELO(self, arg: str) -> None:
        if not arg:
            raise CommandRefused(replies.HELO_SYNTAX_501_5_5_4)
        self._greeted(arg, extended=False)
        await self.push(replies.HELO_250.format(hostname=self.hostname))

    async def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            raise CommandRefused(replies.EHLO_SYNTAX_501_5_5_4)
        self._greeted(arg, extended=True)
        await self.push(replies.ehlo_reply(self.hostname, self._extensions()))

    def _greeted(self, name: str, *, extended: bool) -> None:
        assert self.session is not None
        self._set_rset_state()
        self.session.host_name = name
        self.session.extended_smtp = extended

    def _extensions(self) -> list[str]:
        size = self._settings.max_message_size
        keywords = [keyword.format(size=size) for keyword in _EXTENSIONS]
        keywords.append("ENHANCEDSTATUSCODES")
        if self._tls_active:
            keywords.append("AUTH " + " ".join(sorted(self._auth_methods)))
        else:
            keywords.append("STARTTLS")
        return keywords

    async def smtp_NOOP(self, arg: str) -> None:
        await self.push(replies.OK_250_2_0_0)

    async def smtp_RSET(self, arg: str) -> None:
        if arg:
            raise CommandRefused(replies.NO_PARAMETERS_501_5_5_4)
        self._set_rset_state()
        await self.push(replies.OK_250_2_0_0)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push(replies.VRFY_252_2_0_0)

    async def smtp_QUIT(self, arg: str) -> None:
        await self.push(replies.BYE_221_2_0_0)
        self._quitting = True

    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            raise CommandRefused(replies.NO_PARAMETERS_501_5_5_4)
        if self._tls_active:
            raise CommandRefused(replies.TLS_ALREADY_ACTIVE_503_5_5_1)
        await self.push(replies.READY_FOR_TLS_220_2_0_0)
        plain = self.transport
        # Whatever followed STARTTLS was sent in the clear and must never
        # run as a command. It is in the buffer now; from the protocol
        # switch inside start_tls on (no await before it), all bytes go to
        # TLS. StreamReader has no public way to drop its buffer.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        # The handshake has its own bound; the idle timer resumes after it.
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        await self._writer.start_tls(
            self._ssl_context,
            ssl_handshake_timeout=self._settings.tls_handshake_timeout,
        )
        self._original_transport = plain
        self.transport = self._writer.transport
        self._tls_active = True
        self._restart_session()

    def _restart_session(self) -> None:
        """RFC 3207 section 4.2: forget what the client said before TLS."""
        assert self.session is not None and self.transport is not None
        peer = self.session.peer
        self.session = self._create_session()
        self.session.peer = peer
        self.session.ssl = {"cipher": self.transport.get_extra_info("cipher")}
        self._set_rset_state()
        self._reset_timeout()

    # AUTH (RFC 4954) ----------------------------------------------------------

    async def smtp_AUTH(self, arg: str) -> None:
        self._check_auth_allowed(arg)
        args = arg.split()
        if len(args) > 2:
            raise CommandRefused(replies.AUTH_SYNTAX_501_5_5_4)
        args[0] = mechanism = args[0].upper()
        hook = self._auth_methods.get(mechanism)
        if hook is None:
            raise CommandRefused(replies.UNKNOWN_MECHANISM_504_5_5_4)
        result = await hook.method(self, args)
        await self._conclude_auth(mechanism, result)

    def _check_auth_allowed(self, arg: str) -> None:
        assert self.session is not None and self.envelope is not None
        if self._auth_failures >= _MAX_AUTH_FAILURES:
            raise CommandRefused(replies.AUTH_TOO_MANY_FAILURES_421_4_7_0, closes=True)
        wait = self._throttle.wait(self._peer_ip)
        if wait:
            raise CommandRefused(
                replies.AUTH_THROTTLED_454_4_7_0.format(seconds=int(wait) + 1)
            )
        if not self.session.extended_smtp:
            raise CommandRefused(replies.AUTH_NEEDS_EHLO_503_5_5_1)
        if not self._tls_active:
            raise CommandRefused(replies.ENCRYPTION_REQUIRED_538_5_7_11)
        if self._authenticated:
            raise CommandRefused(replies.ALREADY_AUTHENTICATED_503_5_5_1)
        if self.envelope.mail_from is not None:
            raise CommandRefused(replies.AUTH_IN_TRANSACTION_503_5_5_1)
        if not arg:
            raise CommandRefused(replies.AUTH_SYNTAX_501_5_5_4)

    async def _conclude_auth(self, mechanism: str, result: AuthResult) -> None:
        assert self.session is not None
        principal = result.auth_data
        if result.success and isinstance(principal, Principal):
            self._principal = principal
            self._authenticated = self.session.authenticated = True
            log.debug("%s: %s AUTH as %r", self._peer_text, mechanism, principal)
            await self.push(replies.AUTH_OK_235_2_7_0)
            return
        self._auth_failures += 1
        self._throttle.failed(self._peer_ip)
        if result.success:
            log.error("AUTH %s succeeded without a Principal; refused", mechanism)
            await self.push(replies.AUTH_TEMPORARY_FAILURE_454_4_7_0)
        elif not result.handled:
            await self.push(result.message or replies.AUTH_FAILED_535_5_7_3)

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> bytes | Any:
        """Send a 334 challenge; the decoded response, or MISSING if refused.

        aiosmtpd's signature, kept for mechanisms added later; the response
        is never logged, whatever ``log_client_response`` says.
        """
        data = challenge.encode() if isinstance(challenge, str) else challenge
        text = base64.b64encode(data) if encode_to_b64 else data
        await self.push(replies.AUTH_CHALLENGE_334.format(challenge=text.decode()))
        line = await self._read_line()
        if line is None or len(line) > _LINE_LIMITS["AUTH"]:
            await self.push(replies.LINE_TOO_LONG_500_5_5_6)
            return MISSING
        if auth.is_abort(line):
            await self.push(replies.AUTH_ABORTED_501_5_7_0)
            return MISSING
        try:
            return auth.decode_response(line)
        except auth.SaslError as exc:
            await self.push(exc.reply)
            return MISSING

    async def _sasl_response(self, args: list[str], challenge: bytes) -> bytes | None:
        """The initial response if given, else the answer to ``challenge``."""
        if len(args) > 1:
            try:
                return auth.decode_response(args[1])
            except auth.SaslError as exc:
                await self.push(exc.reply)
                return None
        response = await self.challenge_auth(challenge)
        return None if response is MISSING else response

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        message = await self._sasl_response(args, b"")
        if message is None:
            return _AUTH_HANDLED
        try:
            credentials = auth.parse_plain(message)
        except auth.SaslError as exc:
            if exc.reply == replies.AUTHZID_REFUSED_535_5_7_3:
                log.info("AUTH PLAIN from %s refused: foreign authzid", self._peer_text)
            await self.push(exc.reply)
            return _AUTH_HANDLED
        return await self._check_password(
            "PLAIN", credentials.username, credentials.password
        )

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        username = await self._sasl_response(args, auth.USERNAME_CHALLENGE)
        if username is None:
            return _AUTH_HANDLED
        password = await self.challenge_auth(auth.PASSWORD_CHALLENGE)
        if password is MISSING:
            return _AUTH_HANDLED
        try:
            texts = auth.decode_text(username), auth.decode_text(password)
        except auth.SaslError as exc:
            await self.push(exc.reply)
            return _AUTH_HANDLED
        return await self._check_password("LOGIN", *texts)

    async def _check_password(
        self, mechanism: str, username: str, password: str
    ) -> AuthResult:
        principal = None
        if username and password:
            try:
                principal = await self._auth_source.login(username, password)
            except Exception:
                log.exception("%s: authenticator failed", self._peer_text)
                await self.push(replies.AUTH_TEMPORARY_FAILURE_454_4_7_0)
                return _AUTH_HANDLED
        if principal is None:
            log.info(
                "AUTH %s failed for user %r from %s",
                mechanism,
                username,
                self._peer_text,
            )
            return _AUTH_FAILED
        return AuthResult(success=True, auth_data=principal)

    # Mail transaction -----------------------------------------------------

    def _check_transaction(self, *, needs_mail: bool, needs_rcpt: bool) -> Envelope:
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name:
            raise CommandRefused(replies.NEEDS_HELO_503_5_5_1)
        if self._principal is None:
            raise CommandRefused(replies.AUTH_REQUIRED_530_5_7_0)
        if needs_mail and self.envelope.mail_from is None:
            raise CommandRefused(replies.NEEDS_MAIL_503_5_5_1)
        if needs_rcpt and not self.envelope.rcpt_tos:
            raise CommandRefused(replies.NEEDS_RCPT_503_5_5_1)
        return self.envelope

    async def smtp_MAIL(self, arg: str) -> None:
        envelope = self._check_transaction(needs_mail=False, needs_rcpt=False)
        if envelope.mail_from is not None:
            raise CommandRefused(replies.NESTED_MAIL_503_5_5_1)
        assert self.session is not None
        command = parse_mail(
            arg,
            extended=self.session.extended_smtp,
            max_size=self._settings.max_message_size,
        )
        await self._check_sender(command.address)
        envelope.mail_from = command.address
        envelope.smtp_utf8 = command.smtputf8
        await self.push(replies.SENDER_OK_250_2_1_0)

    async def smtp_RCPT(self, arg: str) -> None:
        envelope = self._check_transaction(needs_mail=True, needs_rcpt=False)
        if len(envelope.rcpt_tos) >= self._settings.max_recipients:
            raise CommandRefused(replies.TOO_MANY_RECIPIENTS_452_4_5_3)
        envelope.rcpt_tos.append(parse_rcpt(arg, smtputf8=envelope.smtp_utf8))
        await self.push(replies.RECIPIENT_OK_250_2_1_5)

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self._check_transaction(needs_mail=True, needs_rcpt=True)
        if arg:
            raise CommandRefused(replies.NO_PARAMETERS_501_5_5_4)
        await self.push(replies.START_DATA_354)
        data = MessageData(self._settings.max_message_size)
        await read_message_data(self._reader, data, self._reset_timeout)
        # The transaction is over whatever the outcome (RFC 5321 4.1.1.4).
        self._set_post_data_state()
        content = data.content()
        for address in header_senders(content):
            await self._check_sender(address)
        reply = await self._accept(envelope, content)
        await self.push(reply)
        if reply.startswith("421"):
            self._quitting = True  # RFC 5321 4.2.2: 421 closes the channel

    async def _check_sender(self, address: str) -> None:
        assert self._principal is not None
        try:
            refusal = await self._acceptor.check_sender(self._principal, address)
        except Exception as exc:
            log.exception("%s: check_sender failed", self._peer_text)
            raise CommandRefused(replies.TEMPORARY_FAILURE_451_4_3_0) from exc
        if refusal is not None:
            log.info(
                "%s: sender %r refused: %s", self._peer_text, address, refusal.reply
            )
            raise CommandRefused(refusal.reply)

    async def _accept(self, envelope: Envelope, content: bytes) -> str:
        """The reply to the final dot; 250 only once accept() has returned."""
        assert self._principal is not None and envelope.mail_from is not None
        try:
            result: Accepted | Refusal = await self._acceptor.accept(
                self._principal,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                content,
                smtputf8=envelope.smtp_utf8,
            )
        except Exception:
            log.exception("%s: accept failed; client told to retry", self._peer_text)
            return replies.TEMPORARY_FAILURE_451_4_3_0
        if isinstance(result, Refusal):
            log.info("%s: message refused: %s", self._peer_text, result.reply)
            return result.reply
        return replies.QUEUED_250_2_0_0.format(message_id=result.message_id)


def _require_tls_1_2(context: ssl.SSLContext) -> None:
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        context.minimum_version = ssl.TLSVersion.TLSv1_2


async def start_submission(
    *,
    settings: Settings,
    ssl_context: ssl.SSLContext,
    authenticator: Authenticator,
    acceptor: Acceptor,
    implicit_tls: bool,
    sock: socket.socket | None = None,
    host: str | None = None,
    port: int | None = None,
) -> asyncio.base_events.Server:
    """Start serving submission on ``sock`` (shared, listening) or host/port.

    With ``implicit_tls`` the TLS handshake comes first and is bounded by
    ``settings.tls_handshake_timeout``; otherwise clients use STARTTLS.
    ``ssl_context`` is raised to TLS 1.2 at least. The caller closes the
    returned server.
    """
    if sock is None and port is None:
        raise ValueError("start_submission needs a listening socket or a port")
    _require_tls_1_2(ssl_context)
    loop = asyncio.get_running_loop()

    throttle = AuthThrottle()

    def session() -> SubmissionSMTP:
        return SubmissionSMTP(
            settings=settings,
            ssl_context=ssl_context,
            authenticator=authenticator,
            acceptor=acceptor,
            loop=loop,
            throttle=throttle,
        )

    tls: dict[str, Any] = {}
    if implicit_tls:
        tls["ssl"] = ssl_context
        tls["ssl_handshake_timeout"] = settings.tls_handshake_timeout
    if sock is not None:
        return await loop.create_server(session, sock=sock, **tls)
    return await loop.create_server(session, host=host, port=port, **tls)
