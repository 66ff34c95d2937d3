"""The database handle: engines, SQLite tuning, migrations at start.

mailcarrier runs on SQLite (one machine, the embedded default) or on
PostgreSQL (many machines). Both are reached through SQLAlchemy's async
engines. On SQLite every connection runs in WAL mode with
``synchronous=FULL``, so a commit is on disk before it returns, and write
transactions begin with ``BEGIN IMMEDIATE``: a deferred transaction that
read first and then tries to write fails at once when another process
wrote in between, while an immediate one waits for the lock.

Writes that happen many times a second go through
:class:`mailcarrier.storage.commits.CommitGroup`; this module only hands
out connections.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 60_000


class Database:
    """Engines for reading and writing one database."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._write_lock_path: str | None = None
        self._lock_fd: int | None = None
        self._local_writer = asyncio.Lock()
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            self._write_lock_path = f"{self.url.database}.write-lock"
        if self.is_sqlite:
            self._prepare_sqlite_folder()
            self.reader = self._sqlite_engine(immediate=False)
            self.writer = self._sqlite_engine(immediate=True)
        else:
            self.reader = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True
            )
            self.writer = self.reader

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def _prepare_sqlite_folder(self) -> None:
        database = self.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    def _sqlite_engine(self, *, immediate: bool) -> AsyncEngine:
        # Connections are kept: opening one costs a thread and the pragmas.
        engine = create_async_engine(
            self.url, connect_args={"timeout": 60}, pool_size=20, max_overflow=20
        )
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the driver so BEGIN is ours.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """Reads that all see the database as of one moment.

        Plain reads run each statement on its own, so a page built from
        several of them may straddle a commit; this one does not.
        """
        async with self.reader.connect() as conn:
            if not self.is_sqlite:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on success, rolled back on error."""
        if self._write_lock_path is None:
            async with self.writer.begin() as conn:
                yield conn
            return
        async with self._local_writer, self._file_lock():
            async with self.writer.begin() as conn:
                yield conn

    @asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """Queue for SQLite's write lock across processes, without polling.

        SQLite lets one writer in at a time and makes the others poll with
        sleeps of up to 100 ms. A blocking ``flock`` on a file beside the
        database hands the turn over the moment the previous writer is done.
        """
        if self._lock_fd is None:
            assert self._write_lock_path is not None
            self._lock_fd = os.open(self._write_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fd = self._lock_fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (safe to run concurrently)."""
        async with self.writer.begin() as conn:
            if not self.is_sqlite:
                # One migrator at a time across machines; released at commit.
                await conn.execute(text("SELECT pg_advisory_xact_lock(7201548301)"))
            await conn.run_sync(_upgrade_to_head)

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        await self.reader.dispose()
        if self.writer is not self.reader:
            await self.writer.dispose()


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(sync_conn: Any) -> None:
    from alembic import command

    command.upgrade(_alembic_config(sync_conn), "head")
