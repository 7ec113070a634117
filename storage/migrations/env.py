"""Alembic environment for the results tables: always run on a connection handed in by
`storage.schema_version` (never from an alembic.ini URL), inside the caller's locked transaction."""

from __future__ import annotations

from alembic import context

from storage.schema import VERSION_TABLE, metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # Optuna keeps its own `alembic_version` table in the same database: ours must not share it.
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic executes this file under a module name of its own; an import as a package module (the
# package-border test walks every module) must not run migrations.
if __name__ != "storage.migrations.env":
    run_migrations()
