"""Send operations of the REST API: idempotency and status, per resource.

Every ``POST /emails:send`` is a long-running operation named by its
``Operation-Id`` (the caller's, or one the service makes). The row is
written in the same transaction that accepts the message, so an operation
exists exactly when its message does. A repeated id with the same body is
the same operation (the SDK re-posts after a 429 or a dropped reply); the
same id with another body is a conflict. Ids are scoped to a resource: one
resource never sees another's operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from mailcarrier.storage.commits import Op
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import operations

RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"
TERMINAL = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Operation:
    id: str
    resource_id: str
    status: str
    message_id: str | None
    error_code: str | None
    error_message: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class OperationConflict(Exception):
    """The Operation-Id is taken by a request with another body."""

    def __init__(self, operation_id: str) -> None:
        super().__init__(
            f"operation {operation_id} was already used for a different request; "
            "use a new Operation-Id for a new message"
        )
        self.operation_id = operation_id


_insert = operations.insert()


def insert_op(
    *,
    resource_id: str,
    operation_id: str,
    body_sha256: str,
    message_id: str | None,
    status: str,
    now: float,
    error: tuple[str, str] | None = None,
) -> Op:
    """The row for a new operation, to commit with the accepted message."""
    code, message = error if error else (None, None)
    row = {
        "resource_id": resource_id,
        "id": operation_id,
        "body_sha256": body_sha256,
        "message_id": message_id,
        "status": status,
        "error_code": code,
        "error_message": message,
        "created_at": now,
        "updated_at": now,
    }
    return (_insert, [row])


def _operation(row: Any) -> Operation:
    return Operation(
        row.id, row.resource_id, row.status, row.message_id, row.error_code,
        row.error_message,
    )


async def find(db: Database, resource_id: str, operation_id: str) -> Operation | None:
    """The resource's operation of that id; None for unknown or foreign ids."""
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(operations).where(
                    operations.c.resource_id == resource_id,
                    operations.c.id == operation_id,
                )
            )
        ).first()
    return _operation(row) if row is not None else None


async def replay(
    db: Database, resource_id: str, operation_id: str, body_sha256: str
) -> Operation | None:
    """The operation a repeated request stands for, or None when it is new.

    Raises :class:`OperationConflict` when the id was used with another body.
    """
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(operations).where(
                    operations.c.resource_id == resource_id,
                    operations.c.id == operation_id,
                )
            )
        ).first()
    if row is None:
        return None
    if row.body_sha256 != body_sha256:
        raise OperationConflict(operation_id)
    return _operation(row)
