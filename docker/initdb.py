"""Prepare the study database once, before the stack starts: roles, then tables.

On a fresh database every worker process and the dashboard would otherwise create Optuna's tables at the
same moment, and on PostgreSQL all but one of them fail ("duplicate key value violates unique constraint
pg_type_typname_nsp_index"). The compose `db-init` service runs this first; the workers and the dashboard
start only after it has exited successfully. Idempotent: on an initialised database it only checks.

Roles (when $ODYSSEY_APP_USER is set; the compose set-up does): $ODYSSEY_STORAGE is then the superuser the
PostgreSQL image creates (POSTGRES_USER), used for nothing but this. It creates or updates

- the application role $ODYSSEY_APP_USER ($ODYSSEY_APP_PASSWORD): login, no superuser, no CREATEDB or
  CREATEROLE, member of no predefined role; it owns the tables (existing ones are handed over) and is what
  workers, the dashboard and the CLI connect as;
- the read-only role $ODYSSEY_READER_USER ($ODYSSEY_READER_PASSWORD), when set: SELECT on the tables (and
  on those the application role creates later), every transaction READ ONLY by default; `odyssey query`
  connects as it ($ODYSSEY_QUERY_STORAGE) and refuses roles that could act on the server.

Passwords go to the server as SCRAM verifiers computed here (libpq's PQencryptPasswordConn), never as
text. Without $ODYSSEY_APP_USER (an extra worker host, docker-compose.workers.yml) only the tables are
checked or created.

Usage (the compose `db-init` service):  python docker/initdb.py      (database URL from $ODYSSEY_STORAGE)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from sweep.core.errors import ConfigError, OdysseyError


@dataclass(frozen=True)
class Role:
    """A login role and its passphrase (the value of its $..._PASSWORD variable)."""

    name: str
    passphrase: str


@dataclass(frozen=True)
class Roles:
    """The application role and the optional read-only role."""

    app: Role
    reader: Role | None = None


def _role_from_env(prefix: str) -> Role | None:
    name = os.environ.get(f"{prefix}_USER", "").strip()
    if not name:
        return None
    passphrase = os.environ.get(f"{prefix}_PASSWORD", "")
    if not passphrase:
        raise ConfigError(f"set {prefix}_PASSWORD for the role {name!r} (see .env.example)")
    return Role(name, passphrase)


def roles_from_env() -> Roles | None:
    """The roles $ODYSSEY_APP_USER / $ODYSSEY_READER_USER ask for (None: no role set-up); OdysseyError
    for a role without its password."""
    app = _role_from_env("ODYSSEY_APP")
    return None if app is None else Roles(app, _role_from_env("ODYSSEY_READER"))


def _ensure_role(conn: object, role: Role, read_only: bool) -> None:
    from psycopg import sql

    name = role.name
    cur = conn.cursor()  # type: ignore[attr-defined]
    pgconn = conn.pgconn  # type: ignore[attr-defined]
    verifier = pgconn.encrypt_password(role.passphrase.encode(), name.encode(), b"scram-sha-256").decode()
    exists = cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    # Whatever the role was given before: no superuser or other server-wide power, no predefined roles.
    options = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                      "PASSWORD {}").format(sql.Literal(verifier))
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    cur.execute(sql.SQL("{} {} {}").format(verb, sql.Identifier(name), options))
    granted = cur.execute(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (name,)).fetchall()
    for (role,) in granted:
        cur.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(name)))
    value = sql.SQL("on" if read_only else "off")
    cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = {}").format(
        sql.Identifier(name), value))


# Every object in schema public not yet owned by the application role, with the ALTER that hands it over
# (sequences that belong to a table move with it).
_NOT_OWNED = """
WITH app AS (SELECT oid FROM pg_roles WHERE rolname = %(app)s)
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                      ELSE 'TABLE' END, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') AND c.relowner <> (SELECT oid FROM app)
  AND NOT (c.relkind = 'S' AND EXISTS (
      SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 'TYPE', t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 'public' AND t.typtype = 'e' AND t.typowner <> (SELECT oid FROM app)
"""


def setup_roles(url: str, roles: Roles) -> None:
    """Create or update the roles, hand the tables to the application role and grant the reader SELECT.

    ``url`` must connect as a superuser (or a role with CREATEROLE that owns the database)."""
    from psycopg import sql

    from storage.engine import get_engine

    engine = get_engine(url)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        conn.rollback()
        conn.autocommit = False
        cur = conn.cursor()
        me = cur.execute("SELECT current_user, current_database()").fetchone()
        if me[0] in (roles.app.name, roles.reader and roles.reader.name):
            raise ConfigError(f"the application and read-only roles must differ from {me[0]!r}, the "
                               "administrator db-init connects as")
        _ensure_role(conn, roles.app, read_only=False)
        app, database = sql.Identifier(roles.app.name), sql.Identifier(me[1])
        cur.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, app))
        cur.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(app))
        for kind, name in cur.execute(_NOT_OWNED, {"app": roles.app.name}).fetchall():
            cur.execute(sql.SQL("ALTER {} public.{} OWNER TO {}").format(
                sql.SQL(kind), sql.Identifier(name), app))
        if roles.reader:
            _ensure_role(conn, roles.reader, read_only=True)
            reader = sql.Identifier(roles.reader.name)
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, reader))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(reader))
            cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(reader))
            # Tables the application role creates later (a new version's) are readable too.
            cur.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT ON "
                                "TABLES TO {}").format(app, reader))
        conn.commit()
    finally:
        raw.close()


def app_url(url: str, roles: Roles) -> str:
    """``url`` with the application role and its password in place of the administrator's."""
    from sqlalchemy.engine import make_url

    app = make_url(url).set(username=roles.app.name, password=roles.app.passphrase)
    return app.render_as_string(hide_password=False)


def prepare(url: str, roles: Roles | None) -> None:
    """Roles first (when asked for), then the tables, created as the role that will use them."""
    from storage.engine import dispose_engine, get_engine, optuna_storage, translated, with_retry
    from storage.schema import create_schema

    tables_url = url
    if roles is not None:
        with_retry(lambda: setup_roles(url, roles), url, what="set up the database roles")
        dispose_engine(url)  # the administrator's connections are not needed any more
        tables_url = app_url(url, roles)
    optuna_storage(tables_url)  # creates Optuna's tables
    with translated(tables_url, "create the results tables"):
        create_schema(get_engine(tables_url))


def main() -> None:
    """Open $ODYSSEY_STORAGE (waiting while it starts), set up roles and tables, exit 0; one line on error."""
    if not os.environ.get("ODYSSEY_STORAGE", "").strip():
        sys.exit("error: set ODYSSEY_STORAGE to the study database URL")
    from storage.urls import mask_url, resolve_url

    try:
        url = resolve_url(None)
        roles = roles_from_env()
        if roles is not None and url.startswith("sqlite"):
            raise ConfigError("database roles need PostgreSQL: unset ODYSSEY_APP_USER for SQLite")
        prepare(url, roles)
    except OdysseyError as exc:
        sys.exit(f"error: {exc}")
    print(f"database ready: {mask_url(url)}", file=sys.stderr)


if __name__ == "__main__":
    main()
