"""Versions of the results schema: alembic revisions in `storage/migrations/versions`, checked on every open.

The results tables (`storage.schema`) carry their revision in `odyssey_alembic_version` (Optuna keeps its
own `alembic_version` beside it). On open:

* no results tables: every revision runs, creating the tables at the head revision;
* the head revision: nothing to do;
* an older revision: refused with `SchemaOutdatedError`, naming `odyssey db upgrade` (an upgrade may
  rewrite tables; it never runs behind a user's back while workers of the old release may still write);
* a revision this release does not know: refused with `SchemaTooNewError` (written by a newer release).

A database written by release 0.1.0 has the tables and no version table; it counts as `BASELINE`.

Raises: `SchemaOutdatedError`, `SchemaTooNewError` (both `StorageError`, one line, no password).
"""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sweep.core.errors import StorageError

#: the revision of the tables that release 0.1.0 created without a version table
BASELINE = "0001"
_LOCATION = Path(__file__).with_name("migrations")


class SchemaOutdatedError(StorageError):
    """The database's results schema is older than this release's: `odyssey db upgrade` brings it up."""


class SchemaTooNewError(StorageError):
    """The database was written by a newer release of lstm-odyssey."""


def _config(conn: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_LOCATION))
    cfg.attributes["connection"] = conn
    return cfg


def _script() -> ScriptDirectory:
    return _script_at(str(_LOCATION))


@functools.cache
def _script_at(location: str) -> ScriptDirectory:
    """The migrations at ``location``, read once per process: every database open checks the revision,
    and reading the scripts costs more than the check. Keyed by location (tests point `_LOCATION` at a
    copy holding an extra revision)."""
    cfg = Config()
    cfg.set_main_option("script_location", location)
    script = ScriptDirectory.from_config(cfg)
    script.get_heads()  # build the revision map now, not lazily in whichever thread asks first
    return script


def head_revision() -> str:
    """The revision this release writes (the newest in `storage/migrations/versions`)."""
    head = _script().get_current_head()
    assert head is not None, "the results migrations have no head revision"
    return head


def _has_results_tables(conn: sa.Connection) -> bool:
    from storage.schema import trials

    return sa.inspect(conn).has_table(trials.name)


def current_revision(conn: sa.Connection) -> str | None:
    """The database's results-schema revision: None when it has no results tables, `BASELINE` for an
    unversioned database of release 0.1.0."""
    from storage.schema import VERSION_TABLE

    revision = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if revision is None and _has_results_tables(conn):
        return BASELINE
    return revision


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # alembic raises several types for an unknown or malformed id
        return False


def check(conn: sa.Connection, where: str) -> str | None:
    """Refuse a database whose results schema is not this release's; returns its revision (None: no tables).

    ``where`` names the database in the message (a masked URL). Reads only.
    """
    revision = current_revision(conn)
    head = head_revision()
    if revision is None or revision == head:
        return revision
    if not _known(revision):
        raise SchemaTooNewError(
            f"the results schema of {where} is at revision {revision}, unknown to this release "
            f"(its newest is {head}): it was written by a newer lstm-odyssey; upgrade lstm-odyssey")
    raise SchemaOutdatedError(
        f"the results schema of {where} is at revision {revision}, older than this release's {head}: "
        f"stop the workers of the old release, then run `odyssey db upgrade --storage URL` once")


def ensure_current(conn: sa.Connection, where: str) -> None:
    """Create the results tables at the head revision if the database has none, else `check` it.

    Runs in the caller's transaction, which must hold the schema lock (see `storage.schema.create_schema`).
    An unversioned 0.1.0 database whose tables are the head's gets the version row written (no change to
    any table).
    """
    from storage.schema import VERSION_TABLE

    revision = check(conn, where)
    if revision is None:
        command.upgrade(_config(conn), "head")
    elif not MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision():
        command.stamp(_config(conn), revision)


def upgrade(conn: sa.Connection) -> tuple[str | None, str]:
    """Bring the results schema to the head revision in the caller's locked transaction.

    Returns (revision before, revision after). Raises SchemaTooNewError for a newer database.
    """
    from storage.schema import VERSION_TABLE

    before = current_revision(conn)
    head = head_revision()
    if before is not None and not _known(before):
        raise SchemaTooNewError(
            f"the results schema is at revision {before}, unknown to this release (its newest is {head}): "
            "it was written by a newer lstm-odyssey; upgrade lstm-odyssey instead")
    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    if before is not None and ctx.get_current_revision() is None:
        command.stamp(_config(conn), before)  # a 0.1.0 database: record what it is before upgrading
    if before != head:
        command.upgrade(_config(conn), "head")
    return before, head


def upgrade_database(url: str | None) -> tuple[str | None, str]:
    """`odyssey db upgrade`: bring the results schema of ``url`` to this release's head revision, and
    Optuna's own tables to the installed Optuna's (`RDBStorage.upgrade`, as `optuna storage upgrade`).

    Returns (results revision before, after). Raises OdysseyError: no such SQLite file, unreachable
    database (password masked), or a database of a newer release.
    """
    import optuna

    from storage.engine import engine_kwargs, get_engine, sqlite_file, translated
    from storage.schema import forget_created, schema_lock
    from storage.urls import is_sqlite, resolve_url

    resolved = resolve_url(url)
    file = sqlite_file(resolved) if is_sqlite(resolved) else None
    if file is not None and not file.exists():
        raise StorageError(f"no database at {file}: nothing to upgrade")
    engine = get_engine(resolved)
    with translated(resolved, "upgrade the database"):
        storage = optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs(resolved),
                                             skip_compatibility_check=True)
        if storage.get_current_version() != storage.get_head_version():
            storage.upgrade()
        storage.engine.dispose()
        with schema_lock(engine) as conn:
            result = upgrade(conn)
    forget_created(engine)
    return result
