"""`odyssey db`: the database's schema versions (results tables and Optuna's), and their upgrade."""

from __future__ import annotations

import click

from sweep.cli.common import storage_option


@click.group()
def db() -> None:
    """Schema versions of the results database."""


@db.command()
@storage_option
def upgrade(url: str | None) -> None:
    """Upgrade the results tables (and Optuna's) to this release's schema.

    Stop the workers of the old release first: they would write rows of the old schema.
    """
    from storage.schema_version import upgrade_database
    from storage.urls import mask_url, resolve_url

    url = resolve_url(url)
    before, after = upgrade_database(url)
    if before == after:
        click.echo(f"results schema of {mask_url(url)} is current (revision {after})")
    elif before is None:
        click.echo(f"created the results tables in {mask_url(url)} (revision {after})")
    else:
        click.echo(f"upgraded the results schema of {mask_url(url)}: revision {before} -> {after}")
