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
