"""Alembic environment for billow.migrations.upgrade: it hands over one connection, already inside the
transaction that holds the migration lock, so every revision (and the version row) commits or rolls back with
it. There is no alembic.ini: billow.migrations builds the Config in code."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None,
                  render_as_batch=connection.dialect.name == "sqlite")  # ALTER TABLE on SQLite: copy-and-move
with context.begin_transaction():  # inside the caller's transaction: a no-op, the caller commits
    context.run_migrations()
