"""Group commit: many small write jobs share one durable transaction.

Accepting a message costs a few inserts and a commit, and the commit (an
fsync) dominates. When many messages arrive at once, the jobs that wait
while one transaction commits are written together in the next one, each
statement as a single ``executemany`` over the rows of every job. No job
waits for a batch to fill: an idle writer starts a transaction for the
first job at once, so a lone message is committed as soon as it would be
without grouping, and every job's reply still follows its own commit.

A job is an ordered list of ``(statement, rows)`` pairs. Jobs in a group
are merged by statement in order of first appearance, so the relative
order of one job's statements is kept (parents are inserted before
children). If a grouped transaction fails, each of its jobs is retried in
a transaction of its own, so one bad job fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.sql import Executable

from mailcarrier.storage.db import Database

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


class CommitGroupClosed(RuntimeError):
    """The process is stopping; nothing more is written through this group."""


Op = tuple[Executable, Rows]


@dataclass
class _Job:
    ops: Sequence[Op]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class CommitGroup:
    """Writes jobs in grouped transactions; one per process is enough."""

    def __init__(self, db: Database, *, max_jobs: int = 256) -> None:
        self._db = db
        self._max_jobs = max_jobs
        self._pending: list[_Job] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="commit-group")

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, ops: Sequence[Op]) -> None:
        """Return once ``ops`` are committed durably; raise if they failed."""
        if self._closed:
            raise CommitGroupClosed("commit group is closed")
        if self._task is None:
            self.start()
        job = _Job(ops)
        self._pending.append(job)
        self._wakeup.set()
        await asyncio.shield(job.done)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group = self._pending[: self._max_jobs]
                del self._pending[: self._max_jobs]
                await self._write_group(group)
            if self._closed and not self._pending:
                return

    async def _write_group(self, group: list[_Job]) -> None:
        try:
            await self._execute(_merge(job.ops for job in group))
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], exc)
                return
            log.debug("grouped commit of %d jobs failed (%s); one by one",
                      len(group), exc)
            for job in group:
                try:
                    await self._execute(list(job.ops))
                except Exception as job_exc:
                    _settle(job, job_exc)
                else:
                    _settle(job, None)
            return
        for job in group:
            _settle(job, None)

    async def _execute(self, ops: Sequence[Op]) -> None:
        async with self._db.write() as conn:
            for statement, rows in ops:
                if rows:
                    await conn.execute(statement, rows)


def _merge(jobs: Any) -> list[Op]:
    merged: dict[int, Op] = {}
    for ops in jobs:
        for statement, rows in ops:
            key = id(statement)
            if key in merged:
                merged[key][1].extend(rows)
            else:
                merged[key] = (statement, list(rows))
    return list(merged.values())


def _settle(job: _Job, exc: BaseException | None) -> None:
    if job.done.done():
        return
    if exc is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(exc)
