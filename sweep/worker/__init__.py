"""Workers: pull waiting trials from the storage and run them, exactly once each, until the study is done.

- `config`: how a worker runs (`WorkerConfig`: the settings, their defaults and bounds);
- `loop`: the claim-and-run loop (`Worker`): claim, run the objective, record, re-queue lost trials,
  repair;
- `heartbeat`: a running trial's liveness signal;
- `sampling`: a claimed trial's hyperparameters (the design's, or per-variant TPE for a `tpe` study);
- `supervision`: signal handling and worker processes (`run_worker`, `run_workers`, `die_with_parent`);
- `devices`: which devices to train on and CPU threads per worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sweep.worker.config import WorkerConfig

if TYPE_CHECKING:
    from sweep.worker.devices import resolve_devices
    from sweep.worker.loop import Worker
    from sweep.worker.supervision import run_worker, run_workers

# The rest is imported on first use: the CLI reads WorkerConfig's defaults when it builds its options,
# and the loop pulls in optuna and the storage layer (a second of `odyssey --help`).
_LAZY = {"resolve_devices": "devices", "Worker": "loop", "run_worker": "supervision",
         "run_workers": "supervision"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sweep.worker.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sweep.worker' has no attribute {name!r}")


__all__ = ["Worker", "WorkerConfig", "resolve_devices", "run_worker", "run_workers"]
