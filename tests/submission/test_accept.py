"""StoreAcceptor: who may send as which address, and the durable accept."""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from mailcarrier.bootstrap import initialize
from mailcarrier.delivery.queue import QueueJob
from mailcarrier.domains import store as domain_store
from mailcarrier.identity import store as identity_store
from mailcarrier.settings import load_settings
from mailcarrier.storage.commits import CommitGroup
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import (
    domains,
    messages,
    queue,
    recipients,
    send_mail_log,
    sender_usernames,
)
from mailcarrier.submission import replies
from mailcarrier.submission.accept import DeliveryHandoff, StoreAcceptor
from mailcarrier.submission.principal import Accepted, Principal, Refusal


@pytest.fixture
async def setup(db: Database, tmp_path: Path) -> dict[str, Any]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=db.url.render_as_string(hide_password=False),
        hostname="mail.example.test",
    )
    return await initialize(settings, db)


@pytest.fixture
async def principal(db: Database, setup: dict[str, Any]) -> Principal:
    async with db.read() as conn:
        resource = await identity_store.resource_by_name(conn, "default")
    return Principal(
        resource_id=resource.id,
        resource_name=resource.name,
        application_id=setup["application"]["clientId"],
        method="password",
        username="default",
    )


@pytest.fixture
def domain(setup: dict[str, Any]) -> str:
    return setup["domain"]


@pytest.fixture
async def commits(db: Database) -> AsyncIterator[CommitGroup]:
    group = CommitGroup(db)
    try:
        yield group
    finally:
        await group.close()


@pytest.fixture
def acceptor(db: Database, commits: CommitGroup) -> StoreAcceptor:
    return StoreAcceptor(db, commits)


class FakeHandoff(DeliveryHandoff):
    def __init__(self, room: bool) -> None:
        self.owner = "node1:42:1000"
        self.lease_seconds = 300.0
        self.room = room
        self.asked: list[int] = []
        self.taken: list[QueueJob] = []

    def has_room(self, count: int) -> bool:
        self.asked.append(count)
        return self.room

    def take(self, jobs: list[QueueJob]) -> None:
        self.taken.extend(jobs)


def assert_sender_refused(refusal: Refusal | None, *names: str) -> Refusal:
    assert isinstance(refusal, Refusal)
    assert (refusal.code, refusal.enhanced) == (550, "5.1.7")
    for name in names:
        assert name in refusal.text, (name, refusal.text)
    return refusal


async def add_custom_domain(
    db: Database, name: str, resource_id: str | None, *, state: str = "Verified",
    sender: str | None = "donotreply",
) -> None:
    async with db.write() as conn:
        domain_id = identity_store.new_id()
        await conn.execute(domains.insert().values(
            id=domain_id, name=name, kind="custom", resource_id=resource_id,
            verification_state=state, created_at=identity_store.utcnow(),
        ))
        if sender:
            await conn.execute(sender_usernames.insert().values(
                id=identity_store.new_id(), domain_id=domain_id, username=sender,
                display_name="", created_at=identity_store.utcnow(),
            ))


# check_sender ------------------------------------------------------------------


async def test_the_init_sender_may_send(
    acceptor: StoreAcceptor, principal: Principal, domain: str
) -> None:
    assert await acceptor.check_sender(principal, f"donotreply@{domain}") is None


async def test_the_init_sender_may_send_in_upper_case(
    acceptor: StoreAcceptor, principal: Principal, domain: str
) -> None:
    address = f"DoNotReply@{domain.upper()}"

    assert await acceptor.check_sender(principal, address) is None


async def test_an_unknown_domain_is_refused(
    acceptor: StoreAcceptor, principal: Principal
) -> None:
    refusal = await acceptor.check_sender(principal, "someone@unknown.example")

    assert_sender_refused(refusal, "someone@unknown.example", "link")


async def test_a_domain_linked_to_another_resource_is_refused(
    acceptor: StoreAcceptor, principal: Principal, db: Database
) -> None:
    async with db.write() as conn:
        other = await identity_store.create_resource(conn, "other")
        other_domain = await domain_store.create_managed_domain(
            conn, other.id, "mailcarrier.localhost"
        )

    refusal = await acceptor.check_sender(
        principal, f"donotreply@{other_domain.name}"
    )

    assert_sender_refused(refusal, other_domain.name, "default", "link")


async def test_a_domain_linked_to_no_resource_is_refused(
    acceptor: StoreAcceptor, principal: Principal, db: Database
) -> None:
    await add_custom_domain(db, "loose.example", None)

    refusal = await acceptor.check_sender(principal, "donotreply@loose.example")

    assert_sender_refused(refusal, "loose.example")


async def test_an_unverified_domain_is_refused(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    async with db.write() as conn:
        await conn.execute(
            update(domains).where(domains.c.name == domain)
            .values(verification_state="VerificationInProgress")
        )

    refusal = await acceptor.check_sender(principal, f"donotreply@{domain}")

    assert_sender_refused(refusal, domain, "not verified", "VerificationInProgress")


async def test_an_unknown_sender_username_is_refused(
    acceptor: StoreAcceptor, principal: Principal, domain: str
) -> None:
    refusal = await acceptor.check_sender(principal, f"billing@{domain}")

    assert_sender_refused(refusal, "billing", domain, "sender username")


async def test_a_sender_without_a_domain_is_refused(
    acceptor: StoreAcceptor, principal: Principal
) -> None:
    refusal = await acceptor.check_sender(principal, "donotreply")

    assert_sender_refused(refusal, "donotreply")


@pytest.mark.parametrize(
    "address", ["donotreply@bücher.example", "donotreply@xn--bcher-kva.example",
                "DoNotReply@BÜCHER.example"],
)
async def test_an_idn_sender_passes_in_either_form(
    acceptor: StoreAcceptor, principal: Principal, db: Database, address: str
) -> None:
    await add_custom_domain(db, "xn--bcher-kva.example", principal.resource_id)

    assert await acceptor.check_sender(principal, address) is None


# accept ------------------------------------------------------------------------


def message(domain: str, *extra: str, sender: str = "donotreply") -> bytes:
    lines = [f"From: Do Not Reply <{sender}@{domain}>", "To: a@example.net",
             "Subject: Hello", *extra, "", "Body line one.", "Body line two.", ""]
    return "\r\n".join(lines).encode()


async def rows(db: Database, table: Any, *where: Any) -> list[Any]:
    async with db.read() as conn:
        return list(await conn.execute(select(table).where(*where)))


async def test_accept_stores_everything_before_it_returns(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    sender = f"donotreply@{domain}"
    rcpts = ["a@example.net", "b@example.net", "c@Example.ORG"]

    accepted = await acceptor.accept(
        principal, sender, rcpts, message(domain), smtputf8=False
    )

    assert isinstance(accepted, Accepted)
    [stored] = await rows(db, messages, messages.c.id == accepted.message_id)
    assert (stored.resource_id, stored.mail_from, stored.sender_address) == (
        principal.resource_id, sender, sender)
    assert stored.internet_message_id == accepted.internet_message_id
    assert (stored.status, stored.traffic_source, stored.size) == (
        "Queued", "SMTP", len(stored.content))
    entries = await rows(db, queue, queue.c.message_id == accepted.message_id)
    assert sorted(e.domain for e in entries) == ["example.net", "example.org"]
    assert {e.state for e in entries} == {"ready"}
    by_queue = {e.id: e.domain for e in entries}
    stored_rcpts = await rows(
        db, recipients, recipients.c.message_id == accepted.message_id
    )
    assert sorted((r.address, by_queue[r.queue_id]) for r in stored_rcpts) == [
        ("a@example.net", "example.net"), ("b@example.net", "example.net"),
        ("c@Example.ORG", "example.org"),
    ]
    [log] = await rows(db, send_mail_log,
                       send_mail_log.c.CorrelationId == accepted.message_id)
    assert (log.ResourceId, log.UniqueRecipientsCount, log.Size,
            log.TrafficSource) == (principal.resource_id, 3, stored.size, "SMTP")


async def test_accept_adds_message_id_and_date_and_changes_nothing_else(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    original = message(domain)

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], original,
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    [stored] = await rows(db, messages, messages.c.id == accepted.message_id)
    added, rest = stored.content[: -len(original)], stored.content[-len(original):]
    assert rest == original
    found = re.fullmatch(rb"Message-ID: (<[^>]+>)\r\nDate: ([^\r\n]+)\r\n", added)
    assert found is not None, added
    assert found.group(1).decode() == accepted.internet_message_id
    assert accepted.internet_message_id.endswith(f"@{domain}>")
    assert email.utils.parsedate_to_datetime(found.group(2).decode()).tzinfo


async def test_accept_keeps_an_existing_message_id(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    original = message(domain, "Message-Id: <given.1@client.example>",
                       "Date: Mon, 6 Jan 2025 10:00:00 +0100")

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], original,
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    assert accepted.internet_message_id == "<given.1@client.example>"
    [stored] = await rows(db, messages, messages.c.id == accepted.message_id)
    assert stored.content == original
    assert stored.internet_message_id == "<given.1@client.example>"


async def test_accept_adds_only_the_date_when_the_message_id_is_there(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    original = message(domain, "Message-ID: <given.2@client.example>")

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], original,
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    [stored] = await rows(db, messages, messages.c.id == accepted.message_id)
    assert stored.content.endswith(original)
    assert stored.content[: -len(original)].startswith(b"Date: ")
    assert stored.content.count(b"Message-ID:") == 1


async def test_a_message_id_in_the_body_does_not_count(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    original = message(domain) + b"Message-ID: <in.body@example>\r\n"

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], original,
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    assert accepted.internet_message_id.endswith(f"@{domain}>")


async def test_an_idn_sender_gets_a_message_id_in_its_a_label_domain(
    acceptor: StoreAcceptor, principal: Principal, db: Database
) -> None:
    await add_custom_domain(db, "xn--bcher-kva.example", principal.resource_id)
    original = message("bücher.example")

    accepted = await acceptor.accept(
        principal, "donotreply@bücher.example", ["a@example.net"], original,
        smtputf8=True,
    )

    assert isinstance(accepted, Accepted)
    assert accepted.internet_message_id.endswith("@xn--bcher-kva.example>")
    [stored] = await rows(db, messages, messages.c.id == accepted.message_id)
    assert stored.content.endswith(original)
    assert bool(stored.smtputf8) is True


async def test_with_room_in_the_local_worker_entries_are_leased_and_handed_over(
    db: Database, commits: CommitGroup, principal: Principal, domain: str
) -> None:
    handoff = FakeHandoff(room=True)
    acceptor = StoreAcceptor(db, commits, handoff=handoff)

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net", "b@example.org"],
        message(domain), smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    assert handoff.asked == [2]
    entries = await rows(db, queue, queue.c.message_id == accepted.message_id)
    assert {(e.state, e.lease_owner) for e in entries} == {("leased", handoff.owner)}
    assert all(e.lease_expires_at > e.created_at for e in entries)
    assert {job.queue_id for job in handoff.taken} == {e.id for e in entries}
    assert {job.message.message_id for job in handoff.taken} == {accepted.message_id}


async def test_without_room_in_the_local_worker_entries_wait_in_the_queue(
    db: Database, commits: CommitGroup, principal: Principal, domain: str
) -> None:
    handoff = FakeHandoff(room=False)
    acceptor = StoreAcceptor(db, commits, handoff=handoff)

    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], message(domain),
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    assert handoff.taken == []
    [entry] = await rows(db, queue, queue.c.message_id == accepted.message_id)
    assert (entry.state, entry.lease_owner) == ("ready", None)


async def test_a_message_without_from_is_refused(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    content = b"To: a@example.net\r\nSubject: no sender\r\n\r\nbody\r\n"

    result = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net"], content,
        smtputf8=False,
    )

    assert result == replies.NO_FROM_HEADER
    assert await rows(db, messages) == []


async def test_a_bad_recipient_is_refused_and_nothing_is_stored(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    result = await acceptor.accept(
        principal, f"donotreply@{domain}", ["a@example.net", "nobody"],
        message(domain), smtputf8=False,
    )

    assert isinstance(result, Refusal)
    assert (result.code, result.enhanced) == (553, "5.1.3")
    assert await rows(db, messages) == []


async def test_a_recipient_given_twice_is_stored_once(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    accepted = await acceptor.accept(
        principal, f"donotreply@{domain}",
        ["a@example.net", "a@example.net", "a@EXAMPLE.net"], message(domain),
        smtputf8=False,
    )

    assert isinstance(accepted, Accepted)
    stored = await rows(db, recipients, recipients.c.message_id == accepted.message_id)
    assert [r.address for r in stored] == ["a@example.net"]
    [log] = await rows(db, send_mail_log,
                       send_mail_log.c.CorrelationId == accepted.message_id)
    assert log.UniqueRecipientsCount == 1


async def test_concurrent_accepts_are_all_stored(
    acceptor: StoreAcceptor, principal: Principal, db: Database, domain: str
) -> None:
    results = await asyncio.gather(*(
        acceptor.accept(principal, f"donotreply@{domain}", [f"r{i}@example.net"],
                        message(domain), smtputf8=False)
        for i in range(20)
    ))

    ids = {r.message_id for r in results if isinstance(r, Accepted)}
    assert len(ids) == 20
    assert {m.id for m in await rows(db, messages)} == ids


async def test_an_all_ascii_envelope_does_not_ask_for_smtputf8(
    acceptor: StoreAcceptor, principal: Principal, domain: str, db: Database
) -> None:
    sender = f"donotreply@{domain}"
    result = await acceptor.accept(
        principal, sender, ["ann@example.net"],
        f"From: {sender}\r\n\r\nhi\r\n".encode(), smtputf8=True,
    )
    assert isinstance(result, Accepted)
    async with db.read() as conn:
        flag = await conn.scalar(
            select(messages.c.smtputf8).where(messages.c.id == result.message_id)
        )
    assert flag is False


async def test_accepting_while_stopping_says_421_and_stores_nothing(
    db: Database, principal: Principal, domain: str
) -> None:
    sender = f"donotreply@{domain}"
    commits = CommitGroup(db)
    await commits.close()
    acceptor = StoreAcceptor(db, commits)
    result = await acceptor.accept(
        principal, sender, ["ann@example.net"],
        f"From: {sender}\r\n\r\nhi\r\n".encode(), smtputf8=False,
    )
    assert isinstance(result, Refusal)
    assert (result.code, result.enhanced) == (421, "4.3.2")
    async with db.read() as conn:
        assert await conn.scalar(select(func.count()).select_from(messages)) == 0
