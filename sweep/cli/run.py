"""`odyssey run SPEC`: the whole job on one machine, from a spec to an open-able report.

The run itself is `sweep.run.run_local`; this command parses its options, draws its progress and status
lines, says how to resume after Ctrl-C, and writes the report."""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import click

from storage.urls import mask_url, password_of, resolve_url
from sweep.cli.common import out_option, report_dir, storage_option
from sweep.core.text import plural
from sweep.worker.config import GRACE_PERIOD, HEARTBEAT_INTERVAL

if TYPE_CHECKING:  # sweep.run pulls in the training stack: imported only when a run starts
    from sweep.run import Progress


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


class _Display:
    """A rich progress display: one bar per variant with its best score, and an overall bar with ETA.

    The bars appear with the first update (once the workers run), below the run's status lines."""

    def __init__(self, variants: list[str], live: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.live = live
        self.progress = Progress(
            TextColumn("{task.description:>8}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            disable=not live, transient=False,
        )
        self.overall = self.progress.add_task("all", total=None, info="")
        self.tasks = {v: self.progress.add_task(v, total=None, info="") for v in variants}
        self._last_line = 0.0
        self._started = False

    def __enter__(self) -> _Display:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started:
            self.progress.__exit__(kind, exc, tb)

    def update(self, p: Progress) -> None:
        if not self._started:
            self._started = True
            self.progress.start()
        for variant, task in self.tasks.items():
            done, total = p.per_variant.get(variant, (0, 0))
            best = p.best.get(variant)
            info = f"best valid {best:.4g}" if best is not None else ""
            self.progress.update(task, completed=done, total=total or None, info=info)
        self.progress.update(self.overall, completed=p.finished, total=p.total or None,
                             info=f"{p.running} running, ETA {_fmt_eta(p.eta_seconds)}")
        # Without a terminal (CI logs, nohup), print a status line every 30 s instead of bars.
        if not self.live and time.monotonic() - self._last_line > 30:
            self._last_line = time.monotonic()
            click.echo(f"{p.finished}/{p.total} trials finished, {p.running} running, "
                       f"ETA {_fmt_eta(p.eta_seconds)}", err=True)


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@storage_option
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: one per GPU, else one per CPU core).")
@click.option("--devices", default="auto", show_default=True,
              help="auto (every GPU, else cpu), cpu, or a list such as cuda:0,cuda:1.")
@out_option("Report folder (default: reports/STUDY).", file_okay=False)
@click.option("--no-report", is_flag=True, help="Only run the trials.")
@click.option("--objective", default=None, hidden=True, help="Objective override for tests (see worker).")
# Worker settings for tests (their bounds are WorkerConfig's).
@click.option("--heartbeat", "heartbeat_interval", type=int, default=HEARTBEAT_INTERVAL, hidden=True)
@click.option("--grace", "grace_period", type=int, default=GRACE_PERIOD, hidden=True)
def run(spec_path: str, url: str | None, workers: int | None, devices: str, out: Path | None,
        no_report: bool, objective: str | None, heartbeat_interval: int, grace_period: int) -> None:
    """Create (or resume) the study of SPEC, run local workers until it is done, and write its report.

    Ctrl-C stops cleanly (running trials go back to the queue); run the same command again to resume.
    A study that is already complete is not run again: its report's path is printed.
    """
    import optuna

    from sweep.run import run_local
    from sweep.spec import load_spec

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    target = report_dir(spec.name, out)

    def say(line: str) -> None:
        click.echo(line, err=True)

    def storage_arg() -> list[str]:  # for the commands shown: the storage given (see shown_command)
        return ["--storage", resolve_url(url)] if url else []

    try:
        with _Display(list(spec.variants), live=sys.stderr.isatty()) as display:
            outcome = run_local(spec, url, workers=workers, devices=devices, objective=objective,
                                on_progress=display.update, on_message=say,
                                heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    except KeyboardInterrupt:
        # The same command resumes: same spec, storage, report folder and worker settings.
        again = ["odyssey", "run", spec_path, *storage_arg()]
        again += ["-o", str(out)] if out is not None else []
        again += ["--workers", str(workers)] if workers else []
        again += ["--devices", devices] if devices != "auto" else []
        again += ["--no-report"] if no_report else []
        again += ["--objective", objective] if objective else []
        click.echo(f"stopped; running trials went back to the queue. Resume with: {shown_command(again)}",
                   err=True)
        raise SystemExit(130) from None
    if not outcome.ran:
        _complete(spec.name, outcome.progress.total, target, storage_arg(), no_report, out is not None)
        if no_report or (target / "report.html").exists():
            return
    elif not outcome.complete:
        click.echo("the study is not finished (trials left that no worker could take)", err=True)
    if no_report:
        return
    _write_report(outcome.url, spec.name, target)


def shown_command(args: list[str]) -> str:
    """A command line to print for the user to run again. A storage URL that holds a password is shown as
    "$ODYSSEY_STORAGE" (with a note), never masked: a masked URL pasted back would fail to connect."""
    shown = list(args)
    secret = None
    for i, arg in enumerate(shown[:-1]):
        if arg == "--storage" and password_of(shown[i + 1]):
            secret, shown[i + 1] = shown[i + 1], "__STORAGE__"
    line = shlex.join(shown)
    if secret is None:
        return line
    return (line.replace("__STORAGE__", '"$ODYSSEY_STORAGE"')
            + f"  (with ODYSSEY_STORAGE set to {mask_url(secret)}, password included)")


def _complete(study: str, total: int, target: Path, storage_arg: list[str], no_report: bool,
              out_given: bool) -> None:
    """Say that the study needs no more work, and how to (re)build its report."""
    click.echo(f"study {study!r} is complete ({plural(total, 'trial')} finished): no trial left to run",
               err=True)
    page = target / "report.html"
    if no_report or not page.exists():
        return
    rebuild = ["odyssey", "report", study, *storage_arg, *(["-o", str(target)] if out_given else [])]
    click.echo(f"to rebuild the report: {shown_command(rebuild)}", err=True)
    click.echo(f"report: {page}")


def _write_report(url: str, study: str, target: Path) -> None:
    from analysis.report import build_report

    path = build_report(url, study, target, progress=lambda msg: click.echo(f"report: {msg}", err=True))
    click.echo(f"report: {path}")
