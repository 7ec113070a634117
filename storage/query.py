"""Read-only SQL over the results database, and export of a study's per-trial table.

`run_readonly` is read-only for real, not by inspecting the SQL: PostgreSQL runs it in a READ ONLY
transaction that is rolled back, SQLite opens the file with ``mode=ro`` and ``PRAGMA query_only``. Both
accept one statement only, so "SELECT 1; COMMIT; DROP ..." cannot escape the read-only transaction.

Nor can it act anywhere else: on PostgreSQL a superuser or a member of `SERVER_ROLES` is refused before
the statement runs (COPY ... TO PROGRAM, server files, signalling sessions are not stopped by READ ONLY);
on SQLite an authorizer refuses ATTACH/DETACH/VACUUM (which create files at any path) and PRAGMAs that set
something. See docs/results-schema.md.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import make_url

from storage.engine import (
    get_engine,
    is_connection_error,
    is_db_error,
    require_existing_database,
    root_message,
    sqlite_file,
    translate,
    with_retry,
)
from storage.results import READ_RETRY_SECONDS, load_study
from storage.urls import is_sqlite, password_of, resolve_url, scrub, secrets_of
from sweep.core.errors import ConfigError, OdysseyError, StorageError

EXPORT_FORMATS = ("csv", "parquet")
#: environment variables naming the database (and its role's password) that `odyssey query` reads
QUERY_URL_ENV, QUERY_PASSWORD_ENV = "ODYSSEY_QUERY_STORAGE", "ODYSSEY_QUERY_PASSWORD"
_READONLY_REFUSAL = (
    "query refused: the results database is opened read-only (only SELECT-like statements run)"
)
_SQLITE_BUSY_TIMEOUT_S = 30.0


def query_url(url: str | None) -> str:
    """The database `run_readonly` reads: ``url``, else ``$ODYSSEY_QUERY_STORAGE`` (a read-only role's
    URL; its password may come apart in ``$ODYSSEY_QUERY_PASSWORD``), else as `resolve_url`."""
    if url or not os.environ.get(QUERY_URL_ENV, "").strip():
        return resolve_url(url)
    resolved = resolve_url(os.environ[QUERY_URL_ENV])
    password = os.environ.get(QUERY_PASSWORD_ENV)
    if password and not is_sqlite(resolved) and not password_of(resolved):
        resolved = make_url(resolved).set(password=password).render_as_string(hide_password=False)
    return resolved


def run_readonly(url: str | None, sql: str, max_rows: int | None = None) -> pd.DataFrame:
    """Run one SQL statement on the results database without any chance of changing it.

    ``url`` defaults to `query_url`'s choice. A statement that writes raises OdysseyError("query refused:
    the results database is opened read-only ..."), as does a PostgreSQL role that could act on the server
    (superuser, `SERVER_ROLES`); a SQL error raises a one-line OdysseyError. ``max_rows`` caps the rows.
    """
    if not isinstance(sql, str) or not sql.strip().rstrip(";").strip():
        raise ConfigError("query refused: the SQL statement is empty")
    resolved = query_url(url)
    if is_sqlite(resolved):
        return _run_sqlite(resolved, sql, max_rows)
    return with_retry(lambda: _run_postgres(resolved, sql, max_rows), resolved, what="run a query",
                      retry_seconds=READ_RETRY_SECONDS)


def _frame(description: Any, rows: list[Any]) -> pd.DataFrame:
    columns = unique_names([getattr(d, "name", None) or d[0] for d in description])
    return pd.DataFrame.from_records(rows, columns=columns)


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique: a repeated name gets _2, _3, ... (``count, count`` -> ``count, count_2``).

    SQL allows a result with two columns of one name (``SELECT count(*), count(DISTINCT slot)``); a
    DataFrame, JSON records and a table column lookup do not.
    """
    seen = set(names)
    out: list[str] = []
    for name in names:
        if name in out:
            n = 2
            while f"{name}_{n}" in seen:
                n += 1
            name = f"{name}_{n}"
            seen.add(name)
        out.append(name)
    return out


def _query_error(exc: BaseException, url: str) -> OdysseyError:
    text = " ".join(str(item) for item in (exc, getattr(exc, "__cause__", None)) if item).lower()
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    if (sqlstate == "25006" or "readonly database" in text or "read-only transaction" in text
            or "not authorized" in text):
        return StorageError(_READONLY_REFUSAL)
    if sqlstate == "42501":  # insufficient_privilege: the role may not (COPY TO PROGRAM, pg_read_file, ...)
        return StorageError(f"query refused: {scrub(root_message(exc), secrets_of(url))}")
    if "one statement at a time" in text or "multiple commands" in text:
        return StorageError("query refused: run one SQL statement at a time")
    if is_connection_error(exc) and not isinstance(exc, sqlite3.Error):
        return translate(exc, url, "run a query")
    return StorageError(f"query failed: {scrub(root_message(exc), secrets_of(url))}")


def _fetch(cursor: Any, max_rows: int | None) -> pd.DataFrame:
    if cursor.description is None:  # a statement without a result (e.g. SET): nothing to show
        return pd.DataFrame()
    rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
    return _frame(cursor.description, rows)


# PRAGMAs that only report. With an argument only those whose argument names what to report on; every
# other PRAGMA, and any of these given a value to set, is refused.
_REPORTING_PRAGMAS = frozenset({
    "application_id", "auto_vacuum", "busy_timeout", "cache_size", "collation_list", "compile_options",
    "data_version", "database_list", "encoding", "foreign_key_check", "foreign_key_list", "foreign_keys",
    "freelist_count", "function_list", "index_info", "index_list", "index_xinfo", "integrity_check",
    "journal_mode", "module_list", "page_count", "page_size", "pragma_list", "query_only", "quick_check",
    "schema_version", "synchronous", "table_info", "table_list", "table_xinfo", "temp_store", "user_version",
})
_PRAGMAS_WITH_SUBJECT = frozenset({
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo", "integrity_check",
    "quick_check", "table_info", "table_list", "table_xinfo",
})
# Statements that change a database; PRAGMA query_only and mode=ro stop them too, the authorizer only
# makes the refusal come before any work (and names it).
_WRITE_ACTIONS = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE, sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE,
})


class _Authorizer:
    """SQLite's authorizer for `odyssey query`: refuses, while the statement is compiled, what would
    write a file that ``mode=ro`` and ``query_only`` do not cover (ATTACH and VACUUM INTO create a
    database at any path) and PRAGMAs that set something; remembers why, for the message."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, _db: str | None,
                 _trigger: str | None) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            # VACUUM (INTO) attaches its target first, so this refuses it as well.
            return self._refuse("ATTACH, DETACH and VACUUM are refused (they open or create database files)")
        if action == sqlite3.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name in _REPORTING_PRAGMAS and (arg2 is None or name in _PRAGMAS_WITH_SUBJECT):
                return sqlite3.SQLITE_OK
            shown = f"PRAGMA {name} = {arg2}" if arg2 is not None else f"PRAGMA {name}"
            return self._refuse(f"{shown} is refused (only PRAGMAs that report, such as PRAGMA "
                                "table_info(odyssey_trials), run)")
        if action in _WRITE_ACTIONS:
            return self._refuse(None)
        return sqlite3.SQLITE_OK

    def _refuse(self, why: str | None) -> int:
        self.refused = why
        return sqlite3.SQLITE_DENY


def _run_sqlite(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    file = sqlite_file(url)
    if file is None:  # in-memory: only the cached engine's shared connection holds the data
        return _run_sqlite_memory(url, sql, max_rows)
    require_existing_database(url)
    uri = file.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=_SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open SQLite database {file}: {exc}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # a second guard: no other database at all
        return _execute_sqlite(conn, url, sql, max_rows)
    finally:
        conn.rollback()
        conn.close()


def _run_sqlite_memory(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    with get_engine(url).connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)  # the sqlite driver: its PRAGMA and authorizer are used
        raw.execute("PRAGMA query_only = ON")
        try:
            return _execute_sqlite(raw, url, sql, max_rows)
        finally:
            raw.rollback()
            raw.execute("PRAGMA query_only = OFF")


def _execute_sqlite(conn: sqlite3.Connection, url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    authorizer = _Authorizer()
    conn.set_authorizer(authorizer)
    try:
        return _fetch(conn.execute(sql), max_rows)
    except sqlite3.Error as exc:
        if authorizer.refused is not None:
            raise StorageError(f"query refused: {authorizer.refused}") from None
        raise _query_error(exc, url) from None
    finally:
        conn.set_authorizer(None)


# Predefined roles whose members can act on the server itself, which a READ ONLY transaction does not
# stop: run programs (COPY ... TO PROGRAM), read or write its files, signal other sessions.
SERVER_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files",
                "pg_signal_backend")
_ROLE_CHECK = """
SELECT current_user, r.rolsuper,
       ARRAY(SELECT p.rolname FROM pg_roles p
             WHERE p.rolname = ANY(%s) AND pg_has_role(current_user, p.oid, 'MEMBER') ORDER BY p.rolname)
FROM pg_roles r WHERE r.rolname = current_user
"""


def _refuse_privileged_role(cursor: Any) -> None:
    """Raise OdysseyError if the session's role is a superuser or holds one of `SERVER_ROLES`."""
    cursor.execute(_ROLE_CHECK, (list(SERVER_ROLES),))
    user, superuser, roles = cursor.fetchone()
    if not (superuser or roles):
        return
    held = "is a superuser" if superuser else f"is a member of {', '.join(roles)}"
    raise StorageError(
        f"query refused: role {user!r} {held}, so a query could run programs, touch files or stop sessions "
        "on the database server; query as a read-only role instead: --storage "
        "postgresql://READER@HOST/DB or $ODYSSEY_QUERY_STORAGE (see docs/results-schema.md)")


def _run_postgres(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    import psycopg  # loaded already by the engine's dialect

    engine = get_engine(url)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)  # psycopg's own read_only and prepare=True are used
        raw.rollback()
        raw.read_only = True  # psycopg opens the next transaction with BEGIN READ ONLY
        try:
            with raw.cursor() as cursor:
                _refuse_privileged_role(cursor)
                # prepare=True uses the extended protocol, which refuses several statements in one string.
                cursor.execute(sql, prepare=True)
                return _fetch(cursor, max_rows)
        except Exception as exc:
            if not is_db_error(exc):
                raise
            if is_connection_error(exc) and not getattr(exc, "sqlstate", None):
                raise  # with_retry decides: retry an outage, translate otherwise
            raise _query_error(exc, url) from None
        finally:
            # Nothing of the session (SET, prepared statements) may leak to other users of the pool.
            with contextlib.suppress(Exception):
                raw.rollback()
            conn.invalidate()


def export(url: str | None, study: str, path: str | os.PathLike[str], format: str | None = None) -> Path:
    """Write the study's per-trial table (trials joined with their hyperparameters) to one file.

    ``format`` is csv or parquet (default: from the file's suffix, else csv). The file is written to a
    temporary name and moved into place, so a failure never leaves half a file. Returns the path.
    """
    target = Path(path)
    fmt = (format or target.suffix.lstrip(".") or "csv").lower()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: use {' or '.join(EXPORT_FORMATS)}")
    if not target.parent.exists():
        raise ConfigError(f"cannot write {target}: directory {target.parent} does not exist")
    frame = _export_frame(url, study)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the export private to its writer
        if fmt == "csv":
            frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, target)
    except OSError as exc:
        raise OdysseyError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _export_frame(url: str | None, study: str) -> pd.DataFrame:
    """The per-trial table, integer hyperparameters (hidden_size, ...) as integers, not 22.0."""
    data = load_study(url, study, with_epochs=False)
    frame = data.trials
    for name, entry in (data.spec or {}).get("space", {}).items():
        column = name if name in data.param_names else f"param_{name}"
        if isinstance(entry, dict) and entry.get("type") == "int" and column in frame:
            frame[column] = frame[column].round().astype("Int64")
    return frame


def read_export(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a file written by `export` back into a DataFrame (timestamps parsed as UTC)."""
    target = Path(path)
    if target.suffix == ".parquet":
        return pd.read_parquet(target)
    frame = pd.read_csv(target)
    for column in ("started_at", "finished_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


