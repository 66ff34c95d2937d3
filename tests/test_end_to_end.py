"""The whole service, end to end: real clients in, real DNS, real sinks out.

Each test starts ``mailcarrier serve`` in a subprocess (``tests.service``),
submits mail with a real SMTP client over STARTTLS and AUTH, and checks
what arrived at an SMTP sink and what ``mailcarrier messages`` recorded.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest

from tests.conftest import backends, fresh_database_url, shared_data
from tests.peers.dns import DnsServer
from tests.peers.sink import SmtpSink
from tests.service import RunningService

pytestmark = pytest.mark.slow

RECIPIENT_DOMAIN = "example.test"


@pytest.fixture(params=backends())
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await fresh_database_url(request.param, tmp_path)


@pytest.fixture
def dns_peer() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(starttls=True) as server:
        yield server


def start_service(
    folder: Path, database_url: str, dns_peer: DnsServer, sink_port: int,
    **env: str,
) -> RunningService:
    service = RunningService(
        folder,
        database_url=database_url,
        env={
            "MAILCARRIER_RESOLVER": f"127.0.0.1:{dns_peer.port}",
            "MAILCARRIER_DELIVERY_PORT": str(sink_port),
            **env,
        },
    )
    creds = service.init()
    dns_peer.add(RECIPIENT_DOMAIN, "MX", f"10 mx.{RECIPIENT_DOMAIN}.")
    dns_peer.add(f"mx.{RECIPIENT_DOMAIN}", "A", "127.0.0.1")
    dns_peer.add(creds["dkim"]["name"], "TXT", creds["dkim"]["value"])
    service.start()
    return service


def client_context(service: RunningService) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=service.credentials["caCertificate"])


def submit(service: RunningService, content: bytes, recipients: list[str]) -> None:
    creds = service.credentials
    with smtplib.SMTP("127.0.0.1", service.smtp_port, timeout=30) as smtp:
        smtp.starttls(context=client_context(service))
        smtp.ehlo()
        # AUTH LOGIN with an initial response, as smtplib and .NET send it.
        smtp.user = creds["smtp"]["username"]
        smtp.password = creds["smtp"]["password"]
        code, _reply = smtp.auth("LOGIN", smtp.auth_login)
        assert code == 235
        options = ["BODY=8BITMIME"] if not content.isascii() else []
        smtp.sendmail(creds["senderAddress"], recipients, content, mail_options=options)


def wait_for_status(
    service: RunningService, predicate: Any, timeout: float = 60.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = service.cli_json("messages", "list", "--limit", "1000")
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"status not reached; last seen {found}\n{service.log()}")
        time.sleep(0.3)


def all_final(found: list[dict[str, Any]], count: int) -> bool:
    return len(found) >= count and all(
        r["status"] != "Queued" for m in found for r in m["recipients"]
    )


# The corpora ------------------------------------------------------------------

_FROM_HEADER = re.compile(rb"^From:.*\r\n(?:[ \t].*\r\n)*", re.IGNORECASE | re.MULTILINE)


def prepare_corpus_message(raw: bytes, sender: str) -> bytes:
    """CRLF line endings, no mbox line, exactly one From: the sender."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    if text.startswith(b"From "):
        text = text.split(b"\r\n", 1)[1]
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    end = text.find(b"\r\n\r\n")
    head, body = (text, b"") if end < 0 else (text[: end + 2], text[end + 2 :])
    head = _FROM_HEADER.sub(b"", head)
    return b"From: " + sender.encode() + b"\r\n" + head + body


def corpus_files() -> list[Path]:
    files = []
    for folder in ("mime-mikel-mail", "mime-mailpit", "mime-haraka"):
        base = shared_data(folder)
        files += sorted(
            p for p in base.rglob("*") if p.is_file() and not p.name.startswith("LICENSE")
        )
    return files


def body_of(message: bytes) -> bytes:
    return message[message.find(b"\r\n\r\n") + 4 :]


def dkim_dns(dns_peer: DnsServer) -> Any:
    resolver = dns_peer.sync_resolver()

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


def test_every_corpus_message_arrives_with_its_body_intact_and_a_valid_dkim_signature(
    tmp_path: Path, database_url: str, dns_peer: DnsServer, sink: SmtpSink
) -> None:
    files = corpus_files()
    service = start_service(tmp_path, database_url, dns_peer, sink.port)
    try:
        sender = service.credentials["senderAddress"]
        sent: dict[str, bytes] = {}
        for index, path in enumerate(files):
            content = prepare_corpus_message(path.read_bytes(), sender)
            rcpt = f"corpus{index}@{RECIPIENT_DOMAIN}"
            submit(service, content, [rcpt])
            sent[rcpt] = content
        received = sink.wait_for(len(files), timeout=120)
    finally:
        service.stop()
    by_rcpt = {m.recipients[0]: m for m in received}
    assert set(by_rcpt) == set(sent)
    lookup = dkim_dns(dns_peer)
    for rcpt, content in sent.items():
        data = by_rcpt[rcpt].data
        assert body_of(data) == body_of(content), rcpt
        assert data.startswith(b"DKIM-Signature:"), rcpt
        assert dkim.verify(data, dnsfunc=lookup), rcpt
    assert all(m.tls for m in received)


def test_status_is_recorded_per_recipient_after_delivery(
    tmp_path: Path, database_url: str, dns_peer: DnsServer, sink: SmtpSink
) -> None:
    with start_service(tmp_path, database_url, dns_peer, sink.port) as service:
        msg = EmailMessage()
        msg["From"] = service.credentials["senderAddress"]
        msg["To"] = f"ann@{RECIPIENT_DOMAIN}"
        msg["Subject"] = "status"
        msg.set_content("hello")
        submit(service, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")),
               [f"ann@{RECIPIENT_DOMAIN}", f"bob@{RECIPIENT_DOMAIN}"])
        sink.wait_for(1, timeout=30)
        [message] = wait_for_status(service, lambda f: all_final(f, 1))
    assert message["status"] == "Delivered"
    assert message["senderAddress"] == service.credentials["senderAddress"]
    statuses = {r["address"]: r for r in message["recipients"]}
    assert set(statuses) == {f"ann@{RECIPIENT_DOMAIN}", f"bob@{RECIPIENT_DOMAIN}"}
    for item in statuses.values():
        assert item["status"] == "Delivered"
        assert item["attempts"] == 1
        assert item["smtpStatusCode"] == 250
        assert item["remoteHost"] == f"mx.{RECIPIENT_DOMAIN}"
        assert item["response"].startswith("250")
    # One transaction for both recipients of the domain.
    assert len(sink.messages()) == 1
    assert sorted(sink.messages()[0].recipients) == sorted(statuses)


# Real clients from Debian --------------------------------------------------------


def simple_message(sender: str, rcpt: str, subject: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    ).encode()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_sends_over_starttls_with_auth(
    tmp_path: Path, dns_peer: DnsServer, sink: SmtpSink
) -> None:
    with start_service(tmp_path, "", dns_peer, sink.port) as service:
        creds = service.credentials
        result = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{service.smtp_port}", "--tls",
             "--tls-verify", "--tls-ca-path", creds["caCertificate"],
             "--tls-sni", "localhost",
             "--auth", "LOGIN", "--auth-user", creds["smtp"]["username"],
             "--auth-password", creds["smtp"]["password"],
             "--from", creds["senderAddress"], "--to", f"swaks@{RECIPIENT_DOMAIN}",
             "--header", f"From: {creds['senderAddress']}",
             "--header", "Subject: from swaks"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        [message] = sink.wait_for(1, timeout=30)
    assert message.recipients == (f"swaks@{RECIPIENT_DOMAIN}",)
    assert message.header("Subject") == "from swaks"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sends_over_starttls_with_auth(
    tmp_path: Path, dns_peer: DnsServer, sink: SmtpSink
) -> None:
    with start_service(tmp_path, "", dns_peer, sink.port) as service:
        creds = service.credentials
        mail = tmp_path / "mail.txt"
        mail.write_bytes(simple_message(creds["senderAddress"],
                                        f"curl@{RECIPIENT_DOMAIN}", "from curl"))
        result = subprocess.run(
            ["curl", "--silent", "--show-error",
             "--url", f"smtp://localhost:{service.smtp_port}",
             "--ssl-reqd", "--cacert", creds["caCertificate"],
             "--user", f"{creds['smtp']['username']}:{creds['smtp']['password']}",
             "--mail-from", creds["senderAddress"],
             "--mail-rcpt", f"curl@{RECIPIENT_DOMAIN}",
             "--upload-file", str(mail)],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        [message] = sink.wait_for(1, timeout=30)
    assert message.recipients == (f"curl@{RECIPIENT_DOMAIN}",)
    assert message.header("Subject") == "from curl"
