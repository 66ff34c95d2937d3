"""Accepting a message: sender checks, then one durable transaction.

Accepting writes the message content, its recipients, one queue entry per
recipient domain and a send-log row in a single transaction (shared with
other messages arriving at the same moment, see ``storage.commits``), and
returns only once that transaction is on disk. A missing ``Message-ID``
(made in the sender's domain) or ``Date`` header is added at the top of the
header block; nothing else in the message is changed.

When the delivery worker of this process has room, the queue entries are
written already leased to it and handed over in memory after the commit,
so fresh mail goes out without a round trip through the queue table.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import time
import uuid
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.policy import SMTP

from mailcarrier.addresses import AddressError, split_address
from mailcarrier.delivery.queue import QueueJob, accept_ops
from mailcarrier.domains.store import VERIFIED, sender_record
from mailcarrier.storage.commits import CommitGroup, CommitGroupClosed, Op
from mailcarrier.storage.db import Database
from mailcarrier.submission import replies
from mailcarrier.submission.headers import HeaderProblem, from_addresses
from mailcarrier.submission.principal import Accepted, Principal, Refusal

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:", re.IGNORECASE | re.MULTILINE)
_DATE = re.compile(rb"^date[ \t]*:", re.IGNORECASE | re.MULTILINE)

# A sender's verdict is reused for a few seconds: a busy submitter checks
# the same two addresses for every message. A domain unlinked or a sender
# removed is refused at most this long after the change.
SENDER_CACHE_SECONDS = 5.0
SENDER_CACHE_SIZE = 10_000


class DeliveryHandoff:
    """What accept needs of the local delivery worker (None = queue only)."""

    owner: str
    lease_seconds: float

    def has_room(self, count: int) -> bool:  # pragma: no cover - protocol
        raise NotImplementedError

    def take(self, jobs: list[QueueJob]) -> None:  # pragma: no cover
        raise NotImplementedError


class StoreAcceptor:
    """The Acceptor of the submission server, backed by the database."""

    def __init__(
        self,
        db: Database,
        commits: CommitGroup,
        *,
        handoff: DeliveryHandoff | None = None,
        traffic_source: str = "SMTP",
    ) -> None:
        self._db = db
        self._commits = commits
        self._handoff = handoff
        self._traffic_source = traffic_source
        self._sender_cache: dict[tuple[str, str, str], tuple[float, Refusal | None]] = {}

    async def check_sender(self, principal: Principal, address: str) -> Refusal | None:
        try:
            local, domain = split_address(address)
        except AddressError:
            return replies.sender_refusal(
                f"sender {address!r} is not an address of the form name@domain"
            )
        key = (principal.resource_id, local.lower(), domain)
        cached = self._sender_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        verdict = await self._check_sender(principal, address, local, domain)
        if len(self._sender_cache) >= SENDER_CACHE_SIZE:
            self._sender_cache.clear()
        self._sender_cache[key] = (time.monotonic() + SENDER_CACHE_SECONDS, verdict)
        return verdict

    async def _check_sender(
        self, principal: Principal, address: str, local: str, domain: str
    ) -> Refusal | None:
        async with self._db.read() as conn:
            record = await sender_record(conn, local, domain)
        if record is None or record.resource_id != principal.resource_id:
            return replies.sender_refusal(
                f"the sender domain {domain} of {address} has not been linked to "
                f"resource {principal.resource_name}; link a verified domain to "
                "the resource or send from one that is"
            )
        if record.verification_state != VERIFIED:
            return replies.sender_refusal(
                f"the sender domain {domain} is not verified (state "
                f"{record.verification_state}); finish its DNS verification first"
            )
        if not record.username_exists:
            return replies.sender_refusal(
                f"{local} is not a sender username of {domain}; add it as a "
                "sender username or send as an existing one"
            )
        return None

    async def accept(
        self,
        principal: Principal,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        *,
        smtputf8: bool,
        extra_ops: Sequence[Op] = (),
        counts: dict[str, int] | None = None,
        traffic_source: str | None = None,
    ) -> Accepted | Refusal:
        """Store the message durably; return only after the commit.

        ``extra_ops`` are written in the same transaction (the REST API's
        operation row); ``counts`` are the To/Cc/Bcc/attachment counts for
        the send-mail log when the caller knows them.
        """
        if self._commits.closed:
            return replies.SHUTTING_DOWN
        header_from = _header_from(content)
        if header_from is None:
            return replies.NO_FROM_HEADER
        try:
            by_domain = _group_by_domain(rcpt_tos)
        except AddressError as exc:
            return Refusal(553, "5.1.3", f"bad recipient address: {exc}")
        message_id = str(uuid.uuid4())
        content, internet_id = _complete_headers(content, message_id, header_from)
        # Delivery asks for SMTPUTF8 only when an envelope address needs it;
        # UTF-8 in headers alone travels as 8-bit content (or is encoded).
        smtputf8 = smtputf8 and not all(a.isascii() for a in [mail_from, *rcpt_tos])
        now = time.time()
        handoff = self._handoff
        leased = handoff is not None and handoff.has_room(len(by_domain))
        jobs, ops = accept_ops(
            message_id=message_id,
            resource_id=principal.resource_id,
            mail_from=mail_from,
            sender_address=header_from,
            internet_message_id=internet_id,
            content=content,
            smtputf8=smtputf8,
            traffic_source=traffic_source or self._traffic_source,
            by_domain=by_domain,
            now=now,
            lease_owner=handoff.owner if leased and handoff else None,
            lease_until=now + handoff.lease_seconds if leased and handoff else None,
            counts=counts,
        )
        ops = [*ops, *extra_ops]
        try:
            await self._commits.submit(ops)
        except CommitGroupClosed:
            return replies.SHUTTING_DOWN
        log.info(
            "%s accepted from=<%s> size=%d nrcpt=%d source=%s resource=%s",
            message_id, mail_from, len(content), len(rcpt_tos),
            traffic_source or self._traffic_source, principal.resource_name,
        )
        if leased and handoff is not None:
            handoff.take(jobs)
        return Accepted(message_id=message_id, internet_message_id=internet_id)


def _header_from(content: bytes) -> str | None:
    """The first address of the From field (the submission server checked all)."""
    try:
        return from_addresses(content)[0]
    except HeaderProblem:
        return None


def _group_by_domain(rcpt_tos: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for rcpt in rcpt_tos:
        local, domain = split_address(rcpt)
        if (local, domain) in seen:
            continue  # the same RCPT TO given twice: deliver once
        seen.add((local, domain))
        groups.setdefault(domain, []).append(rcpt)
    return groups


def _complete_headers(
    content: bytes, message_id: str, sender: str
) -> tuple[bytes, str]:
    """Add Message-ID and Date when missing; return content and Message-ID."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    added = b""
    found = _MESSAGE_ID.search(head)
    if found is None:
        domain = _sender_domain(sender)
        internet_id = f"<{uuid.UUID(message_id).hex}@{domain}>"
        added += f"Message-ID: {internet_id}\r\n".encode("ascii")
    else:
        internet_id = _existing_message_id(head)
    if _DATE.search(head) is None:
        stamp = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))
        added += f"Date: {stamp}\r\n".encode("ascii")
    return added + content, internet_id


def _sender_domain(sender: str) -> str:
    try:
        return split_address(sender)[1]
    except AddressError:
        return "localhost.invalid"  # unreachable: the sender passed its checks


def _existing_message_id(head: bytes) -> str:
    headers = BytesHeaderParser(policy=SMTP).parsebytes(head)
    value = str(headers.get("Message-ID", "")).strip()
    return value[:998]
