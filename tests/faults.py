"""Helpers of the fault-injection tests (test_failpoints.py, test_chaos.py): a tiny study, worker and
`study create` processes with a failpoint armed, and the exactly-once check."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from storage import results
from sweep.spec import parse_spec
from sweep.study import SLOT_ATTR, designed_trials, load_optuna_study, open_storage, study_status
from sweep.worker import Worker, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT, GRACE = 1, 2


def spec_dict(per_variant: int = 3, name: str = "fp") -> dict:
    return {
        "name": name, "variants": ["V", "GRU"], "design": "random", "trials_per_variant": per_variant,
        "seed": 5, "dataset": {"name": "synthetic"},
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-1}, "hidden_size": {"low": 2, "high": 6}},
    }


def write_spec(path: Path, data: dict) -> Path:
    import json

    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    lines += ["[dataset]", 'name = "synthetic"']
    for key, table in data["space"].items():
        lines += [f"[space.{key}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def env_with(failpoint: str | None = None, marker_dir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("ODYSSEY_FAILPOINT", None)
    if failpoint:
        env["ODYSSEY_FAILPOINT"] = failpoint
    if marker_dir is not None:
        env["ODYSSEY_FAILPOINT_DIR"] = str(marker_dir)
    return env


def odyssey(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep.cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def worker_args(url: str, objective: str = "sleep:0.2", name: str = "fp") -> list[str]:
    return ["worker", "--storage", url, "--study", name, "--devices", "cpu", "--threads", "1",
            "--objective", objective, "--heartbeat", str(HEARTBEAT), "--grace", str(GRACE), "--poll", "0.2"]


def killed_at(proc: subprocess.Popen, point: str, timeout: float = 120) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == -signal.SIGKILL, f"{point} did not fire (exit {proc.returncode}):\n{out}"


def finish_cleanly(url: str, name: str = "fp") -> int:
    """A clean worker in this process: it must drain the study and return."""
    return Worker(WorkerConfig(url=url, study=name, objective="noop", heartbeat_interval=HEARTBEAT,
                               grace_period=GRACE, poll_interval=0.2)).run()


def assert_exactly_once(url: str, spec: dict, name: str = "fp") -> None:
    designed = {row["slot"]: row for row in designed_trials(parse_spec(spec))}
    trials = load_optuna_study(url, name).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[SLOT_ATTR] for t in complete) == sorted(designed), "a slot lost or run twice"
    assert not [t.number for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    rows = results.load_study(url, name, with_epochs=False).trials.set_index("slot")
    assert sorted(rows.index) == sorted(designed)
    for t in complete:
        slot = t.user_attrs[SLOT_ATTR]
        for key, value in designed[slot]["params"].items():
            if key in t.params:
                assert math.isclose(t.params[key], value, rel_tol=1e-9), (slot, key)
        row = rows.loc[slot]
        assert row["state"] == "complete" and row["trial_number"] == t.number, (slot, dict(row))
        assert math.isclose(row["best_valid"], t.value, rel_tol=1e-9)
    status = study_status(url, name)
    assert (status.lost, status.extra) == (0, 0)
    assert status.totals["complete"] == len(designed)


def claim_and_abandon(url: str, count: int, name: str = "fp") -> list[int]:
    """Claim `count` waiting trials as a worker would and vanish (as if killed at once)."""
    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(name)
    waiting = storage.get_all_trials(study_id, states=(TrialState.WAITING,))[:count]
    for t in waiting:
        storage.record_heartbeat(t._trial_id)
        assert storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
    return [t.number for t in waiting]
