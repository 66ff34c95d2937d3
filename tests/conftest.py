"""Shared fixtures: databases on every configured backend, corpus paths."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mailcarrier.storage.db import Database

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PG_URL = os.environ.get("MAILCARRIER_TEST_DATABASE_URL", "")


def shared_data(*parts: str) -> Path:
    """A path in the shared corpora, or skip the test when they are absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test corpora not found at {path} (../shared is absent)")
    return path


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


async def reset_postgres(url: str) -> None:
    """Empty the test database so each test starts from migrations."""
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await db.close()


async def fresh_database_url(backend: str, folder: Path) -> str:
    if backend == "postgresql":
        await reset_postgres(PG_URL)
        return PG_URL
    return f"sqlite+aiosqlite:///{folder / 'mailcarrier.db'}"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MAILCARRIER_* variable or mailcarrier.toml of the caller leaks in."""
    for name in list(os.environ):
        if name.startswith("MAILCARRIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAILCARRIER_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(autouse=True)
def _stop_services_left_running() -> Iterator[None]:
    """Kill any service subprocess that a test started and did not stop."""
    from tests.service import STARTED

    yield
    while STARTED:
        STARTED.pop().kill()


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def db(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(await fresh_database_url(backend, tmp_path))
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()
