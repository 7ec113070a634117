"""Worker processes: signal handling, one worker in this process, and one spawned process per device slot.

Stopping: the first SIGTERM/SIGINT stops the running trial within one training step, re-queues it and
exits 0; a second Ctrl-C interrupts at once (see docs/sweeps.md). A multi-slot parent forwards SIGTERM
to its children, and each child asks the kernel for SIGTERM when its parent dies (`die_with_parent`),
so no orphan keeps a trial.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from sweep.core.errors import ConfigError, OdysseyError
from sweep.worker.config import WorkerConfig
from sweep.worker.devices import cpu_threads, set_threads
from sweep.worker.loop import Worker

log = logging.getLogger(f"odyssey.{__name__}")


def _install_signal_handlers(stop: threading.Event, label: str = "", sigint: bool = True) -> None:
    prefix = f"[{label}] " if label else ""

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            # Only a second Ctrl-C escalates: SIGTERM may come twice from supervisors (and from the
            # parent-death signal), and the running trial already stops within one training step.
            if signum == signal.SIGINT:
                raise KeyboardInterrupt()
            return
        log.info("%s%s received: stopping the running trial and re-queueing it",
                 prefix, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    # A spawned worker ignores Ctrl-C (sent to the whole process group): its parent forwards SIGTERM.
    signal.signal(signal.SIGINT, handler if sigint else signal.SIG_IGN)


def run_worker(config: WorkerConfig, sigint: bool = True) -> int:
    """Run one worker in this process with signal handling; returns the number of trials run."""
    stop = threading.Event()
    _install_signal_handlers(stop, config.label, sigint)
    set_threads(config.threads, config.objective)
    return Worker(config, stop).run()


def die_with_parent() -> None:
    """Ask the kernel (Linux) for SIGTERM when this process's parent dies, even by SIGKILL, so that a
    worker process never outlives its supervisor holding a trial; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child_main(config: WorkerConfig, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(message)s")
    die_with_parent()
    if os.getppid() == 1:
        return
    try:
        run_worker(config, sigint=False)
    except OdysseyError as exc:
        log.error("[%s] error: %s", config.label, exc)
        raise SystemExit(1) from None


def run_workers(config: WorkerConfig, devices: list[str], jobs_per_device: int = 1) -> int:
    """Run `jobs_per_device` workers per device: in this process for one slot, else one spawned process
    per slot (signals forwarded). Returns the exit status: 0 when every worker finished cleanly."""
    if jobs_per_device < 1:
        raise ConfigError(f"jobs per device must be at least 1, got {jobs_per_device}")
    slots = [d for d in devices for _ in range(jobs_per_device)]
    threads = cpu_threads(slots, config.threads)
    if len(slots) == 1:
        config.device = slots[0]
        config.threads = threads if slots[0] == "cpu" else config.threads
        run_worker(config)
        return 0
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for i, device in enumerate(slots):
        child = WorkerConfig(**{**config.__dict__, "device": device, "label": f"w{i} {device}",
                                "threads": threads if device == "cpu" else config.threads})
        proc = ctx.Process(target=_child_main, args=(child, logging.getLogger().level), daemon=False)
        proc.start()
        procs.append(proc)
    log.info("started %d workers on %s", len(procs), ", ".join(sorted(set(slots))))

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    from multiprocessing.connection import wait

    running = list(procs)
    while running:
        wait([p.sentinel for p in running])
        running = [p for p in running if p.exitcode is None]
        if any(p.exitcode not in (None, 0) for p in procs):
            # One slot died (a bug, an outage longer than the retry budget): stop the others cleanly and
            # exit non-zero, so a supervisor (Docker's restart policy, systemd) restarts every slot
            # instead of the host quietly running fewer.
            forward(signal.SIGTERM, None)
            for proc in running:
                proc.join()
            running = []
    bad = [p for p in procs if p.exitcode != 0]
    if bad:
        log.error("%d of %d workers exited with an error", len(bad), len(procs))
        return 1
    return 0
