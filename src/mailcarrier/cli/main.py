"""``mailcarrier``: set up, serve, and look at messages and the queue."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sqlalchemy.engine import make_url

from mailcarrier.settings import Settings, SettingsError, load_settings
from mailcarrier.storage.db import Database

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="mailcarrier: a self-hosted email sending service.")
messages_app = typer.Typer(no_args_is_help=True, help="Messages and their statuses.")
queue_app = typer.Typer(help="The delivery queue: list, retry, purge.")
app.add_typer(messages_app, name="messages")
app.add_typer(queue_app, name="queue")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _with_db(
    settings: Settings,
    work: Callable[[Database], Awaitable[T]],
    *,
    create: bool = False,
) -> T:
    db_file = _sqlite_file(settings)
    if not create and db_file is not None and not db_file.exists():
        err.print(
            f"no mailcarrier database at {db_file}; run this where `mailcarrier "
            "init` ran, or set MAILCARRIER_DATA_DIR / MAILCARRIER_DATABASE_URL"
        )
        raise typer.Exit(1)

    async def run() -> T:
        db = Database(settings.database_url_resolved)
        try:
            await db.migrate()
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except OSError as exc:
        err.print(f"[red]cannot open the database:[/red] {exc}")
        raise typer.Exit(1) from exc


def _sqlite_file(settings: Settings) -> Path | None:
    url = make_url(settings.database_url_resolved)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@app.command()
def init(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    only_if_new: Annotated[bool, typer.Option(
        "--only-if-new", help="Do nothing when the set-up already exists.")] = False,
) -> None:
    """Create what one needs to send (again: only a fresh client secret)."""
    from mailcarrier.bootstrap import initialize, is_initialized

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if only_if_new and _with_db(settings, is_initialized, create=True):
        err.print("mailcarrier is already set up; `mailcarrier init` prints a fresh "
                  "SMTP password")
        return
    result = _with_db(settings, lambda db: initialize(settings, db), create=True)
    if as_json:
        _print_json(result)
        return
    smtp = result["smtp"]
    rows = [
        ("resource", result["resource"]),
        ("sender address", result["senderAddress"]),
        ("SMTP host", smtp["host"]),
        ("SMTP ports", f"{smtp['port']} (STARTTLS), {smtp['tlsPort']} (implicit TLS)"),
        ("SMTP username", smtp["username"]),
        ("SMTP password", smtp["password"]),
        ("CA certificate", str(result["caCertificate"])),
        ("connection string", result["connectionString"]),
        ("application", f"client id {result['application']['clientId']}"),
        ("tenant", result["application"]["tenantId"]),
        ("DKIM record", f"{result['dkim']['name']} TXT"),
        ("", result["dkim"]["value"]),
    ]
    # Plain lines, never wrapped or cut: people copy these values.
    console.print("[bold]mailcarrier is set up[/bold]")
    for name, value in rows:
        console.print(f"  {name + ':' if name else '':<20}{value}", soft_wrap=True,
                      highlight=False)
    console.print(
        "The password is shown only now; run [bold]mailcarrier init[/bold] again "
        "for a fresh one."
    )


@app.command()
def serve(
    roles: Annotated[str, typer.Option(help="Roles to run, comma-separated.")] = "",
    workers: Annotated[int, typer.Option(help="Worker processes (0 = CPUs).")] = -1,
) -> None:
    """Run the service (every role, one worker process per CPU)."""
    from mailcarrier.runtime import ALL_ROLES, StartupError, configure_logging
    from mailcarrier.runtime import serve as run_service

    overrides: dict[str, Any] = {}
    if workers >= 0:
        overrides["workers"] = workers
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level)
    chosen = tuple(r.strip() for r in roles.split(",") if r.strip()) or ALL_ROLES
    try:
        run_service(settings, chosen)
    except StartupError as exc:
        err.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command("send")
def send_command(
    to: Annotated[list[str], typer.Option("--to", help="Recipient (repeatable).")],
    subject: Annotated[str, typer.Option(help="Subject line.")],
    text: Annotated[str | None, typer.Option("--text", help="Plain text body.")] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML body.")] = None,
    attach: Annotated[list[Path] | None, typer.Option(
        "--attach", help="File to attach (repeatable).", exists=True,
        dir_okay=False)] = None,
    sender: Annotated[str, typer.Option(
        "--from", help="Sender address (default: the resource's first).")] = "",
    resource: Annotated[str, typer.Option(help="Communication resource.")] = "default",
) -> None:
    """Send one message through the REST API and wait for its operation."""
    from mailcarrier.api.client import SendFailed, message_body, send

    settings = _settings()
    if text is None and html is None:
        err.print("give --text or --html (or both)")
        raise typer.Exit(2)
    found = _with_db(settings, lambda db: _send_identity(settings, db, resource))
    endpoint, key, default_sender, ca_file = found
    body = message_body(sender=sender or default_sender, to=to, subject=subject,
                        text=text, html=html, attachments=attach or [])
    try:
        operation, status = send(endpoint, key, body, ca_file=ca_file)
    except SendFailed as exc:
        err.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    except OSError as exc:
        err.print(f"cannot reach the API at {endpoint}: {exc}; is `mailcarrier "
                  "serve` running?")
        raise typer.Exit(1) from exc
    console.print(f"operation {operation}: {status}")
    if status != "Succeeded":
        raise typer.Exit(1)


async def _send_identity(
    settings: Settings, db: Database, resource_name: str
) -> tuple[str, str, str, str | None]:
    from mailcarrier.bootstrap import public_host
    from mailcarrier.domains.store import MANAGED_SENDER_DISPLAY, domains_of_resource
    from mailcarrier.identity.store import resource_by_name

    async with db.read() as conn:
        resource = await resource_by_name(conn, resource_name)
        if resource is None:
            err.print(f"no resource {resource_name!r}; run `mailcarrier init`")
            raise typer.Exit(1)
        owned = await domains_of_resource(conn, resource.id)
    if not owned:
        err.print(f"resource {resource_name!r} has no domain to send from")
        raise typer.Exit(1)
    host = public_host(settings, settings.api_address)
    host = f"[{host}]" if ":" in host else host
    endpoint = f"https://{host}:{settings.api_address.port}"
    ca = settings.data_dir / "tls" / "ca.pem"
    sender = f"{MANAGED_SENDER_DISPLAY}@{owned[0].name}"
    ca_file = str(ca) if not settings.tls_cert and ca.exists() else None
    return endpoint, resource.primary_key, sender, ca_file


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (serve does this too)."""
    settings = _settings()

    async def noop(_db: Database) -> None:
        return None

    _with_db(settings, noop, create=True)
    console.print("database is up to date")


@messages_app.command("list")
def messages_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    status: Annotated[str, typer.Option(help="Only messages in this status.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 100,
) -> None:
    """The newest messages with their recipients' statuses."""
    from mailcarrier.messages import list_messages

    settings = _settings()
    chosen = _choice(status, MESSAGE_STATUSES, "--status")
    found = _with_db(settings, lambda db: list_messages(db, status=chosen,
                                                        limit=limit))
    if as_json:
        _print_json(found)
        return
    table = Table("id", "status", "sender", "recipients")
    for item in found:
        summary = ", ".join(f"{r['address']} {r['status']}" for r in item["recipients"])
        table.add_row(item["id"], item["status"], item["senderAddress"], summary)
    console.print(table)


@messages_app.command("show")
def messages_show(
    message_id: str, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """One message with every recipient's status and the remote replies."""
    from mailcarrier.messages import show_message

    settings = _settings()
    found = _with_db(settings, lambda db: show_message(db, message_id))
    if found is None:
        err.print(f"no message {message_id}")
        raise typer.Exit(1)
    if as_json:
        _print_json(found)
        return
    console.print(f"[bold]{found['id']}[/bold] {found['status']} "
                  f"from {found['senderAddress']}")
    table = Table("recipient", "status", "attempts", "code", "host", "response")
    for r in found["recipients"]:
        table.add_row(r["address"], r["status"], str(r["attempts"]),
                      f"{r['smtpStatusCode'] or ''} {r['enhancedSmtpStatusCode'] or ''}",
                      r["remoteHost"] or "", r["response"] or "")
    console.print(table)


MESSAGE_STATUSES = ("Queued", "OutForDelivery", "Delivered", "PartiallyDelivered",
                    "Failed", "Quarantined")
QUEUE_STATES = ("ready", "leased", "held")


def _choice(value: str, choices: tuple[str, ...], option: str) -> str | None:
    """The canonical spelling of value among choices (any case), or exit 2."""
    if not value:
        return None
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    err.print(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    raise typer.Exit(2)


@queue_app.callback(invoke_without_command=True)
def queue_main(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    state: Annotated[str, typer.Option(help="ready, leased or held")] = "",
) -> None:
    """List queue entries not yet done (also: queue list)."""
    if ctx.invoked_subcommand is None:
        _list_queue(as_json, state)


@queue_app.command("list")
def queue_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    state: Annotated[str, typer.Option(help="ready, leased or held")] = "",
) -> None:
    """List queue entries not yet done."""
    _list_queue(as_json, state)


def _list_queue(as_json: bool, state: str) -> None:
    from mailcarrier.delivery.queue import queue_entries

    settings = _settings()
    chosen = _choice(state, QUEUE_STATES, "--state")
    rows = _with_db(settings, lambda db: queue_entries(db, state=chosen))
    items = [
        {"id": r.id, "messageId": r.message_id, "domain": r.domain, "state": r.state,
         "attempts": r.attempts, "nextAttemptAt": r.next_attempt_at,
         "leaseOwner": r.lease_owner, "lastError": r.last_error,
         "mailFrom": r.mail_from}
        for r in rows
    ]
    if as_json:
        _print_json(items)
        return
    table = Table("id", "message", "domain", "state", "attempts", "next", "last error")
    for i in items:
        wait = max(0, int(i["nextAttemptAt"] - time.time()))
        due = "on retry" if i["state"] == "held" else f"in {wait}s"
        table.add_row(i["id"], i["messageId"], i["domain"], i["state"],
                      str(i["attempts"]), due, i["lastError"] or "")
    console.print(table)
    console.print(f"{len(items)} entries")


@queue_app.command("retry")
def queue_retry(
    ids: Annotated[list[str] | None, typer.Argument(
        help="Queue entry or message ids; none = every waiting or held entry.")] = None,
) -> None:
    """Make waiting or held entries due now (releases quarantined messages)."""
    from mailcarrier.delivery.queue import retry_now

    settings = _settings()
    count = _with_db(settings, lambda db: retry_now(db, ids or [], now=time.time()))
    if ids and not count:
        err.print("no waiting or held queue entry matches " + ", ".join(ids))
        raise typer.Exit(1)
    console.print(f"{count} entries will be tried now")


@queue_app.command("purge")
def queue_purge(
    ids: Annotated[list[str], typer.Argument(help="Queue entry or message ids.")],
) -> None:
    """Remove entries from the queue; their recipients end as Failed."""
    from mailcarrier.delivery.queue import purge

    settings = _settings()
    count = _with_db(settings, lambda db: purge(db, ids, now=time.time()))
    if not count:
        err.print("no waiting or held queue entry matches " + ", ".join(ids))
        raise typer.Exit(1)
    console.print(f"{count} entries purged")
