"""`odyssey report`: write a study's HTML report and its numbers (CSV/JSON) into a directory."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from analysis import TARGETS
from sweep.cli.common import out_option, report_dir, storage_option


@click.command()
@click.argument("study")
@storage_option
@out_option("Folder for report.html and the CSV/JSON files (default: reports/STUDY).", file_okay=False)
@click.option(
    "--target", type=click.Choice(TARGETS), default="best_test", show_default=True,
    help="Trial column the statistics and fANOVA analyse.",
)  # fmt: skip
@click.option(
    "--select-by", type=click.Choice(TARGETS), default=None,
    help="Trial column that chooses each variant's best 10% [default: the target's validation column, "
    "best_valid for best_test: the paper's rule].",
)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fANOVA forests.")
@click.option("--trees", "n_trees", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Trees per fANOVA forest.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Forests fitted at once [default: one per CPU].")  # fmt: skip
def report(
    study: str, url: str | None, out: Path | None, target: str, select_by: str | None, seed: int,
    n_trees: int, jobs: int | None,
) -> None:
    """Analyse STUDY (statistics, fANOVA, figures) and write a self-contained HTML report."""
    from analysis.report import build_report
    from storage.urls import mask_url, resolve_url

    resolved = resolve_url(url)
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()

    def progress(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}")

    progress(f"storage {mask_url(resolved)}")
    path = build_report(
        resolved, study, report_dir(study, out), target=target, select_by=select_by, seed=seed,
        n_trees=n_trees, jobs=jobs, progress=progress,
    )  # fmt: skip
    click.echo(f"report written to {path.resolve()}")
