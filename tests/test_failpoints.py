"""Exactly once under every fault: a process is killed (SIGKILL) or PostgreSQL restarted at each named
failpoint (storage/failpoints.py) of the claim, heartbeat, lost-trial, stop, repair, finish and create
paths; then a clean worker finishes the study, and every designed slot has exactly one COMPLETE trial and
one complete results row with its values: no slot lost, no extra trial, every worker exits."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from storage import results
from storage.failpoints import FAILPOINTS
from sweep.spec import parse_spec
from sweep.study import SLOT_ATTR, create_study, load_optuna_study, open_storage, repair_study, study_status
from sweep.worker import Worker, WorkerConfig
from tests.faults import (
    GRACE,
    HEARTBEAT,
    ROOT,
    assert_exactly_once,
    claim_and_abandon,
    env_with,
    finish_cleanly,
    killed_at,
    odyssey,
    spec_dict,
    worker_args,
    write_spec,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_every_failpoint_in_the_code_is_listed_and_tested() -> None:
    source = "".join(p.read_text() for p in [*ROOT.glob("sweep/**/*.py"), *ROOT.glob("storage/*.py")])
    used = set()
    for name in re.findall(r'failpoint\(f?"([^"]+)"\)', source):
        used |= {name.replace("{point}", p) for p in ("stale", "requeue")}
    assert used == set(FAILPOINTS)
    tested = {*WORKER_POINTS, *STALE_POINTS, *REQUEUE_POINTS, "repair.after-copy", *CREATE_POINTS,
              "create.start"}
    assert tested == set(FAILPOINTS)


# --- a worker killed in its claim / start / heartbeat / finish path -------------------------------------

WORKER_POINTS = ["claim.before", "claim.after", "start.after", "heartbeat.after", "finish.before-tell",
                 "finish.after-tell"]


@pytest.mark.slow
@pytest.mark.parametrize("point", WORKER_POINTS)
def test_worker_killed_at(url: str, point: str) -> None:
    spec = spec_dict()
    create_study(url, parse_spec(spec), check_data=False)
    # The heartbeat thread beats after HEARTBEAT seconds: that trial must outlast it.
    objective = "sleep:1.6" if point == "heartbeat.after" else "sleep:0.1"
    killed_at(odyssey(*worker_args(url, objective), env=env_with(f"{point}:kill@2")), point)
    finish_cleanly(url)
    assert_exactly_once(url, spec)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("point", ["claim.before", "finish.before-tell", "stale.after-copy"])
def test_postgres_restarted_at(pg_server, pg_url: str, tmp_path: Path, point: str) -> None:  # noqa: ANN001
    spec = spec_dict()
    create_study(pg_url, parse_spec(spec), check_data=False)
    if point.startswith("stale"):
        claim_and_abandon(pg_url, 2)
    worker = odyssey(*worker_args(pg_url), env=env_with(f"{point}:pause", tmp_path))
    marker = tmp_path / point
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0]
        time.sleep(0.05)
    pg_server.restart()  # every connection of the paused worker is dropped
    marker.unlink()
    out, _ = worker.communicate(timeout=180)
    assert worker.returncode == 0, out
    finish_cleanly(pg_url)
    assert_exactly_once(pg_url, spec)


# --- a worker killed while it re-queues lost trials, stops, or repairs ----------------------------------


STALE_POINTS = ["stale.after-copy", "stale.after-fail"]
REQUEUE_POINTS = ["requeue.after-copy", "requeue.after-fail"]


@pytest.mark.slow
@pytest.mark.parametrize("point", STALE_POINTS)
def test_checker_killed_while_requeueing_lost_trials(url: str, point: str) -> None:
    spec = spec_dict()
    create_study(url, parse_spec(spec), check_data=False)
    abandoned = claim_and_abandon(url, 3)
    checker = odyssey(*worker_args(url), env=env_with(f"{point}:kill"))
    killed_at(checker, point)
    trials = load_optuna_study(url, "fp").get_trials(deepcopy=False)
    lost = [t for t in trials if t.number in abandoned]
    # Re-queue before fail: a lost trial is never FAIL without a waiting copy of its slot.
    for t in lost:
        if t.state == TrialState.FAIL:
            assert any(c.user_attrs[SLOT_ATTR] == t.user_attrs[SLOT_ATTR] and c.state == TrialState.WAITING
                       for c in trials)
    finish_cleanly(url)
    assert_exactly_once(url, spec)


@pytest.mark.slow
@pytest.mark.parametrize("point", REQUEUE_POINTS)
def test_stopping_worker_killed_while_requeueing(url: str, point: str) -> None:
    spec = spec_dict()
    create_study(url, parse_spec(spec), check_data=False)
    worker = odyssey(*worker_args(url, "sleep:60"), env=env_with(f"{point}:kill"))
    assert worker.stdout is not None
    for line in worker.stdout:
        if "start  trial" in line:
            break
    worker.send_signal(signal.SIGTERM)
    killed_at(worker, point)
    finish_cleanly(url)
    assert_exactly_once(url, spec)


@pytest.mark.slow
def test_repair_requeues_a_lost_slot_even_when_killed(url: str) -> None:
    spec = spec_dict()
    create_study(url, parse_spec(spec), check_data=False)
    # Two slots lost as Optuna's own stale check loses them: FAIL, and no copy (a checker killed before
    # its re-queue callback ran).
    storage = open_storage(url)
    for number in claim_and_abandon(url, 2):
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("fp"),
                                                                   number)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    assert study_status(url, "fp").lost == 2
    killed_at(odyssey(*worker_args(url), env=env_with("repair.after-copy:kill")), "repair.after-copy")
    finish_cleanly(url)
    assert_exactly_once(url, spec)


def test_study_repair_command_reports_what_it_did(sqlite_url: str) -> None:
    create_study(sqlite_url, parse_spec(spec_dict()), check_data=False)
    storage = open_storage(sqlite_url)
    (number,) = claim_and_abandon(sqlite_url, 1)
    storage.set_trial_state_values(
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("fp"), number),
        TrialState.FAIL)
    for expected in ("re-queued 1 lost slot [", "nothing to repair"):
        done = subprocess.run([sys.executable, "-m", "sweep.cli.main", "study", "repair", "fp", "--storage",
                               sqlite_url], cwd=ROOT, env=env_with(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
    finish_cleanly(sqlite_url)
    assert_exactly_once(sqlite_url, spec_dict())


# --- a zombie: a worker stopped past the grace period, resumed after its trial was re-queued -----------


REPORTS = "tests.objectives:report_after_pause_objective_for_tests"


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "objective"), [
    ("sqlite", "sleep:1.5"), pytest.param("postgres", "sleep:1.5", marks=pytest.mark.postgres),
    ("sqlite", REPORTS),  # the first write after resuming is an epoch's intermediate value, as in training
])
def test_a_zombies_late_result_is_refused(request: pytest.FixtureRequest, backend: str,
                                          objective: str) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    spec = spec_dict(per_variant=1)
    create_study(url, parse_spec(spec), check_data=False)
    zombie = odyssey(*worker_args(url, objective), env=env_with())
    assert zombie.stdout is not None
    for line in zombie.stdout:
        if "start  trial" in line:
            break
    zombie.send_signal(signal.SIGSTOP)
    try:
        time.sleep(GRACE + 1.5)
        # Another worker judges the trial lost and re-queues it; the row passes to the copy at once.
        checker = Worker(WorkerConfig(url=url, study="fp", objective="noop", heartbeat_interval=HEARTBEAT,
                                      grace_period=GRACE, poll_interval=0.2))
        checker._check_stale(checker._target("fp"), force=True)
        rows = results.load_study(url, "fp", with_epochs=False).trials
        assert "waiting" in set(rows["state"]) and (rows["attempts"] >= 2).any()
    finally:
        zombie.send_signal(signal.SIGCONT)
    out, _ = zombie.communicate(timeout=120)
    assert zombie.returncode == 0, out
    assert "its result is discarded" in out
    finish_cleanly(url)
    assert_exactly_once(url, spec)


# --- study creation ------------------------------------------------------------------------------------

CREATE_POINTS = ["create.after-study", "create.mid-enqueue", "create.before-spec"]


@pytest.mark.slow
@pytest.mark.parametrize("point", CREATE_POINTS)
def test_create_killed_at(url: str, tmp_path: Path, point: str) -> None:
    # mid-enqueue: 110 trials, two enqueue chunks (ENQUEUE_CHUNK = 100)
    spec = spec_dict(per_variant=55 if point == "create.mid-enqueue" else 3)
    path = write_spec(tmp_path / "fp.toml", spec)
    creator = odyssey("study", "create", str(path), "--storage", url, "--skip-data-check",
                      env=env_with(f"{point}:kill"))
    killed_at(creator, point)
    outcome = create_study(url, parse_spec(spec), check_data=False)
    assert outcome.created and "interrupted" in outcome.message
    finish_cleanly(url)
    assert_exactly_once(url, spec)


# Runs `odyssey study create` (the CLI's own entry point) once per URL given, each time after the test
# opens a gate for all creators at once; prints each run's output to a file. One interpreter per creator
# for all ten runs: starting one per run costs seconds, the creations themselves well under one.
CREATOR = """
import contextlib, io, sys, time
from pathlib import Path
from sweep.cli.main import main
me, spec, gates, urls = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
for i, url in enumerate(urls):
    (gates / f"ready{i}-{me}").touch()
    while not (gates / f"go{i}").exists():
        time.sleep(0.005)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(["study", "create", spec, "--storage", url, "--skip-data-check"])
        except SystemExit as exc:
            print(f"exit {exc.code}")
    (gates / f"out{i}-{me}").write_text(out.getvalue())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_concurrent_creates_enqueue_the_design_once(request: pytest.FixtureRequest, tmp_path: Path,
                                                    backend: str) -> None:
    from storage.engine import dispose_engine

    runs = 10
    if backend == "sqlite":  # a fresh file each time: both creators open a database that does not exist
        urls = [f"sqlite:///{tmp_path / f'fresh{i}.db'}" for i in range(runs)]
    else:
        server = request.getfixturevalue("pg_server")
        urls = [server.create_database() for _ in range(runs)]
    path = write_spec(tmp_path / "c.toml", spec_dict(per_variant=45, name="c"))
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, me, str(path), str(tmp_path), *urls],
                              cwd=ROOT, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for me in ("a", "b")]
    try:
        for i in range(runs):
            deadline = time.monotonic() + 180
            while not all((tmp_path / f"ready{i}-{me}").exists() for me in "ab"):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                    [p.communicate()[0] for p in procs if p.poll() is not None]
                time.sleep(0.01)
            (tmp_path / f"go{i}").touch()
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out
    finally:
        for proc in procs:
            proc.kill()
    for i, url in enumerate(urls):
        outputs = [(tmp_path / f"out{i}-{me}").read_text() for me in "ab"]
        created = [o for o in outputs if "created study 'c': 90 trials enqueued" in o]
        found = [o for o in outputs if "already exists with this spec; nothing added" in o]
        assert len(created) == 1 and len(found) == 1, (i, outputs)
        assert not any("interrupted" in o or re.search(r"exit [1-9]", o) for o in outputs), outputs
        assert len(load_optuna_study(url, "c").get_trials(deepcopy=False)) == 90
        assert len(results.load_study(url, "c", with_epochs=False).trials) == 90
        dispose_engine(url)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_create_commands_at_once(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    # The same race through two `odyssey study create` processes, released together at `create.start`.
    url = (f"sqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    path = write_spec(tmp_path / "c.toml", spec_dict(per_variant=45, name="c"))
    gates = [tmp_path / "gate0", tmp_path / "gate1"]
    procs = []
    for gate in gates:
        gate.mkdir()
        procs.append(odyssey("study", "create", str(path), "--storage", url, "--skip-data-check",
                             env=env_with("create.start:pause", gate)))
    deadline = time.monotonic() + 180
    while not all((gate / "create.start").exists() for gate in gates):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    for gate in gates:
        (gate / "create.start").unlink()
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted("nothing added" in o for o in outputs) == [False, True], outputs
    assert len(load_optuna_study(url, "c").get_trials(deepcopy=False)) == 90


@pytest.mark.slow
def test_a_worker_started_during_creation_waits_for_it(url: str, tmp_path: Path) -> None:
    spec = spec_dict(per_variant=2)
    path = write_spec(tmp_path / "fp.toml", spec)
    creator = odyssey("study", "create", str(path), "--storage", url, "--skip-data-check",
                      env=env_with("create.after-study:pause", tmp_path))
    marker = tmp_path / "create.after-study"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and creator.poll() is None
        time.sleep(0.05)
    worker = odyssey(*worker_args(url, "noop"), env=env_with())
    time.sleep(3)  # the worker is up and waiting on the study lock, not failing
    assert worker.poll() is None
    marker.unlink()
    assert creator.wait(120) == 0
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out
    assert out.count("finish trial") == 4
    assert_exactly_once(url, spec)


def test_status_shows_lost_and_extra_slots_and_repair_fixes_both(sqlite_url: str) -> None:
    spec = spec_dict()
    create_study(sqlite_url, parse_spec(spec), check_data=False)
    study = load_optuna_study(sqlite_url, "fp")
    study.add_trial(study.get_trials()[-1])  # a second waiting trial of one slot (a doubled creation)
    storage = open_storage(sqlite_url)
    (lost,) = claim_and_abandon(sqlite_url, 1)
    storage.set_trial_state_values(
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("fp"), lost),
        TrialState.FAIL)  # slot lost: FAIL with no copy
    status = study_status(sqlite_url, "fp")
    assert (status.lost, status.extra) == (1, 1)
    done = subprocess.run([sys.executable, "-m", "sweep.cli.main", "study", "status", "fp", "--storage",
                           sqlite_url], cwd=ROOT, env=env_with(), capture_output=True, text=True, timeout=120)
    assert "1 slot lost (no live trial), 1 extra trial" in " ".join(done.stdout.split()), done.stdout
    repaired = repair_study(sqlite_url, "fp")
    assert len(repaired.requeued) == 1 and len(repaired.withdrawn) == 1
    assert (study_status(sqlite_url, "fp").lost, study_status(sqlite_url, "fp").extra) == (0, 0)
    finish_cleanly(sqlite_url)
    assert_exactly_once(sqlite_url, spec)
