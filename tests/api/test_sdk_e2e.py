"""The unmodified azure-communication-email SDK against a running service."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dkim
import httpx
import pytest

from mailcarrier.api.client import signed_headers
from mailcarrier.identity.hmac_auth import parse_connection_string
from mailcarrier.identity.store import create_resource
from mailcarrier.storage.db import Database
from tests.peers.sink import SmtpSink
from tests.service import RunningService

pytestmark = pytest.mark.slow

sdk = pytest.importorskip("azure.communication.email")

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
    "hgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n% made up for a test\n" + bytes(range(256))


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[RunningService, SmtpSink]]:
    with SmtpSink() as sink:
        running = RunningService(
            tmp_path, env={"MAILCARRIER_ROUTES": f"*=127.0.0.1:{sink.port}"}
        )
        running.start()
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", running.credentials["caCertificate"])
        try:
            yield running, sink
        finally:
            running.stop()


def rich_message(sender: str) -> dict:
    return {
        "senderAddress": sender,
        "recipients": {
            "to": [{"address": "ann@example.test", "displayName": "Ann Ünïcødé"}],
            "cc": [{"address": "carl@example.test"}],
            "bcc": [{"address": "hidden@example.test"}],
        },
        "content": {
            "subject": "Grüße – 日本語 ✓",
            "plainText": "Hello from the SDK.",
            "html": "<p>Hello <img src=\"cid:logo\"></p>",
        },
        "attachments": [
            {"name": "Überweisung März.pdf", "contentType": "application/pdf",
             "contentInBase64": base64.b64encode(PDF).decode()},
            {"name": "logo.png", "contentType": "image/png", "contentId": "logo",
             "contentInBase64": base64.b64encode(PNG).decode()},
        ],
    }


def test_the_sdk_sends_and_the_message_arrives_whole_and_signed(
    service: tuple[RunningService, SmtpSink],
) -> None:
    running, sink = service
    creds = running.credentials
    client = sdk.EmailClient.from_connection_string(creds["connectionString"])

    result = client.begin_send(rich_message(creds["senderAddress"])).result()

    assert result["status"] == "Succeeded"
    [received] = sink.wait_for(1, timeout=30)
    assert sorted(received.recipients) == [
        "ann@example.test", "carl@example.test", "hidden@example.test"]
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße – 日本語 ✓"
    assert parsed["Bcc"] is None and b"hidden@example.test" not in received.data
    assert parsed["To"].addresses[0].display_name == "Ann Ünïcødé"
    files = {part.get_filename(): part.get_content() for part in parsed.walk()
             if part.get_filename()}
    assert files == {"Überweisung März.pdf": PDF, "logo.png": PNG}
    inline = next(p for p in parsed.walk() if p["Content-ID"])
    assert inline["Content-ID"] == "<logo>"
    record = creds["dkim"]["value"].encode()
    assert dkim.verify(received.data, dnsfunc=lambda name, timeout=5: record)


def test_the_same_operation_id_twice_delivers_one_message(
    service: tuple[RunningService, SmtpSink],
) -> None:
    running, sink = service
    creds = running.credentials
    client = sdk.EmailClient.from_connection_string(creds["connectionString"])
    message = {
        "senderAddress": creds["senderAddress"],
        "recipients": {"to": [{"address": "once@example.test"}]},
        "content": {"subject": "once", "plainText": "only one copy"},
    }
    operation_id = str(uuid.uuid4())

    first = client.begin_send(message, operation_id=operation_id).result()
    second = client.begin_send(message, operation_id=operation_id).result()

    assert first["id"] == second["id"] == operation_id
    assert second["status"] == "Succeeded"
    sink.wait_for(1, timeout=30)
    assert len(running.cli_json("messages", "list")) == 1
    assert len(sink.messages()) == 1


def test_refusals_are_acs_shaped(service: tuple[RunningService, SmtpSink]) -> None:
    running, _sink = service
    creds = running.credentials
    endpoint, key = parse_connection_string(creds["connectionString"])
    ca = creds["caCertificate"]
    context = ssl.create_default_context(cafile=ca)
    with httpx.Client(base_url=endpoint, verify=context, timeout=10) as http:
        unsigned = http.post("/emails:send?api-version=2025-09-01", json={})
        no_version = http.post("/emails:send", json={})
        wrong_key = http.get(
            "/emails/operations/x?api-version=2025-09-01",
            headers=signed_headers("GET", endpoint,
                                   "/emails/operations/x?api-version=2025-09-01",
                                   b"", base64.b64encode(b"k" * 64).decode()),
        )
        unknown = http.get(
            "/emails/operations/x?api-version=2025-09-01",
            headers=signed_headers("GET", endpoint,
                                   "/emails/operations/x?api-version=2025-09-01",
                                   b"", key),
        )
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["code"] == "Unauthorized"
    assert unsigned.headers["x-ms-error-code"] == "Unauthorized"
    assert no_version.status_code == 400
    assert no_version.json()["error"]["target"] == "api-version"
    assert wrong_key.status_code == 401
    assert wrong_key.json()["error"]["code"] == "Denied"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NotFound"


def test_a_request_over_10_mb_is_refused_with_413_before_it_is_read(
    service: tuple[RunningService, SmtpSink],
) -> None:
    running, _sink = service
    endpoint, _key = parse_connection_string(running.credentials["connectionString"])
    context = ssl.create_default_context(cafile=running.credentials["caCertificate"])
    with httpx.Client(base_url=endpoint, verify=context, timeout=30) as http:
        reply = http.post("/emails:send?api-version=2025-09-01",
                          content=b"x" * (10 * 1024 * 1024 + 1))
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "RequestEntityTooLarge"


def test_another_resources_keys_cannot_see_an_operation(
    service: tuple[RunningService, SmtpSink],
) -> None:
    running, _sink = service
    creds = running.credentials
    client = sdk.EmailClient.from_connection_string(creds["connectionString"])
    operation_id = str(uuid.uuid4())
    client.begin_send({
        "senderAddress": creds["senderAddress"],
        "recipients": {"to": [{"address": "ann@example.test"}]},
        "content": {"subject": "mine", "plainText": "mine"},
    }, operation_id=operation_id).result()
    other_key = add_resource(running, "other")
    endpoint, _key = parse_connection_string(creds["connectionString"])
    path = f"/emails/operations/{operation_id}?api-version=2025-09-01"
    context = ssl.create_default_context(cafile=creds["caCertificate"])
    with httpx.Client(base_url=endpoint, verify=context, timeout=10) as http:
        reply = http.get(path, headers=signed_headers("GET", endpoint, path, b"",
                                                      other_key))
    assert reply.status_code == 404


def add_resource(running: RunningService, name: str) -> str:
    """A second resource in the service's database; its primary key."""

    async def make() -> str:
        db = Database(f"sqlite+aiosqlite:///{running.folder / 'data' / 'mailcarrier.db'}")
        try:
            async with db.write() as conn:
                return (await create_resource(conn, name)).primary_key
        finally:
            await db.close()

    key = asyncio.run(make())
    time.sleep(5.5)  # the service reads resources' keys every 5 seconds
    return key


def test_mailcarrier_send_goes_through_the_api_and_waits_for_the_result(
    service: tuple[RunningService, SmtpSink], tmp_path: Path
) -> None:
    running, sink = service
    attachment = tmp_path / "notes.txt"
    attachment.write_bytes(b"line one\nline two\n")

    result = running.cli("send", "--to", "ann@example.test", "--subject", "from cli",
                         "--text", "hello", "--attach", str(attachment))

    assert "Succeeded" in result.stdout
    [received] = sink.wait_for(1, timeout=30)
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Subject"] == "from cli"
    [part] = [p for p in parsed.walk() if p.get_filename()]
    assert part.get_filename() == "notes.txt"
    assert part.get_content() in ("line one\nline two\n", b"line one\nline two\n")


def test_mailcarrier_send_says_why_a_sender_is_refused(
    service: tuple[RunningService, SmtpSink],
) -> None:
    running, _sink = service
    result = running.cli("send", "--to", "ann@example.test", "--subject", "x",
                         "--text", "x", "--from", "someone@elsewhere.test",
                         check=False)
    assert result.returncode == 1
    assert "400 BadRequest" in result.stderr
    assert "elsewhere.test" in result.stderr
