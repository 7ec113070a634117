"""How one worker process runs (`WorkerConfig`): the one definition of the worker settings, their defaults
and their bounds, which `odyssey worker`, `odyssey run` and `sweep.run.run_local` all take from here.

Light on purpose (no optuna, storage or torch import): the CLI reads the defaults when it builds its
options.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from sweep.core.errors import ConfigError

HEARTBEAT_INTERVAL = 10  # seconds between heartbeats of a running trial
GRACE_PERIOD = 60  # seconds without a heartbeat after which a running trial counts as lost
MAX_RETRIES = 3  # times a lost trial is re-queued before it is recorded as failed
POLL_INTERVAL = 2.0  # seconds between looks for work while other workers finish


@dataclass
class WorkerConfig:
    """How one worker process runs (seconds for the intervals). Raises ConfigError (one line) when a
    setting is out of bounds: a heartbeat interval under 1 s, a grace period not longer than the
    heartbeat interval (live trials would be judged lost and re-queued), negative retries, a poll interval
    that is not positive, or fewer than 1 thread."""

    url: str
    study: str | None = None
    device: str = "cpu"
    forever: bool = False
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_retries: int = MAX_RETRIES
    poll_interval: float = POLL_INTERVAL
    objective: str | None = None
    threads: int | None = None
    label: str = ""  # shown in log lines when several workers share a terminal
    host: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        if self.heartbeat_interval < 1:
            raise ConfigError(f"heartbeat interval must be at least 1 s, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"grace period ({self.grace_period} s) must be longer than the heartbeat "
                              f"interval ({self.heartbeat_interval} s), or live trials count as lost")
        if self.max_retries < 0:
            raise ConfigError(f"max retries must be at least 0, got {self.max_retries}")
        if not self.poll_interval > 0:
            raise ConfigError(f"poll interval must be more than 0 s, got {self.poll_interval}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
