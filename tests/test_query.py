"""Read-only queries, export, and the `odyssey query` / `odyssey export` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest

from storage import results
from storage.engine import dispose_engine
from storage.errors import OdysseyError
from storage.query import export, read_export, run_readonly
from sweep.cli import main

PASSWORD = "Tst-pw-9f3Kq"  # tests/conftest.py's PostgreSQL password
SPEC = {"dataset": "jsb", "space": {"learning_rate": {"low": 1e-6, "high": 1e-2}, "momentum": {}}}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A results database (SQLite file or fresh PostgreSQL) holding study 'demo' with two trials.

    Shared by the module's tests: none of them may change it (that is what they check).
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('query') / 'results.db'}"
    else:
        server = request.getfixturevalue("pg_server")
        server.start()
        url = server.create_database()
    results.register_study(url, "demo", SPEC)
    results.record_designed_trials(url, "demo", [
        {"slot": 0, "variant": "V", "seed": 1, "params": {"learning_rate": 1e-3, "momentum": 0.9}},
        {"slot": 1, "variant": "NFG", "seed": 2, "params": {"learning_rate": 1e-4, "momentum": 0.99}},
    ])
    results.record_trial_started(url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_epoch(url, "demo", 0, 1, 1.0, 2.0, 3.0, 0.1)
    results.record_trial_finished(url, "demo", 0, "complete",
                                  {"best_valid": 2.0, "best_test": 3.0, "epochs": 1, "n_params": 42})
    yield url
    dispose_engine(url)
    if request.param == "postgres":
        server.drop_database(url)


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
    done = subprocess.run([sys.executable, "-m", "sweep.cli", "query", "SELECT 1", "--storage", wrong],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: cannot connect to postgresql+psycopg://odyssey:***@127.0.0.1")
    assert "password authentication failed" in done.stderr
    assert "Traceback" not in done.stderr and "Bad-pw-77x" not in done.stderr and done.stderr.count("\n") == 1


def test_cli_query_entry_point_succeeds_without_importing_torch(sqlite_url: str) -> None:
    results.register_study(sqlite_url, "demo", SPEC)
    probe = ("import atexit, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
             "from sweep.cli import main; main(sys.argv[1:])")
    args = ["query", "SELECT name FROM odyssey_studies", "--storage", sqlite_url, "--format", "csv"]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["name", "demo", "torch loaded: False"]
