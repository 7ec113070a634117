"""A throwaway PostgreSQL server for benchmarks (the same recipe as tests/conftest.py, without pytest).

    with throwaway_postgres() as url: ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER, PASSWORD, DATABASE = "odyssey", "bench-pw", "odyssey"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True) or [shutil.which(name)]
    if not found[0]:
        raise SystemExit(f"PostgreSQL's {name} was not found: install the server")
    return found[0]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(max_connections: int = 200) -> Iterator[str]:
    """Start a PostgreSQL cluster in a temporary directory; yields its URL; removes it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="odyssey-bench-pg-"))
    data, port = root / "data", _port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = "postgres" if _exists("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        shutil.chown(root, entry.pw_uid, entry.pw_gid)
        run_as = ["runuser", "-u", user, "--"]

    def run(*args: str) -> None:
        subprocess.run([*run_as, *args], cwd=root, check=True, capture_output=True, timeout=120)

    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        shutil.chown(pwfile, run_as[2])
    try:
        run(_bin("initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
            "--encoding=UTF8", "--locale=C", "--no-sync")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{root}'\nfsync = off\nsynchronous_commit = off\n"
                       f"max_connections = {max_connections}\n")
        run(_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start")
        _create_db(port)
        yield f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        with contextlib.suppress(Exception):
            run(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _create_db(port: int) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')


def fresh_database(url: str, name: str) -> str:
    """Create database `name` on the server of `url`; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return parsed.set(database=name).render_as_string(hide_password=False)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True
