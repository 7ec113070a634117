"""SQLAlchemy engines and the Optuna storage, plus retries and one-line errors for connection trouble.

Every engine is cached per URL and pings its pooled connections before use, so a database restart costs a
reconnect rather than a failed call. Errors from sqlalchemy, psycopg or Optuna are turned into one-line
`OdysseyError`s with the password masked: psycopg messages can echo the DSN, so all text is scrubbed.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from storage.urls import is_sqlite, mask_url, resolve_url, scrub, secrets_of
from sweep.core.errors import ConfigError, OdysseyError, StorageError

log = logging.getLogger(f"odyssey.{__name__}")

T = TypeVar("T")

#: seconds a PostgreSQL connection attempt may take before it counts as failed
CONNECT_TIMEOUT_S = 10
#: milliseconds SQLite waits on a locked database (many workers share one file)
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: default time budget for riding out a database outage ($ODYSSEY_DB_RETRY_SECONDS overrides)
DEFAULT_RETRY_SECONDS = 120.0

_engines: dict[str, sa.Engine] = {}
# URLs this process has connected to at least once: only then is an outage worth waiting for.
_connected: set[str] = set()
_lock = threading.Lock()

# Messages of errors that retrying cannot fix: bad credentials, missing database or role.
_PERMANENT = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "pg_hba.conf",
    "permission denied",
    "unable to open database file",
    "readonly database",
    "invalid dsn",
    "invalid connection option",
)
# Messages of errors a restart, failover or a dropped connection produces.
_TRANSIENT = (
    "connection refused",
    "could not connect",
    "connection timeout",
    "timeout expired",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "connection is closed",
    "connection is lost",
    "connection already closed",
    "consuming input failed",
    "sending query failed",
    "ssl syscall",
    "ssl connection has been closed",
    "broken pipe",
    "connection reset",
    "no connection to the server",
    "could not receive data",
    "could not send data",
    "database is locked",
    "database table is locked",
    "too many clients",
    "cannot connect now",
    "network is unreachable",
    "temporary failure in name resolution",
)


def get_engine(url: str | None) -> sa.Engine:
    """The cached engine for ``url`` (resolved with `resolve_url`); pings connections before use.

    SQLite databases run in WAL mode with a busy timeout and foreign keys on; PostgreSQL connections
    time out after `CONNECT_TIMEOUT_S` seconds.
    """
    resolved = resolve_url(url)
    with _lock:
        engine = _engines.get(resolved)
        if engine is None:
            engine = _create_engine(resolved)
            _engines[resolved] = engine
        return engine


def dispose_engine(url: str | None) -> None:
    """Close and forget the cached engine for ``url`` (no-op if none)."""
    resolved = resolve_url(url)
    with _lock:
        engine = _engines.pop(resolved, None)
    if engine is not None:
        engine.dispose()


def dispose_all() -> None:
    """Close and forget every cached engine."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _forget_after_fork() -> None:
    # A forked child must not share its parent's pooled sockets; close=False leaves the parent's intact.
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def engine_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for `sqlalchemy.create_engine` (also handed to Optuna's RDBStorage)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {
            "pool_pre_ping": True,
            "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        }
        if not sqlite_file(url):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database, not one per connection
        return kwargs
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, None for an in-memory database."""
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def require_existing_database(url: str) -> None:
    """Raise OdysseyError if ``url`` is a SQLite file that does not exist, without creating it.

    For commands that only read or work on existing studies (`odyssey query`, `odyssey worker`): opening
    a missing file would create an empty database and hide a mistyped path.
    """
    file = sqlite_file(url) if is_sqlite(url) else None
    if file is not None and not file.exists():
        raise StorageError(f"no study database at {mask_url(url)}: file {file} does not exist "
                           "(check the path, or create a study there first with `odyssey study create`)")


def _create_engine(url: str) -> sa.Engine:
    file = sqlite_file(url) if is_sqlite(url) else None
    if file is not None and not file.parent.exists():
        raise StorageError(f"cannot open SQLite database {file}: directory {file.parent} does not exist")
    engine = sa.create_engine(url, **engine_kwargs(url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    event.listen(engine, "connect", lambda *_: _connected.add(url))
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, emit BEGIN (see _sqlite_on_begin).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers (reports, `odyssey query`) run while workers write.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A write transaction takes the write lock up front (BEGIN IMMEDIATE) so that the busy timeout
    # applies; a deferred one that reads first fails at once with "database is locked" when another
    # worker wrote in between.
    immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _serialise_sqlite_transactions(engine: sa.Engine) -> None:
    # Python's sqlite3 runs a SELECT outside any transaction, so two workers can both read a trial as
    # WAITING and both mark it RUNNING: one trial trained twice. Optuna's engine gets BEGIN IMMEDIATE
    # on every transaction (its sessions are short), which makes read-then-write atomic on SQLite as
    # SELECT ... FOR UPDATE does on PostgreSQL; connections opened before this are replaced.
    engine.update_execution_options(**{SQLITE_IMMEDIATE: True})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    engine.dispose()


#: execution option: open the transaction with BEGIN IMMEDIATE on SQLite (ignored elsewhere)
SQLITE_IMMEDIATE = "odyssey_sqlite_immediate"


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction meant to write: committed on success, rolled back on error."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(**{SQLITE_IMMEDIATE: True})
        with conn.begin():
            yield conn


# Any constant unlikely to clash with an application's own advisory locks ("odyssey" in ASCII).
_OPTUNA_INIT_LOCK = 0x6F6479737365


def optuna_storage(
    url: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[..., None] | None = None,
    retry_seconds: float | None = None,
) -> Any:
    """An `optuna.storages.RDBStorage` on ``url`` whose engine pings connections before use.

    The first connection is retried for up to ``retry_seconds`` (default: $ODYSSEY_DB_RETRY_SECONDS or
    `DEFAULT_RETRY_SECONDS`) while the failure looks transient; bad credentials fail at once.
    Raises OdysseyError (password masked) when the database cannot be reached.
    """
    import optuna

    resolved = resolve_url(url)
    # Connecting through our engine first gives a clear error for a bad URL and, for SQLite, puts the
    # file in WAL mode (which persists) before Optuna opens it.
    with_retry(lambda: get_engine(resolved).connect().close(), resolved, retry_seconds=retry_seconds,
               what="connect")

    def create() -> Any:
        storage = optuna.storages.RDBStorage(
            resolved,
            engine_kwargs=engine_kwargs(resolved),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )
        if is_sqlite(resolved):
            _serialise_sqlite_transactions(storage.engine)
        return storage

    def build() -> Any:
        if not resolved.startswith("postgresql"):
            # The same race on a fresh SQLite file ("table trial_values already exists", a duplicate
            # alembic_version row): a file lock beside the database serialises the first opening.
            from storage.locks import named_lock

            with named_lock(resolved, "optuna-tables"):
                return create()
        # Optuna creates its tables check-then-create: workers opening a fresh PostgreSQL database
        # together collide on its catalogue ("relation already exists"). A session advisory lock
        # serialises the first opening; later ones find the tables and pass through quickly.
        with get_engine(resolved).connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _OPTUNA_INIT_LOCK})
            try:
                return create()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _OPTUNA_INIT_LOCK})
                conn.commit()

    return with_retry(build, resolved, retry_seconds=retry_seconds, what="open the Optuna storage")


# --------------------------------------------------------------------------------------------- errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        current = current.__cause__ or current.__context__


def root_message(exc: BaseException) -> str:
    """The most specific driver message in the chain, reduced to its informative first line."""
    best = exc
    for item in _chain(exc):
        if not isinstance(item, sa_exc.SQLAlchemyError) and type(item).__module__.split(".")[0] in (
            "psycopg",
            "sqlite3",
            "psycopg2",
        ):
            best = item
            break
        best = item
    text = str(best) or type(best).__name__
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # libpq puts the useful part after "FATAL:" / "failed:"; prefer the line that carries it.
    fallback = lines[0] if lines else type(best).__name__
    line = next((x for x in lines if "FATAL" in x or "failed" in x), fallback)
    for marker in ("FATAL:", "ERROR:"):
        if marker in line:
            line = line.split(marker, 1)[1]
    if "failed:" in line:
        line = line.rsplit("failed:", 1)[1] or line
    line = line.replace("(Background on this error at", "").strip(" .:")
    if line.startswith("(") and ")" in line:  # "(psycopg.OperationalError) ..." from sqlalchemy
        line = line.split(")", 1)[1].strip()
    line = " ".join(line.split())
    return line or type(best).__name__


def _messages(exc: BaseException) -> str:
    return " | ".join(str(item).lower() for item in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like an outage that waiting can fix (restart, dropped connection, lock)."""
    for item in _chain(exc):
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
    if not any(
        isinstance(item, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError))
        or type(item).__name__ in ("OperationalError", "InterfaceError", "StorageInternalError")
        for item in _chain(exc)
    ):
        return False
    text = _messages(exc)
    if any(marker in text for marker in _PERMANENT if marker != "does not exist") or (
        "does not exist" in text and ("database" in text or "role" in text)
    ):
        return False
    return any(marker in text for marker in _TRANSIENT)


def _is_lock(exc: BaseException) -> bool:
    return "database is locked" in _messages(exc) or "database table is locked" in _messages(exc)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about reaching or logging into the database (rather than a bad statement)."""
    if isinstance(exc, OdysseyError):
        return False
    # A PostgreSQL error that carries a SQLSTATE says what it is: only class 08 (connection exception)
    # and 28 (invalid authorization) are about reaching the database; a bad statement ("relation
    # connections does not exist") must not read as one because its text mentions "connect".
    sqlstate = next((s for s in (getattr(item, "sqlstate", None) for item in _chain(exc)) if s), None)
    if sqlstate:
        return sqlstate[:2] in ("08", "28") or sqlstate in ("57P01", "57P02", "57P03", "3D000")
    text = _messages(exc)
    if "is locked" in text:  # SQLite contention: connected fine, the file was busy
        return False
    return is_transient(exc) or any(
        marker in text
        for marker in ("password authentication", "no password supplied", "pg_hba.conf", "connect",
                       "resolve host", "name or service not known")
    )


def translate(exc: BaseException, url: str, action: str | None = None) -> OdysseyError:
    """A one-line OdysseyError describing ``exc`` with ``url`` masked and no password anywhere."""
    if isinstance(exc, OdysseyError):
        return exc
    secrets = secrets_of(url)
    reason = scrub(root_message(exc), secrets)
    masked = mask_url(url)
    if is_connection_error(exc):
        return StorageError(f"cannot connect to {masked}: {reason}")
    return StorageError(f"database error on {masked}" + (f" ({action})" if action else "") + f": {reason}")


@contextmanager
def translated(url: str, action: str | None = None) -> Iterator[None]:
    """Turn database errors raised inside the block into one-line OdysseyErrors."""
    try:
        yield
    except OdysseyError:
        raise
    except Exception as exc:
        if not is_db_error(exc):
            raise
        raise translate(exc, url, action) from None


def is_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) comes from the database layer: sqlalchemy, a driver or Optuna's RDB."""
    for item in _chain(exc):
        module = type(item).__module__.split(".")[0]
        if isinstance(item, sa_exc.SQLAlchemyError) or module in ("psycopg", "sqlite3", "psycopg2"):
            return True
        if type(item).__name__ == "StorageInternalError":
            return True
    return False


def connect_wait() -> float:
    """Seconds to wait for a database this process has never reached ($ODYSSEY_DB_CONNECT_WAIT, default 0).

    A wrong URL or port should fail at once; containers that start before their database set this.
    """
    raw = os.environ.get("ODYSSEY_DB_CONNECT_WAIT")
    if not raw:
        return 0.0
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ConfigError(f"ODYSSEY_DB_CONNECT_WAIT must be a number of seconds, got {raw!r}") from None


def retry_budget(retry_seconds: float | None = None) -> float:
    """Seconds to keep retrying: the argument, else $ODYSSEY_DB_RETRY_SECONDS, else the default."""
    if retry_seconds is not None:
        return max(0.0, retry_seconds)
    raw = os.environ.get("ODYSSEY_DB_RETRY_SECONDS")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise ConfigError(f"ODYSSEY_DB_RETRY_SECONDS must be a number of seconds, got {raw!r}") from None
    return DEFAULT_RETRY_SECONDS


def with_retry(
    fn: Callable[[], T],
    url: str | None,
    *,
    retry_seconds: float | None = None,
    what: str = "database call",
    base_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T:
    """Call ``fn()``, retrying with exponential backoff (and jitter) while its errors look transient.

    ``fn`` must be safe to repeat (each call runs in its own transaction). Gives up after
    ``retry_seconds`` (see `retry_budget`) and raises a one-line OdysseyError; permanent errors (wrong
    password, missing database) and non-database errors are raised at once, and so is an outage of a
    database this process never reached, unless $ODYSSEY_DB_CONNECT_WAIT allows waiting for it.
    """
    url = resolve_url(url)  # callers may pass a URL as the user typed it
    budget = retry_budget(retry_seconds)
    start = time.monotonic()
    deadline = start + budget
    delay = base_delay
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except OdysseyError:
            raise
        except Exception as exc:
            if not is_db_error(exc):
                raise
            now = time.monotonic()
            remaining = deadline - now
            if url not in _connected and not (is_sqlite(url) and _is_lock(exc)):
                # A server never reached is most likely a wrong URL: fail fast. A locked SQLite file is
                # another process opening it at the same moment (its WAL switch does not wait on the
                # busy timeout): always worth waiting for.
                remaining = min(remaining, start + connect_wait() - now)
            if not is_transient(exc) or remaining <= 0:
                raise translate(exc, url, what) from None
            pause = min(delay, max_delay, remaining) * (0.5 + random.random() / 2)
            log.warning(
                "%s on %s failed (attempt %d: %s); retrying in %.1fs",
                what,
                mask_url(url),
                attempt,
                scrub(root_message(exc), secrets_of(url)),
                pause,
            )
            time.sleep(pause)
            delay *= 2


def check_connection(url: str | None, retry_seconds: float | None = 0.0) -> None:
    """Connect once to ``url``; raise a one-line OdysseyError if that is impossible."""
    resolved = resolve_url(url)

    def ping() -> None:
        with get_engine(resolved).connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    with_retry(ping, resolved, retry_seconds=retry_seconds, what="connect")
