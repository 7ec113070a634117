"""Workers: every enqueued trial runs exactly once, across worker processes, crashes, signals and
database restarts, on PostgreSQL and SQLite; and the real training objective end to end."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage import results
from sweep.spec import parse_spec
from sweep.study import SLOT_ATTR, create_study, load_optuna_study
from sweep.worker import Worker, WorkerConfig
from sweep.worker.loop import DIVERGED_ATTR

ROOT = Path(__file__).resolve().parent.parent
PG_PASSWORD_MARK = "Tst-pw-9f3Kq"  # tests/conftest.py's PostgreSQL password
START = re.compile(r"start  trial (\d+) slot (\d+)")


def make_study(
    url: str, variants: tuple[str, ...] = ("V", "GRU"), per_variant: int = 3, **extra: object
) -> str:
    spec = {
        "name": "w", "variants": list(variants), "design": "random", "trials_per_variant": per_variant,
        "seed": 3, "dataset": {"name": "synthetic", "n_train": 16, "n_valid": 8, "n_test": 8},
        "training": {"max_epochs": 2, "patience": 1, "batch_size": 8, "optimizer": "adam"},
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-1}, "hidden_size": {"low": 2, "high": 6}},
        **extra,
    }
    create_study(url, parse_spec(spec), check_data=False)
    return "w"


class WorkerProcess:
    """`odyssey worker` in its own process, its log lines collected as they come."""

    def __init__(self, url: str, *extra: str, objective: str = "sleep:0.1", grace: int = 4) -> None:
        env = {**os.environ, "ODYSSEY_OBJECTIVE": objective, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "sweep.cli.main", "worker", "--storage", url, "--study", "w",
                   "--devices", "cpu", "--heartbeat", "1", "--grace", str(grace), "--poll", "0.2",
                   "--threads", "1", *extra]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern[str], count: int = 1, timeout: float = 90) -> list[re.Match]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for line in list(self.lines) if (m := pattern.search(line))]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern.pattern!r} x{count} in the worker's output:\n" + self.output)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:  # a failed test must not leave workers behind
        worker.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def designed_params(url: str) -> dict[int, dict[str, float]]:
    """Each slot's hyperparameters as the study was created (read back from the results rows)."""
    trials = results.load_study(url, "w").trials
    names = [c for c in ("learning_rate", "hidden_size", "momentum", "input_noise", "forget_bias")]
    return {int(r["slot"]): {n: float(r[n]) for n in names} for _, r in trials.iterrows()}


def assert_each_slot_ran_once(url: str, n_slots: int, designed: dict[int, dict[str, float]]) -> None:
    """Exactly one COMPLETE Optuna trial per slot with the designed parameters; nothing left waiting or
    running; every results row complete."""
    trials = load_optuna_study(url, "w").get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[SLOT_ATTR] for t in complete) == list(range(n_slots))
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    for t in complete:
        want = designed[t.user_attrs[SLOT_ATTR]]
        for name, value in want.items():
            assert math.isclose(float(t.params.get(name, value)), value, rel_tol=1e-9), (name, t.number)
    frame = results.load_study(url, "w").trials
    assert len(frame) == n_slots and set(frame["state"]) == {"complete"}
    by_slot = {t.user_attrs[SLOT_ATTR]: t.value for t in complete}
    for _, row in frame.iterrows():
        assert math.isclose(row["best_valid"], by_slot[row["slot"]], rel_tol=1e-9)


def finished_lines(*procs: WorkerProcess) -> int:
    return sum(line.count("finish trial") for p in procs for line in p.lines)


@pytest.mark.slow
def test_concurrent_workers_run_each_trial_exactly_once(url: str, workers: list[WorkerProcess]) -> None:
    make_study(url, variants=("V", "NFG", "CIFG"), per_variant=6)
    designed = designed_params(url)
    # three workers: one process, plus two spawned by a second process (spawning costs seconds, so only
    # PostgreSQL, the multi-host backend, gets that variant; SQLite gets two plain processes)
    jobs = "2" if url.startswith("postgresql") else "1"
    workers += [WorkerProcess(url), WorkerProcess(url, "--jobs-per-device", jobs)]
    for worker in workers:
        assert worker.wait() == 0, worker.output
    assert_each_slot_ran_once(url, 18, designed)
    assert not [t for t in load_optuna_study(url, "w").trials if t.state == TrialState.FAIL]
    assert finished_lines(*workers) == 18  # trained once each: no duplicate runs
    assert PG_PASSWORD_MARK not in "".join(w.output for w in workers)


@pytest.mark.slow
def test_killed_worker_has_its_trial_rerun_with_identical_params(
    url: str, workers: list[WorkerProcess]
) -> None:
    make_study(url, per_variant=2)
    designed = designed_params(url)
    doomed = WorkerProcess(url, objective="sleep:60")  # killed long before its trial could end
    workers.append(doomed)
    number, slot = map(int, doomed.wait_for(START)[0].groups())
    os.kill(doomed.proc.pid, signal.SIGKILL)
    doomed.wait()

    survivor = WorkerProcess(url, objective="sleep:0.5", grace=3)
    workers.append(survivor)
    assert survivor.wait() == 0, survivor.output
    assert_each_slot_ran_once(url, 4, designed)
    trials = load_optuna_study(url, "w").trials
    lost = trials[number]
    assert lost.state == TrialState.FAIL and lost.user_attrs[SLOT_ATTR] == slot
    (rerun,) = [t for t in trials if t.user_attrs[SLOT_ATTR] == slot and t.state == TrialState.COMPLETE]
    assert rerun.params == lost.params and rerun.system_attrs["failed_trial"] == number
    assert "lost its worker" in survivor.output
    row = results.load_study(url, "w").trials.set_index("slot").loc[slot]
    assert row["attempts"] == 2 and row["trial_number"] == rerun.number


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "jobs"), [("sqlite", 1), pytest.param("postgres", 2, marks=pytest.mark.postgres)]
)
def test_sigterm_requeues_the_running_trials(
    request: pytest.FixtureRequest, backend: str, jobs: int, workers: list[WorkerProcess]
) -> None:
    url = request.getfixturevalue(f"{'pg' if backend == 'postgres' else 'sqlite'}_url")
    make_study(url, per_variant=2)
    designed = designed_params(url)
    worker = WorkerProcess(url, "--jobs-per-device", str(jobs), objective="sleep:120")
    workers.append(worker)
    starts = worker.wait_for(START, count=jobs)
    interrupted = {int(m.group(2)) for m in starts}
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.output
    assert worker.output.count("re-queued") >= jobs

    trials = load_optuna_study(url, "w").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs[SLOT_ATTR] for t in waiting) == list(range(4))  # nothing lost
    for t in trials:
        if t.state == TrialState.FAIL:  # the interrupted originals: each has a waiting twin
            assert t.user_attrs[SLOT_ATTR] in interrupted
            (twin,) = [w for w in waiting if w.user_attrs[SLOT_ATTR] == t.user_attrs[SLOT_ATTR]]
            assert twin.params == t.params
    assert set(results.load_study(url, "w").trials["state"]) == {"waiting"}

    finisher = WorkerProcess(url, objective="noop")
    workers.append(finisher)
    assert finisher.wait() == 0, finisher.output
    assert_each_slot_ran_once(url, 4, designed)


@pytest.mark.slow
def test_killing_the_parent_requeues_its_childrens_trials(
    sqlite_url: str, workers: list[WorkerProcess]
) -> None:
    make_study(sqlite_url, per_variant=2)
    parent = WorkerProcess(sqlite_url, "--jobs-per-device", "2", objective="sleep:120")
    workers.append(parent)
    parent.wait_for(START, count=2)
    os.kill(parent.proc.pid, signal.SIGKILL)  # the children get SIGTERM from the kernel (Linux)
    parent.wait_for(re.compile("re-queued"), count=2, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        trials = load_optuna_study(sqlite_url, "w").trials
        if not [t for t in trials if t.state == TrialState.RUNNING]:
            break
        time.sleep(0.2)
    waiting = [t.user_attrs[SLOT_ATTR] for t in trials if t.state == TrialState.WAITING]
    assert sorted(waiting) == [0, 1, 2, 3]
    assert set(results.load_study(sqlite_url, "w").trials["state"]) == {"waiting"}


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_is_survived(pg_server, pg_url: str, workers: list[WorkerProcess]) -> None:  # noqa: ANN001
    make_study(pg_url, per_variant=6)
    designed = designed_params(pg_url)
    # a grace period longer than the restart: live trials must not be judged lost
    workers += [WorkerProcess(pg_url, objective="sleep:0.5", grace=30) for _ in range(2)]
    workers[0].wait_for(re.compile("finish trial"))
    pg_server.restart()  # every open connection is dropped
    assert finished_lines(*workers) < 12  # the sweep was still going when the server came back
    for worker in workers:
        assert worker.wait() == 0, worker.output
    assert_each_slot_ran_once(pg_url, 12, designed)
    assert finished_lines(*workers) == 12
    assert PG_PASSWORD_MARK not in "".join(w.output for w in workers)


def test_real_training_end_to_end(sqlite_url: str) -> None:
    import torch

    torch.set_num_threads(1)
    make_study(sqlite_url, per_variant=2)
    ran = Worker(WorkerConfig(url=sqlite_url, study="w", objective="train", heartbeat_interval=1,
                              grace_period=5, poll_interval=0.1)).run()
    assert ran == 4
    assert_each_slot_ran_once(sqlite_url, 4, designed_params(sqlite_url))
    data = results.load_study(sqlite_url, "w")
    assert (data.trials["n_params"] > 0).all() and (data.trials["epochs"] >= 1).all()
    assert data.trials["best_test"].notna().all()
    epochs = data.epochs.groupby("trial_number").size()
    assert dict(epochs) == dict(zip(data.trials["trial_number"], data.trials["epochs"], strict=True))
    # GRU and V trained on the same points with the same seeds: different cells, different results
    v, gru = (data.trials[data.trials["variant"] == x].sort_values("seed") for x in ("V", "GRU"))
    assert list(v["learning_rate"]) == list(gru["learning_rate"]) and list(v["seed"]) == list(gru["seed"])
    assert list(v["n_params"]) != list(gru["n_params"])


def test_diverged_run_completes_with_its_best_finite_value(sqlite_url: str) -> None:
    import torch

    torch.set_num_threads(1)
    make_study(sqlite_url, variants=("V",), per_variant=1,
               training={"max_epochs": 3, "patience": 3, "batch_size": 8, "optimizer": "sgd"},
               space={"learning_rate": {"value": 1e6}, "momentum": {"value": 0.0},
                      "hidden_size": {"value": 4}})
    Worker(WorkerConfig(url=sqlite_url, study="w", objective="train", heartbeat_interval=1,
                        grace_period=5, poll_interval=0.1)).run()
    (trial,) = load_optuna_study(sqlite_url, "w").trials
    row = results.load_study(sqlite_url, "w").trials.iloc[0]
    assert row["state"] == "diverged" and bool(row["diverged"])
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[DIVERGED_ATTR] is True
    assert math.isfinite(trial.value) and math.isclose(trial.value, row["best_valid"])


def test_a_custom_objective_records_its_epochs_through_the_trial_context(sqlite_url: str) -> None:
    # A `module:function` objective that imports no storage: each epoch given to ctx.record_epoch is a row
    # of the epochs table and the Optuna trial's intermediate value (optuna-dashboard's learning curve).
    from tests.objectives import curve

    make_study(sqlite_url, per_variant=2)
    objective = "tests.objectives:curve_objective_for_tests"
    ran = Worker(WorkerConfig(url=sqlite_url, study="w", objective=objective, heartbeat_interval=1,
                              grace_period=5, poll_interval=0.1)).run()
    assert ran == 4
    data = results.load_study(sqlite_url, "w")
    assert set(data.trials["state"]) == {"complete"} and (data.trials["epochs"] == 3).all()
    trials = load_optuna_study(sqlite_url, "w").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        rows = data.epochs[data.epochs["trial_number"] == trial.number].sort_values("epoch")
        assert list(rows["epoch"]) == [1, 2, 3]
        expected = [curve(trial.params, epoch) for epoch in (1, 2, 3)]
        for got, want in zip(rows["valid_metric"], expected, strict=True):
            assert math.isclose(got, want, rel_tol=1e-9)
        assert [round(x, 9) for x in rows["train_loss"]] == [round(2 * x, 9) for x in expected]
        assert [round(x, 9) for x in rows["test_metric"]] == [round(x + 0.1, 9) for x in expected]
        assert list(rows["seconds"]) == [0.25, 0.25, 0.25]
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        for epoch, want in zip((1, 2, 3), expected, strict=True):
            assert math.isclose(trial.intermediate_values[epoch], want, rel_tol=1e-9)
        assert math.isclose(trial.value, expected[-1], rel_tol=1e-9)


def test_a_trial_context_made_by_hand_cannot_record_epochs() -> None:
    from sweep.objective import TrialContext

    spec = parse_spec({"name": "h", "variants": ["V"], "trials_per_variant": 1,
                       "dataset": {"name": "synthetic"}})
    ctx = TrialContext("sqlite://", "h", spec, 0, 0, "V", {}, 0, "cpu")
    with pytest.raises(RuntimeError, match="no recorder"):
        ctx.record_epoch(1, valid_metric=0.5)


def test_tpe_runs_exactly_the_quota_per_variant(sqlite_url: str) -> None:
    make_study(sqlite_url, per_variant=6, design="tpe")
    Worker(WorkerConfig(url=sqlite_url, study="w", objective="noop", poll_interval=0.1)).run()
    trials = load_optuna_study(sqlite_url, "w").trials
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.params["variant"] for t in trials) == ["GRU"] * 6 + ["V"] * 6
    assert all(1e-3 <= t.params["learning_rate"] <= 1e-1 for t in trials)
    frame = results.load_study(sqlite_url, "w").trials
    assert set(frame["state"]) == {"complete"} and frame["learning_rate"].notna().all()


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert PG_PASSWORD_MARK not in done.stdout + done.stderr
    return errors[0]


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_bad_inputs(pg_server, sqlite_url: str) -> None:  # noqa: ANN001
    make_study(sqlite_url, per_variant=1)

    def worker(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "ODYSSEY_DB_RETRY_SECONDS": "0.5", "ODYSSEY_OBJECTIVE": "noop"}
        return subprocess.run([sys.executable, "-m", "sweep.cli.main", "worker", "--devices", "cpu", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert "no study named 'nope'" in _one_line_error(worker("--storage", sqlite_url, "--study", "nope"))
    wrong = pg_server.url.replace(PG_PASSWORD_MARK, "not-the-password")
    assert "password authentication failed" in _one_line_error(worker("--storage", wrong))
    dead = f"postgresql://odyssey:{PG_PASSWORD_MARK}@127.0.0.1:9/odyssey"
    assert "cannot connect" in _one_line_error(worker("--storage", dead))
    assert "unknown device" in _one_line_error(worker("--storage", sqlite_url, "--devices", "tpu"))
    # nothing was touched: the study still waits for its two trials
    assert set(results.load_study(sqlite_url, "w").trials["state"]) == {"waiting"}
    assert len(optuna.load_study(study_name="w", storage=sqlite_url).trials) == 2


def test_tpe_learns_from_each_variants_own_trials() -> None:
    from sweep.worker.sampling import PerVariantTPESampler

    dists = {"variant": optuna.distributions.CategoricalDistribution(["V", "GRU"]),
             "x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study = optuna.create_study(sampler=PerVariantTPESampler())
    # V is good near x = 0.9 only; GRU is good near x = 0.1 only
    for i in range(40):
        x = (i + 0.5) / 40
        for variant, best in (("V", 0.9), ("GRU", 0.1)):
            study.add_trial(optuna.trial.create_trial(
                params={"variant": variant, "x": x}, distributions=dists, value=abs(x - best)))
    picks: dict[str, list[float]] = {"V": [], "GRU": []}
    for i in range(30):
        variant = "V" if i % 2 else "GRU"
        study.enqueue_trial({"variant": variant})
        trial = study.ask(dists)
        picks[variant].append(trial.params["x"])
        study.tell(trial, state=TrialState.FAIL)
    assert sum(picks["V"]) / 15 > 0.7 and sum(picks["GRU"]) / 15 < 0.3


def test_worker_without_study_drains_every_study(sqlite_url: str) -> None:
    make_study(sqlite_url, per_variant=2)
    create_study(sqlite_url, parse_spec({"name": "second", "variants": ["NP"], "trials_per_variant": 3,
                                         "dataset": {"name": "synthetic"}}), check_data=False)
    ran = Worker(WorkerConfig(url=sqlite_url, objective="noop", poll_interval=0.1)).run()
    assert ran == 7
    for name, count in (("w", 4), ("second", 3)):
        frame = results.load_study(sqlite_url, name).trials
        assert len(frame) == count and set(frame["state"]) == {"complete"}
    from sweep.study import study_status

    status = study_status(sqlite_url, "second")
    assert status.totals["complete"] == 3 and status.throughput_per_hour and status.eta_seconds == 0


def failing_worker(url: str, per_variant: int, message: str) -> Worker:
    """A worker on a fresh one-variant study whose every trial raises RuntimeError(message)."""
    make_study(url, variants=("V",), per_variant=per_variant)
    worker = Worker(WorkerConfig(url=url, study="w", objective="noop", poll_interval=0.1))

    def boom(ctx: object) -> object:
        raise RuntimeError(message)

    worker.objective = boom  # type: ignore[assignment]
    return worker


def test_failing_objective_is_recorded_and_stops_the_worker(sqlite_url: str) -> None:
    from sweep.core.errors import OdysseyError

    worker = failing_worker(sqlite_url, 4, "cannot allocate tensor")
    with pytest.raises(OdysseyError, match="3 trials in a row failed .*RuntimeError: cannot allocate tensor"):
        worker.run()
    states = sorted(t.state.name for t in load_optuna_study(sqlite_url, "w").trials)
    assert states == ["FAIL", "FAIL", "FAIL", "WAITING"]
    frame = results.load_study(sqlite_url, "w").trials
    assert sorted(frame["state"]) == ["failed", "failed", "failed", "waiting"]
    assert frame[frame["state"] == "failed"]["error"].str.contains("cannot allocate tensor").all()


def test_worker_whose_every_trial_failed_exits_non_zero(sqlite_url: str) -> None:
    # Fewer trials than the consecutive-failure limit: the worker reaches "nothing left" and must still
    # not exit 0 (issue 10).
    from sweep.core.errors import OdysseyError

    worker = failing_worker(sqlite_url, 2, "no such dataset file")
    with pytest.raises(OdysseyError, match="all 2 trials this worker ran failed"):
        worker.run()
    assert sorted(t.state.name for t in load_optuna_study(sqlite_url, "w").trials) == ["FAIL", "FAIL"]


def test_worker_on_a_missing_sqlite_file_exits_non_zero_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    done = subprocess.run([sys.executable, "-m", "sweep.cli.main", "worker", "--devices", "cpu", "--storage",
                           f"sqlite:///{typo}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ODYSSEY_OBJECTIVE": "noop"})
    assert f"file {typo} does not exist" in _one_line_error(done)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("name", "said"), [
    ("float_objective_for_tests", "returned 0.5, not an Outcome(state, value, result)"),
    ("done_state_objective_for_tests", "returned an Outcome with state 'done', not 'complete' or 'diverged'"),
    ("failed_state_objective_for_tests", "returned an Outcome with state 'failed', not 'complete' or"),
    ("text_result_objective_for_tests",
     "returned a result that cannot be stored: expected a number, got 'n/a'"),
])
def test_an_objective_that_returns_no_outcome_fails_its_trials_not_the_worker(
        sqlite_url: str, name: str, said: str) -> None:
    # Each trial is recorded failed (for good) with a one-line error naming the objective; the worker goes
    # on to the next until the consecutive-failure rule stops it, leaving nothing running.
    from sweep.core.errors import OdysseyError

    make_study(sqlite_url, variants=("V",), per_variant=4)
    objective = f"tests.objectives:{name}"
    worker = Worker(WorkerConfig(url=sqlite_url, study="w", objective=objective, poll_interval=0.1))
    in_a_row = r"3 trials in a row failed \(last: objective " + re.escape(objective)
    with pytest.raises(OdysseyError, match=in_a_row):
        worker.run()
    states = sorted(t.state.name for t in load_optuna_study(sqlite_url, "w").trials)
    assert states == ["FAIL", "FAIL", "FAIL", "WAITING"]
    frame = results.load_study(sqlite_url, "w").trials
    assert sorted(frame["state"]) == ["failed", "failed", "failed", "waiting"]
    errors = frame.loc[frame["state"] == "failed", "error"]
    assert all(error.startswith(f"objective {objective} {said}") for error in errors), list(errors)
    # Failed for good: the repair pass does not run those slots again.
    assert Worker(WorkerConfig(url=sqlite_url, study="w", objective="noop", poll_interval=0.1)).run() == 1
    assert sorted(results.load_study(sqlite_url, "w").trials["state"]) == ["complete", "failed", "failed",
                                                                           "failed"]


def test_a_refused_epoch_reports_no_intermediate_value(sqlite_url: str) -> None:
    # The attempt was judged lost and re-queued while it ran: its late epoch is neither a row nor an
    # intermediate value, and the recorder says so (False) instead of raising.
    from sweep.recorder import TrialRecorder
    from sweep.study import requeue_trial

    make_study(sqlite_url, variants=("V",), per_variant=1)
    worker = Worker(WorkerConfig(url=sqlite_url, study="w", objective="noop"))
    target = worker._target("w")
    frozen = worker._claim(target)
    assert frozen is not None
    slot = frozen.user_attrs[SLOT_ATTR]
    recorder = TrialRecorder(sqlite_url, worker.storage, "w", slot, frozen.number, frozen._trial_id)
    recorder.started("host", "cpu", variant="V", params={}, seed=3, dataset="synthetic")
    assert recorder.epoch(1, valid_metric=0.5) is True
    requeue_trial(sqlite_url, worker.storage, target.study_id, "w", frozen._trial_id)
    assert recorder.epoch(2, valid_metric=0.4) is False
    trial = worker.storage.get_trial(frozen._trial_id)
    assert trial.intermediate_values == {1: 0.5}
    assert list(results.load_study(sqlite_url, "w").epochs["epoch"]) == [1]


def test_training_stops_at_the_first_refused_epoch(sqlite_url: str) -> None:
    from sweep.objective import TrialContext, TrialDiscarded, train_objective
    from sweep.study import stored_spec

    make_study(sqlite_url, variants=("V",), per_variant=1, training={"max_epochs": 5, "patience": 5,
                                                                      "batch_size": 8, "optimizer": "adam"})
    spec = stored_spec(load_optuna_study(sqlite_url, "w"))
    assert spec is not None

    class Refused:  # a recorder whose attempt lost its slot
        calls = 0

        def epoch(self, *args: object, **kwargs: object) -> bool:
            self.calls += 1
            return False

    recorder = Refused()
    ctx = TrialContext(sqlite_url, "w", spec, 0, 0, "V", {"learning_rate": 0.01, "hidden_size": 3}, 3, "cpu",
                       recorder=recorder)  # type: ignore[arg-type]
    with pytest.raises(TrialDiscarded):
        train_objective(ctx)
    assert recorder.calls == 1


def test_worker_settings_are_checked_once_for_every_entry_point(sqlite_url: str) -> None:
    from sweep.core.errors import ConfigError
    from sweep.worker import run_workers

    with pytest.raises(ConfigError, match=r"grace period \(10 s\) must be longer than the heartbeat"):
        WorkerConfig(url=sqlite_url, heartbeat_interval=10, grace_period=10)
    with pytest.raises(ConfigError, match="heartbeat interval must be at least 1 s, got 0"):
        WorkerConfig(url=sqlite_url, heartbeat_interval=0)
    with pytest.raises(ConfigError, match="max retries must be at least 0"):
        WorkerConfig(url=sqlite_url, max_retries=-1)
    with pytest.raises(ConfigError, match="poll interval must be more than 0 s"):
        WorkerConfig(url=sqlite_url, poll_interval=0)
    with pytest.raises(ConfigError, match="^jobs per device must be at least 1, got 0$"):
        run_workers(WorkerConfig(url=sqlite_url, objective="noop"), ["cpu"], 0)
    # `odyssey worker` says the same in one line, before it touches the database.
    make_study(sqlite_url, per_variant=1)
    done = subprocess.run([sys.executable, "-m", "sweep.cli.main", "worker", "--storage", sqlite_url,
                           "--devices", "cpu", "--heartbeat", "5", "--grace", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ODYSSEY_OBJECTIVE": "noop"})
    assert "grace period (5 s) must be longer than the heartbeat interval (5 s)" in _one_line_error(done)
    assert set(results.load_study(sqlite_url, "w").trials["state"]) == {"waiting"}


def test_test_objectives_take_only_cpu_and_cuda_device_names() -> None:
    from sweep.core.errors import ConfigError
    from sweep.worker import resolve_devices

    assert resolve_devices("cpu,cuda,cuda:1", "noop") == ["cpu", "cuda", "cuda:1"]
    for bad in ("cudafoo", "cuda:", "cuda:x", "cuda:1:2"):
        with pytest.raises(ConfigError, match=f"unknown device {bad!r}"):
            resolve_devices(bad, "noop")
