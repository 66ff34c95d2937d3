"""Who is submitting: the resource a session sends as, and how it got there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    """An authenticated (or trusted) submitter, bound to one resource."""

    resource_id: str
    resource_name: str
    # The application behind an SMTP username; None for a trusted network.
    application_id: str | None
    # "password", "oauth" or "trusted".
    method: str
    username: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a submission step was refused, as an SMTP reply."""

    code: int
    enhanced: str
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True)
class Accepted:
    message_id: str
    internet_message_id: str


class Authenticator(Protocol):
    async def login(self, username: str, password: str) -> Principal | None:
        """The principal for SMTP username + client secret, or None."""

    async def trusted(self, peer_ip: str) -> Principal | None:
        """The principal bound to a trusted network containing peer_ip."""


class Acceptor(Protocol):
    async def check_sender(self, principal: Principal, address: str) -> Refusal | None:
        """None when the address may send as the principal, else why not."""

    async def accept(
        self,
        principal: Principal,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        *,
        smtputf8: bool,
    ) -> Accepted | Refusal:
        """Store the message durably; return only after the commit."""
