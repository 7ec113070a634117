"""The results tables, kept beside Optuna's in the same database (all prefixed ``odyssey_``).

These definitions are the current (head) revision of the versioned schema: a change here needs a new
alembic revision in `storage/migrations/versions` (a test compares the two), and databases are brought up
by `odyssey db upgrade` (`storage.schema_version`).

One row per *designed* trial, keyed by (study, slot): the study creator numbers each designed trial and a
re-run after a crash keeps its slot, so results overwrite rather than duplicate. Hyperparameters are
typed key/value rows so that new hyperparameters need no migration. See docs/results-schema.md.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from sweep.core.states import ResultState

metadata = sa.MetaData()
#: alembic's version table for the results schema (Optuna's own is `alembic_version`)
VERSION_TABLE = "odyssey_alembic_version"

ERROR_MAX_CHARS = 500


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps no zone itself)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


Double = sa.Double

studies = sa.Table(
    "odyssey_studies",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("dataset", sa.String(64)),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

trials = sa.Table(
    "odyssey_trials",
    metadata,
    sa.Column("study", sa.String(255), sa.ForeignKey("odyssey_studies.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trial_number", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dataset", sa.String(64)),
    sa.Column("variant", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default=ResultState.WAITING.value),
    sa.Column("diverged", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("best_valid", Double),
    sa.Column("best_test", Double),
    sa.Column("final_valid", Double),
    sa.Column("final_test", Double),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("epochs", sa.Integer),
    sa.Column("seconds", Double),
    sa.Column("n_params", sa.BigInteger),
    sa.Column("host", sa.String(255)),
    sa.Column("device", sa.String(64)),
    sa.Column("seed", sa.BigInteger),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("error", sa.String(ERROR_MAX_CHARS)),
    # The same SQL text as revision 0001's: state IN ('waiting', 'running', 'complete', 'failed', 'diverged')
    sa.CheckConstraint(f"state IN ({', '.join(repr(s.value) for s in ResultState)})",
                       name="odyssey_trials_state"),
)
sa.Index("odyssey_trials_study_state", trials.c.study, trials.c.state)

params = sa.Table(
    "odyssey_params",
    metadata,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", Double),
    sa.ForeignKeyConstraint(
        ["study", "slot"], ["odyssey_trials.study", "odyssey_trials.slot"], ondelete="CASCADE"
    ),
)

epochs = sa.Table(
    "odyssey_epochs",
    metadata,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("train_loss", Double),
    sa.Column("valid_metric", Double),
    sa.Column("test_metric", Double),
    sa.Column("seconds", Double),
    sa.ForeignKeyConstraint(
        ["study", "slot"], ["odyssey_trials.study", "odyssey_trials.slot"], ondelete="CASCADE"
    ),
)

TABLES = (studies, trials, params, epochs)
# Serialises schema creation among PostgreSQL sessions (workers racing to start).
_ADVISORY_KEY = zlib.crc32(b"odyssey_schema")
_created: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_created_lock = threading.Lock()


@contextmanager
def schema_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction holding the lock that serialises schema creation and upgrades among processes.

    PostgreSQL: a transaction-level advisory lock (DDL is transactional there, so check-then-create is
    atomic). SQLite: BEGIN IMMEDIATE, the database's write lock.
    """
    from storage.engine import write_transaction  # engine imports nothing of the schema; keep it so

    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
            yield conn
    else:
        with write_transaction(engine) as conn:
            yield conn


def create_schema(engine: sa.Engine) -> None:
    """Create the results tables at the head revision if missing, else check their revision.

    Idempotent and safe with many processes racing. Raises `storage.schema_version.SchemaOutdatedError`
    (run `odyssey db upgrade`) or `SchemaTooNewError` for a database of another release.
    """
    from storage import schema_version  # alembic is imported only by processes that open a database

    if engine in _created:
        return
    with _created_lock:
        if engine in _created:
            return
        with schema_lock(engine) as conn:
            schema_version.ensure_current(conn, engine.url.render_as_string(hide_password=True))
        _created.add(engine)


def schema_exists(conn: sa.Connection) -> bool:
    """Whether the results tables exist in the database behind ``conn``."""
    return sa.inspect(conn).has_table(trials.name)


def forget_created(engine: sa.Engine) -> None:
    """Forget that the schema was created through ``engine`` (for tests that drop the tables)."""
    _created.discard(engine)
