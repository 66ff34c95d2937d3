"""Delivery against misbehaving receivers, and crash safety, end to end.

The service runs in a subprocess and delivers through static routes to
SMTP sinks that refuse, defer, drop or stall; each recipient must end in
the right status with exactly one copy delivered. The crash test kills
the whole service with SIGKILL while mail flows and checks that every
message that got a 250 arrives, and that any second copy is flagged.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import backends, fresh_database_url
from tests.peers.sink import SmtpSink
from tests.service import RunningService

pytestmark = pytest.mark.slow

BEHAVIOURS = {
    "reject.test": ("reject_550", {}),
    "tempfail.test": ("tempfail_then_accept", {"failures": 1}),
    "greeting.test": ("greeting_421", {}),
    "closes.test": ("close_on_connect", {}),
    "slow.test": ("slow_data", {"delay": 30.0}),
}


@pytest.fixture(params=backends())
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await fresh_database_url(request.param, tmp_path)


@pytest.fixture
def sinks() -> Iterator[dict[str, SmtpSink]]:
    started = {
        domain: SmtpSink(name, **options).start()
        for domain, (name, options) in BEHAVIOURS.items()
    }
    try:
        yield started
    finally:
        for sink in started.values():
            sink.stop()


def send_trusted(
    port: int, sender: str, rcpt: str, subject: str
) -> tuple[int, str]:
    """Send one message as a trusted-network client; return the DATA reply."""
    body = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@test.example>\r\n\r\nbody of {subject}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        code, _ = smtp.mail(sender)
        assert code == 250
        code, _ = smtp.rcpt(rcpt)
        assert code == 250
        code, reply = smtp.data(body)
        return code, reply.decode()


def message_id_of(reply: str) -> str:
    found = re.search(r"queued as (\S+)", reply)
    assert found, reply
    return found.group(1)


def wait_until_final(service: RunningService, ids: list[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        shown = {i: service.cli_json("messages", "show", i) for i in ids}
        if all(
            r["status"] != "Queued" for m in shown.values() for r in m["recipients"]
        ):
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"not final: {shown}\n{service.log()[-4000:]}")
        time.sleep(0.5)


def test_each_misbehaving_receiver_ends_in_the_right_status_with_one_copy(
    tmp_path: Path, database_url: str, sinks: dict[str, SmtpSink]
) -> None:
    routes = ",".join(f"{d}=127.0.0.1:{s.port}" for d, s in sinks.items())
    service = RunningService(
        tmp_path,
        database_url=database_url,
        env={
            "MAILCARRIER_ROUTES": routes,
            "MAILCARRIER_TRUSTED_NETWORKS": "127.0.0.0/8=default",
            "MAILCARRIER_RETRY_INITIAL_DELAY": "1",
            "MAILCARRIER_RETRY_MAX_DELAY": "2",
            "MAILCARRIER_MAX_QUEUE_LIFETIME": "8",
        },
    )
    with service:
        sender = service.credentials["senderAddress"]
        ids = {}
        for domain in sinks:
            label = domain.split(".")[0]
            code, reply = send_trusted(
                service.smtp_port, sender, f"user@{domain}", f"to-{label}"
            )
            assert code == 250, reply
            ids[domain] = message_id_of(reply)
        shown = wait_until_final(service, list(ids.values()), timeout=90)
    result = {d: shown[i]["recipients"][0] for d, i in ids.items()}

    rejected = result["reject.test"]
    assert rejected["status"] == "Bounced"
    assert rejected["smtpStatusCode"] == 550
    assert rejected["enhancedSmtpStatusCode"] == "5.1.1"
    assert rejected["response"].startswith("550 5.1.1")
    assert sinks["reject.test"].messages() == []

    deferred = result["tempfail.test"]
    assert deferred["status"] == "Delivered"
    assert deferred["attempts"] == 2
    assert len(sinks["tempfail.test"].messages()) == 1
    assert len(sinks["tempfail.test"].attempts()) == 2

    for domain in ("greeting.test", "closes.test"):
        failed = result[domain]
        assert failed["status"] == "Failed", (domain, failed)
        assert failed["attempts"] >= 2, (domain, failed)
        assert sinks[domain].messages() == []
    assert "421" in result["greeting.test"]["response"]

    slow = result["slow.test"]
    assert slow["status"] == "Delivered"
    assert slow["attempts"] == 1
    assert len(sinks["slow.test"].attempts()) == 1


# Crash safety ------------------------------------------------------------------

TOTAL = 1000
SENDERS = 10


class Submitter:
    """Threads that submit TOTAL messages, riding out the service's restart."""

    def __init__(self, port: int, sender: str) -> None:
        self.port = port
        self.sender = sender
        self.accepted: dict[str, str] = {}  # Message-ID header -> message id
        self.lock = threading.Lock()
        self.next = 0
        self.threads = [threading.Thread(target=self._run) for _ in range(SENDERS)]

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= TOTAL:
                return None
            self.next += 1
            return self.next

    def _run(self) -> None:
        while (number := self._take()) is not None:
            attempt = 0
            while True:
                subject = f"crash-{number}-{attempt}"
                try:
                    code, reply = send_trusted(
                        self.port, self.sender, f"n{number}@sink.test", subject
                    )
                except (OSError, smtplib.SMTPException):
                    attempt += 1
                    time.sleep(0.2)
                    continue
                if code == 250:
                    with self.lock:
                        self.accepted[f"<{subject}@test.example>"] = message_id_of(reply)
                    break
                attempt += 1

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(300)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


def test_every_accepted_message_survives_a_sigkill_and_duplicates_are_flagged(
    tmp_path: Path, database_url: str
) -> None:
    with SmtpSink("slow_data", delay=0.05, keep_body=False) as sink:
        service = RunningService(
            tmp_path,
            database_url=database_url,
            workers=2,
            env={
                "MAILCARRIER_ROUTES": f"*=127.0.0.1:{sink.port}",
                "MAILCARRIER_TRUSTED_NETWORKS": "127.0.0.0/8=default",
                "MAILCARRIER_LOG_LEVEL": "WARNING",
            },
        )
        service.start()
        submitter = Submitter(service.smtp_port, service.credentials["senderAddress"])
        submitter.start()
        deadline = time.monotonic() + 120
        while submitter.count() < TOTAL // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered_at_kill = sink.stats().messages
        assert delivered_at_kill > 0, "nothing was delivered before the kill"
        service.kill()
        assert submitter.count() < TOTAL, "the kill came after all submissions"
        time.sleep(0.5)
        service.start()
        submitter.join()
        accepted = dict(submitter.accepted)
        assert len(accepted) == TOTAL
        sink.wait_until(
            lambda s: set(accepted) <= set(s.count_by_message_id()), timeout=180
        )
        counts = sink.count_by_message_id()
        time.sleep(1.0)  # let the last outcomes be recorded
        queue_left = service.cli_json("queue")
        duplicates = {mid: n for mid, n in counts.items() if n > 1}
        flagged = {
            header: service.cli_json("messages", "show", accepted[header])
            for header in duplicates
            if header in accepted
        }
        service.stop()
    print(f"delivered at kill: {delivered_at_kill}, duplicates: {len(duplicates)}")
    assert [e for e in queue_left if e["state"] == "leased"] == []
    assert all(n == 2 for n in duplicates.values()), duplicates
    # At most one redelivery per outbound connection open at the kill:
    # two workers with at most 20 connections to this destination each.
    assert len(duplicates) <= 40
    for header, shown in flagged.items():
        assert all(r["possibleDuplicate"] for r in shown["recipients"]), header


def test_a_sigterm_under_load_stops_cleanly_and_loses_or_repeats_nothing(
    tmp_path: Path, database_url: str
) -> None:
    with SmtpSink("slow_data", delay=0.2, keep_body=False) as sink:
        service = RunningService(
            tmp_path,
            database_url=database_url,
            workers=2,
            env={
                "MAILCARRIER_ROUTES": f"*=127.0.0.1:{sink.port}",
                "MAILCARRIER_TRUSTED_NETWORKS": "127.0.0.0/8=default",
            },
        )
        service.start()
        submitter = Submitter(service.smtp_port, service.credentials["senderAddress"])
        submitter.start()
        deadline = time.monotonic() + 60
        while submitter.count() < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        service.stop()
        log_after_stop = service.log()
        service.start()
        submitter.join()
        accepted = dict(submitter.accepted)
        sink.wait_until(
            lambda s: set(accepted) <= set(s.count_by_message_id()), timeout=180
        )
        time.sleep(1.0)
        counts = sink.count_by_message_id()
        flagged = [
            m for m in service.cli_json("messages", "list", "--limit", "5000")
            if any(r["possibleDuplicate"] for r in m["recipients"])
        ]
        service.stop()
    assert "Traceback" not in log_after_stop
    assert [h for h, n in counts.items() if n > 1] == []
    assert flagged == []
