"""Named crash points for the fault-injection tests (docs/sweeps.md lists each one and what it proves).

`failpoint(NAME)` does nothing unless $ODYSSEY_FAILPOINT names NAME when the process starts:

    ODYSSEY_FAILPOINT=NAME[:ACTION][@N][,NAME2...]

ACTION is `kill` (SIGKILL this process, the default), `exit` (os._exit(3), no clean-up) or `pause`
(create the file $ODYSSEY_FAILPOINT_DIR/NAME and wait until it is removed: the test restarts PostgreSQL
meanwhile). `@N` fires on the N-th time the point is reached (default: the first). Without the variable
a failpoint is one dictionary lookup on an empty dict.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

#: every failpoint in the code, with the moment it marks (a test checks that the code has each one)
FAILPOINTS = {
    "claim.before": "a worker wrote the heartbeat of a waiting trial and is about to claim it",
    "claim.after": "a worker moved a trial to RUNNING and has not refreshed its heartbeat",
    "start.after": "a worker recorded the trial's start in the results row, before training",
    "heartbeat.after": "the heartbeat thread wrote a heartbeat of a running trial",
    "finish.before-tell": "the result row is written, Optuna is not yet told",
    "finish.after-tell": "Optuna has the trial COMPLETE, the worker did not log it yet",
    "stale.after-copy": "a lost trial's WAITING copy exists, the lost trial is still RUNNING",
    "stale.after-fail": "a lost trial is FAIL with its copy waiting, the results row not yet moved",
    "requeue.after-copy": "a stopping worker's trial has its WAITING copy, the original is still RUNNING",
    "requeue.after-fail": "a stopping worker's trial is FAIL with its copy waiting, the row not yet moved",
    "repair.after-copy": "the repair pass enqueued a copy for a lost slot",
    "create.start": "`study create` has read its spec and not yet opened the storage",
    "create.after-study": "`study create` made the Optuna study, nothing enqueued",
    "create.mid-enqueue": "`study create` enqueued the first chunk of the design",
    "create.before-spec": "`study create` enqueued the whole design, the spec is not yet stored",
}

_SPEC = os.environ.get("ODYSSEY_FAILPOINT", "")
_ARMED: dict[str, tuple[str, int]] = {}
for _item in filter(None, (part.strip() for part in _SPEC.split(","))):
    _name, _, _rest = _item.partition(":")
    _action, _, _nth = (_rest or "kill").partition("@")
    if "@" in _name:
        _name, _, _nth = _name.partition("@")
    _ARMED[_name] = (_action or "kill", int(_nth or 1))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Crash (or pause) here if $ODYSSEY_FAILPOINT arms `name`; otherwise return at once."""
    if not _ARMED or name not in _ARMED:
        return
    action, nth = _ARMED[name]
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != nth:
        return
    if action == "pause":
        marker = Path(os.environ.get("ODYSSEY_FAILPOINT_DIR", ".")) / name
        marker.touch()
        while marker.exists():
            time.sleep(0.05)
        return
    if action == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: the signal is delivered at once
