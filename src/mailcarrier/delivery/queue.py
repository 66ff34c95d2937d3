"""The delivery queue: rows to write, claims, leases and their recovery.

A queue entry is one message's recipients in one domain, delivered in one
SMTP transaction. Its life::

    ready --claim--> leased --outcome--> done
      ^                 |
      +-- retry later --+        leased --unexpected error--> held

A lease names its owner (``node:pid:start``) and an expiry. Owners renew
their leases while they live, so a lease expires only when its owner has
died; any worker may then claim it. A lease taken over that way marks the
entry ``possible_duplicate``: the dead owner may have sent the message and
died before recording the reply. On restart, a node takes back at once
the leases of its own previous run (see :func:`release_node`).

On PostgreSQL claims lock rows with ``FOR UPDATE SKIP LOCKED`` so workers
on many machines never wait for, or take, each other's rows. On SQLite
the claim is one ``UPDATE ... RETURNING`` in an immediate transaction,
which the database serialises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from mailcarrier.identity.store import new_id
from mailcarrier.storage.commits import Op
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import (
    messages,
    queue,
    recipients,
    send_mail_log,
    status_update_log,
)

READY, LEASED, DONE, HELD = "ready", "leased", "done", "held"
QUEUED = "Queued"
FINAL_STATUSES = ("Delivered", "Bounced", "Failed")


@dataclass
class MessageData:
    """One message's content, shared by its queue entries in memory."""

    message_id: str
    resource_id: str
    mail_from: str
    sender_address: str
    content: bytes
    smtputf8: bool
    created_at: float
    # How many queue entries (recipient domains) the message has.
    entries: int = 1
    # Rendered (signed) bytes by "8-bit allowed?", made once per message.
    rendered: dict[bool, bytes] = field(default_factory=dict)


@dataclass
class QueueJob:
    queue_id: str
    domain: str
    message: MessageData
    # (recipient row id, address) of the recipients still to deliver.
    recipients: list[tuple[str, str]]
    attempts: int
    possible_duplicate: bool = False


# Accepting -------------------------------------------------------------------

_insert_message = messages.insert()
_insert_queue = queue.insert()
_insert_recipient = recipients.insert()
_insert_send_log = send_mail_log.insert()


def accept_ops(
    *,
    message_id: str,
    resource_id: str,
    mail_from: str,
    sender_address: str,
    internet_message_id: str,
    content: bytes,
    smtputf8: bool,
    traffic_source: str,
    by_domain: dict[str, list[str]],
    now: float,
    lease_owner: str | None,
    lease_until: float | None,
    kinds: dict[str, str] | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[list[QueueJob], list[Op]]:
    """The rows that accepting one message writes, and its queue jobs."""
    data = MessageData(
        message_id, resource_id, mail_from, sender_address, content, smtputf8, now,
        entries=len(by_domain),
    )
    queue_rows, recipient_rows, jobs = [], [], []
    for domain, addresses in by_domain.items():
        queue_id = new_id()
        queue_rows.append(
            {
                "id": queue_id,
                "message_id": message_id,
                "domain": domain,
                "state": LEASED if lease_owner else READY,
                "next_attempt_at": now,
                "lease_owner": lease_owner,
                "lease_expires_at": lease_until,
                "attempts": 0,
                "possible_duplicate": False,
                "created_at": now,
                "last_error": None,
            }
        )
        pairs = []
        for address in addresses:
            recipient_id = new_id()
            pairs.append((recipient_id, address))
            recipient_rows.append(
                {
                    "id": recipient_id,
                    "message_id": message_id,
                    "queue_id": queue_id,
                    "address": address,
                    "domain": domain,
                    "kind": (kinds or {}).get(address, "rcpt"),
                    "status": QUEUED,
                    "attempts": 0,
                    "smtp_status_code": None,
                    "enhanced_status_code": None,
                    "remote_host": None,
                    "response": None,
                    "possible_duplicate": False,
                    "updated_at": now,
                }
            )
        jobs.append(QueueJob(queue_id, domain, data, pairs, 0))
    unique = sum(len(a) for a in by_domain.values())
    counts = counts or {"to": unique, "cc": 0, "bcc": 0, "attachments": 0}
    message_row = {
        "id": message_id,
        "resource_id": resource_id,
        "mail_from": mail_from,
        "sender_address": sender_address,
        "internet_message_id": internet_message_id,
        "size": len(content),
        "content": content,
        "smtputf8": smtputf8,
        "traffic_source": traffic_source,
        "status": QUEUED,
        "quarantine_reason": None,
        "created_at": now,
        "updated_at": now,
    }
    log_row = {
        "TimeGenerated": _as_datetime(now),
        "OperationName": "SendMail",
        "CorrelationId": message_id,
        "ResourceId": resource_id,
        "Size": len(content),
        "ToRecipientsCount": counts["to"],
        "CcRecipientsCount": counts["cc"],
        "BccRecipientsCount": counts["bcc"],
        "UniqueRecipientsCount": unique,
        "AttachmentsCount": counts["attachments"],
        "TrafficSource": traffic_source,
    }
    ops: list[Op] = [
        (_insert_message, [message_row]),
        (_insert_queue, queue_rows),
        (_insert_recipient, recipient_rows),
        (_insert_send_log, [log_row]),
    ]
    return jobs, ops


def _as_datetime(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


# Claiming --------------------------------------------------------------------


def _claimable(now: float) -> Any:
    return or_(
        and_(queue.c.state == READY, queue.c.next_attempt_at <= now),
        and_(queue.c.state == LEASED, queue.c.lease_expires_at < now),
    )


async def claim(
    db: Database, owner: str, *, now: float, limit: int, lease_seconds: float
) -> list[QueueJob]:
    """Lease up to ``limit`` due entries to ``owner`` and load what they need."""
    if limit <= 0:
        return []
    async with db.write() as conn:
        candidates = (
            select(queue.c.id)
            .where(_claimable(now))
            .order_by(queue.c.next_attempt_at)
            .limit(limit)
        )
        if not db.is_sqlite:
            candidates = candidates.with_for_update(skip_locked=True)
        rows = (
            await conn.execute(
                update(queue)
                .where(queue.c.id.in_(candidates.scalar_subquery()))
                .values(
                    # An entry whose lease expired was being delivered by a
                    # worker that died: its attempt may have reached the peer.
                    possible_duplicate=or_(
                        queue.c.possible_duplicate, queue.c.state == LEASED
                    ),
                    state=LEASED,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                )
                .returning(
                    queue.c.id, queue.c.message_id, queue.c.domain,
                    queue.c.attempts, queue.c.possible_duplicate,
                )
            )
        ).all()
        if not rows:
            return []
        return await _load_jobs(conn, rows)


async def _load_jobs(conn: AsyncConnection, rows: Sequence[Any]) -> list[QueueJob]:
    message_ids = list({row.message_id for row in rows})
    data: dict[str, MessageData] = {}
    for row in await conn.execute(
        select(
            messages.c.id, messages.c.resource_id, messages.c.mail_from,
            messages.c.sender_address, messages.c.content, messages.c.smtputf8,
            messages.c.created_at,
        ).where(messages.c.id.in_(message_ids))
    ):
        data[row.id] = MessageData(
            row.id, row.resource_id, row.mail_from, row.sender_address,
            row.content, row.smtputf8, row.created_at,
        )
    for row in await conn.execute(
        select(queue.c.message_id, func.count())
        .where(queue.c.message_id.in_(message_ids))
        .group_by(queue.c.message_id)
    ):
        if row[0] in data:
            data[row[0]].entries = row[1]
    pending: dict[str, list[tuple[str, str]]] = {}
    for row in await conn.execute(
        select(recipients.c.id, recipients.c.queue_id, recipients.c.address)
        .where(
            recipients.c.queue_id.in_([r.id for r in rows]),
            recipients.c.status == QUEUED,
        )
        .order_by(recipients.c.address)
    ):
        pending.setdefault(row.queue_id, []).append((row.id, row.address))
    return [
        QueueJob(
            row.id, row.domain, data[row.message_id], pending.get(row.id, []),
            row.attempts, bool(row.possible_duplicate),
        )
        for row in rows
        if row.message_id in data
    ]


async def renew(db: Database, owner: str, *, until: float) -> int:
    """Extend every lease ``owner`` holds; return how many."""
    async with db.write() as conn:
        result = await conn.execute(
            update(queue)
            .where(queue.c.state == LEASED, queue.c.lease_owner == owner)
            .values(lease_expires_at=until)
        )
        return result.rowcount or 0


async def release_node(db: Database, node: str) -> int:
    """Free the leases a previous run of this node left behind.

    Called once at start, before any worker of this node exists, so every
    lease named after the node belongs to a process that is gone.
    """
    # A plain prefix comparison: LIKE would read ``_`` and ``%`` in a node
    # name as wildcards, and on SQLite ignores case, freeing other nodes' leases.
    prefix = f"{node}:"
    async with db.write() as conn:
        result = await conn.execute(
            update(queue)
            .where(
                queue.c.state == LEASED,
                func.substr(queue.c.lease_owner, 1, len(prefix)) == prefix,
            )
            .values(
                state=READY, lease_owner=None, lease_expires_at=None,
                possible_duplicate=True,
            )
        )
        return result.rowcount or 0


async def release_owner(db: Database, owner: str, *, in_flight: Sequence[str]) -> int:
    """Give back every lease a stopping worker holds.

    ``in_flight`` names entries whose delivery was cut short: the remote
    server may have the message, so they are marked possible duplicates.
    The others were never started and go back as they were.
    """
    released = {"state": READY, "lease_owner": None, "lease_expires_at": None}
    mine = and_(queue.c.state == LEASED, queue.c.lease_owner == owner)
    async with db.write() as conn:
        if in_flight:
            await conn.execute(
                update(queue)
                .where(mine, queue.c.id.in_(list(in_flight)))
                .values(possible_duplicate=True, **released)
            )
        result = await conn.execute(update(queue).where(mine).values(**released))
        return (result.rowcount or 0) + len(in_flight)


# Recording outcomes ----------------------------------------------------------


@dataclass(frozen=True)
class RecipientUpdate:
    recipient_id: str
    address: str
    status: str  # Queued (retry later), Delivered, Bounced, Failed
    code: int | None
    enhanced: str | None
    response: str | None
    host: str | None
    failure_reason: str | None = None


_update_recipient = (
    update(recipients)
    .where(recipients.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        attempts=recipients.c.attempts + 1,
        smtp_status_code=bindparam("b_code"),
        enhanced_status_code=bindparam("b_enhanced"),
        remote_host=bindparam("b_host"),
        response=bindparam("b_response"),
        possible_duplicate=bindparam("b_dup"),
        updated_at=bindparam("b_now"),
    )
)

_update_queue = (
    update(queue)
    .where(queue.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next"),
        lease_owner=None,
        lease_expires_at=None,
        attempts=queue.c.attempts + 1,
        last_error=bindparam("b_error"),
    )
)

_insert_status_log = status_update_log.insert()


def _message_status_expression() -> Any:
    rcpt = recipients.alias("r")
    mine = rcpt.c.message_id == messages.c.id
    any_queued = exists().where(mine, rcpt.c.status == QUEUED)
    any_delivered = exists().where(mine, rcpt.c.status == "Delivered")
    any_failed = exists().where(mine, rcpt.c.status.in_(("Bounced", "Failed")))
    return case(
        (any_queued, "OutForDelivery"),
        (and_(any_delivered, any_failed), "PartiallyDelivered"),
        (any_delivered, "Delivered"),
        else_="Failed",
    )


_update_message_status = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), messages.c.status != "Quarantined")
    .values(status=_message_status_expression(), updated_at=bindparam("b_now"))
)

_set_message_status = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), messages.c.status != "Quarantined")
    .values(status=bindparam("b_status"), updated_at=bindparam("b_now"))
)


def message_status(statuses: Sequence[str]) -> str:
    """A message's status from all of its recipients' statuses."""
    if QUEUED in statuses:
        return "OutForDelivery"
    delivered = statuses.count("Delivered")
    if delivered == len(statuses):
        return "Delivered"
    return "PartiallyDelivered" if delivered else "Failed"


def _message_status_op(job: QueueJob, updates: Sequence[Any], now: float) -> Op:
    # When this job holds every recipient of the message (one domain, first
    # attempt), the status follows from the updates; otherwise the database
    # derives it from all recipient rows.
    if job.message.entries == 1 and job.attempts == 0:
        status = message_status([item.status for item in updates])
        return (
            _set_message_status,
            [{"b_id": job.message.message_id, "b_status": status, "b_now": now}],
        )
    return (_update_message_status, [{"b_id": job.message.message_id, "b_now": now}])


def outcome_ops(
    job: QueueJob,
    updates: Sequence[RecipientUpdate],
    *,
    now: float,
    next_attempt_at: float | None,
    error: str | None,
) -> list[Op]:
    """Rows recording one delivery attempt of ``job``.

    ``next_attempt_at`` is None when nothing is left to retry, which
    closes the queue entry.
    """
    sender_local, _, sender_domain = job.message.sender_address.rpartition("@")
    recipient_rows, log_rows = [], []
    for item in updates:
        recipient_rows.append(
            {
                "b_id": item.recipient_id,
                "b_status": item.status,
                "b_code": item.code,
                "b_enhanced": item.enhanced,
                "b_host": item.host,
                "b_response": item.response,
                "b_dup": job.possible_duplicate,
                "b_now": now,
            }
        )
        if item.status in FINAL_STATUSES:
            log_rows.append(
                {
                    "TimeGenerated": _as_datetime(now),
                    "OperationName": "DeliveryStatusUpdate",
                    "CorrelationId": job.message.message_id,
                    "ResourceId": job.message.resource_id,
                    "RecipientId": item.address,
                    "DeliveryStatus": item.status,
                    "SmtpStatusCode": item.code,
                    "EnhancedSmtpStatusCode": item.enhanced,
                    "SenderDomain": sender_domain.lower(),
                    "SenderUsername": sender_local.lower(),
                    "IsHardBounce": item.status == "Bounced",
                    "FailureReason": item.failure_reason,
                    "FailureMessage": None if item.status == "Delivered"
                    else item.response,
                }
            )
    queue_row = {
        "b_id": job.queue_id,
        "b_state": READY if next_attempt_at is not None else DONE,
        "b_next": next_attempt_at if next_attempt_at is not None else now,
        "b_error": error,
    }
    return [
        (_update_recipient, recipient_rows),
        (_update_queue, [queue_row]),
        (_insert_status_log, log_rows),
        _message_status_op(job, updates, now),
    ]


def hold_ops(job: QueueJob, reason: str, *, now: float) -> list[Op]:
    """Set a job aside after an unexpected error, keeping the reason."""
    return [
        (
            update(queue)
            .where(queue.c.id == bindparam("b_id"))
            .values(state=HELD, lease_owner=None, lease_expires_at=None,
                    last_error=bindparam("b_error")),
            [{"b_id": job.queue_id, "b_error": reason}],
        ),
        (
            update(messages)
            .where(messages.c.id == bindparam("b_id"))
            .values(status="Quarantined", quarantine_reason=bindparam("b_reason"),
                    updated_at=bindparam("b_now")),
            [{"b_id": job.message.message_id, "b_reason": reason, "b_now": now}],
        ),
    ]


# Operator actions ------------------------------------------------------------


async def queue_entries(db: Database, *, state: str | None = None) -> list[Any]:
    async with db.read() as conn:
        query = (
            select(
                queue.c.id, queue.c.message_id, queue.c.domain, queue.c.state,
                queue.c.attempts, queue.c.next_attempt_at, queue.c.lease_owner,
                queue.c.last_error, messages.c.mail_from,
            )
            .join(messages, messages.c.id == queue.c.message_id)
            .where(queue.c.state != DONE)
            .order_by(queue.c.next_attempt_at)
        )
        if state:
            query = query.where(queue.c.state == state)
        return list(await conn.execute(query))


async def retry_now(db: Database, ids: Sequence[str], *, now: float) -> int:
    """Make held or waiting entries (or all, when ids is empty) due now."""
    async with db.write() as conn:
        query = update(queue).where(queue.c.state.in_((READY, HELD)))
        if ids:
            query = query.where(
                or_(queue.c.id.in_(ids), queue.c.message_id.in_(ids))
            )
        result = await conn.execute(
            query.values(state=READY, next_attempt_at=now, lease_owner=None)
        )
        await conn.execute(
            update(messages)
            .where(messages.c.status == "Quarantined",
                   exists().where(queue.c.message_id == messages.c.id,
                                  queue.c.state == READY),
                   # Still quarantined while any of its entries stays held.
                   ~exists().where(queue.c.message_id == messages.c.id,
                                   queue.c.state == HELD))
            .values(status="OutForDelivery", quarantine_reason=None, updated_at=now)
        )
        return result.rowcount or 0


async def purge(db: Database, ids: Sequence[str], *, now: float) -> int:
    """Remove entries from the queue; their open recipients end as Failed."""
    async with db.write() as conn:
        chosen = select(queue.c.id).where(
            queue.c.state.in_((READY, HELD)),
            or_(queue.c.id.in_(ids), queue.c.message_id.in_(ids)),
        )
        purged = [row.id for row in await conn.execute(chosen)]
        if not purged:
            return 0
        open_recipients = list(
            await conn.execute(
                select(recipients.c.address, messages.c.id, messages.c.resource_id,
                       messages.c.sender_address)
                .join(messages, messages.c.id == recipients.c.message_id)
                .where(recipients.c.queue_id.in_(purged),
                       recipients.c.status == QUEUED)
            )
        )
        await conn.execute(
            update(recipients)
            .where(recipients.c.queue_id.in_(purged), recipients.c.status == QUEUED)
            .values(status="Failed", response=PURGED_RESPONSE, updated_at=now)
        )
        if open_recipients:
            await conn.execute(
                _insert_status_log,
                [_purged_log_row(row, now) for row in open_recipients],
            )
        await conn.execute(delete(queue).where(queue.c.id.in_(purged)))
        message_ids = select(recipients.c.message_id).where(
            recipients.c.queue_id.in_(purged)
        )
        await conn.execute(
            update(messages)
            .where(messages.c.id.in_(message_ids))
            .values(status=_message_status_expression(), updated_at=now)
        )
        return len(purged)


PURGED_RESPONSE = "purged from the queue by an operator"


def _purged_log_row(row: Any, now: float) -> dict[str, Any]:
    local, _, domain = row.sender_address.rpartition("@")
    return {
        "TimeGenerated": _as_datetime(now),
        "OperationName": "DeliveryStatusUpdate",
        "CorrelationId": row.id,
        "ResourceId": row.resource_id,
        "RecipientId": row.address,
        "DeliveryStatus": "Failed",
        "SmtpStatusCode": None,
        "EnhancedSmtpStatusCode": None,
        "SenderDomain": domain.lower(),
        "SenderUsername": local.lower(),
        "IsHardBounce": False,
        "FailureReason": "Purged",
        "FailureMessage": PURGED_RESPONSE,
    }
