"""The delivery worker of one process: takes queue jobs, delivers, records.

Jobs come from two places: messages this process has just accepted
(handed over in memory with their lease already written) and claims from
the queue table (retries, other processes' overflow, and leases of dead
workers). Each job is routed, signed and sent by the outbound pool; each
recipient's result becomes a status through :func:`recipient_status`, and
the attempt is recorded in one transaction with its log rows. The worker
renews its leases while it runs, so only a dead worker's leases expire.

An unexpected error never drops a message: the job is held (quarantined)
with the reason, for an operator to retry or purge.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Sequence

from mailcarrier.addresses import AddressError, split_address
from mailcarrier.delivery import queue as q
from mailcarrier.delivery.client import Envelope, OutboundPool, RecipientResult
from mailcarrier.delivery.dkim import DkimKey, DkimSigner
from mailcarrier.delivery.eightbit import downgrade_to_7bit, needs_8bitmime
from mailcarrier.delivery.outcomes import Action
from mailcarrier.delivery.retry import is_expired, next_attempt_delay
from mailcarrier.delivery.routing import (
    Host,
    PermanentRouteError,
    RouteError,
    Router,
    TemporaryRouteError,
)
from mailcarrier.domains.store import active_dkim_key
from mailcarrier.settings import Settings
from mailcarrier.storage.commits import CommitGroup
from mailcarrier.storage.db import Database

log = logging.getLogger(__name__)

DKIM_CACHE_SECONDS = 60.0


class ConversionImpossible(Exception):
    """8-bit content for a server without 8BITMIME that can't be made 7-bit."""

    enhanced = "5.6.3"  # RFC 3463: conversion required but not supported


def recipient_status(action: Action, *, expired: bool) -> str:
    """The recorded status of a recipient after one attempt's result."""
    if action is Action.DELIVERED:
        return "Delivered"
    if action is Action.BOUNCE:
        return "Bounced"
    return "Failed" if expired else q.QUEUED


def failure_reason(status: str, enhanced: str | None) -> str | None:
    if status == "Bounced":
        return "MailboxUnavailable" if (enhanced or "").startswith("5.1.") else (
            "PermanentFailure"
        )
    if status == "Failed":
        return "LifetimeExceeded"
    return None


class DeliveryWorker:
    """Delivers queue jobs for one process; also the accept handoff."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        commits: CommitGroup,
        *,
        router: Router | None = None,
        pool: OutboundPool | None = None,
        max_in_flight: int = 2000,
        max_concurrent: int = 400,
        poll_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.owner = f"{settings.node}:{os.getpid()}:{int(time.time() * 1000)}"
        self.lease_seconds = settings.lease_seconds
        self._db = db
        self._commits = commits
        self._router = router or Router(settings)
        self._pool = pool or OutboundPool(settings)
        self._max_in_flight = max_in_flight
        self._concurrency = asyncio.Semaphore(max_concurrent)
        self._poll_interval = poll_interval
        self._waiting: deque[q.QueueJob] = deque()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[asyncio.Task[None], q.QueueJob] = {}
        self._keys: dict[str, tuple[float, DkimSigner | None]] = {}
        self._turns: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._rng = random.Random()
        self._stopping = False

    # The accept handoff -----------------------------------------------------

    def has_room(self, count: int) -> bool:
        return not self._stopping and self._load() + count <= self._max_in_flight

    def take(self, jobs: list[q.QueueJob]) -> None:
        self._waiting.extend(jobs)
        self._wakeup.set()

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    def _load(self) -> int:
        return len(self._waiting) + self._in_flight

    # Life cycle ------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="delivery-dispatch"),
            asyncio.create_task(self._claim_loop(), name="delivery-claim"),
            asyncio.create_task(self._renew_loop(), name="delivery-renew"),
        ]

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking work, let running deliveries finish for ``grace`` s.

        Then every lease still held goes back to the queue, so a restart
        (or another worker) carries on at once; deliveries cut short are
        marked possible duplicates, entries never started are not.
        """
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        cut_short = [job.queue_id for task, job in self._running.items()
                     if not task.done()]
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._pool.close()
        try:
            await q.release_owner(self._db, self.owner, in_flight=cut_short)
        except Exception:
            log.exception("could not give back leases; they expire on their own")

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._waiting:
                await self._concurrency.acquire()
                job = self._waiting.popleft()
                self._in_flight += 1
                task = asyncio.create_task(self._run_job(job))
                self._running[task] = job
                task.add_done_callback(self._forget)

    async def _claim_loop(self) -> None:
        while True:
            room = self._max_in_flight - self._load()
            if room > 0:
                try:
                    jobs = await q.claim(
                        self._db, self.owner, now=time.time(),
                        limit=min(room, 500), lease_seconds=self.lease_seconds,
                    )
                except Exception:
                    log.exception("claiming from the queue failed; trying again")
                    jobs = []
                if jobs:
                    self.take(jobs)
                    if len(jobs) == min(room, 500):
                        continue
            await asyncio.sleep(self._poll_interval)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await q.renew(
                    self._db, self.owner, until=time.time() + self.lease_seconds
                )
            except Exception:
                log.exception("renewing leases failed; trying again")

    # One job -----------------------------------------------------------------

    async def _run_job(self, job: q.QueueJob) -> None:
        try:
            await self._deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._hold(job, exc)
        finally:
            self._in_flight -= 1
            self._concurrency.release()

    async def _deliver(self, job: q.QueueJob) -> None:
        if not job.recipients:
            await self._record(job, [])
            return
        try:
            route = await self._router.resolve(job.domain)
        except PermanentRouteError as exc:
            await self._record(job, self._same_result(job, Action.BOUNCE, exc))
            return
        except TemporaryRouteError as exc:
            await self._record(job, self._same_result(job, Action.RETRY, exc))
            return
        signer = await self._signer(job)
        envelope = Envelope(
            mail_from=job.message.mail_from,
            recipients=[address for _id, address in job.recipients],
            smtputf8=job.message.smtputf8,
            render=lambda eight_ok: self._render(job.message, signer, eight_ok),
        )
        # A transaction holds its turn until its outcome is recorded, so the
        # transactions whose reply a crash could lose never outnumber the
        # connections this worker may have open to the destination.
        async with self._turn(route.hosts):
            try:
                results = await self._pool.deliver(route.hosts, envelope)
            except ConversionImpossible as exc:
                results = self._same_result(job, Action.BOUNCE, exc)
            await self._record(job, results)

    def _turn(self, hosts: Sequence[Host]) -> asyncio.Semaphore:
        key = (hosts[0].address, hosts[0].port) if hosts else ("", 0)
        turn = self._turns.get(key)
        if turn is None:
            if len(self._turns) >= 10_000:
                self._turns = {k: t for k, t in self._turns.items() if t.locked()}
            turn = asyncio.Semaphore(self.settings.per_destination_concurrency)
            self._turns[key] = turn
        return turn

    def _same_result(
        self, job: q.QueueJob, action: Action, error: RouteError | ConversionImpossible
    ) -> list[RecipientResult]:
        return [
            RecipientResult(address, action, None, error.enhanced, str(error), None,
                            False)
            for _id, address in job.recipients
        ]

    async def _signer(self, job: q.QueueJob) -> DkimSigner | None:
        try:
            domain = split_address(job.message.sender_address)[1]
        except AddressError:
            return None
        cached = self._keys.get(domain)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._db.read() as conn:
            row = await active_dkim_key(conn, domain)
        signer = None
        if row is not None:
            key = DkimKey(domain, row.selector, row.private_key_pem.encode("ascii"))
            signer = DkimSigner(key)
        self._keys[domain] = (time.monotonic() + DKIM_CACHE_SECONDS, signer)
        return signer

    @staticmethod
    def _render(
        message: q.MessageData, signer: DkimSigner | None, eight_bit_ok: bool
    ) -> bytes:
        wire_ok = eight_bit_ok or not needs_8bitmime(message.content)
        cached = message.rendered.get(wire_ok)
        if cached is not None:
            return cached
        if wire_ok:
            content = message.content
        else:
            try:
                content = downgrade_to_7bit(message.content)
            except (RecursionError, ValueError, LookupError) as exc:
                raise ConversionImpossible(
                    "the next hop lacks 8BITMIME and this message cannot be "
                    f"converted to 7 bit ({type(exc).__name__})"
                ) from exc
        rendered = signer.sign(content) + content if signer else content
        message.rendered[wire_ok] = rendered
        return rendered

    async def _record(self, job: q.QueueJob, results: Sequence[RecipientResult]) -> None:
        now = time.time()
        expired = is_expired(
            job.message.created_at, now, self.settings.max_queue_lifetime
        )
        by_address = {result.recipient: result for result in results}
        updates = []
        for recipient_id, address in job.recipients:
            result = by_address.get(address)
            if result is None:
                result = RecipientResult(
                    address, Action.RETRY, None, None, "no result", None, False
                )
            status = recipient_status(result.action, expired=expired)
            updates.append(
                q.RecipientUpdate(
                    recipient_id, address, status, result.code, result.enhanced,
                    result.response, result.host,
                    failure_reason(status, result.enhanced),
                )
            )
        retry_left = any(item.status == q.QUEUED for item in updates)
        next_at = None
        if retry_left:
            next_at = now + next_attempt_delay(
                job.attempts + 1,
                initial=self.settings.retry_initial_delay,
                factor=self.settings.retry_backoff_factor,
                cap=self.settings.retry_max_delay,
                rng=self._rng,
            )
        error = next((u.response for u in updates if u.status == q.QUEUED), None)
        await self._commits.submit(
            q.outcome_ops(job, updates, now=now, next_attempt_at=next_at, error=error)
        )
        for item in updates:
            self._log_outcome(job, item, next_at)

    def _log_outcome(
        self, job: q.QueueJob, item: q.RecipientUpdate, next_at: float | None
    ) -> None:
        status = "Deferred" if item.status == q.QUEUED else item.status
        extra = ""
        if item.status == q.QUEUED and next_at is not None:
            extra = f" retry_in={next_at - time.time():.0f}s"
        if job.possible_duplicate:
            extra += " possible_duplicate=yes"
        log.info(
            "%s to=<%s> relay=%s status=%s code=%s dsn=%s attempts=%d%s response=%r",
            job.message.message_id, item.address, item.host or "none", status,
            item.code if item.code is not None else "none", item.enhanced or "none",
            job.attempts + 1, extra, item.response or "",
        )

    async def _hold(self, job: q.QueueJob, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        log.error(
            "%s held in quarantine after an unexpected error: %s",
            job.message.message_id, reason, exc_info=exc,
        )
        try:
            await self._commits.submit(q.hold_ops(job, reason, now=time.time()))
        except Exception:
            # The lease stays ours and expires with this process; the entry
            # is then claimed again rather than lost.
            log.exception("%s could not be held", job.message.message_id)
