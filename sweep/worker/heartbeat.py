"""A running trial's heartbeat: the liveness signal by which other workers tell a live trial from a lost one.

The heartbeat is written (Optuna's `record_heartbeat`) before a trial is claimed and then every interval
by a thread, so a worker killed at any point leaves a RUNNING trial whose heartbeat ages past the grace
period; any other worker then re-queues it (`Worker._check_stale`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from storage.failpoints import failpoint

log = logging.getLogger(f"odyssey.{__name__}")


class Heartbeat:
    """Writes a trial's heartbeat every `interval` seconds from a thread while the `with` block runs; a
    failed write (a database outage) is logged and retried at the next beat."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a database outage: the next beat tries again
                log.warning("heartbeat of trial id %d failed (%s); retrying", self.trial_id,
                            type(exc).__name__)
                continue
            failpoint("heartbeat.after")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
