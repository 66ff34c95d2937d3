"""Alembic environment: migrations run on a connection handed in by the service."""

from __future__ import annotations

from alembic import context

from mailcarrier.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "mailcarrier applies its migrations itself at start; "
        "run `mailcarrier migrate` instead of alembic"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
