"""What several `odyssey` commands share: the --storage and -o/--out options, tables, plurals.

Defined once so that the same option reads the same in every command's --help (no torch imported here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

STORAGE_HELP = (
    "Storage URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
    "(default: $ODYSSEY_STORAGE, else sqlite:///odyssey.db)."
)

storage_option = click.option("--storage", "url", default=None, metavar="URL", help=STORAGE_HELP)


def out_option(help: str, **kwargs: Any) -> Any:
    """`-o/--out PATH`, the output of `run`, `report` and `export` (value: a Path or None)."""
    return click.option("-o", "--out", "out", default=None, metavar="PATH", help=help,
                        type=click.Path(path_type=Path, **kwargs))


def report_dir(study: str, out: Path | None) -> Path:
    """Where `run` and `report` write a study's report: `-o DIR`, else reports/<study>."""
    return out if out is not None else Path("reports") / study


def print_table(table: Any, stderr: bool = False) -> None:
    """Print a rich Table whole: wider than the terminal (or than 80 columns in a pipe) it is printed at
    its natural width instead of cutting its headers and cells."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(stderr=stderr)
    unbounded = console.options.update_width(1_000_000)
    needed = Measurement.get(console, unbounded, table).maximum
    if needed > console.width:
        console = Console(stderr=stderr, width=needed)
    console.print(table)
