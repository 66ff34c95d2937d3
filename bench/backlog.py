"""A deep queue, written straight into a stopped service's database.

Accepting 100,000 messages over SMTP would take minutes and measure
acceptance itself. Instead the rows are made by the same function the
submission path uses (:func:`mailcarrier.delivery.queue.accept_ops`), so
they have exactly the shape real accepted mail has, and written with one
``executemany`` per table for each batch of messages. Every queue entry
is ``ready`` but not due for a day, so the service keeps them waiting and
the deliveries a run measures are only the new ones.

This runs before ``serve`` starts, on a database ``init`` has created.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select, text

from mailcarrier.delivery.queue import accept_ops
from mailcarrier.storage.tables import queue, resources

WAIT_SECONDS = 24 * 3600.0


def message_bytes(sender: str, recipient: str, size: int, message_id: str) -> bytes:
    """A plain message with ``size`` bytes of body in 78-character lines."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\n"
        f"Subject: backlog\r\nDate: {email.utils.formatdate()}\r\n"
        f"Message-ID: {message_id}\r\n\r\n"
    ).encode("ascii")
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return head + body


def _resource_id(conn: Any) -> str:
    found = conn.execute(
        select(resources.c.id).where(resources.c.name == "default")
    ).scalar()
    if found is None:
        raise RuntimeError("no resource 'default': run mailcarrier init first")
    return str(found)


def _rows_for_one(resource_id: str, sender: str, recipient: str, size: int,
                  now: float) -> list[tuple[Any, list[dict[str, Any]]]]:
    message_id = str(uuid.uuid4())
    domain = sender.rpartition("@")[2]
    internet_id = f"<{uuid.UUID(message_id).hex}@{domain}>"
    _jobs, ops = accept_ops(
        message_id=message_id, resource_id=resource_id, mail_from=sender,
        sender_address=sender, internet_message_id=internet_id,
        content=message_bytes(sender, recipient, size, internet_id),
        smtputf8=False, traffic_source="SMTP",
        by_domain={recipient.rpartition("@")[2]: [recipient]},
        now=now, lease_owner=None, lease_until=None,
    )
    for statement, rows in ops:
        if getattr(statement, "table", None) is queue:
            for row in rows:
                row["next_attempt_at"] = now + WAIT_SECONDS
    return ops


def fill(database: Path, *, count: int, sender: str, recipient: str, size: int,
         progress: Callable[[int], None], batch: int = 2000) -> dict[str, Any]:
    """Write ``count`` waiting messages; return what was written and how fast."""
    engine = create_engine(f"sqlite:///{database}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # A filler that crashes is simply run again: no need for FULL syncs.
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    started = time.monotonic()
    written = 0
    try:
        with engine.begin() as conn:
            resource_id = _resource_id(conn)
        while written < count:
            now = time.time()
            merged: dict[int, tuple[Any, list[dict[str, Any]]]] = {}
            for _ in range(min(batch, count - written)):
                for statement, rows in _rows_for_one(resource_id, sender,
                                                     recipient, size, now):
                    merged.setdefault(id(statement), (statement, []))[1].extend(rows)
            with engine.begin() as conn:
                for statement, rows in merged.values():
                    if rows:
                        conn.execute(statement, rows)
            written += min(batch, count - written)
            progress(written)
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        engine.dispose()
    seconds = time.monotonic() - started
    return {
        "messages": written,
        "seconds": round(seconds, 2),
        "rowsPerSecond": round(written / seconds, 1) if seconds else None,
        "databaseMiB": round(database.stat().st_size / 2**20, 1),
        "dueIn": WAIT_SECONDS,
    }
