"""Storage URLs: resolve the user's choice, normalise PostgreSQL spellings, and mask passwords."""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from sweep.core.errors import StorageError

ENV_VAR = "ODYSSEY_STORAGE"
DEFAULT_URL = "sqlite:///odyssey.db"

# PostgreSQL spellings users type, all served by the psycopg 3 driver.
_PG_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "postgresql+psycopg3"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}

# user:password@ in a URL-ish string, for text make_url cannot parse: behind a scheme, or behind none or a
# malformed one ("u:pw@host/db", "postgresql:/u:pw@host/db"). A "password" starting with // is a scheme's
# slashes ("sqlite:///a@b.db"), not user-info.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)?(?P<user>[^:/@\s]*):(?P<pw>(?!//)[^@\s]*)@")
# password=... in a libpq key/value DSN, which psycopg error messages may echo.
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def mask_url(url: str | URL) -> str:
    """Return ``url`` with its password replaced by ``***`` (text that is not a URL is scrubbed too)."""
    # scrub() as well: libpq also takes the password as a query parameter (?password=...).
    if isinstance(url, URL):
        return scrub(url.render_as_string(hide_password=True))
    try:
        return scrub(make_url(url).render_as_string(hide_password=True))
    except (ArgumentError, ValueError, TypeError):
        return scrub(str(url))


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove passwords from free text: URL user-info, ``password=`` pairs and any given secret string."""
    text = _USERINFO.sub(lambda m: f"{m['scheme'] or ''}{m['user']}:***@", text)
    text = _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def secrets_of(url: str) -> tuple[str, ...]:
    """Every password that may reach a driver message: the URL's and libpq's $PGPASSWORD."""
    found = (password_of(url), os.environ.get("PGPASSWORD"))
    return tuple(s for s in found if s)


def password_of(url: str) -> str | None:
    """The password in ``url``, in its user-info or its query string (None if absent or unparsable)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None
    query = parsed.query.get("password")
    return parsed.password or (query if isinstance(query, str) else None)


def resolve_url(url: str | None) -> str:
    """The storage URL to use: ``url``, else ``$ODYSSEY_STORAGE``, else ``sqlite:///odyssey.db``.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``. Raises OdysseyError (password
    masked) for an unparsable URL or an unsupported scheme.
    """
    raw = url if url else os.environ.get(ENV_VAR) or DEFAULT_URL
    raw = raw.strip()
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError, TypeError):
        raise StorageError(
            f"invalid storage URL {scrub(raw)!r}: expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        ) from None
    driver = parsed.drivername.lower()
    if driver in _PG_DRIVERS:
        parsed = parsed.set(drivername="postgresql+psycopg")
        if not parsed.database:
            raise StorageError(f"storage URL {mask_url(parsed)} names no database (add /DBNAME)")
    elif driver in _SQLITE_DRIVERS:
        parsed = parsed.set(drivername="sqlite")
        if parsed.host or parsed.username:
            raise StorageError(
                f"invalid SQLite URL {mask_url(parsed)}: use sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
    else:
        raise StorageError(
            f"unsupported storage URL scheme {parsed.drivername!r} in {mask_url(parsed)}: "
            "use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        )
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    """Whether a resolved URL points at SQLite."""
    return make_url(url).get_backend_name() == "sqlite"
