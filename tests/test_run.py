"""`odyssey run`: a study from a spec to a report, interrupted with Ctrl-C and resumed without loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.results import load_study

ROOT = Path(__file__).resolve().parents[1]
ODYSSEY = [sys.executable, "-m", "sweep.cli.main"]

SPEC = """
name = "run-tiny"
variants = ["V", "CIFG"]
design = "sobol"
trials_per_variant = 6
seed = 3

[dataset]
name = "synthetic"
n_train = 32
n_valid = 16
n_test = 16

[training]
max_epochs = 3
patience = 2
batch_size = 8
optimizer = "adam"

[space.learning_rate]
low = 1e-3
high = 1e-1

[space.hidden_size]
low = 2
high = 8
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("ODYSSEY_STORAGE", None)
    return env


def _finished(url: str) -> int:
    try:
        trials = load_study(url, "run-tiny").trials
    except Exception:  # the study may not exist yet
        return 0
    return int(trials["state"].isin(["complete", "diverged", "failed"]).sum())


@pytest.mark.slow
def test_run_interrupted_with_ctrl_c_resumes_to_a_complete_study_and_report(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    # Each trial sleeps 1 s on top of training so that Ctrl-C lands while trials are running.
    args = [*ODYSSEY, "run", str(spec), "--storage", url, "--workers", "2", "-o", str(tmp_path / "rep"),
            "--objective", "tests.objectives:slow_train_objective_for_tests"]
    first = subprocess.Popen(args, cwd=tmp_path, env=_env(), start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _finished(url) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.3)
    assert first.poll() is None, first.communicate()
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(first.pid, signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    # The hint resumes the same run: same storage, same report folder, same workers.
    hint = next(line for line in err.splitlines() if "Resume with:" in line).split("Resume with: ")[1]
    assert hint.startswith(f"odyssey run {spec} --storage {url} ")
    assert f" -o {tmp_path / 'rep'}" in hint and " --workers 2" in hint, hint
    assert "Traceback" not in err, err

    partial = load_study(url, "run-tiny").trials
    assert len(partial) == 12
    assert (partial["state"] == "running").sum() == 0, "an interrupted trial was left running"
    done_before = set(partial.loc[partial["state"] == "complete", "slot"])
    assert 2 <= len(done_before) < 12
    assert not (tmp_path / "rep" / "report.html").exists()

    second = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming study 'run-tiny'" in second.stderr

    final = load_study(url, "run-tiny").trials
    assert len(final) == 12 and sorted(final["slot"]) == list(range(12))
    assert set(final["state"]) <= {"complete", "diverged"}
    # Trials finished before the interruption were not trained again.
    again = final[final["slot"].isin(done_before)]
    assert (again["attempts"] == 1).all() if "attempts" in final else True
    assert (tmp_path / "rep" / "report.html").stat().st_size > 100_000
    assert (tmp_path / "rep" / "variant_stats.csv").exists()


def test_run_local_runs_a_study_from_python_and_reports_its_progress(tmp_path: Path) -> None:
    import math

    from optuna.trial import TrialState

    from sweep.run import Progress, run_local
    from sweep.spec import load_spec
    from sweep.study import SLOT_ATTR, load_optuna_study

    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    seen: list[Progress] = []
    messages: list[str] = []
    outcome = run_local(spec, url, workers=2, devices="cpu", objective="noop", on_progress=seen.append,
                        on_message=messages.append, poll=0.2)
    assert (outcome.study, outcome.url, outcome.workers, outcome.devices) == ("run-tiny", url, 2, ["cpu"])
    assert outcome.created and outcome.ran and outcome.complete
    assert messages[0] == f"storage {url}" and "created study 'run-tiny'" in messages[1]
    assert messages[2] == "2 workers on cpu"
    # Progress came while the workers ran, never going back, and ended on the whole study.
    assert seen and seen[-1] == outcome.progress
    finished = [p.finished for p in seen]
    assert finished == sorted(finished) and all(p.total == 12 for p in seen)
    assert (outcome.progress.finished, outcome.progress.running) == (12, 0)
    assert outcome.progress.per_variant == {"V": (6, 6), "CIFG": (6, 6)}
    # Each slot ran once, with the value Optuna holds in its results row.
    trials = load_optuna_study(url, "run-tiny").trials
    assert sorted(t.user_attrs[SLOT_ATTR] for t in trials) == list(range(12))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    rows = load_study(url, "run-tiny").trials.set_index("slot")
    assert set(rows["state"]) == {"complete"}
    for t in trials:
        assert math.isclose(rows.loc[t.user_attrs[SLOT_ATTR], "best_valid"], t.value, rel_tol=1e-9)
    for variant, best in outcome.progress.best.items():
        assert math.isclose(best, rows[rows["variant"] == variant]["best_valid"].min(), rel_tol=1e-9)

    # Called again (with the spec itself this time): a complete study is left alone, no worker started.
    again = run_local(load_spec(spec), url, devices="cpu", objective="noop", on_message=messages.append)
    assert not again.created and not again.ran and again.complete and again.workers == 0
    assert messages[-1] == "resuming study 'run-tiny'"
    assert len(load_optuna_study(url, "run-tiny").trials) == 12


def test_run_local_checks_its_arguments_before_writing_anything(tmp_path: Path) -> None:
    from sweep.core.errors import OdysseyError
    from sweep.run import run_local

    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    db = tmp_path / "odyssey.db"
    with pytest.raises(OdysseyError, match="unknown device 'tpu'"):
        run_local(spec, f"sqlite:///{db}", devices="tpu", objective="noop")
    with pytest.raises(OdysseyError, match="workers must be at least 1"):
        run_local(spec, f"sqlite:///{db}", workers=0, devices="cpu", objective="noop")
    with pytest.raises(OdysseyError, match=r"^objective 'nomod:f' cannot be loaded: No module named"):
        run_local(spec, f"sqlite:///{db}", devices="cpu", objective="nomod:f")
    with pytest.raises(OdysseyError, match=r"grace period \(10 s\) must be longer than the heartbeat"):
        run_local(spec, f"sqlite:///{db}", devices="cpu", objective="noop", heartbeat_interval=10,
                  grace_period=10)
    assert not db.exists()


@pytest.mark.parametrize(("option", "said"), [
    (["--objective", "nomod:f"], "objective 'nomod:f' cannot be loaded"),
    (["--objective", "noop", "--heartbeat", "3", "--grace", "2"], "grace period (2 s) must be longer"),
])
def test_run_rejects_a_bad_objective_or_worker_setting_in_one_line_before_creating_the_study(
        tmp_path: Path, option: list[str], said: str) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    db = tmp_path / "odyssey.db"
    proc = subprocess.run([*ODYSSEY, "run", str(spec), "--storage", f"sqlite:///{db}", "--devices", "cpu",
                           *option], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and said in lines[0], proc.stderr
    assert not db.exists()


def test_run_local_gives_back_the_callers_ctrl_c_handler_when_it_fails(tmp_path: Path) -> None:
    import signal

    from sweep.run import run_local

    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)

    class DisplayBroke(Exception):
        pass

    def broken_display(_progress: object) -> None:
        raise DisplayBroke()

    def mine(signum: int, frame: object) -> None:
        raise KeyboardInterrupt()

    before = signal.signal(signal.SIGINT, mine)
    try:
        with pytest.raises(DisplayBroke):
            run_local(spec, f"sqlite:///{tmp_path / 'odyssey.db'}", workers=1, devices="cpu",
                      objective="sleep:0.5", on_progress=broken_display)
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)
    # The workers stopped cleanly: nothing was left running.
    states = set(load_study(f"sqlite:///{tmp_path / 'odyssey.db'}", "run-tiny").trials["state"])
    assert "running" not in states


def test_run_local_runs_off_the_main_thread(tmp_path: Path) -> None:
    import threading

    from sweep.run import RunOutcome, run_local

    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    done: list[RunOutcome | BaseException] = []

    def run() -> None:
        try:
            done.append(run_local(spec, f"sqlite:///{tmp_path / 'odyssey.db'}", workers=2, devices="cpu",
                                  objective="noop", poll=0.2))
        except BaseException as exc:  # handed to the test's thread
            done.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(240)
    assert len(done) == 1, "run_local did not return"
    outcome = done[0]
    assert isinstance(outcome, RunOutcome), repr(outcome)
    assert outcome.complete and outcome.progress.finished == 12


def test_run_with_one_worker_whose_trials_all_fail_says_so_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    objective = "tests.objectives:float_objective_for_tests"
    proc = subprocess.run([*ODYSSEY, "run", str(spec), "--storage", url, "--workers", "1", "--devices", "cpu",
                           "--no-report", "--objective", objective], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    # The worker's reason, in one line, then the run's own error.
    stops = [line for line in proc.stderr.splitlines() if "3 trials in a row failed" in line]
    assert len(stops) == 1 and f"objective {objective} returned 0.5, not an Outcome" in stops[0], proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: a worker failed (exit status 1); see the log lines above"], proc.stderr
    assert sorted(load_study(url, "run-tiny").trials["state"]).count("failed") == 3


def test_run_rejects_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace('"CIFG"', '"XLSTM"'))
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    proc = subprocess.run([*ODYSSEY, "run", str(spec), "--storage", url], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "XLSTM" in lines[0]


def test_commands_shown_to_rerun_never_hold_the_password_and_still_work() -> None:
    """A resume or rebuild hint with a password-protected storage names $ODYSSEY_STORAGE (masking the URL
    would print a command that cannot connect); a storage without a password is shown as given."""
    from sweep.cli.run import shown_command

    line = shown_command(["odyssey", "run", "s.toml", "--storage", "postgresql+psycopg://u:hunter2@db/x"])
    assert "hunter2" not in line
    assert line.startswith('odyssey run s.toml --storage "$ODYSSEY_STORAGE"')
    assert "postgresql+psycopg://u:***@db/x" in line
    assert shown_command(["odyssey", "report", "x", "--storage", "sqlite:///a b.db"]) == (
        "odyssey report x --storage 'sqlite:///a b.db'")

