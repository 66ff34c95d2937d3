"""The delivery queue: rows written on accept, claims, leases, outcomes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from mailcarrier.delivery import queue as q
from mailcarrier.delivery.queue import QueueJob, RecipientUpdate
from mailcarrier.storage.commits import CommitGroup, Op
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import (
    messages,
    queue,
    recipients,
    send_mail_log,
    status_update_log,
)

NOW = 1_700_000_000.0
RESOURCE = "11111111-2222-3333-4444-555555555555"
LEASE = 300.0
CONTENT = b"From: Sender.Name@Example.COM\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
async def commits(db: Database) -> AsyncIterator[CommitGroup]:
    group = CommitGroup(db)
    try:
        yield group
    finally:
        await group.close()


async def write(db: Database, ops: Sequence[Op]) -> None:
    async with db.write() as conn:
        for statement, rows in ops:
            if rows:
                await conn.execute(statement, rows)


async def enqueue(
    db: Database,
    by_domain: dict[str, list[str]] | None = None,
    *,
    now: float = NOW,
    owner: str | None = None,
    lease_until: float | None = None,
) -> list[QueueJob]:
    jobs, ops = q.accept_ops(
        message_id=str(uuid.uuid4()),
        resource_id=RESOURCE,
        mail_from="bounces@example.com",
        sender_address="Sender.Name@Example.COM",
        internet_message_id="<id@example.com>",
        content=CONTENT,
        smtputf8=False,
        traffic_source="SMTP",
        by_domain=by_domain or {"example.net": ["a@example.net"]},
        now=now,
        lease_owner=owner,
        lease_until=lease_until,
    )
    await write(db, ops)
    return jobs


async def rows(db: Database, table: Any, *where: Any) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(table).where(*where)))


async def one(db: Database, table: Any, *where: Any) -> Any:
    found = await rows(db, table, *where)
    assert len(found) == 1, found
    return found[0]


async def claim(db: Database, owner: str = "n1:1:1", **kw: Any) -> list[QueueJob]:
    kw.setdefault("now", NOW)
    kw.setdefault("limit", 100)
    kw.setdefault("lease_seconds", LEASE)
    return await q.claim(db, owner, **kw)


def update(rcpt: tuple[str, str], status: str, code: int, enhanced: str,
           response: str, reason: str | None = None) -> RecipientUpdate:
    return RecipientUpdate(
        recipient_id=rcpt[0], address=rcpt[1], status=status, code=code,
        enhanced=enhanced, response=response, host="mx.example.net",
        failure_reason=reason,
    )


def delivered(rcpt: tuple[str, str]) -> RecipientUpdate:
    return update(rcpt, "Delivered", 250, "2.0.0", "250 2.0.0 Ok: queued as X")


# Accepting -------------------------------------------------------------------


async def test_accept_ops_write_message_queue_recipients_and_log(db: Database) -> None:
    [job_net, job_org] = await enqueue(
        db, {"example.net": ["a@example.net", "b@example.net"],
             "example.org": ["c@example.org"]},
    )
    message_id = job_net.message.message_id

    message = await one(db, messages, messages.c.id == message_id)
    assert (message.status, message.content, message.size) == (
        "Queued", CONTENT, len(CONTENT))
    entries = await rows(db, queue, queue.c.message_id == message_id)
    assert {(e.id, e.domain, e.state) for e in entries} == {
        (job_net.queue_id, "example.net", "ready"),
        (job_org.queue_id, "example.org", "ready"),
    }
    stored = await rows(db, recipients, recipients.c.message_id == message_id)
    assert {(r.queue_id, r.address, r.status) for r in stored} == {
        (job_net.queue_id, "a@example.net", "Queued"),
        (job_net.queue_id, "b@example.net", "Queued"),
        (job_org.queue_id, "c@example.org", "Queued"),
    }
    log = await one(db, send_mail_log, send_mail_log.c.CorrelationId == message_id)
    assert (log.ResourceId, log.UniqueRecipientsCount, log.Size) == (
        RESOURCE, 3, len(CONTENT))


async def test_accept_ops_with_an_owner_write_leased_entries(db: Database) -> None:
    [job] = await enqueue(db, owner="n1:1:1", lease_until=NOW + LEASE)

    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.lease_owner, entry.lease_expires_at) == (
        "leased", "n1:1:1", NOW + LEASE)


# Claiming --------------------------------------------------------------------


async def test_claim_returns_due_entries_with_content_and_pending_recipients(
    db: Database,
) -> None:
    [job] = await enqueue(db, {"example.net": ["b@example.net", "a@example.net"]})

    [claimed] = await claim(db, "n1:1:1")

    assert claimed.queue_id == job.queue_id
    assert claimed.domain == "example.net"
    assert claimed.message.content == CONTENT
    assert claimed.message.resource_id == RESOURCE
    assert sorted(claimed.recipients) == sorted(job.recipients)
    assert claimed.possible_duplicate is False
    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.lease_owner, entry.lease_expires_at) == (
        "leased", "n1:1:1", NOW + LEASE)


async def test_claim_leaves_out_recipients_already_final(db: Database) -> None:
    [job] = await enqueue(db, {"example.net": ["a@example.net", "b@example.net"]})
    done, still_open = sorted(job.recipients, key=lambda r: r[1])
    async with db.write() as conn:
        await conn.execute(
            recipients.update().where(recipients.c.id == done[0])
            .values(status="Delivered")
        )

    [claimed] = await claim(db)

    assert claimed.recipients == [still_open]


async def test_claim_skips_entries_not_yet_due(db: Database) -> None:
    await enqueue(db, now=NOW + 60)

    assert await claim(db, now=NOW) == []


async def test_claim_respects_its_limit(db: Database) -> None:
    for _ in range(3):
        await enqueue(db)

    assert len(await claim(db, limit=2)) == 2
    assert len(await claim(db, limit=2)) == 1


async def test_claim_skips_entries_under_a_live_lease(db: Database) -> None:
    await enqueue(db, owner="other:1:1", lease_until=NOW + 10)

    assert await claim(db, now=NOW) == []


async def test_claim_takes_an_expired_lease_and_marks_it_possible_duplicate(
    db: Database,
) -> None:
    [job] = await enqueue(db, owner="dead:1:1", lease_until=NOW - 1)

    [claimed] = await claim(db, "n1:1:1", now=NOW)

    assert claimed.queue_id == job.queue_id
    assert claimed.possible_duplicate is True
    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.lease_owner, bool(entry.possible_duplicate)) == ("n1:1:1", True)


async def test_claim_of_a_ready_entry_is_not_a_possible_duplicate(
    db: Database,
) -> None:
    [job] = await enqueue(db)

    await claim(db)

    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert bool(entry.possible_duplicate) is False


async def _second_handle(db: Database) -> Database:
    return Database(db.url.render_as_string(hide_password=False))


async def test_concurrent_claims_never_share_an_entry_and_take_them_all(
    db: Database,
) -> None:
    for _ in range(40):
        await enqueue(db)
    other = await _second_handle(db)
    try:
        rounds = [
            asyncio.gather(
                claim(db, "a:1:1", limit=7), claim(other, "b:1:1", limit=7)
            )
            for _ in range(4)
        ]
        results = [await r for r in rounds]
    finally:
        await other.close()

    ids = [job.queue_id for pair in results for jobs in pair for job in jobs]
    assert len(ids) == len(set(ids)) == 40
    owners = {e.id: e.lease_owner for e in await rows(db, queue)}
    for pair in results:
        assert all(owners[job.queue_id] == "a:1:1" for job in pair[0])
        assert all(owners[job.queue_id] == "b:1:1" for job in pair[1])


# Leases ----------------------------------------------------------------------


async def test_release_node_frees_the_leases_of_that_node_only(
    db: Database,
) -> None:
    [mine] = await enqueue(db, owner="node1:10:1", lease_until=NOW + LEASE)
    [other] = await enqueue(db, owner="node10:10:1", lease_until=NOW + LEASE)

    assert await q.release_node(db, "node1") == 1

    entry = await one(db, queue, queue.c.id == mine.queue_id)
    assert (entry.state, entry.lease_owner, entry.lease_expires_at) == (
        "ready", None, None)
    assert bool(entry.possible_duplicate) is True
    untouched = await one(db, queue, queue.c.id == other.queue_id)
    assert (untouched.state, untouched.lease_owner) == ("leased", "node10:10:1")


async def test_release_node_takes_wildcards_in_a_node_name_literally(
    db: Database,
) -> None:
    [other] = await enqueue(db, owner="mailX1:10:1", lease_until=NOW + LEASE)

    assert await q.release_node(db, "mail_1") == 0

    entry = await one(db, queue, queue.c.id == other.queue_id)
    assert (entry.state, entry.lease_owner) == ("leased", "mailX1:10:1")


async def test_release_node_tells_node_names_apart_by_case(db: Database) -> None:
    [other] = await enqueue(db, owner="MAIL:10:1", lease_until=NOW + LEASE)

    assert await q.release_node(db, "mail") == 0

    entry = await one(db, queue, queue.c.id == other.queue_id)
    assert entry.state == "leased"


async def test_release_of_one_worker_leaves_its_siblings_leases(
    db: Database,
) -> None:
    [gone] = await enqueue(db, owner="node1:12:1", lease_until=NOW + LEASE)
    [alive] = await enqueue(db, owner="node1:123:1", lease_until=NOW + LEASE)

    assert await q.release_node(db, "node1:12") == 1

    assert (await one(db, queue, queue.c.id == gone.queue_id)).state == "ready"
    assert (await one(db, queue, queue.c.id == alive.queue_id)).state == "leased"


async def test_renew_extends_only_the_owners_leases(db: Database) -> None:
    [mine] = await enqueue(db, owner="n1:1:1", lease_until=NOW + 10)
    [theirs] = await enqueue(db, owner="n2:1:1", lease_until=NOW + 10)

    assert await q.renew(db, "n1:1:1", until=NOW + 999) == 1

    assert (await one(db, queue, queue.c.id == mine.queue_id)).lease_expires_at == (
        NOW + 999)
    assert (await one(db, queue, queue.c.id == theirs.queue_id)).lease_expires_at == (
        NOW + 10)


# Outcomes --------------------------------------------------------------------


async def claimed_job(db: Database, by_domain: dict[str, list[str]]) -> QueueJob:
    await enqueue(db, by_domain)
    [job] = await claim(db)
    return job


async def test_all_recipients_delivered_closes_entry_and_message(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net", "b@example.net"]})

    await commits.submit(q.outcome_ops(
        job, [delivered(r) for r in job.recipients],
        now=NOW + 5, next_attempt_at=None, error=None,
    ))

    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "Delivered"
    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.lease_owner, entry.attempts) == ("done", None, 1)
    stored = await rows(db, recipients, recipients.c.queue_id == job.queue_id)
    assert {(r.status, r.smtp_status_code, r.attempts) for r in stored} == {
        ("Delivered", 250, 1)}
    logs = await rows(db, status_update_log,
                      status_update_log.c.CorrelationId == job.message.message_id)
    assert sorted(log.RecipientId for log in logs) == [
        "a@example.net", "b@example.net"]
    for log in logs:
        assert (log.DeliveryStatus, log.SmtpStatusCode, log.EnhancedSmtpStatusCode,
                bool(log.IsHardBounce), log.FailureMessage) == (
            "Delivered", 250, "2.0.0", False, None)
        assert (log.SenderDomain, log.SenderUsername) == ("example.com", "sender.name")
        assert (log.ResourceId, log.OperationName) == (
            RESOURCE, "DeliveryStatusUpdate")


async def test_a_bounce_beside_a_delivery_makes_the_message_partially_delivered(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net", "b@example.net"]})
    ok, bad = sorted(job.recipients, key=lambda r: r[1])
    reply = "550 5.1.1 <b@example.net>: Recipient address rejected: User unknown"

    await commits.submit(q.outcome_ops(
        job,
        [delivered(ok), update(bad, "Bounced", 550, "5.1.1", reply, "Bounced")],
        now=NOW + 5, next_attempt_at=None, error=None,
    ))

    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "PartiallyDelivered"
    log = await one(db, status_update_log, status_update_log.c.RecipientId == bad[1])
    assert (log.DeliveryStatus, bool(log.IsHardBounce), log.SmtpStatusCode,
            log.EnhancedSmtpStatusCode, log.FailureReason, log.FailureMessage) == (
        "Bounced", True, 550, "5.1.1", "Bounced", reply)


async def test_a_failed_recipient_is_not_a_hard_bounce(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    [rcpt] = job.recipients

    await commits.submit(q.outcome_ops(
        job, [update(rcpt, "Failed", 451, "4.4.1", "451 timeout", "Timeout")],
        now=NOW + 5, next_attempt_at=None, error="gave up",
    ))

    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "Failed"
    log = await one(db, status_update_log, status_update_log.c.RecipientId == rcpt[1])
    assert (log.DeliveryStatus, bool(log.IsHardBounce)) == ("Failed", False)


async def test_a_retry_makes_the_entry_ready_later_and_keeps_recipient_queued(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    [rcpt] = job.recipients

    await commits.submit(q.outcome_ops(
        job, [update(rcpt, "Queued", 451, "4.7.1", "451 4.7.1 greylisted")],
        now=NOW + 5, next_attempt_at=NOW + 65, error="451 4.7.1 greylisted",
    ))

    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.next_attempt_at, entry.lease_owner, entry.attempts,
            entry.last_error) == ("ready", NOW + 65, None, 1, "451 4.7.1 greylisted")
    stored = await one(db, recipients, recipients.c.id == rcpt[0])
    assert (stored.status, stored.attempts, stored.response) == (
        "Queued", 1, "451 4.7.1 greylisted")
    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "OutForDelivery"
    assert await rows(db, status_update_log) == []
    assert await claim(db, now=NOW + 64) == []
    assert [j.queue_id for j in await claim(db, now=NOW + 65)] == [job.queue_id]


async def test_a_held_entry_quarantines_its_message_with_the_reason(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})

    await commits.submit(q.hold_ops(job, "KeyError: 'x'", now=NOW + 5))

    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.lease_owner, entry.last_error) == (
        "held", None, "KeyError: 'x'")
    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert (message.status, message.quarantine_reason) == (
        "Quarantined", "KeyError: 'x'")
    assert await claim(db, now=NOW + 10_000) == []


async def test_outcome_of_another_entry_leaves_a_quarantined_message_quarantined(
    db: Database, commits: CommitGroup
) -> None:
    await enqueue(
        db, {"example.net": ["a@example.net"], "example.org": ["b@example.org"]}
    )
    first, second = await claim(db)
    await commits.submit(q.hold_ops(first, "boom", now=NOW + 1))

    await commits.submit(q.outcome_ops(
        second, [delivered(r) for r in second.recipients],
        now=NOW + 2, next_attempt_at=None, error=None,
    ))

    message = await one(db, messages, messages.c.id == first.message.message_id)
    assert message.status == "Quarantined"


# Operator actions ------------------------------------------------------------


async def test_retry_now_releases_a_held_entry_and_its_message(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    await commits.submit(q.hold_ops(job, "boom", now=NOW + 5))

    assert await q.retry_now(db, [job.queue_id], now=NOW + 100) == 1

    entry = await one(db, queue, queue.c.id == job.queue_id)
    assert (entry.state, entry.next_attempt_at) == ("ready", NOW + 100)
    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert (message.status, message.quarantine_reason) == ("OutForDelivery", None)
    assert [j.queue_id for j in await claim(db, now=NOW + 100)] == [job.queue_id]


async def test_retry_now_by_message_id_releases_its_entries(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    await commits.submit(q.hold_ops(job, "boom", now=NOW + 5))

    assert await q.retry_now(db, [job.message.message_id], now=NOW + 100) == 1

    assert (await one(db, queue, queue.c.id == job.queue_id)).state == "ready"


async def test_retry_now_leaves_a_message_quarantined_while_an_entry_is_held(
    db: Database, commits: CommitGroup
) -> None:
    await enqueue(
        db, {"example.net": ["a@example.net"], "example.org": ["b@example.org"]}
    )
    held, waiting = await claim(db)
    await commits.submit(q.hold_ops(held, "boom", now=NOW + 1))
    await commits.submit(q.outcome_ops(
        waiting,
        [update(waiting.recipients[0], "Queued", 451, "4.7.1", "451 later")],
        now=NOW + 2, next_attempt_at=NOW + 600, error="451 later",
    ))

    assert await q.retry_now(db, [waiting.queue_id], now=NOW + 3) == 1

    assert (await one(db, queue, queue.c.id == held.queue_id)).state == "held"
    message = await one(db, messages, messages.c.id == held.message.message_id)
    assert (message.status, message.quarantine_reason) == ("Quarantined", "boom")


async def test_retry_now_leaves_leased_entries_alone(db: Database) -> None:
    [job] = await enqueue(db, owner="n1:1:1", lease_until=NOW + LEASE)

    assert await q.retry_now(db, [], now=NOW) == 0

    assert (await one(db, queue, queue.c.id == job.queue_id)).lease_owner == "n1:1:1"


async def test_purge_fails_open_recipients_with_a_reason_and_deletes_the_entry(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    await commits.submit(q.hold_ops(job, "boom", now=NOW + 5))

    assert await q.purge(db, [job.queue_id], now=NOW + 10) == 1

    assert await rows(db, queue, queue.c.id == job.queue_id) == []
    [rcpt] = await rows(db, recipients, recipients.c.queue_id == job.queue_id)
    assert rcpt.status == "Failed"
    assert "purged" in rcpt.response
    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "Failed"


async def test_purge_keeps_recipients_already_delivered(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net", "b@example.net"]})
    ok, pending = sorted(job.recipients, key=lambda r: r[1])
    await commits.submit(q.outcome_ops(
        job, [delivered(ok), update(pending, "Queued", 451, "4.2.2", "451 full")],
        now=NOW + 5, next_attempt_at=NOW + 60, error="451 full",
    ))

    assert await q.purge(db, [job.message.message_id], now=NOW + 10) == 1

    stored = {r.address: r.status for r in
              await rows(db, recipients, recipients.c.queue_id == job.queue_id)}
    assert stored == {ok[1]: "Delivered", pending[1]: "Failed"}
    message = await one(db, messages, messages.c.id == job.message.message_id)
    assert message.status == "PartiallyDelivered"


async def test_purge_of_unknown_ids_does_nothing(db: Database) -> None:
    [job] = await enqueue(db)

    assert await q.purge(db, ["no-such-id"], now=NOW) == 0

    assert (await one(db, queue, queue.c.id == job.queue_id)).state == "ready"



async def test_queue_entries_list_open_entries_by_state(
    db: Database, commits: CommitGroup
) -> None:
    job = await claimed_job(db, {"example.net": ["a@example.net"]})
    await commits.submit(q.hold_ops(job, "boom", now=NOW + 5))
    [waiting] = await enqueue(db)

    held = await q.queue_entries(db, state="held")
    everything = await q.queue_entries(db)

    assert [e.id for e in held] == [job.queue_id]
    assert {e.id for e in everything} == {job.queue_id, waiting.queue_id}


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["Delivered", "Delivered"], "Delivered"),
        (["Delivered", "Queued"], "OutForDelivery"),
        (["Bounced", "Queued"], "OutForDelivery"),
        (["Delivered", "Bounced"], "PartiallyDelivered"),
        (["Delivered", "Failed"], "PartiallyDelivered"),
        (["Bounced", "Failed"], "Failed"),
        (["Bounced"], "Failed"),
    ],
)
def test_message_status_follows_from_its_recipients(
    statuses: list[str], expected: str
) -> None:
    assert q.message_status(statuses) == expected
