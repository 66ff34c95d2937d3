"""The command line: init, messages and queue commands on a real database."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mailcarrier.cli.main import app
from mailcarrier.delivery import queue as q
from mailcarrier.storage.db import Database

runner = CliRunner()


@pytest.fixture
def env(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("MAILCARRIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MAILCARRIER_DATABASE_URL", str(db.url.render_as_string(False)))
    monkeypatch.setenv("MAILCARRIER_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MAILCARRIER_HOSTNAME", "mail.example.test")
    return db


def run(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


async def arun(*args: str) -> Any:
    """The CLI runs its own event loop, so async tests call it from a thread."""
    return await asyncio.to_thread(run, *args)


async def enqueue(db: Database, state_held: bool = False) -> str:
    message_id = str(uuid.uuid4())
    jobs, ops = q.accept_ops(
        message_id=message_id, resource_id="r", mail_from="a@x.test",
        sender_address="a@x.test", internet_message_id="<m@x.test>",
        content=b"From: a@x.test\r\n\r\nhi\r\n", smtputf8=False,
        traffic_source="SMTP", by_domain={"y.test": ["b@y.test"]},
        now=time.time() + 3600, lease_owner=None, lease_until=None,
    )
    if state_held:
        ops += q.hold_ops(jobs[0], "RuntimeError: boom", now=time.time())
    async with db.write() as conn:
        for statement, rows in ops:
            await conn.execute(statement, rows)
    return message_id


def test_init_json_has_the_documented_shape(env: Database) -> None:
    data = json.loads(run("init", "--json").stdout)
    assert set(data) == {"resource", "connectionString", "senderAddress", "domain",
                         "caCertificate", "smtp", "application", "dkim"}
    assert data["senderAddress"] == f"DoNotReply@{data['domain']}"
    assert data["domain"].endswith(".mailcarrier.localhost")
    assert data["connectionString"].startswith("endpoint=https://127.0.0.1:8443/;")


def test_init_only_if_new_prints_nothing_the_second_time(env: Database) -> None:
    run("init", "--json")
    result = run("init", "--only-if-new")
    assert "already set up" in result.output
    assert "password" not in result.stdout.lower()


async def test_queue_lists_retries_and_purges(env: Database) -> None:
    waiting = await enqueue(env)
    held = await enqueue(env, state_held=True)
    listed = json.loads((await arun("queue", "--json")).stdout)
    assert {(e["messageId"], e["state"]) for e in listed} == {
        (waiting, "ready"), (held, "held")}
    held_only = json.loads((await arun("queue", "--state", "held", "--json")).stdout)
    assert [e["messageId"] for e in held_only] == [held]

    assert "1 entries will be tried now" in (await arun("queue", "retry", held)).output
    shown = json.loads((await arun("messages", "show", held, "--json")).stdout)
    assert shown["status"] == "OutForDelivery"
    assert shown["queue"][0]["state"] == "ready"

    assert "1 entries purged" in (await arun("queue", "purge", waiting)).output
    shown = json.loads((await arun("messages", "show", waiting, "--json")).stdout)
    assert shown["status"] == "Failed"
    assert shown["recipients"][0]["status"] == "Failed"
    assert shown["recipients"][0]["response"] == q.PURGED_RESPONSE


async def test_messages_list_shows_recipients_and_show_refuses_an_unknown_id(
    env: Database,
) -> None:
    message_id = await enqueue(env)
    [item] = json.loads((await arun("messages", "list", "--json")).stdout)
    assert item["id"] == message_id
    assert item["recipients"][0] == {
        "address": "b@y.test", "status": "Queued", "attempts": 0,
        "smtpStatusCode": None, "enhancedSmtpStatusCode": None, "remoteHost": None,
        "response": None, "possibleDuplicate": False,
    }
    result = await asyncio.to_thread(
        runner.invoke, app, ["messages", "show", "nope", "--json"]
    )
    assert result.exit_code == 1
    assert "no message nope" in result.output


def test_a_bad_setting_is_named_and_exits_2(
    env: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCARRIER_ROUTES", "example.com")
    result = runner.invoke(app, ["messages", "list"])
    assert result.exit_code == 2
    assert "example.com" in result.output


def test_read_commands_refuse_a_missing_sqlite_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCARRIER_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.delenv("MAILCARRIER_DATABASE_URL", raising=False)
    monkeypatch.setenv("MAILCARRIER_CONFIG", str(tmp_path / "none.toml"))
    result = runner.invoke(app, ["messages", "list"])
    assert result.exit_code == 1
    assert "no mailcarrier database" in result.output
    assert not (tmp_path / "elsewhere" / "mailcarrier.db").exists()


async def test_unknown_states_and_statuses_are_refused_and_case_is_forgiven(
    env: Database,
) -> None:
    message_id = await enqueue(env)
    bad = await asyncio.to_thread(runner.invoke, app, ["queue", "--state", "bogus"])
    assert bad.exit_code == 2
    assert "--state must be one of ready, leased, held" in bad.output
    found = json.loads((await arun("messages", "list", "--status", "queued",
                                   "--json")).stdout)
    assert [m["id"] for m in found] == [message_id]
    listed = json.loads((await arun("queue", "list", "--json")).stdout)
    assert [e["messageId"] for e in listed] == [message_id]


async def test_purging_or_retrying_nothing_says_so(env: Database) -> None:
    for command in ("purge", "retry"):
        result = await asyncio.to_thread(runner.invoke, app,
                                         ["queue", command, "no-such-id"])
        assert result.exit_code == 1, command
        assert "no waiting or held queue entry matches no-such-id" in result.output
