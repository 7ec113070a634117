"""A multi-slot worker whose slot dies stops its other slots and exits non-zero (so it gets restarted)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.results import load_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_dead_slot_stops_the_worker_with_a_non_zero_exit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ODYSSEY_TEST_CRASH_MARKER": str(tmp_path / "crashed")}
    odyssey = [sys.executable, "-m", "sweep.cli.main"]
    subprocess.run([*odyssey, "study", "create", str(ROOT / "examples" / "synthetic-tiny.toml"),
                    "--storage", url], env=env, check=True, capture_output=True, timeout=120)
    started = time.monotonic()
    proc = subprocess.run(
        [*odyssey, "worker", "--storage", url, "--devices", "cpu", "--jobs-per-device", "2",
         "--objective", "tests.objectives:crash_once_objective_for_tests",
         "--heartbeat", "1", "--grace", "3"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "workers exited with an error" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The surviving slot was stopped, not left to run the remaining trials on its own...
    trials = load_study(url, "synthetic-tiny").trials
    assert (trials["state"] == "waiting").sum() >= 6, time.monotonic() - started
    # ...and put its running trial back: only the crashed slot's trial is still marked running.
    assert (trials["state"] == "running").sum() <= 1


@pytest.mark.parametrize(("devices", "message"), [
    ("cuda:7", "cuda:7"),      # no such GPU on this host (or no CUDA at all)
    ("mps", "unsupported device 'mps'"),
    ("gpu0", "gpu0"),
])
def test_a_device_the_host_cannot_use_is_refused(tmp_path: Path, devices: str, message: str) -> None:
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "sweep.cli.main", "worker", "--storage", url, "--devices", devices]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("interrupts", "requeued"), [(3, True), (0, False)])
def test_clean_stops_do_not_count_against_the_lost_worker_limit(tmp_path: Path, interrupts: int,
                                                                requeued: bool) -> None:
    # A trial re-queued three times before (by clean stops, or by lost workers), now lost again; it was
    # claimed without a heartbeat (as by a worker killed between claim and heartbeat, or an older
    # version): past the grace period it counts as lost all the same.
    from optuna.trial import TrialState

    from sweep.spec import parse_spec
    from sweep.study import SLOT_ATTR, create_study, load_optuna_study
    from sweep.worker import Worker, WorkerConfig
    from sweep.worker.loop import INTERRUPTS_ATTR

    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    create_study(url, parse_spec({"name": "s", "variants": ["V"], "trials_per_variant": 1,
                                  "dataset": {"name": "synthetic"}}), check_data=False)
    worker = Worker(WorkerConfig(url=url, study="s", objective="noop", heartbeat_interval=1, grace_period=2,
                                 max_retries=3))
    target = worker._target("s")
    (trial,) = target.study.get_trials()
    storage = worker.storage
    storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING)
    storage.set_trial_user_attr(trial._trial_id, INTERRUPTS_ATTR, interrupts)
    storage.set_trial_system_attr(trial._trial_id, "retry_history", [90, 91, 92])
    time.sleep(3.5)
    worker._check_stale(target, force=True)
    trials = load_optuna_study(url, "s").get_trials()
    assert trials[0].state == TrialState.FAIL
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert bool(waiting) is requeued
    row = load_study(url, "s").trials.iloc[0]
    if requeued:
        assert waiting[0].params == trial.params and waiting[0].user_attrs[SLOT_ATTR] == 0
        assert row["state"] == "waiting" and row["trial_number"] == waiting[0].number
    else:
        assert row["state"] == "failed" and "lost 4 times" in row["error"]
        assert worker._repair(target) is False  # failed for good: the repair pass leaves it


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_forever_worker_follows_a_study_deleted_and_created_again(request, backend: str) -> None:
    # PostgreSQL gives the new study a new id (SQLite may reuse the old one).
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    odyssey = [sys.executable, "-m", "sweep.cli.main"]
    spec = str(ROOT / "examples" / "synthetic-tiny.toml")

    def create() -> None:
        subprocess.run([*odyssey, "study", "create", spec, "--storage", url], env=env, check=True,
                       capture_output=True, timeout=120)

    def finished() -> int:
        try:
            trials = load_study(url, "synthetic-tiny").trials
        except Exception:  # between delete and create
            return 0
        return int((trials["state"] == "complete").sum())

    def wait_for_all(deadline: float) -> None:
        while finished() < 12 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert finished() == 12

    create()
    worker = subprocess.Popen([*odyssey, "worker", "--storage", url, "--forever", "--objective", "noop",
                               "--poll", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for_all(time.monotonic() + 60)
        subprocess.run([*odyssey, "study", "delete", "synthetic-tiny", "--yes", "--storage", url], env=env,
                       check=True, capture_output=True, timeout=120)
        create()
        wait_for_all(time.monotonic() + 60)
        assert worker.poll() is None, worker.communicate()
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
        print(err[-4000:])  # shown when the test fails
    assert worker.returncode == 0, err
    assert "Traceback" not in err
