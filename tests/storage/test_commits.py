"""Group commit: jobs share transactions, fail alone, keep their order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from mailcarrier.storage.commits import CommitGroup
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import applications, client_secrets, deployment

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)

insert_setting = deployment.insert()
insert_application = applications.insert()
insert_secret = client_secrets.insert()


@pytest.fixture
async def commits(db: Database) -> AsyncIterator[CommitGroup]:
    group = CommitGroup(db)
    try:
        yield group
    finally:
        await group.close()


def count_commits(db: Database) -> list[int]:
    counter = [0]

    @event.listens_for(db.writer.sync_engine, "commit")
    def _on_commit(_conn: object) -> None:
        counter[0] += 1

    return counter


def setting(key: str) -> list[tuple]:
    return [(insert_setting, [{"key": key, "value": f"value of {key}"}])]


def application_row(app_id: str) -> dict:
    return {"id": app_id, "tenant_id": "t", "name": app_id, "created_at": NOW}


def secret_row(secret_id: str, app_id: str) -> dict:
    return {
        "id": secret_id, "application_id": app_id, "secret_hash": "h", "hint": "abc",
        "expires_at": NOW, "created_at": NOW,
    }


async def setting_keys(db: Database) -> set[str]:
    async with db.read() as conn:
        return set(await conn.scalars(select(deployment.c.key)))


async def test_concurrent_jobs_share_transactions_and_are_stored_on_return(
    db: Database, commits: CommitGroup
) -> None:
    commit_count = count_commits(db)
    keys = [f"k{i}" for i in range(50)]

    await asyncio.gather(*(commits.submit(setting(key)) for key in keys))

    assert await setting_keys(db) == set(keys)
    assert 1 <= commit_count[0] < len(keys)


async def test_a_lone_job_is_committed_before_submit_returns(
    db: Database, commits: CommitGroup
) -> None:
    await commits.submit(setting("alone"))

    assert await setting_keys(db) == {"alone"}


async def test_a_failing_job_fails_alone_while_its_group_commits(
    db: Database, commits: CommitGroup
) -> None:
    await commits.submit(setting("taken"))

    results = await asyncio.gather(
        commits.submit(setting("first")),
        commits.submit(setting("taken")),  # duplicate primary key
        commits.submit(setting("last")),
        return_exceptions=True,
    )

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    assert await setting_keys(db) == {"taken", "first", "last"}


async def test_a_failing_job_leaves_none_of_its_own_rows(
    db: Database, commits: CommitGroup
) -> None:
    await commits.submit(setting("taken"))
    bad_job = setting("half") + setting("taken")

    results = await asyncio.gather(
        commits.submit(bad_job), commits.submit(setting("good")),
        return_exceptions=True,
    )

    assert isinstance(results[0], IntegrityError) and results[1] is None
    assert await setting_keys(db) == {"taken", "good"}


async def test_submit_after_close_raises(commits: CommitGroup) -> None:
    await commits.close()

    with pytest.raises(RuntimeError, match="closed"):
        await commits.submit(setting("late"))


async def test_close_finishes_jobs_already_submitted(
    db: Database, commits: CommitGroup
) -> None:
    pending = [
        asyncio.ensure_future(commits.submit(setting(f"k{i}"))) for i in range(5)
    ]
    await asyncio.sleep(0)  # let the submissions enqueue

    await commits.close()

    await asyncio.gather(*pending)
    assert await setting_keys(db) == {f"k{i}" for i in range(5)}


async def test_a_jobs_parent_row_is_inserted_before_its_child(
    db: Database, commits: CommitGroup
) -> None:
    jobs = [
        [
            (insert_application, [application_row(f"app{i}")]),
            (insert_secret, [secret_row(f"secret{i}", f"app{i}")]),
        ]
        for i in range(10)
    ]

    await asyncio.gather(*(commits.submit(job) for job in jobs))

    async with db.read() as conn:
        pairs = set(await conn.execute(
            select(client_secrets.c.id, client_secrets.c.application_id)
        ))
    assert pairs == {(f"secret{i}", f"app{i}") for i in range(10)}


async def test_jobs_whose_statement_orders_conflict_are_all_committed(
    db: Database, commits: CommitGroup
) -> None:
    # One job adds a secret to an existing application; the next adds an
    # application and its secret. Merged by first appearance, the second
    # job's child would precede its parent: each must still end committed.
    await commits.submit([(insert_application, [application_row("old")])])

    await asyncio.gather(
        commits.submit([(insert_secret, [secret_row("s-old", "old")])]),
        commits.submit([
            (insert_application, [application_row("new")]),
            (insert_secret, [secret_row("s-new", "new")]),
        ]),
    )

    async with db.read() as conn:
        secrets = set(await conn.scalars(select(client_secrets.c.id)))
    assert secrets == {"s-old", "s-new"}


async def test_a_job_with_no_rows_for_a_statement_skips_it(
    db: Database, commits: CommitGroup
) -> None:
    await commits.submit([(insert_application, []), *setting("only")])

    assert await setting_keys(db) == {"only"}


async def test_more_jobs_than_a_group_holds_are_split_into_groups(
    db: Database,
) -> None:
    group = CommitGroup(db, max_jobs=4)
    commit_count = count_commits(db)
    try:
        await asyncio.gather(*(group.submit(setting(f"k{i}")) for i in range(12)))
    finally:
        await group.close()

    assert await setting_keys(db) == {f"k{i}" for i in range(12)}
    assert commit_count[0] >= 3


async def test_a_child_row_without_its_parent_fails(commits: CommitGroup) -> None:
    # Proves foreign keys are enforced, so the ordering tests above mean something.
    with pytest.raises(IntegrityError):
        await commits.submit([(insert_secret, [secret_row("orphan", "missing")])])
