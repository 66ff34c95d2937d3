"""The ACS-compatible REST data plane: send a message, poll its operation.

``POST /emails:send`` and ``GET /emails/operations/{id}`` as the official
azure-communication-email SDK calls them, authenticated with HMAC-SHA256
over either access key of a communication resource. A send is validated,
built into MIME and accepted through the same path as SMTP (sender checks,
one durable transaction), with its operation row in that transaction.

Decisions where ACS is not documented:
- The message id (``CorrelationId`` in the logs) is a fresh UUID, not the
  operation id: operation ids are the caller's and only unique per resource.
- An operation is ``Succeeded`` as soon as its message is stored, since the
  message is then in the delivery queue; the 202 body says ``Running`` as
  ACS does, and the first poll reads ``Succeeded``.
- A repeated ``Operation-Id`` with the same body answers 202 with the
  existing operation and sends nothing; with another body, 409.
- A sender the resource may not use is a 400 ``BadRequest`` on
  ``senderAddress`` whose message says why.

Known limits: keys of all resources are tried for each request (cached
for a few seconds); bearer tokens are not accepted yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from mailcarrier.addresses import AddressError, split_address
from mailcarrier.api import operations as ops
from mailcarrier.api.mime import build_message
from mailcarrier.api.validation import ApiError, parse_send_request
from mailcarrier.identity.hmac_auth import HmacError, verify_request
from mailcarrier.settings import Settings
from mailcarrier.storage.db import Database
from mailcarrier.storage.tables import resources
from mailcarrier.submission.accept import StoreAcceptor
from mailcarrier.submission.principal import Principal, Refusal

log = logging.getLogger(__name__)

API_VERSIONS = ("2023-03-31", "2024-07-01-preview", "2025-09-01")
KEYS_CACHE_SECONDS = 5.0
POLL_AFTER_SECONDS = 1
MAX_REQUEST_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class _Resource:
    id: str
    name: str
    keys: tuple[str, str]
    local_auth: bool


class KeyRing:
    """Every resource's access keys, read again every few seconds."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._resources: list[_Resource] = []
        self._expires = 0.0

    async def resources(self) -> list[_Resource]:
        if time.monotonic() >= self._expires:
            async with self._db.read() as conn:
                rows = list(await conn.execute(select(resources)))
            self._resources = [
                _Resource(r.id, r.name, (r.primary_key, r.secondary_key),
                          not r.disable_local_auth)
                for r in rows
            ]
            self._expires = time.monotonic() + KEYS_CACHE_SECONDS
        return self._resources


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(error: ApiError | HmacError) -> JSONResponse:
    """The ACS error body and ``x-ms-error-code`` header for a refusal."""
    if isinstance(error, HmacError):
        error = ApiError(error.status, error.code, error.message)
    return JSONResponse(error.body(), status_code=error.status,
                        headers={"x-ms-error-code": error.code})


def api_error(status: int, code: str, message: str, target: str | None = None
              ) -> JSONResponse:
    return error_response(ApiError(status, code, message, target))


def create_app(settings: Settings, db: Database, acceptor: StoreAcceptor) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    keyring = KeyRing(db)

    async def authenticate(request: Request, body: bytes) -> Principal:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        now = dt.datetime.now(dt.timezone.utc)
        last: HmacError | None = None
        for resource in await keyring.resources():
            if not resource.local_auth:
                continue
            try:
                verify_request(method=request.method, path_and_query=path,
                               headers=request.headers, body=body,
                               keys=resource.keys, now=now)
            except HmacError as exc:
                last = exc
                if exc.code != "Denied":
                    raise
                continue
            return Principal(resource.id, resource.name, None, "hmac")
        raise last or HmacError("Denied", "Denied by the resource provider.")

    def version_problem(request: Request) -> JSONResponse | None:
        version = request.query_params.get("api-version")
        if version in API_VERSIONS:
            return None
        return api_error(
            400, "InvalidApiVersion" if version else "MissingApiVersionParameter",
            f"api-version {version!r} is not supported; use one of "
            + ", ".join(API_VERSIONS) if version else
            "the api-version query parameter is required; use one of "
            + ", ".join(API_VERSIONS),
            "api-version",
        )

    @app.post("/emails:send")
    async def send(request: Request) -> Response:
        if (problem := version_problem(request)) is not None:
            return problem
        body = await _read_body(request, MAX_REQUEST_BYTES)
        if body is None:
            return api_error(
                413, "RequestEntityTooLarge",
                f"the request is larger than {MAX_REQUEST_BYTES} bytes; send "
                "smaller attachments (10 MB in all, base64 included)",
            )
        try:
            principal = await authenticate(request, body)
            email, extras = parse_send_request(body, request.headers)
        except (HmacError, ApiError) as exc:
            return error_response(exc)
        operation_id = request.headers.get("operation-id") or str(uuid.uuid4())
        digest = hashlib.sha256(body).hexdigest()
        try:
            existing = await ops.replay(db, principal.resource_id, operation_id, digest)
        except ops.OperationConflict as exc:
            return api_error(409, "Conflict", str(exc), "Operation-Id")
        if existing is None:
            refused = await _accept(principal, email, extras, operation_id, digest)
            if refused is not None:
                return refused
        return _accepted(request, operation_id)

    async def _accept(principal: Principal, email: Any, extras: Any,
                      operation_id: str, digest: str) -> Response | None:
        refusal = await acceptor.check_sender(principal, extras.sender_address)
        if refusal is not None:
            return api_error(400, "BadRequest", refusal.text, "senderAddress")
        _local, domain = split_address(extras.sender_address)
        internet_id = f"<{uuid.uuid4().hex}@{domain}>"
        try:
            content = build_message(email, message_id=internet_id,
                                    date=dt.datetime.now(dt.timezone.utc))
        except (ValueError, AddressError) as exc:
            return api_error(400, "BadRequest", str(exc))
        counts = {"to": extras.to_count, "cc": extras.cc_count,
                  "bcc": extras.bcc_count, "attachments": extras.attachment_count}
        operation = ops.insert_op(
            resource_id=principal.resource_id, operation_id=operation_id,
            body_sha256=digest, message_id=None, status=ops.SUCCEEDED,
            now=time.time(),
        )
        try:
            result = await acceptor.accept(
                principal, extras.sender_address, list(extras.recipients), content,
                smtputf8=False, extra_ops=[operation], counts=counts,
                traffic_source="REST",
            )
        except IntegrityError:
            # The same Operation-Id raced in from a retry; it is stored once.
            return None
        if isinstance(result, Refusal):
            status = 503 if result.code == 421 else 400
            return api_error(status, "BadRequest" if status == 400 else
                             "ServiceUnavailable", result.text)
        return None

    def _accepted(request: Request, operation_id: str) -> Response:
        version = request.query_params["api-version"]
        host = request.headers.get("host", settings.hostname)
        location = (f"https://{host}/emails/operations/{operation_id}"
                    f"?api-version={version}")
        return JSONResponse(
            {"id": operation_id, "status": "Running"}, status_code=202,
            headers={"Operation-Location": location,
                     "retry-after": str(POLL_AFTER_SECONDS)},
        )

    @app.get("/emails/operations/{operation_id}")
    async def status(request: Request, operation_id: str) -> Response:
        if (problem := version_problem(request)) is not None:
            return problem
        try:
            principal = await authenticate(request, await request.body())
        except HmacError as exc:
            return error_response(exc)
        found = await ops.find(db, principal.resource_id, operation_id)
        if found is None:
            return api_error(404, "NotFound",
                             f"no operation {operation_id} on this resource",
                             "operationId")
        body: dict[str, Any] = {"id": found.id, "status": found.status}
        headers = {}
        if found.status == ops.FAILED:
            body["error"] = {"code": found.error_code, "message": found.error_message}
        if not found.terminal:
            headers["retry-after"] = str(POLL_AFTER_SECONDS)
        return JSONResponse(body, headers=headers)

    return app
