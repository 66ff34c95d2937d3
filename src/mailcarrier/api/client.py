"""A small client of our own REST send API, for ``mailcarrier send``.

It signs requests the way the ACS SDK does (``identity.hmac_auth``), posts
one message and polls its operation until it ends. People use the SDK or
SMTP; this exists so an operator can send a test message from the shell.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
import mimetypes
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from mailcarrier.identity.hmac_auth import content_hash, sign, string_to_sign

API_VERSION = "2025-09-01"


class SendFailed(RuntimeError):
    """The API refused the message or the operation failed; text says why."""


def message_body(
    *, sender: str, to: list[str], subject: str, text: str | None,
    html: str | None, attachments: list[Path],
) -> dict[str, Any]:
    content: dict[str, str] = {"subject": subject}
    if text is not None:
        content["plainText"] = text
    if html is not None:
        content["html"] = html
    return {
        "senderAddress": sender,
        "recipients": {"to": [{"address": address} for address in to]},
        "content": content,
        "attachments": [_attachment(path) for path in attachments],
    }


def _attachment(path: Path) -> dict[str, str]:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {
        "name": path.name,
        "contentType": kind,
        "contentInBase64": base64.b64encode(path.read_bytes()).decode("ascii"),
    }


def signed_headers(method: str, endpoint: str, path: str, body: bytes, key: str
                   ) -> dict[str, str]:
    """HMAC headers for one request, as the ACS SDK signs it."""
    host = endpoint.split("://", 1)[1].rstrip("/")
    date = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc), usegmt=True)
    digest = content_hash(body)
    signature = sign(key, string_to_sign(method, path, date, host, digest))
    return {
        "x-ms-date": date,
        "x-ms-content-sha256": digest,
        "Authorization": "HMAC-SHA256 SignedHeaders=x-ms-date;host;"
        f"x-ms-content-sha256&Signature={signature}",
        "Content-Type": "application/json",
    }


def send(endpoint: str, key: str, body: dict[str, Any], *, ca_file: str | None,
         timeout: float = 60.0) -> tuple[str, str]:
    """Send one message; return the operation id and its final status."""
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=ca_file) if ca_file else True
    )
    raw = json.dumps(body).encode()
    path = f"/emails:send?api-version={API_VERSION}"
    with httpx.Client(base_url=endpoint, verify=verify, timeout=30) as http:
        reply = http.post(path, content=raw,
                          headers=signed_headers("POST", endpoint, path, raw, key))
        if reply.status_code != 202:
            raise SendFailed(_error_text(reply))
        operation = reply.json()["id"]
        status_path = f"/emails/operations/{operation}?api-version={API_VERSION}"
        deadline = time.monotonic() + timeout
        while True:
            reply = http.get(status_path,
                             headers=signed_headers("GET", endpoint, status_path,
                                                    b"", key))
            if reply.status_code != 200:
                raise SendFailed(_error_text(reply))
            status = reply.json()["status"]
            if status in ("Succeeded", "Failed", "Canceled"):
                return operation, status
            if time.monotonic() > deadline:
                return operation, status
            time.sleep(float(reply.headers.get("retry-after", "1")))


def _error_text(reply: httpx.Response) -> str:
    try:
        error = reply.json()["error"]
        return f"{reply.status_code} {error.get('code')}: {error.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"{reply.status_code}: {reply.text[:200]}"
