"""The versioned results schema: migrations equal the models, old databases are upgraded, never misread.

`tests/data/release-0.1.0.db` was written by release 0.1.0 (commit a0edbbf: `odyssey study create
examples/synthetic-tiny.toml` and one `odyssey worker`, 12 complete trials): a real database of the
release before versioning, with no version table.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import schema_version
from storage.engine import dispose_engine, get_engine
from storage.results import load_study
from storage.schema import VERSION_TABLE, create_schema, forget_created, metadata, schema_lock

RELEASE_DB = Path(__file__).parent / "data" / "release-0.1.0.db"
ROOT = Path(__file__).resolve().parents[1]

# A later revision used only by these tests: it adds a column, so the upgrade path runs a real ALTER.
EXTRA_REVISION = '''
"""test-only: a note per study"""
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("odyssey_studies") as batch:
        batch.add_column(sa.Column("note", sa.String(64), nullable=True))


def downgrade():
    with op.batch_alter_table("odyssey_studies") as batch:
        batch.drop_column("note")
'''


def _odyssey(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sweep.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _version_row(url: str) -> list[str]:
    with get_engine(url).connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))]


@pytest.fixture
def release_db(tmp_path: Path) -> str:
    target = tmp_path / "release.db"
    shutil.copy(RELEASE_DB, target)
    url = f"sqlite:///{target}"
    yield url
    dispose_engine(url)


@pytest.fixture
def extra_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the migrations at a copy of the real ones plus the test-only revision 9001."""
    location = tmp_path / "migrations"
    shutil.copytree(schema_version._LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
    head = schema_version.head_revision()
    (location / "versions" / "9001_note.py").write_text(EXTRA_REVISION.format(head=head))
    monkeypatch.setattr(schema_version, "_LOCATION", location)
    return head


def _diffs(url: str) -> list:
    def ours(obj, name, type_, reflected, compare_to):  # noqa: ANN001 - alembic's hook signature
        if type_ == "table":
            return name.startswith("odyssey_") and name != VERSION_TABLE
        return True

    with get_engine(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": ours, "compare_type": True})
        return compare_metadata(ctx, metadata)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrations_create_exactly_the_tables_of_storage_schema(backend: str, request) -> None:
    """Adding a column to storage/schema.py without a revision fails here."""
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    create_schema(get_engine(url))
    assert _version_row(url) == [schema_version.head_revision()]
    assert _diffs(url) == []


def test_release_0_1_0_database_opens_with_its_data_and_gets_a_version(release_db: str) -> None:
    data = load_study(release_db, "synthetic-tiny")
    assert len(data.trials) == 12 and set(data.trials["state"]) == {"complete"}
    assert data.trials["best_valid"].notna().all() and len(data.epochs) > 0
    result = _odyssey("db", "upgrade", "--storage", release_db)
    assert result.returncode == 0, result.stderr
    assert "current (revision 0001)" in result.stdout
    assert _version_row(release_db) == [schema_version.head_revision()]
    again = load_study(release_db, "synthetic-tiny")
    assert again.trials.equals(data.trials)
    assert _diffs(release_db) == []


def test_an_older_database_is_refused_until_odyssey_db_upgrade(release_db: str, extra_revision: str) -> None:
    def rows() -> list:
        with get_engine(release_db).connect() as conn:
            return conn.execute(sa.text("SELECT * FROM odyssey_trials ORDER BY slot")).all()

    before = rows()
    forget_created(get_engine(release_db))
    with pytest.raises(schema_version.SchemaOutdatedError, match=r"odyssey db upgrade") as err:
        create_schema(get_engine(release_db))
    assert "\n" not in str(err.value) and "revision 0001, older than this release's 9001" in str(err.value)
    with pytest.raises(schema_version.SchemaOutdatedError):
        load_study(release_db, "synthetic-tiny")

    assert schema_version.upgrade_database(release_db) == ("0001", "9001")
    assert _version_row(release_db) == ["9001"]
    with get_engine(release_db).connect() as conn:
        assert "note" in {c["name"] for c in sa.inspect(conn).get_columns("odyssey_studies")}
    create_schema(get_engine(release_db))  # now current: opens
    assert len(load_study(release_db, "synthetic-tiny").trials) == 12
    assert rows() == before
    assert schema_version.upgrade_database(release_db) == ("9001", "9001")  # idempotent


def test_postgres_release_tables_are_upgraded_in_place(pg_url: str, extra_revision: str) -> None:
    # The 0.1.0 release's tables as it created them (revision 0001 is their frozen copy), no version table.
    engine = get_engine(pg_url)
    with schema_lock(engine) as conn:
        from alembic import command

        command.upgrade(schema_version._config(conn), "0001")
        conn.execute(sa.text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(sa.text("INSERT INTO odyssey_studies (name, dataset, spec, created_at) "
                             "VALUES ('s', 'jsb', '{}', now())"))
    with pytest.raises(schema_version.SchemaOutdatedError, match="odyssey db upgrade"):
        create_schema(engine)
    assert schema_version.upgrade_database(pg_url) == ("0001", "9001")
    create_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name, note FROM odyssey_studies")).all() == [("s", None)]


def test_a_database_of_a_newer_release_is_refused_in_one_line(release_db: str) -> None:
    with get_engine(release_db).begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {VERSION_TABLE} VALUES ('7777')"))
    dispose_engine(release_db)
    for args in (["study", "status", "synthetic-tiny"], ["db", "upgrade"]):
        result = _odyssey(*args, "--storage", release_db)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "newer lstm-odyssey" in lines[0] and "Traceback" not in result.stderr
    assert _version_row(release_db) == ["7777"]  # nothing was changed


def test_concurrent_first_opens_create_the_schema_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = ("import sys; from storage.engine import get_engine; from storage.schema import create_schema; "
            "create_schema(get_engine(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert _version_row(url) == [schema_version.head_revision()]
    dispose_engine(url)


def test_the_migrations_are_read_once_per_location(extra_revision: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every database open checks the revision: the migration scripts are read once per process, and a
    second location (here the test copy with revision 9001) is read on its own."""
    from alembic.script import ScriptDirectory

    reads: list[str] = []
    real = ScriptDirectory.from_config

    def counted(cfg, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - alembic's signature
        reads.append(cfg.get_main_option("script_location"))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(ScriptDirectory, "from_config", counted)
    copy = schema_version._LOCATION
    for _ in range(3):
        assert schema_version.head_revision() == "9001"
        assert schema_version._known(extra_revision) and not schema_version._known("9002")
    monkeypatch.setattr(schema_version, "_LOCATION", Path(schema_version.__file__).with_name("migrations"))
    for _ in range(3):
        assert schema_version.head_revision() == extra_revision  # the real head, read before the copy
    assert reads == [str(copy)]
