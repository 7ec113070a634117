"""`odyssey study`: create a study from a spec, list studies, show a study's status, delete one."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from storage.urls import mask_url, resolve_url
from sweep.cli.common import print_table, storage_option
from sweep.core.states import PENDING_STATES, ResultState
from sweep.core.text import plural


@click.group()
def study() -> None:
    """Create, list, inspect and delete studies."""


@study.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@storage_option
@click.option("--skip-data-check", is_flag=True, help="Do not load the dataset here (workers have the data).")
def create(spec_path: str, url: str | None, skip_data_check: bool) -> None:
    """Create the study described by SPEC (TOML) and enqueue its design; re-running it is harmless."""
    import optuna

    from sweep.spec import load_spec
    from sweep.study import create_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    resolved = resolve_url(url)
    console = Console(stderr=True)
    # Only on a terminal: elsewhere rich would leave an empty line on stderr, above the result line.
    with Progress(TextColumn("enqueueing"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("enqueue", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        outcome = create_study(resolved, spec, check_data=not skip_data_check, progress=update)
    click.echo(f"{outcome.message} in {mask_url(resolved)}")


@study.command(name="list")
@storage_option
def list_(url: str | None) -> None:
    """List the studies in the storage with their trial counts."""
    from storage.results import list_studies

    resolved = resolve_url(url)
    frame = list_studies(resolved)
    if frame.empty:
        click.echo(f"no studies in {mask_url(resolved)}")
        return
    table = Table(title=f"studies in {mask_url(resolved)}")
    columns = ["study", "dataset", "trials", *ResultState]
    for column in columns:
        if column in ("study", "dataset"):
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(getattr(row, c)) for c in columns))
    print_table(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@study.command()
@click.argument("name")
@storage_option
def status(name: str, url: str | None) -> None:
    """Per-variant counts of waiting, running, complete, failed and diverged trials, throughput and ETA."""
    from sweep.study import study_status

    resolved = resolve_url(url)
    info = study_status(resolved, name)
    table = Table(title=f"study {name} ({info.design})")
    table.add_column("variant")
    for state in ResultState:
        table.add_column(state.value, justify="right")
    for entry in info.variants:
        table.add_row(entry.variant, *(str(entry.counts[s]) for s in ResultState))
    totals = info.totals
    table.add_row("total", *(str(totals[s]) for s in ResultState), style="bold")
    print_table(table)
    rate = "unknown" if info.throughput_per_hour is None else f"{info.throughput_per_hour:.1f} trials/hour"
    left = sum(totals[s] for s in PENDING_STATES) + info.lost
    eta = "done" if left == 0 else _duration(info.eta_seconds)
    click.echo(f"throughput: {rate}; left: {left}; ETA: {eta}")
    if info.lost or info.extra:
        Console().print(f"[bold red]{plural(info.lost, 'slot')} lost (no live trial), "
                        f"{plural(info.extra, 'extra trial')}[/]; `odyssey study repair {name}` re-queues "
                        "lost slots and withdraws waiting duplicates")


@study.command()
@click.argument("name")
@storage_option
def repair(name: str, url: str | None) -> None:
    """Re-queue every designed slot of NAME left with no waiting, running or complete trial (and withdraw
    waiting duplicates); workers do this when they start. Safe to run at any time."""
    from sweep.study import repair_study

    resolved = resolve_url(url)
    done = repair_study(resolved, name)
    if not done.requeued and not done.withdrawn:
        click.echo(f"study {name!r}: every slot has exactly one live or final trial; nothing to repair")
        return
    click.echo(f"study {name!r}: re-queued {plural(len(done.requeued), 'lost slot')} {done.requeued}; "
               f"withdrew {plural(len(done.withdrawn), 'duplicate trial')} {done.withdrawn}")


@study.command()
@click.argument("name")
@storage_option
@click.option("--yes", is_flag=True, help="Really delete (required).")
def delete(name: str, url: str | None, yes: bool) -> None:
    """Delete study NAME: its Optuna study and every results row."""
    from sweep.study import delete_study

    if not yes:
        raise click.UsageError(f"deleting study {name!r} removes all its results; add --yes to confirm")
    resolved = resolve_url(url)
    delete_study(resolved, name)
    click.echo(f"deleted study {name!r} from {mask_url(resolved)}")
