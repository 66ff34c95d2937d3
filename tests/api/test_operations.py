"""Send operations: written with the message, replayed, scoped per resource."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from mailcarrier.api import operations as ops
from mailcarrier.identity.store import create_resource
from mailcarrier.storage.db import Database


async def two_resources(db: Database) -> tuple[str, str]:
    async with db.write() as conn:
        first = await create_resource(conn, "first")
        second = await create_resource(conn, "second")
    return first.id, second.id


async def write(db: Database, op: ops.Op) -> None:
    statement, rows = op
    async with db.write() as conn:
        await conn.execute(statement, rows)


def running(resource_id: str, operation_id: str = "op-1", body: str = "aa") -> ops.Op:
    return ops.insert_op(
        resource_id=resource_id, operation_id=operation_id, body_sha256=body,
        message_id="m-1", status=ops.RUNNING, now=1.0,
    )


async def test_an_operation_is_found_by_its_resource(db: Database) -> None:
    first, _second = await two_resources(db)
    await write(db, running(first))

    found = await ops.find(db, first, "op-1")

    assert found == ops.Operation("op-1", first, "Running", "m-1", None, None)
    assert found is not None and not found.terminal


async def test_another_resource_cannot_see_the_operation(db: Database) -> None:
    first, second = await two_resources(db)
    await write(db, running(first))

    assert await ops.find(db, second, "op-1") is None
    assert await ops.replay(db, second, "op-1", "aa") is None


async def test_the_same_id_and_body_replays_the_operation(db: Database) -> None:
    first, _second = await two_resources(db)
    await write(db, running(first))

    replayed = await ops.replay(db, first, "op-1", "aa")

    assert replayed is not None and replayed.message_id == "m-1"


async def test_the_same_id_with_another_body_is_a_conflict(db: Database) -> None:
    first, _second = await two_resources(db)
    await write(db, running(first))

    with pytest.raises(ops.OperationConflict, match="different request"):
        await ops.replay(db, first, "op-1", "bb")


async def test_a_new_id_is_not_a_replay(db: Database) -> None:
    first, _second = await two_resources(db)
    assert await ops.replay(db, first, "op-9", "aa") is None


async def test_two_resources_may_use_the_same_id(db: Database) -> None:
    first, second = await two_resources(db)
    await write(db, running(first))
    await write(db, running(second, body="bb"))

    assert (await ops.find(db, second, "op-1")) is not None


async def test_one_resource_cannot_write_an_id_twice(db: Database) -> None:
    first, _second = await two_resources(db)
    await write(db, running(first))
    with pytest.raises(IntegrityError):
        await write(db, running(first))


async def test_a_failed_operation_keeps_its_error(db: Database) -> None:
    first, _second = await two_resources(db)
    await write(db, ops.insert_op(
        resource_id=first, operation_id="op-2", body_sha256="cc", message_id=None,
        status=ops.FAILED, now=2.0, error=("SenderNotAllowed", "not a sender"),
    ))

    found = await ops.find(db, first, "op-2")

    assert found is not None and found.terminal
    assert (found.error_code, found.error_message) == ("SenderNotAllowed", "not a sender")
