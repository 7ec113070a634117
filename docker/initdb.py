"""Create the database tables (Optuna's and the results schema) once, before the stack starts.

On a fresh database every worker process and the dashboard would otherwise create Optuna's tables at the
same moment, and on PostgreSQL all but one of them fail ("duplicate key value violates unique constraint
pg_type_typname_nsp_index"). The compose `db-init` service runs this first; the workers and the dashboard
start only after it has exited successfully. Idempotent: on an initialised database it only checks.

Usage (the compose `db-init` service):  python docker/initdb.py      (database URL from $ODYSSEY_STORAGE)
"""

from __future__ import annotations

import os
import sys

from storage.errors import OdysseyError


def main() -> None:
    """Open $ODYSSEY_STORAGE (waiting while it starts), create missing tables, exit 0; one line on error."""
    if not os.environ.get("ODYSSEY_STORAGE", "").strip():
        sys.exit("error: set ODYSSEY_STORAGE to the study database URL")
    from storage.engine import get_engine, optuna_storage, translated
    from storage.schema import create_schema
    from storage.urls import mask_url, resolve_url

    try:
        url = resolve_url(None)
        optuna_storage(url)  # creates Optuna's tables
        with translated(url, "create the results tables"):
            create_schema(get_engine(url))
    except OdysseyError as exc:
        sys.exit(f"error: {exc}")
    print(f"database ready: {mask_url(url)}", file=sys.stderr)


if __name__ == "__main__":
    main()
