"""`odyssey worker`: run waiting trials of one study (or of every study) until none is left."""

from __future__ import annotations

import logging
import sys
import warnings

import click

from storage.engine import require_existing_database
from storage.urls import mask_url, resolve_url
from sweep.cli.common import storage_option
from sweep.worker.config import GRACE_PERIOD, HEARTBEAT_INTERVAL, MAX_RETRIES, POLL_INTERVAL


@click.command()
@storage_option
@click.option("--study", "study_name", default=None, help="Work on this study only (default: every study).")
@click.option("--devices", default="auto", show_default=True,
              help="auto (every GPU, else cpu), cpu, or a list such as cuda:0,cuda:1.")
@click.option("--jobs-per-device", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes per device.")
@click.option("--forever", is_flag=True, help="Keep polling for new trials instead of exiting when done.")
# The bounds of these settings are WorkerConfig's (one ConfigError line when out of them).
@click.option("--heartbeat", "heartbeat_interval", type=int, default=HEARTBEAT_INTERVAL, show_default=True,
              help="Seconds between heartbeats of a running trial.")
@click.option("--grace", "grace_period", type=int, default=GRACE_PERIOD, show_default=True,
              help="Seconds without heartbeat after which a trial counts as lost and is re-queued "
                   "(longer than --heartbeat).")
@click.option("--max-retries", type=int, default=MAX_RETRIES, show_default=True,
              help="Times a lost trial is re-queued before it is recorded as failed.")
@click.option("--poll", "poll_interval", type=float, default=POLL_INTERVAL, show_default=True,
              help="Seconds between looks for work while other workers finish.")
@click.option("--threads", type=int, default=None,
              help="Torch threads per CPU worker (default: cores / CPU workers).")
@click.option("--objective", default=None, hidden=True,
              help="train (default), noop, sleep:SECONDS or module:function ($ODYSSEY_OBJECTIVE).")
def worker(url: str | None, study_name: str | None, devices: str, jobs_per_device: int, forever: bool,
           heartbeat_interval: int, grace_period: int, max_retries: int, poll_interval: float,
           threads: int | None, objective: str | None) -> None:
    """Pull waiting trials and train them, one process per device slot, until the study is done."""
    import optuna

    from sweep.objective import prepare_kernels, resolve_objective
    from sweep.worker import WorkerConfig, resolve_devices, run_workers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    resolved = resolve_url(url)
    resolve_objective(objective)  # fail now, not in every worker process
    config = WorkerConfig(url=resolved, study=study_name, forever=forever,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          max_retries=max_retries, poll_interval=poll_interval, objective=objective,
                          threads=threads)
    logging.getLogger(f"odyssey.{__name__}").info("storage %s", mask_url(resolved))
    slots = resolve_devices(devices, objective)
    require_existing_database(resolved)  # a mistyped SQLite path must not become a new, empty database
    prepare_kernels(objective)
    code = run_workers(config, slots, jobs_per_device)
    if code:
        raise SystemExit(code)
