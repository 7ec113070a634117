"""A throwaway PostgreSQL cluster started from the machine's own server binaries.

Used by the test fixtures (tests/conftest.py) and the benchmarks (bench/sweep.py); needs no pytest.
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
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_USER = "odyssey"
PG_PASSWORD = "Tst-pw-9f3Kq"  # distinctive, so tests can assert it never leaks into messages


class PgServerError(RuntimeError):
    """The server could not be set up or controlled."""


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise PgServerError(
            f"PostgreSQL's {name} was not found (looked in /usr/lib/postgresql/*/bin and PATH): "
            "install the server with `apt-get install postgresql`"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a password-protected superuser role."""

    def __init__(self, root: Path, max_connections: int = 60) -> None:
        self.root = root
        self.max_connections = max_connections
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = _free_port()
        self.user, self.password, self.database = PG_USER, PG_PASSWORD, "odyssey"
        self._os_user = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._os_user = "postgres" if _user_exists("postgres") else "nobody"
            entry = pwd.getpwnam(self._os_user)
            shutil.chown(root, entry.pw_uid, entry.pw_gid)
            root.chmod(0o700)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (with the password)."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._os_user:
            command = ["runuser", "-u", self._os_user, "--", *command]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PgServerError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}\n{tail}")
        return done

    def init(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._os_user:
            entry = pwd.getpwnam(self._os_user)
            shutil.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                f"shared_buffers = 16MB\nmax_connections = {self.max_connections}\n"
            )

    def _ctl(self, *args: str) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *args)

    def start(self) -> None:
        """Start the server (no-op if it runs) and wait until it accepts connections."""
        if not self.running():
            self._ctl("start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are terminated)."""
        if self.running():
            self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """Restart the server, dropping every open connection."""
        self._ctl("-m", "fast", "restart")

    def running(self) -> bool:
        done = self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False)
        return done.returncode == 0

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction on the maintenance database."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self) -> str:
        """Create a fresh, empty database and return its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        # FILE_COPY is the faster strategy for tiny databases when fsync is off.
        self.admin(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url_for(name)

    def stop_now(self) -> None:
        """Stop at once (immediate shutdown), ignoring errors: for clean-up."""
        with contextlib.suppress(Exception):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def throwaway_server(max_connections: int = 60) -> Iterator[PgServer]:
    """Initialise and start a cluster in a temporary directory (with an `odyssey` database); removes it
    afterwards."""
    root = Path(tempfile.mkdtemp(prefix="odyssey-pg-"))
    server = PgServer(root, max_connections)
    try:
        server.init()
        server.start()
        server.admin(f'CREATE DATABASE "{server.database}"')
        yield server
    finally:
        server.stop_now()
        shutil.rmtree(root, ignore_errors=True)
