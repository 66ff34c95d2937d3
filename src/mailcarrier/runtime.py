"""Running the service: one asyncio worker per process, a supervisor above.

``serve`` prepares what every worker shares (migrations, TLS files, the
listening sockets, leases left by a previous run) and then forks one
worker process per CPU. Each worker runs every role it was given on its
own event loop and accepts connections from the shared sockets, which the
kernel spreads across them. The supervisor restarts a worker that dies
and, before it does, frees the dead worker's queue leases so its messages
go out at once instead of after the lease expiry.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailcarrier.delivery import queue as q
from mailcarrier.delivery.worker import DeliveryWorker
from mailcarrier.identity.auth import StoreAuthenticator
from mailcarrier.settings import HostPort, Settings
from mailcarrier.storage.commits import CommitGroup
from mailcarrier.storage.db import Database
from mailcarrier.submission.accept import StoreAcceptor
from mailcarrier.tls import ensure_tls_files, server_context

log = logging.getLogger(__name__)

ALL_ROLES = ("submission", "api", "delivery")
KNOWN_ROLES = ("submission", "api", "delivery", "dns", "bounce")


class StartupError(RuntimeError):
    """The service cannot start; the text says what to fix."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass
class Listeners:
    smtp: socket.socket | None = None
    smtps: socket.socket | None = None
    api: socket.socket | None = None

    def close(self) -> None:
        for sock in (self.smtp, self.smtps, self.api):
            if sock is not None:
                sock.close()


def bind(address: HostPort, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server(
            (address.host, address.port), family=family, backlog=4096
        )
    except OSError as exc:
        raise StartupError(
            f"cannot listen for {what} on {address}: {exc.strerror}; "
            "choose another address or stop what is using it"
        ) from exc


@dataclass
class Worker:
    """Everything one worker process runs."""

    settings: Settings
    roles: tuple[str, ...]
    listeners: Listeners
    db: Database | None = None
    commits: CommitGroup | None = None
    delivery: DeliveryWorker | None = None
    servers: list[Any] = field(default_factory=list)
    api_server: Any = None
    api_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from mailcarrier.submission.server import start_submission

        settings = self.settings
        self.db = Database(settings.database_url_resolved)
        self.commits = CommitGroup(self.db)
        self.commits.start()
        if "delivery" in self.roles:
            self.delivery = DeliveryWorker(settings, self.db, self.commits)
            self.delivery.start()
        acceptor = StoreAcceptor(self.db, self.commits, handoff=self.delivery)
        if "api" in self.roles and self.listeners.api is not None:
            await self._start_api(acceptor)
        if "submission" in self.roles:
            context = server_context(ensure_tls_files(settings))
            authenticator = StoreAuthenticator(settings, self.db)
            for sock, implicit in ((self.listeners.smtp, False),
                                   (self.listeners.smtps, True)):
                if sock is None:
                    continue
                self.servers.append(
                    await start_submission(
                        settings=settings, ssl_context=context,
                        authenticator=authenticator, acceptor=acceptor,
                        implicit_tls=implicit, sock=sock,
                    )
                )

    async def _start_api(self, acceptor: StoreAcceptor) -> None:
        import uvicorn

        from mailcarrier.api.app import create_app

        assert self.db is not None and self.listeners.api is not None
        files = ensure_tls_files(self.settings)
        config = uvicorn.Config(
            create_app(self.settings, self.db, acceptor),
            ssl_certfile=str(files.cert), ssl_keyfile=str(files.key),
            log_level="warning", lifespan="off", access_log=False,
            server_header=False,
        )
        self.api_server = uvicorn.Server(config)
        self.api_server.install_signal_handlers = lambda: None  # type: ignore
        self.api_task = asyncio.create_task(
            self.api_server.serve(sockets=[self.listeners.api])
        )

    async def stop(self) -> None:
        if self.api_server is not None and self.api_task is not None:
            self.api_server.should_exit = True
            await asyncio.wait([self.api_task], timeout=10)
        for server in self.servers:
            server.close()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):
                pass
        if self.delivery is not None:
            await self.delivery.stop()
        if self.commits is not None:
            await self.commits.close()
        if self.db is not None:
            await self.db.close()


def _worker_main(settings: Settings, roles: tuple[str, ...], listeners: Listeners) -> None:
    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides
    asyncio.run(_worker_async(settings, roles, listeners))


async def _worker_async(
    settings: Settings, roles: tuple[str, ...], listeners: Listeners
) -> None:
    worker = Worker(settings, roles, listeners)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(_stop_when_orphaned(stop))
    await worker.start()
    log.info("worker %d ready (%s)", os.getpid(), ", ".join(roles))
    await stop.wait()
    watcher.cancel()
    await worker.stop()


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """Stop this worker when its supervisor is gone (killed with SIGKILL)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("supervisor %d is gone; worker %d stops", parent, os.getpid())
    stop.set()


async def prepare(settings: Settings) -> int:
    """Work done once per start, before any worker exists."""
    db = Database(settings.database_url_resolved)
    try:
        await db.migrate()
        await _check_trusted_resources(settings, db)
        return await q.release_node(db, settings.node)
    finally:
        await db.close()


async def _check_trusted_resources(settings: Settings, db: Database) -> None:
    from mailcarrier.identity.store import resource_by_name

    async with db.read() as conn:
        for entry in settings.trusted:
            if await resource_by_name(conn, entry.resource) is None:
                raise StartupError(
                    f"MAILCARRIER_TRUSTED_NETWORKS binds {entry.network} to resource "
                    f"{entry.resource!r}, which does not exist; name an existing "
                    "resource (`mailcarrier init` makes `default`)"
                )


async def release_worker(settings: Settings, pid: int) -> int:
    db = Database(settings.database_url_resolved)
    try:
        return await q.release_node(db, f"{settings.node}:{pid}")
    finally:
        await db.close()


def lock_data_dir(settings: Settings) -> Any:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.data_dir / "serve.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise StartupError(
            f"another mailcarrier serve is running on {settings.data_dir}; "
            "stop it first or use another MAILCARRIER_DATA_DIR"
        ) from exc
    return handle


def serve(settings: Settings, roles: tuple[str, ...] = ALL_ROLES) -> None:
    """Run the supervisor and its workers until SIGINT or SIGTERM."""
    unknown = [role for role in roles if role not in KNOWN_ROLES]
    if unknown:
        raise StartupError(
            f"unknown role(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_ROLES)}"
        )
    try:
        lock = lock_data_dir(settings)
        ensure_tls_files(settings)
    except OSError as exc:
        raise StartupError(
            f"cannot use the data folder {settings.data_dir}: {exc.strerror or exc}; "
            "check MAILCARRIER_DATA_DIR and its permissions"
        ) from exc
    try:
        released = asyncio.run(prepare(settings))
    except (OSError, SQLAlchemyError, ImportError) as exc:
        shown = make_url(settings.database_url_resolved).render_as_string(
            hide_password=True
        )
        raise StartupError(
            f"cannot open the database {shown}: {exc}; check "
            "MAILCARRIER_DATABASE_URL and that the database server is running"
        ) from exc
    if released:
        log.info("took back %d queue leases left by a previous run", released)
    listeners = Listeners()
    if "api" in roles:
        listeners.api = bind(settings.api_address, "the HTTPS API")
    if "submission" in roles:
        if settings.smtp_address:
            listeners.smtp = bind(settings.smtp_address, "SMTP submission")
        if settings.smtps_address:
            listeners.smtps = bind(settings.smtps_address, "SMTP over TLS")
    _supervise(settings, roles, listeners)
    listeners.close()
    lock.close()


def _supervise(settings: Settings, roles: tuple[str, ...], listeners: Listeners) -> None:
    context = multiprocessing.get_context("fork")
    stopping = False

    def _stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def spawn() -> Any:
        process = context.Process(
            target=_worker_main, args=(settings, roles, listeners), daemon=False
        )
        process.start()
        return process

    workers = [spawn() for _ in range(settings.worker_count)]
    log.info(
        "mailcarrier serving with %d workers: SMTP %s, SMTPS %s, API %s",
        len(workers), settings.smtp_listen or "off", settings.smtps_listen or "off",
        settings.api_listen if "api" in roles else "off",
    )
    while not stopping:
        time.sleep(0.2)
        for index, process in enumerate(workers):
            if process.is_alive() or stopping:
                continue
            log.error("worker %d exited with %s; restarting it", process.pid,
                      process.exitcode)
            freed = asyncio.run(release_worker(settings, process.pid))
            if freed:
                log.info("freed %d leases of worker %d", freed, process.pid)
            workers[index] = spawn()
    for process in workers:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in workers:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    log.info("mailcarrier stopped")
