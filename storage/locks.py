"""Named locks shared by every process using one storage: serialise study creation and re-queueing.

PostgreSQL: a session advisory lock (``pg_advisory_lock``) on a connection of its own, released when the
block ends or when the process or the server dies. SQLite: a POSIX record lock (``lockf``) on one byte of
the file ``<database>-odyssey.lock`` beside the database (SQLite's own write lock cannot be held while
Optuna writes through its own connections); the kernel releases it when the process dies. A lock is
re-entrant within a thread.

Why not only Optuna's row locks: creating a copy of a lost trial and failing the original are two Optuna
transactions, so two processes doing it at once would each create a copy; under this lock, one does it
and the other finds the copy.
"""

from __future__ import annotations

import fcntl
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from storage.engine import get_engine, sqlite_file, with_retry
from storage.urls import is_sqlite, resolve_url

_local = threading.local()
_thread_locks: dict[tuple[str, int], threading.Lock] = {}
_files: dict[str, int] = {}
_registry = threading.Lock()


def lock_key(name: str) -> int:
    """The lock number of ``name`` (a 31-bit CRC: an advisory-lock key and a byte offset)."""
    return zlib.crc32(f"odyssey:{name}".encode()) & 0x7FFFFFFF


@contextmanager
def named_lock(url: str, name: str) -> Iterator[None]:
    """Hold the storage-wide lock ``name`` on ``url`` for the block (waits for other holders)."""
    resolved = resolve_url(url)
    key = lock_key(name)
    held: set[tuple[str, int]] = _local.__dict__.setdefault("held", set())
    if (resolved, key) in held:
        yield
        return
    with _registry:
        thread_lock = _thread_locks.setdefault((resolved, key), threading.Lock())
    with thread_lock:
        held.add((resolved, key))
        try:
            if is_sqlite(resolved):
                with _file_lock(resolved, key):
                    yield
            else:
                with _advisory_lock(resolved, key):
                    yield
        finally:
            held.discard((resolved, key))


@contextmanager
def _file_lock(url: str, key: int) -> Iterator[None]:
    file = sqlite_file(url)
    if file is None:  # in-memory: one process, the thread lock is enough
        yield
        return
    path = f"{file}-odyssey.lock"
    with _registry:
        fd = _files.get(path)
        if fd is None:
            # Kept open for the life of the process: closing any descriptor of the file would drop every
            # POSIX lock this process holds on it.
            fd = _files[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, key)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, key)


@contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    engine = get_engine(url)

    def acquire() -> sa.Connection:
        conn = engine.connect()
        try:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()  # the lock belongs to the session, not to a transaction left open
        except BaseException:
            conn.close()
            raise
        return conn

    conn = with_retry(acquire, url, what="take a study lock")
    try:
        yield
    finally:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
        except Exception:
            # The connection is gone (server restart): so is the lock. Do not return it to the pool.
            conn.invalidate()
        conn.close()
