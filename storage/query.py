"""Read-only SQL over the results database, and export of a study's per-trial table.

`run_readonly` is read-only for real, not by inspecting the SQL: PostgreSQL runs it in a READ ONLY
transaction that is rolled back, SQLite opens the file with ``mode=ro`` and ``PRAGMA query_only``. Both
accept one statement only, so "SELECT 1; COMMIT; DROP ..." cannot escape the read-only transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from storage.engine import (
    get_engine,
    is_connection_error,
    is_db_error,
    root_message,
    sqlite_file,
    translate,
    with_retry,
)
from storage.errors import OdysseyError
from storage.results import READ_RETRY_SECONDS, load_study
from storage.urls import is_sqlite, mask_url, resolve_url, scrub, secrets_of

EXPORT_FORMATS = ("csv", "parquet")
_READONLY_REFUSAL = (
    "query refused: the results database is opened read-only (only SELECT-like statements run)"
)
_SQLITE_BUSY_TIMEOUT_S = 30.0


def run_readonly(url: str | None, sql: str, max_rows: int | None = None) -> pd.DataFrame:
    """Run one SQL statement on the results database without any chance of changing it.

    A statement that writes raises OdysseyError("query refused: the results database is opened
    read-only ..."); a SQL error raises a one-line OdysseyError. ``max_rows`` caps the rows fetched.
    """
    if not isinstance(sql, str) or not sql.strip().rstrip(";").strip():
        raise OdysseyError("query refused: the SQL statement is empty")
    resolved = resolve_url(url)
    if is_sqlite(resolved):
        return _run_sqlite(resolved, sql, max_rows)
    return with_retry(lambda: _run_postgres(resolved, sql, max_rows), resolved, what="run a query",
                      retry_seconds=READ_RETRY_SECONDS)


def _frame(description: Any, rows: list[Any]) -> pd.DataFrame:
    columns = [getattr(d, "name", None) or d[0] for d in description]
    return pd.DataFrame.from_records(rows, columns=columns)


def _query_error(exc: BaseException, url: str) -> OdysseyError:
    text = " ".join(str(item) for item in (exc, getattr(exc, "__cause__", None)) if item).lower()
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    if sqlstate == "25006" or "readonly database" in text or "read-only transaction" in text:
        return OdysseyError(_READONLY_REFUSAL)
    if "one statement at a time" in text or "multiple commands" in text:
        return OdysseyError("query refused: run one SQL statement at a time")
    if is_connection_error(exc) and not isinstance(exc, sqlite3.Error):
        return translate(exc, url, "run a query")
    return OdysseyError(f"query failed: {scrub(root_message(exc), secrets_of(url))}")


def _fetch(cursor: Any, max_rows: int | None) -> pd.DataFrame:
    if cursor.description is None:  # a statement without a result (e.g. SET): nothing to show
        return pd.DataFrame()
    rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
    return _frame(cursor.description, rows)


def _run_sqlite(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    file = sqlite_file(url)
    if file is None:  # in-memory: only the cached engine's shared connection holds the data
        return _run_sqlite_memory(url, sql, max_rows)
    if not file.exists():
        raise OdysseyError(f"no results database at {mask_url(url)} (file {file} does not exist)")
    uri = file.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=_SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise OdysseyError(f"cannot open SQLite database {file}: {exc}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        cursor = conn.execute(sql)
        return _fetch(cursor, max_rows)
    except sqlite3.Error as exc:
        raise _query_error(exc, url) from None
    finally:
        conn.rollback()
        conn.close()


def _run_sqlite_memory(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    with get_engine(url).connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.execute("PRAGMA query_only = ON")
        try:
            return _fetch(raw.execute(sql), max_rows)
        except sqlite3.Error as exc:
            raise _query_error(exc, url) from None
        finally:
            raw.rollback()
            raw.execute("PRAGMA query_only = OFF")


def _run_postgres(url: str, sql: str, max_rows: int | None) -> pd.DataFrame:
    engine = get_engine(url)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.rollback()
        raw.read_only = True  # psycopg opens the next transaction with BEGIN READ ONLY
        try:
            with raw.cursor() as cursor:
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
        raise OdysseyError(f"unknown export format {fmt!r}: use {' or '.join(EXPORT_FORMATS)}")
    if not target.parent.exists():
        raise OdysseyError(f"cannot write {target}: directory {target.parent} does not exist")
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


