"""The local run: create (or resume) a study, run local workers with live progress, return the outcome.

`run_local` is the whole use case, callable from Python; `odyssey run` (sweep/cli/run.py) only parses its
options, draws the progress and writes the report.

The workers run in a child process (`run_workers`, which itself spawns one process per slot) so that this
process stays free to poll the results database and draw the progress display. The workers run in a
session of their own, so Ctrl-C reaches only this process, which sends them one SIGTERM: they re-queue
their running trials and exit 0, and a second run resumes where this one stopped.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from storage import results
from storage.urls import mask_url, resolve_url
from sweep.core.errors import ConfigError, OdysseyError
from sweep.core.states import ENDED_STATES, ResultState
from sweep.core.text import plural
from sweep.objective import resolve_objective
from sweep.spec import StudySpec, load_spec
from sweep.study import create_study
from sweep.worker import WorkerConfig, resolve_devices
from sweep.worker.config import GRACE_PERIOD, HEARTBEAT_INTERVAL, POLL_INTERVAL
from sweep.worker.supervision import die_with_parent

log = logging.getLogger(f"odyssey.{__name__}")


@dataclass
class Progress:
    """One look at a running study: per-variant finished/total counts and the best score so far."""

    total: int
    finished: int
    per_variant: dict[str, tuple[int, int]]  # variant -> (finished, total)
    best: dict[str, float]  # variant -> lowest validation value of the dataset's primary metric
    running: int
    elapsed: float  # seconds since this session started
    finished_before: int = 0  # trials already finished when this session started (a resumed study)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this session's pace: only trials finished since it started count."""
        done_here = self.finished - self.finished_before
        if done_here <= 0 or self.finished >= self.total:
            return None
        return self.elapsed / done_here * (self.total - self.finished)


def default_workers() -> int:
    """One worker per CPU core (each with one torch thread); with GPUs the CLI uses one per GPU instead."""
    return max(1, os.cpu_count() or 1)


def read_progress(url: str, spec: StudySpec, started: float, finished_before: int = 0) -> Progress:
    """Count finished trials per variant from the results tables (``started``: time.monotonic() at the
    session's start; ``finished_before``: trials finished before it, left out of the ETA's pace)."""
    trials = results.load_study(url, spec.name, with_epochs=False).trials
    table = results.count_states(trials, "variant")
    mine = table.reindex(list(spec.variants), fill_value=0)
    ended, total_of = mine[list(ENDED_STATES)].sum(axis=1), mine.sum(axis=1)
    per_variant = {variant: (int(ended[variant]), int(total_of[variant])) for variant in spec.variants}
    best: dict[str, float] = {}
    for variant in spec.variants:
        done = trials[(trials["variant"] == variant) & trials["state"].isin(ENDED_STATES)]
        scores = pd.to_numeric(done["best_valid"], errors="coerce").dropna()
        if len(scores):
            best[variant] = float(scores.min())  # the dataset's primary metric: lower is better
    finished = sum(d for d, _ in per_variant.values())
    total = sum(t for _, t in per_variant.values())
    running = int(table[ResultState.RUNNING].sum())
    return Progress(total, finished, per_variant, best, running, time.monotonic() - started, finished_before)


def _supervise(config: WorkerConfig, devices: list[str], jobs: int, log_level: int) -> None:
    # The workers leave the terminal's process group: Ctrl-C reaches only the parent, which turns it into
    # exactly one SIGTERM (a worker treats a second signal as "stop now"), and each running trial is
    # re-queued once. They still stop with the parent, even if it is killed.
    os.setsid()
    die_with_parent()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    from sweep.worker import run_workers

    try:
        code = run_workers(config, devices, jobs)
    except OdysseyError as exc:  # one slot runs here: a user error is one line, as from a spawned slot
        log.error("error: %s", exc)
        raise SystemExit(1) from None
    raise SystemExit(code)


def _on_main_thread() -> bool:
    # signal.signal works only there: called from another thread, run_local leaves signals alone.
    return threading.current_thread() is threading.main_thread()


def _start_supervisor(config: WorkerConfig, devices: list[str], jobs: int) -> mp.process.BaseProcess:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_supervise, args=(config, devices, jobs, logging.WARNING), daemon=False)
    if not _on_main_thread():
        proc.start()
        return proc
    # Block SIGINT while the child starts so that it inherits "ignore" and only our SIGTERM stops it.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, old)
    return proc


def _run_study(
    spec: StudySpec,
    config: WorkerConfig,
    workers: int,
    devices: list[str],
    on_progress: Callable[[Progress], None],
    poll: float = 1.0,
) -> Progress:
    """Run `workers` (at least 1) local workers with `config` on the existing study of `spec` until it is
    done or Ctrl-C; returns the last look at the study (done when its `finished` reaches its `total`).

    On Ctrl-C (KeyboardInterrupt) or any other error the workers are stopped cleanly (their trials
    re-queued) before the exception propagates; this process's SIGINT handler is as it was.
    """
    # Exactly `workers` slots, spread over the devices in turn; run_workers sets the CPU threads.
    slots = [devices[i % len(devices)] for i in range(workers)]
    url = config.url
    started = time.monotonic()
    before = read_progress(url, spec, started).finished
    proc = _start_supervisor(config, slots, 1)
    try:
        while proc.is_alive():
            on_progress(read_progress(url, spec, started, before))
            proc.join(poll)
    finally:
        # Whatever ended the loop (Ctrl-C, a database gone for longer than the retry budget, a bug in the
        # display), the workers re-queue their trials and stop before this process exits.
        if proc.is_alive():
            # A second Ctrl-C during the clean stop must not orphan the workers' trials; the caller's
            # handler comes back once they have stopped.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _on_main_thread() else None
            try:
                if proc.pid is not None:
                    os.kill(proc.pid, signal.SIGTERM)
                proc.join()
            finally:
                if old is not None:
                    signal.signal(signal.SIGINT, old)
    if proc.exitcode != 0:
        raise OdysseyError(f"a worker failed (exit status {proc.exitcode}); see the log lines above")
    final = read_progress(url, spec, started, before)
    on_progress(final)
    return final


@dataclass
class RunOutcome:
    """What `run_local` did, and the study as it left it."""

    study: str
    url: str  # the storage URL used (resolved: never None; mask it with storage.urls.mask_url to show it)
    created: bool  # this run created the study (or completed its interrupted creation); False: resumed
    ran: bool  # False when the study was already complete: no worker was started
    workers: int  # worker processes started (0 when none ran)
    devices: list[str]
    progress: Progress  # the last look at the study

    @property
    def complete(self) -> bool:
        """Every designed trial finished (complete, failed or diverged)."""
        return self.progress.finished >= self.progress.total


def run_local(
    spec: StudySpec | str | Path,
    url: str | None = None,
    *,
    workers: int | None = None,
    devices: str | Sequence[str] = "auto",
    objective: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_message: Callable[[str], None] | None = None,
    poll: float = 1.0,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> RunOutcome:
    """Run a study on this machine until every trial is finished: what `odyssey run` does, less the report.

    `spec` is a StudySpec or the path of its TOML file; `url` the storage (default $ODYSSEY_STORAGE, else
    sqlite:///odyssey.db). The study is created, or resumed when it exists with the same spec; one that is
    already complete is left alone (`ran` False). Then the C++ kernels are prepared and `workers` local
    worker processes (default: one per GPU, else one per CPU core) run on `devices` (`auto`, `cpu`,
    `cuda:0,cuda:1` or a list of names), each with `objective` (default $ODYSSEY_OBJECTIVE, else `train`).

    `on_progress` gets a `Progress` about every `poll` seconds while the workers run, and the final one;
    `on_message` gets the one-line status messages (storage, created or resumed, workers), which are
    logged at INFO without it. `heartbeat_interval` and `grace_period` (seconds, see `WorkerConfig`) are
    the workers'. Every argument is checked before anything is written (a bad device or objective creates
    no study). Raises OdysseyError (bad spec, device, objective, worker setting or storage, a worker that
    failed) and, on Ctrl-C, KeyboardInterrupt once the workers have re-queued their running trials: the
    same call resumes. Called off the main thread, it leaves signal handling alone (Ctrl-C reaches the
    main thread only).
    """
    from sweep.objective import prepare_kernels

    say = on_message or (lambda message: log.info("%s", message))
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    device_list = resolve_devices(devices if isinstance(devices, str) else ",".join(devices), objective)
    resolve_objective(objective)  # a mistyped module:function must fail here, not in every worker
    if workers is not None and workers < 1:
        raise ConfigError("workers must be at least 1")
    resolved = resolve_url(url)
    config = WorkerConfig(url=resolved, study=spec.name, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, objective=objective,
                          poll_interval=min(poll, POLL_INTERVAL))
    say(f"storage {mask_url(resolved)}")
    created = create_study(resolved, spec)
    say(created.message if created.created else f"resuming study {spec.name!r}")
    if not created.created:
        already = read_progress(resolved, spec, time.monotonic())
        if already.total and already.finished >= already.total:
            return RunOutcome(spec.name, resolved, False, False, 0, device_list, already)
    prepare_kernels(objective)
    n_workers = workers or (len(device_list) if device_list != ["cpu"] else default_workers())
    say(f"{plural(n_workers, 'worker')} on {', '.join(device_list)}")
    final = _run_study(spec, config, n_workers, device_list, on_progress or (lambda _progress: None),
                       poll=poll)
    return RunOutcome(spec.name, resolved, created.created, True, n_workers, device_list, final)
