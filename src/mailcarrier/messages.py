"""Reading messages and their recipients' statuses for people and tools."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import messages, queue, recipients


def _recipient_json(row: Any) -> dict[str, Any]:
    return {
        "address": row.address,
        "status": row.status,
        "attempts": row.attempts,
        "smtpStatusCode": row.smtp_status_code,
        "enhancedSmtpStatusCode": row.enhanced_status_code,
        "remoteHost": row.remote_host,
        "response": row.response,
        "possibleDuplicate": bool(row.possible_duplicate),
    }


def _message_json(row: Any, rcpts: list[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "status": row.status,
        "senderAddress": row.sender_address,
        "mailFrom": row.mail_from,
        "internetMessageId": row.internet_message_id,
        "size": row.size,
        "trafficSource": row.traffic_source,
        "createdAt": row.created_at,
        "quarantineReason": row.quarantine_reason,
        "recipients": [_recipient_json(r) for r in rcpts],
    }


_MESSAGE_COLUMNS = [
    c for c in messages.c if c.name != "content"
]


async def list_messages(
    db: Database, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    async with db.snapshot() as conn:
        query = select(*_MESSAGE_COLUMNS).order_by(messages.c.created_at.desc())
        if status:
            query = query.where(messages.c.status == status)
        rows = list(await conn.execute(query.limit(limit)))
        if not rows:
            return []
        by_message: dict[str, list[Any]] = {}
        for r in await conn.execute(
            select(recipients)
            .where(recipients.c.message_id.in_([row.id for row in rows]))
            .order_by(recipients.c.address)
        ):
            by_message.setdefault(r.message_id, []).append(r)
    return [_message_json(row, by_message.get(row.id, [])) for row in rows]


async def show_message(db: Database, message_id: str) -> dict[str, Any] | None:
    async with db.snapshot() as conn:
        row = (
            await conn.execute(
                select(*_MESSAGE_COLUMNS).where(messages.c.id == message_id)
            )
        ).first()
        if row is None:
            return None
        rcpts = list(
            await conn.execute(
                select(recipients)
                .where(recipients.c.message_id == message_id)
                .order_by(recipients.c.address)
            )
        )
        entries = list(
            await conn.execute(
                select(queue.c.id, queue.c.domain, queue.c.state, queue.c.attempts,
                       queue.c.next_attempt_at, queue.c.last_error)
                .where(queue.c.message_id == message_id)
            )
        )
    result = _message_json(row, rcpts)
    result["queue"] = [
        {"id": e.id, "domain": e.domain, "state": e.state, "attempts": e.attempts,
         "nextAttemptAt": e.next_attempt_at, "lastError": e.last_error}
        for e in entries
    ]
    return result
