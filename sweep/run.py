"""`odyssey run`: create (or resume) a study, run local workers with live progress, write the report.

The workers run in a child process (`run_workers`, which itself spawns one process per slot) so that this
process stays free to poll the results database and draw the progress display. Ctrl-C reaches every
process of the terminal's group: the workers ignore SIGINT and get SIGTERM from their parent, re-queue
their running trials and exit 0, so a second `odyssey run` resumes where this one stopped.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storage import results
from storage.errors import OdysseyError
from sweep.spec import StudySpec
from sweep.worker import WorkerConfig, _die_with_parent

log = logging.getLogger("odyssey.run")

FINISHED = ("complete", "diverged", "failed")


@dataclass
class Progress:
    """One look at a running study: per-variant finished/total counts and the best score so far."""

    total: int
    finished: int
    per_variant: dict[str, tuple[int, int]]  # variant -> (finished, total)
    best: dict[str, float]  # variant -> best validation metric among finished trials
    running: int
    elapsed: float

    @property
    def eta_seconds(self) -> float | None:
        if self.finished == 0 or self.finished >= self.total:
            return None
        return self.elapsed / self.finished * (self.total - self.finished)


def default_workers() -> int:
    """One worker per GPU where there are GPUs, else one per CPU core (each with one torch thread)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return max(1, os.cpu_count() or 1)


def read_progress(url: str, spec: StudySpec, started: float) -> Progress:
    """Count finished trials per variant from the results tables."""
    trials = results.load_study(url, spec.name).trials
    per_variant: dict[str, tuple[int, int]] = {}
    best: dict[str, float] = {}
    lower_is_better = spec.direction == "minimize"
    for variant in spec.variants:
        sub = trials[trials["variant"] == variant]
        done = sub[sub["state"].isin(FINISHED)]
        per_variant[variant] = (len(done), len(sub))
        scores = pd.to_numeric(done["best_valid"], errors="coerce").dropna()
        if len(scores):
            best[variant] = float(scores.min() if lower_is_better else scores.max())
    finished = sum(d for d, _ in per_variant.values())
    total = sum(t for _, t in per_variant.values())
    running = int((trials["state"] == "running").sum())
    return Progress(total, finished, per_variant, best, running, time.monotonic() - started)


def _supervise(config: WorkerConfig, devices: list[str], jobs: int, log_level: int) -> None:
    # The workers leave the terminal's process group: Ctrl-C reaches only the parent, which turns it into
    # exactly one SIGTERM (a worker treats a second signal as "stop now"), and each running trial is
    # re-queued once. They still stop with the parent, even if it is killed.
    os.setsid()
    _die_with_parent()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    from sweep.worker import run_workers

    raise SystemExit(run_workers(config, devices, jobs))


def _start_supervisor(config: WorkerConfig, devices: list[str], jobs: int) -> mp.process.BaseProcess:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_supervise, args=(config, devices, jobs, logging.WARNING), daemon=False)
    # Block SIGINT while the child starts so that it inherits "ignore" and only our SIGTERM stops it.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, old)
    return proc


def run_study(
    spec: StudySpec,
    url: str,
    workers: int,
    devices: list[str],
    on_progress: Callable[[Progress], None],
    poll: float = 1.0,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
    objective: str | None = None,
) -> bool:
    """Run `workers` local workers on the study until it is done or Ctrl-C; returns True when done.

    Raises KeyboardInterrupt after the workers have stopped cleanly (their trials re-queued).
    """
    if workers < 1:
        raise OdysseyError("--workers must be at least 1")
    jobs = max(1, math.ceil(workers / len(devices)))
    config = WorkerConfig(url=url, study=spec.name, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, objective=objective, poll_interval=min(poll, 2.0),
                          threads=max(1, (os.cpu_count() or 1) // workers) if devices == ["cpu"] else None)
    started = time.monotonic()
    proc = _start_supervisor(config, devices, jobs)
    interrupted = False
    try:
        while proc.is_alive():
            on_progress(read_progress(url, spec, started))
            proc.join(poll)
    except KeyboardInterrupt:
        interrupted = True
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
        # A second Ctrl-C during the clean stop must not orphan the workers' trials.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        proc.join()
    on_progress(read_progress(url, spec, started))
    if interrupted:
        raise KeyboardInterrupt
    if proc.exitcode != 0:
        raise OdysseyError(f"a worker failed (exit status {proc.exitcode}); see the log lines above")
    final = read_progress(url, spec, started)
    return final.finished >= final.total


def output_dir(spec: StudySpec, out: str | None) -> Path:
    """The report folder: `-o DIR`, else reports/<study name>."""
    return Path(out) if out else Path("reports") / spec.name
