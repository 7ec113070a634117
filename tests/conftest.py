"""Shared test fixtures: one thread for torch, a throwaway PostgreSQL server, per-test databases."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Several engineers share two cores: keep BLAS/OpenMP (and torch, once imported) single-threaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("ODYSSEY_DB_RETRY_SECONDS", "20")

from tests.pgserver import PG_PASSWORD, PG_USER, PgServer, PgServerError, throwaway_server  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread() -> None:
    # Only if a test module already imported torch: importing it here would slow every run.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session; `.url`, `.restart()`, `.stop()`, `.start()`.

    Missing server binaries fail the tests that need them (never a skip: CI must run them).
    """
    try:
        with throwaway_server() as server:
            yield server
    except PgServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped after the test."""
    pg_server.start()  # a previous test may have stopped it
    url = pg_server.create_database()
    yield url
    from storage.engine import dispose_engine

    dispose_engine(url)
    pg_server.start()
    pg_server.drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a SQLite database file in the test's temporary directory."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    yield url
    from storage.engine import dispose_engine

    dispose_engine(url)


@pytest.fixture(scope="session")
def compose_roles() -> Callable[[str], tuple[str, str]]:
    """Set up a PostgreSQL database's roles with docker/initdb.py, as the compose `db-init` service does.

    Call it with a database URL whose role is a superuser (the test server's, like the image's
    POSTGRES_USER); returns (application role URL, read-only role URL), passwords included.
    """
    import subprocess

    from sqlalchemy.engine import make_url

    root = Path(__file__).resolve().parent.parent
    app, reader = ("test_app", "Tst-app-pw-3"), ("test_reader", "Tst-reader-pw-4")

    def setup(url: str) -> tuple[str, str]:
        admin = make_url(url)
        storage = admin.set(password=None).render_as_string(hide_password=False)
        env = {**os.environ, "ODYSSEY_STORAGE": storage,
               "PGPASSWORD": admin.password or "", "ODYSSEY_APP_USER": app[0], "ODYSSEY_APP_PASSWORD": app[1],
               "ODYSSEY_READER_USER": reader[0], "ODYSSEY_READER_PASSWORD": reader[1]}
        done = subprocess.run([sys.executable, str(root / "docker" / "initdb.py")], cwd=root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return tuple(admin.set(username=user, password=password).render_as_string(hide_password=False)
                     for user, password in (app, reader))  # type: ignore[return-value]

    return setup
