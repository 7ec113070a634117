"""Workers: pull waiting trials from the storage and run them, exactly once each, until the study is done.

- `loop`: the claim-and-run loop (`Worker`, `WorkerConfig`): claim, run the objective, record, re-queue
  lost trials, repair;
- `heartbeat`: a running trial's liveness signal;
- `sampling`: a claimed trial's hyperparameters (the design's, or per-variant TPE for a `tpe` study);
- `supervision`: signal handling and worker processes (`run_worker`, `run_workers`, `die_with_parent`);
- `devices`: which devices to train on and CPU threads per worker.
"""

from sweep.worker.devices import resolve_devices
from sweep.worker.loop import Worker, WorkerConfig
from sweep.worker.supervision import run_worker, run_workers

__all__ = ["Worker", "WorkerConfig", "resolve_devices", "run_worker", "run_workers"]
