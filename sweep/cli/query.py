"""`odyssey query` and `odyssey export`: read the results database from the shell (no torch imported)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import pandas as pd

from sweep.cli.common import out_option, print_table, storage_option
from sweep.core.errors import ConfigError
from sweep.core.text import plural


def _cell(value: object) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print_table(frame: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for column in frame.columns:
        dtype = frame[column].dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        table.add_column(str(column), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False, name=None):
        table.add_row(*(_cell(v) for v in row))
    print_table(table)
    click.echo(f"({plural(len(frame), 'row')})", err=True)


@click.command()
@click.argument("sql")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Fetch at most this many rows.")
def query(sql: str, url: str | None, fmt: str, max_rows: int | None) -> None:
    """Run one read-only SQL statement on the results database ("-" reads it from stdin).

    Tables: odyssey_studies, odyssey_trials, odyssey_params, odyssey_epochs (see docs/results-schema.md).
    Statements that would change anything are refused. Without --storage, $ODYSSEY_QUERY_STORAGE (a
    read-only role's URL, its password in $ODYSSEY_QUERY_PASSWORD) comes before $ODYSSEY_STORAGE.
    """
    from storage.query import run_readonly

    if sql == "-":
        sql = sys.stdin.read()
    frame = run_readonly(url, sql, max_rows=max_rows)
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(frame.to_json(orient="records", date_format="iso"))
    else:
        _print_table(frame)


@click.command()
@click.argument("study")
@storage_option
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="File format (default: from the output file's suffix, else csv).")
@out_option("Output file (default: STUDY.csv or STUDY.parquet).", dir_okay=False)
def export(study: str, url: str | None, fmt: str | None, out: Path | None) -> None:
    """Write a study's trials, one row per trial with its hyperparameters and results, to a file."""
    from storage.query import export as export_study

    if out is None:
        out = Path(f"{study}.{fmt or 'csv'}")
    elif fmt is None and out.suffix.lstrip(".") not in ("csv", "parquet"):
        raise ConfigError(f"cannot tell the format of {out}: pass --format csv or --format parquet")
    path = export_study(url, study, out, fmt)
    click.echo(f"wrote {path}", err=True)
