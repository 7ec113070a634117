"""Serve optuna-dashboard on the study database named by $ODYSSEY_STORAGE.

`optuna-dashboard URL` would put the database password on the command line, where `ps` on the host shows
it; this launcher reads the URL (and $PGPASSWORD) from the environment instead and prints it masked.
It opens the database through `storage.engine`, so it rides out a database that is still starting and
fails with one line (password masked) when it cannot connect.

Usage (the compose `dashboard` service):  python docker/dashboard.py --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import os
import sys

from sweep.core.errors import OdysseyError


def main(argv: list[str] | None = None) -> None:
    """Parse --host/--port, open $ODYSSEY_STORAGE and serve the dashboard until killed."""
    parser = argparse.ArgumentParser(description="optuna-dashboard on the database named by $ODYSSEY_STORAGE")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    if not os.environ.get("ODYSSEY_STORAGE", "").strip():
        sys.exit("error: set ODYSSEY_STORAGE to the study database URL")
    from storage.engine import optuna_storage
    from storage.urls import mask_url, resolve_url

    try:
        url = resolve_url(None)
        storage = optuna_storage(url)
    except OdysseyError as exc:
        sys.exit(f"error: {exc}")

    from optuna_dashboard import run_server

    print(f"dashboard for {mask_url(url)} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:  # port in use, address not on this host
        sys.exit(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}")


if __name__ == "__main__":
    main()
