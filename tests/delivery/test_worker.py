"""The delivery worker with a real database and scripted routes and peers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dkim
import pytest
from sqlalchemy import select

from mailcarrier.bootstrap import initialize
from mailcarrier.delivery import queue as q
from mailcarrier.delivery.client import Envelope, RecipientResult
from mailcarrier.delivery.outcomes import Action
from mailcarrier.delivery.routing import Host, PermanentRouteError, Route
from mailcarrier.delivery.worker import DeliveryWorker, recipient_status
from mailcarrier.identity.store import resource_by_name
from mailcarrier.messages import show_message
from mailcarrier.settings import Settings, load_settings
from mailcarrier.storage.commits import CommitGroup
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import messages, queue, status_update_log
from mailcarrier.submission.accept import StoreAcceptor
from mailcarrier.submission.principal import Accepted, Principal

HOST = Host(name="mx.example.test", address="127.0.0.1", port=25, preference=10)


class ScriptedRouter:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def resolve(self, domain: str) -> Route:
        if self.error is not None:
            raise self.error
        return Route(domain, [HOST])


class ScriptedPool:
    """Answers every recipient with one action; keeps what it was given."""

    def __init__(self, action: Action = Action.DELIVERED, *, code: int = 250,
                 eight_bit_ok: bool = True, fail: Exception | None = None) -> None:
        self.action, self.code = action, code
        self.eight_bit_ok = eight_bit_ok
        self.fail = fail
        self.sent: list[tuple[Envelope, bytes]] = []
        self.done = asyncio.Event()

    async def deliver(self, hosts: Sequence[Host], envelope: Envelope
                      ) -> list[RecipientResult]:
        try:
            if self.fail is not None:
                raise self.fail
            data = envelope.render(self.eight_bit_ok)
            self.sent.append((envelope, data))
            enhanced = {250: "2.0.0", 451: "4.3.0", 550: "5.1.1"}[self.code]
            return [
                RecipientResult(r, self.action, self.code, enhanced,
                                f"{self.code} {enhanced} scripted", hosts[0].name, True)
                for r in envelope.recipients
            ]
        finally:
            self.done.set()

    async def close(self) -> None:
        return None


@pytest.fixture
async def setup(db: Database, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    settings = load_settings(data_dir=tmp_path / "data", database_url=str(db.url),
                             retry_initial_delay=60.0)
    creds = await initialize(settings, db)
    async with db.read() as conn:
        resource = await resource_by_name(conn, "default")
    principal = Principal(resource.id, resource.name, None, "trusted")
    commits = CommitGroup(db)
    yield {"settings": settings, "creds": creds, "principal": principal,
           "commits": commits}
    await commits.close()


def make_worker(setup: dict[str, Any], db: Database, router: Any, pool: Any,
                **settings: Any) -> DeliveryWorker:
    config: Settings = setup["settings"]
    if settings:
        config = config.model_copy(update=settings)
    worker = DeliveryWorker(config, db, setup["commits"], router=router, pool=pool,
                            poll_interval=0.05)
    return worker


@asynccontextmanager
async def running(setup: dict[str, Any], db: Database, router: Any, pool: Any,
                  **settings: Any) -> AsyncIterator[DeliveryWorker]:
    """A started worker, stopped on the way out."""
    worker = make_worker(setup, db, router, pool, **settings)
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def submit(setup: dict[str, Any], db: Database, worker: DeliveryWorker | None,
                 body: bytes = b"hello\r\n", rcpts: list[str] | None = None) -> str:
    sender = setup["creds"]["senderAddress"]
    acceptor = StoreAcceptor(db, setup["commits"], handoff=worker)
    content = (f"From: {sender}\r\nTo: a@example.test\r\nSubject: t\r\n\r\n"
               .encode() + body)
    result = await acceptor.accept(setup["principal"], sender,
                                   rcpts or ["a@example.test"], content,
                                   smtputf8=False)
    assert isinstance(result, Accepted)
    return result.message_id


async def settled(db: Database, message_id: str, timeout: float = 5.0) -> dict:
    """The message once nothing is leased, read the same twice in a row.

    ``show_message`` reads the message, its recipients and its queue entries
    in separate statements, so one reading may straddle a commit; two equal
    readings in a row cannot.
    """
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        shown = await show_message(db, message_id)
        assert shown is not None
        if shown["status"] not in ("Queued",) and all(
            e["state"] != "leased" for e in shown["queue"]
        ):
            if shown == previous:
                return shown
            previous = shown
            continue
        if time.monotonic() > deadline:
            raise AssertionError(shown)
        await asyncio.sleep(0.02)


def test_recipient_status_follows_the_action_and_the_lifetime() -> None:
    assert recipient_status(Action.DELIVERED, expired=True) == "Delivered"
    assert recipient_status(Action.BOUNCE, expired=False) == "Bounced"
    assert recipient_status(Action.RETRY, expired=False) == "Queued"
    assert recipient_status(Action.RETRY, expired=True) == "Failed"


async def test_handed_off_mail_is_signed_delivered_and_recorded(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = ScriptedPool()
    async with running(setup, db, ScriptedRouter(), pool) as worker:
        message_id = await submit(setup, db, worker)
        shown = await settled(db, message_id)
    assert shown["status"] == "Delivered"
    [rcpt] = shown["recipients"]
    assert (rcpt["status"], rcpt["smtpStatusCode"], rcpt["remoteHost"]) == (
        "Delivered", 250, "mx.example.test")
    [(envelope, data)] = pool.sent
    assert envelope.mail_from == setup["creds"]["senderAddress"]
    assert data.startswith(b"DKIM-Signature:")
    record = setup["creds"]["dkim"]["value"].encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record)


async def test_queued_mail_is_claimed_when_nothing_handed_it_over(
    db: Database, setup: dict[str, Any]
) -> None:
    message_id = await submit(setup, db, None)
    pool = ScriptedPool()
    async with running(setup, db, ScriptedRouter(), pool):
        shown = await settled(db, message_id)
    assert shown["recipients"][0]["status"] == "Delivered"
    assert len(pool.sent) == 1


async def test_a_temporary_failure_keeps_the_recipient_queued_for_later(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = ScriptedPool(Action.RETRY, code=451)
    async with running(setup, db, ScriptedRouter(), pool) as worker:
        message_id = await submit(setup, db, worker)
        await pool.done.wait()
        shown = await settled(db, message_id)
    [rcpt] = shown["recipients"]
    assert (rcpt["status"], rcpt["attempts"], rcpt["smtpStatusCode"]) == (
        "Queued", 1, 451)
    [entry] = shown["queue"]
    assert entry["state"] == "ready"
    # 60 s initial delay with +-20% jitter.
    assert 47 <= entry["nextAttemptAt"] - time.time() <= 73
    assert shown["status"] == "OutForDelivery"


async def test_a_temporary_failure_past_the_lifetime_fails_the_recipient(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = ScriptedPool(Action.RETRY, code=451)
    async with running(setup, db, ScriptedRouter(), pool, max_queue_lifetime=0.001) as worker:
        message_id = await submit(setup, db, worker)
        shown = await settled(db, message_id)
    assert shown["status"] == "Failed"
    assert shown["recipients"][0]["status"] == "Failed"
    assert shown["queue"][0]["state"] == "done"
    async with db.read() as conn:
        row = (await conn.execute(select(status_update_log))).one()
    assert (row.DeliveryStatus, row.FailureReason) == ("Failed", "LifetimeExceeded")


async def test_a_null_mx_bounces_at_once_with_the_reason(
    db: Database, setup: dict[str, Any]
) -> None:
    error = PermanentRouteError("example.test does not accept mail (null MX)",
                                "5.1.10")
    pool = ScriptedPool()
    async with running(setup, db, ScriptedRouter(error), pool) as worker:
        message_id = await submit(setup, db, worker)
        shown = await settled(db, message_id)
    [rcpt] = shown["recipients"]
    assert rcpt["status"] == "Bounced"
    assert rcpt["enhancedSmtpStatusCode"] == "5.1.10"
    assert "null MX" in rcpt["response"]
    assert pool.sent == []


async def test_an_unexpected_error_quarantines_the_message_and_retry_releases_it(
    db: Database, setup: dict[str, Any]
) -> None:
    broken = ScriptedPool(fail=RuntimeError("corrupt row"))
    async with running(setup, db, ScriptedRouter(), broken) as worker:
        message_id = await submit(setup, db, worker)
        await broken.done.wait()
        shown = await settled(db, message_id)
    assert shown["status"] == "Quarantined"
    assert shown["quarantineReason"] == "RuntimeError: corrupt row"
    assert shown["queue"][0]["state"] == "held"
    assert shown["recipients"][0]["status"] == "Queued"

    assert await q.retry_now(db, [message_id], now=time.time()) == 1
    healthy = ScriptedPool()
    async with running(setup, db, ScriptedRouter(), healthy) as worker:
        shown = await settled(db, message_id)
        while shown["status"] != "Delivered":
            await asyncio.sleep(0.02)
            shown = await settled(db, message_id)
    assert shown["recipients"][0]["status"] == "Delivered"
    assert len(healthy.sent) == 1


async def test_eight_bit_content_is_made_seven_bit_for_a_server_without_8bitmime(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = ScriptedPool(eight_bit_ok=False)
    async with running(setup, db, ScriptedRouter(), pool) as worker:
        body = ("Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n").encode()
        sender = setup["creds"]["senderAddress"]
        acceptor = StoreAcceptor(db, setup["commits"], handoff=worker)
        content = f"From: {sender}\r\nSubject: t\r\nMIME-Version: 1.0\r\n".encode()
        result = await acceptor.accept(setup["principal"], sender, ["a@example.test"],
                                       content + body, smtputf8=False)
        assert isinstance(result, Accepted)
        await settled(db, result.message_id)
    [(_envelope, data)] = pool.sent
    assert data.isascii()
    record = setup["creds"]["dkim"]["value"].encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record)


async def test_one_message_to_two_domains_is_signed_once_and_sent_twice(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = ScriptedPool()
    async with running(setup, db, ScriptedRouter(), pool) as worker:
        message_id = await submit(setup, db, worker,
                                  rcpts=["a@one.test", "b@two.test", "c@two.test"])
        shown = await settled(db, message_id)
    assert shown["status"] == "Delivered"
    assert sorted(sorted(e.recipients) for e, _ in pool.sent) == [
        ["a@one.test"], ["b@two.test", "c@two.test"]]
    first, second = (data for _, data in pool.sent)
    assert first is second  # rendered (signed) once, reused
    async with db.read() as conn:
        states = (await conn.execute(select(queue.c.state))).scalars().all()
        status = (await conn.execute(select(messages.c.status))).scalar_one()
    assert states == ["done", "done"]
    assert status == "Delivered"


async def test_a_message_that_cannot_be_made_seven_bit_bounces_with_5_6_3(
    db: Database, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailcarrier.delivery.worker as worker_module

    def too_deep(message: bytes) -> bytes:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(worker_module, "downgrade_to_7bit", too_deep)
    pool = ScriptedPool(eight_bit_ok=False)
    async with running(setup, db, ScriptedRouter(), pool) as worker:
        message_id = await submit(setup, db, worker, body="Grüße\r\n".encode())
        shown = await settled(db, message_id)
    [rcpt] = shown["recipients"]
    assert (rcpt["status"], rcpt["enhancedSmtpStatusCode"]) == ("Bounced", "5.6.3")
    assert "cannot be converted to 7 bit" in rcpt["response"]
    assert shown["status"] == "Failed"


class StalledPool(ScriptedPool):
    """Never answers: deliveries stay in flight until cancelled."""

    async def deliver(self, hosts: Sequence[Host], envelope: Envelope
                      ) -> list[RecipientResult]:
        self.done.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_stopping_gives_back_leases_and_flags_only_deliveries_cut_short(
    db: Database, setup: dict[str, Any]
) -> None:
    pool = StalledPool()
    worker = make_worker(setup, db, ScriptedRouter(), pool)
    worker.start()
    in_flight = await submit(setup, db, worker)
    await pool.done.wait()
    worker._stopping = False  # noqa: SLF001 - hold the next one in the waiting line
    worker._concurrency = asyncio.Semaphore(0)  # noqa: SLF001
    waiting = await submit(setup, db, worker)
    await worker.stop(grace=0.05)
    async with db.read() as conn:
        rows = {
            r.message_id: r
            for r in await conn.execute(
                select(queue.c.message_id, queue.c.state, queue.c.lease_owner,
                       queue.c.possible_duplicate)
            )
        }
    assert {m: (r.state, r.lease_owner) for m, r in rows.items()} == {
        in_flight: ("ready", None), waiting: ("ready", None)}
    assert rows[in_flight].possible_duplicate is True
    assert rows[waiting].possible_duplicate is False
