"""Read-only queries, export, and the `odyssey query` / `odyssey export` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from storage import results
from storage.engine import dispose_engine
from storage.query import export, read_export, run_readonly
from sweep.cli.main import main
from sweep.core.errors import OdysseyError

PASSWORD = "Tst-pw-9f3Kq"  # tests/conftest.py's PostgreSQL password
SPEC = {"dataset": "jsb", "space": {"learning_rate": {"low": 1e-6, "high": 1e-2}, "momentum": {}}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A results database (SQLite file or fresh PostgreSQL) holding study 'demo' with two trials; the URL
    queries use (on PostgreSQL the read-only role of the compose set-up; the data is written as the
    application role).

    Shared by the module's tests: none of them may change it (that is what they check).
    """
    if request.param == "sqlite":
        url = reader = f"sqlite:///{tmp_path_factory.mktemp('query') / 'results.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        server.start()
        admin = server.create_database()
        url, reader = request.getfixturevalue("compose_roles")(admin)
    results.register_study(url, "demo", SPEC)
    results.record_designed_trials(url, "demo", [
        {"slot": 0, "variant": "V", "seed": 1, "params": {"learning_rate": 1e-3, "momentum": 0.9}},
        {"slot": 1, "variant": "NFG", "seed": 2, "params": {"learning_rate": 1e-4, "momentum": 0.99}},
    ])
    results.record_trial_started(url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_epoch(url, "demo", 0, 1, 1.0, 2.0, 3.0, 0.1)
    results.record_trial_finished(url, "demo", 0, "complete",
                                  {"best_valid": 2.0, "best_test": 3.0, "epochs": 1, "n_params": 42})
    yield reader
    dispose_engine(url)
    dispose_engine(reader)
    if request.param == "postgres":
        server.drop_database(admin)


def _snapshot(url: str) -> dict[str, str]:
    return {table: run_readonly(url, f"SELECT * FROM {table} ORDER BY 1, 2").to_json(date_format="iso")
            for table in ("odyssey_studies", "odyssey_trials", "odyssey_params", "odyssey_epochs")}


def test_select_returns_a_frame(filled: str) -> None:
    frame = run_readonly(filled, "SELECT slot, variant, best_valid FROM odyssey_trials ORDER BY slot")
    assert list(frame.columns) == ["slot", "variant", "best_valid"]
    assert frame["variant"].tolist() == ["V", "NFG"] and frame["best_valid"].iloc[0] == 2.0
    assert len(run_readonly(filled, "SELECT * FROM odyssey_params", max_rows=3)) == 3


@pytest.mark.parametrize("sql", [
    "INSERT INTO odyssey_params (study, slot, name, value) VALUES ('demo', 0, 'x', 1)",
    "UPDATE odyssey_trials SET best_valid = 0",
    "DELETE FROM odyssey_epochs",
    "DROP TABLE odyssey_params",
    "CREATE TABLE sneaky (a INTEGER)",
])
def test_writes_are_refused_and_nothing_changes(filled: str, sql: str) -> None:
    before = _snapshot(filled)
    with pytest.raises(OdysseyError) as info:
        run_readonly(filled, sql)
    assert str(info.value).startswith("query refused: the results database is opened read-only")
    assert _snapshot(filled) == before


@pytest.mark.parametrize("sql", ["SELECT 1; DELETE FROM odyssey_epochs",
                                 "COMMIT; DELETE FROM odyssey_epochs"])
def test_several_statements_cannot_escape_read_only(filled: str, sql: str) -> None:
    before = _snapshot(filled)
    with pytest.raises(OdysseyError, match="query refused"):
        run_readonly(filled, sql)
    assert _snapshot(filled) == before


def test_sql_errors_are_one_line(filled: str) -> None:
    with pytest.raises(OdysseyError) as info:
        run_readonly(filled, "SELECT no_such_column FROM odyssey_trials")
    assert str(info.value).startswith("query failed:") and "no_such_column" in str(info.value)
    assert "\n" not in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(OdysseyError, match="empty"):
        run_readonly(filled, "  ;")
    # a missing table whose name mentions "connect" is still a query error, not a connection problem
    with pytest.raises(OdysseyError, match="^query failed:"):
        run_readonly(filled, "SELECT * FROM connections")


def test_query_on_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path) -> None:
    with pytest.raises(OdysseyError, match="does not exist"):
        run_readonly(f"sqlite:///{tmp_path / 'none.db'}", "SELECT 1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(filled: str, tmp_path, fmt: str) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    path = export(filled, "demo", tmp_path / f"demo.{fmt}")
    back = read_export(path)
    expected = results.trials_dataframe(filled, "demo")
    assert list(back.columns) == list(expected.columns)
    assert back["variant"].tolist() == ["V", "NFG"]
    assert back["momentum"].tolist() == [0.9, 0.99] and back["learning_rate"].tolist() == [1e-3, 1e-4]
    assert back["best_test"].iloc[0] == 3.0 and pd.isna(back["best_test"].iloc[1])
    assert back["started_at"].iloc[0] == expected["started_at"].iloc[0]
    assert [p.name for p in tmp_path.iterdir()] == [f"demo.{fmt}"]  # no temporary file left behind


def test_export_errors(filled: str, tmp_path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    with pytest.raises(OdysseyError, match="study 'ghost' not found"):
        export(filled, "ghost", tmp_path / "g.csv")
    with pytest.raises(OdysseyError, match="unknown export format 'xlsx'"):
        export(filled, "demo", tmp_path / "g.xlsx")
    with pytest.raises(OdysseyError, match="does not exist"):
        export(filled, "demo", tmp_path / "missing" / "g.csv")
    not_a_folder = tmp_path.parent / "file"
    not_a_folder.write_text("")
    with pytest.raises(OdysseyError, match="cannot write"):
        export(filled, "demo", not_a_folder / "g.csv")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ CLI


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_cli_query_formats(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT slot, variant FROM odyssey_trials ORDER BY slot"
    code, out, _ = _cli(["query", sql, "--storage", filled, "--format", "json"], capsys)
    assert code == 0 and json.loads(out) == [{"slot": 0, "variant": "V"}, {"slot": 1, "variant": "NFG"}]
    code, out, _ = _cli(["query", sql, "--storage", filled, "--format", "csv"], capsys)
    assert code == 0 and out.splitlines() == ["slot,variant", "0,V", "1,NFG"]
    code, out, err = _cli(["query", sql, "--storage", filled], capsys)
    assert code == 0 and "variant" in out and "NFG" in out and "(2 rows)" in err


def test_cli_query_uses_environment_storage(filled: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ODYSSEY_STORAGE", filled)
    code, out, _ = _cli(["query", "SELECT COUNT(*) AS n FROM odyssey_trials", "--format", "csv"], capsys)
    assert (code, out.splitlines()) == (0, ["n", "2"])


def test_cli_query_errors_are_one_line(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["query", "DELETE FROM odyssey_trials", "--storage", filled], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: query refused") and err.count("\n") == 1
    code, _, err = _cli(["query", "SELECT 1", "--storage", "mysql://u:hunter2@h/db"], capsys)
    assert code == 1 and "unsupported storage URL scheme" in err and "hunter2" not in err
    assert len(run_readonly(filled, "SELECT * FROM odyssey_trials")) == 2


def test_cli_export(filled: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.parquet"
    code, _, err = _cli(["export", "demo", "--storage", filled, "-o", str(target)], capsys)
    assert code == 0 and str(target) in err
    assert read_export(target)["slot"].tolist() == [0, 1]
    code, _, err = _cli(["export", "demo", "--storage", filled, "--format", "csv", "-o", str(tmp_path / "t")],
                        capsys)
    assert code == 0 and read_export(tmp_path / "t")["slot"].tolist() == [0, 1]
    code, _, err = _cli(["export", "ghost", "--storage", filled, "-o", str(tmp_path / "g.csv")], capsys)
    assert code == 1 and err.startswith("error: study 'ghost' not found") and PASSWORD not in err


def test_cli_wrong_password_exits_without_traceback(pg_server) -> None:
    wrong = pg_server.url.replace(PASSWORD, "Bad-pw-77x")
    done = subprocess.run([sys.executable, "-m", "sweep.cli.main", "query", "SELECT 1", "--storage", wrong],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: cannot connect to postgresql+psycopg://odyssey:***@127.0.0.1")
    assert "password authentication failed" in done.stderr
    assert "Traceback" not in done.stderr and "Bad-pw-77x" not in done.stderr and done.stderr.count("\n") == 1


def test_cli_query_entry_point_succeeds_without_importing_torch(sqlite_url: str) -> None:
    results.register_study(sqlite_url, "demo", SPEC)
    probe = ("import atexit, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
             "from sweep.cli.main import main; main(sys.argv[1:])")
    args = ["query", "SELECT name FROM odyssey_studies", "--storage", sqlite_url, "--format", "csv"]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["name", "demo", "torch loaded: False"]


# ----------------------------------------------------------------------- nothing anywhere (issue 10)


def test_duplicate_column_names_are_shown(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT state, count(*), count(DISTINCT slot) FROM odyssey_trials GROUP BY state ORDER BY state"
    frame = run_readonly(filled, sql)
    assert list(frame.columns)[1:] in (["count", "count_2"], ["count(*)", "count(DISTINCT slot)"])
    same = run_readonly(filled, "SELECT slot AS x, variant AS x, seed AS x FROM odyssey_trials ORDER BY slot")
    assert list(same.columns) == ["x", "x_2", "x_3"] and same["x_2"].tolist() == ["V", "NFG"]
    for fmt in ("table", "csv", "json"):
        code, out, err = _cli(["query", sql.replace("DISTINCT slot", "*"), "--storage", filled,
                               "--format", fmt], capsys)
        assert code == 0 and "complete" in out and "Traceback" not in err, err


@pytest.fixture
def sqlite_db(sqlite_url: str, tmp_path) -> str:
    results.register_study(sqlite_url, "demo", SPEC)
    dispose_engine(sqlite_url)
    return sqlite_url


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("sql", ["ATTACH DATABASE '{new}' AS x", "VACUUM INTO '{new}'", "VACUUM",
                                 "ATTACH DATABASE 'file:{new}?mode=rwc' AS x"])
def test_sqlite_query_creates_no_file_anywhere(sqlite_db: str, tmp_path, sql: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    new = elsewhere / "new.db"
    before = _files(tmp_path)
    with pytest.raises(OdysseyError) as info:
        run_readonly(sqlite_db, sql.format(new=new))
    assert str(info.value).startswith("query refused: ATTACH, DETACH and VACUUM are refused")
    assert not new.exists() and _files(elsewhere) == [] and _files(tmp_path) == before


@pytest.mark.parametrize("sql", ["PRAGMA journal_mode = DELETE", "PRAGMA journal_mode=WAL",
                                 "PRAGMA query_only = 0", "PRAGMA user_version = 7",
                                 "PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA optimize"])
def test_sqlite_pragmas_that_set_are_refused_in_one_line(sqlite_db: str, sql: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["query", sql, "--storage", sqlite_db], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: query refused: PRAGMA ") and "disk I/O" not in err
    assert run_readonly(sqlite_db, "PRAGMA user_version")["user_version"].tolist() == [0]
    assert run_readonly(sqlite_db, "PRAGMA journal_mode")["journal_mode"].tolist() == ["wal"]


def test_sqlite_reporting_pragmas_still_run(sqlite_db: str) -> None:
    assert "study" in run_readonly(sqlite_db, "PRAGMA table_info(odyssey_trials)")["name"].tolist()
    listed = run_readonly(sqlite_db, "SELECT name FROM pragma_table_info('odyssey_trials')")
    assert "study" in listed["name"].tolist()
    assert run_readonly(sqlite_db, "PRAGMA integrity_check").iloc[0, 0] == "ok"


# PostgreSQL: statements that act on the server itself, which a READ ONLY transaction does not stop.
def _server_actions(marker: str) -> list[str]:
    return [f"COPY (SELECT 1) TO PROGRAM 'cat > {marker}'", f"COPY (SELECT 1) TO '{marker}'",
            "SELECT pg_read_file('PG_VERSION')", "SELECT pg_reload_conf()",
            "SELECT pg_ls_dir('.')", "SELECT lo_import('/etc/hostname')"]


@pytest.fixture
def marker() -> Iterator[Path]:
    # In /tmp: the server may run as another OS user, which can write there.
    path = Path(tempfile.gettempdir()) / f"odyssey-query-{uuid.uuid4().hex}"
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.postgres
def test_postgres_query_refuses_a_superuser_before_running_anything(
    pg_url: str, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    # The test server's role is a superuser, like the image's POSTGRES_USER: it can run programs there.
    with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"COPY (SELECT 1) TO PROGRAM 'cat > {marker}'")
    assert marker.exists()
    marker.unlink()
    for sql in [*_server_actions(marker), "SELECT 1"]:
        code, out, err = _cli(["query", sql, "--storage", pg_url], capsys)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("error: query refused: role 'odyssey' is a superuser")
        assert "$ODYSSEY_QUERY_STORAGE" in err and PASSWORD not in err
    assert not marker.exists()


@pytest.mark.postgres
def test_postgres_query_refuses_members_of_server_roles(pg_server, pg_url: str, compose_roles) -> None:  # noqa: ANN001
    from sqlalchemy.engine import make_url

    _, reader = compose_roles(pg_url)
    name = make_url(reader).username
    for role in ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files",
                 "pg_signal_backend"):
        pg_server.admin(f'GRANT {role} TO "{name}"')
        try:
            with pytest.raises(OdysseyError, match=f"^query refused: role '{name}' is a member of {role},"):
                run_readonly(reader, "SELECT 1")
        finally:
            pg_server.admin(f'REVOKE {role} FROM "{name}"')
            dispose_engine(reader)
    assert run_readonly(reader, "SELECT 1 AS one")["one"].tolist() == [1]


@pytest.mark.postgres
def test_db_init_hands_the_tables_to_an_unprivileged_application_role(
    pg_url: str, compose_roles  # noqa: ANN001
) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    # A database initialised before the roles existed: its tables belong to the superuser.
    from storage.engine import optuna_storage

    optuna_storage(pg_url)
    dispose_engine(pg_url)
    compose_roles(pg_url)
    app, reader = compose_roles(pg_url)  # twice: db-init runs at every `up`
    admin = pg_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin) as conn:
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        roles = dict(conn.execute(
            "SELECT rolname, rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls FROM pg_roles "
            "WHERE rolname IN (%s, %s)", (make_url(app).username, make_url(reader).username)).fetchall())
    assert owners == [(make_url(app).username,)]
    assert roles == {make_url(app).username: False, make_url(reader).username: False}
    results.register_study(app, "demo", SPEC)  # the application role works on its tables
    assert run_readonly(reader, "SELECT count(*) AS n FROM odyssey_studies")["n"].tolist() == [1]
    # The read-only role reads even outside `odyssey query`, and cannot write there either.
    with psycopg.connect(reader.replace("postgresql+psycopg", "postgresql")) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM odyssey_studies")
    dispose_engine(app)
    dispose_engine(reader)


@pytest.mark.postgres
def test_postgres_compose_reader_cannot_act_on_the_server(pg_url: str, compose_roles, marker: Path,  # noqa: ANN001
                                                          capsys, monkeypatch) -> None:  # noqa: ANN001
    import psycopg
    from sqlalchemy.engine import make_url

    app, reader = compose_roles(pg_url)
    parsed = make_url(reader)
    # As `docker compose run --rm cli query ...` runs it: the reader's URL and password from the environment.
    without_password = parsed.set(password=None).render_as_string(hide_password=False)
    monkeypatch.setenv("ODYSSEY_QUERY_STORAGE", without_password)
    monkeypatch.setenv("ODYSSEY_QUERY_PASSWORD", parsed.password)
    monkeypatch.setenv("ODYSSEY_STORAGE", app)
    for sql in _server_actions(marker):
        code, out, err = _cli(["query", sql], capsys)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("error: query refused: "), err
        assert parsed.password not in err
    assert not marker.exists()
    # Another session (a worker's, as the application role) cannot be stopped from a query.
    worker = make_url(app)
    with psycopg.connect(host=worker.host, port=worker.port, user=worker.username, password=worker.password,
                         dbname=worker.database) as session:
        code, out, err = _cli(["query", f"SELECT pg_terminate_backend({session.info.backend_pid})"], capsys)
        assert session.execute("SELECT 1").fetchone() == (1,)
    assert code == 1 and out == "" and err.startswith("error: query refused: "), err
    dispose_engine(reader)
