"""The `odyssey` command line as a user meets it: option names, messages, output files, `run` on a study
that is already complete or was interrupted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pandas as pd
import pytest

from storage import results
from storage.query import export
from sweep.cli.common import STORAGE_HELP
from sweep.cli.main import COMMANDS, LazyGroup, main
from sweep.run import Progress, read_progress
from sweep.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
ODYSSEY = [sys.executable, "-m", "sweep.cli.main"]


def _cut_example() -> str:
    """The example tiny study cut to one trial of one variant (a second or two of training)."""
    text = (ROOT / "examples" / "synthetic-tiny.toml").read_text()
    for line, replacement in (('name = "synthetic-tiny"', 'name = "cli-tiny"'),
                              ('variants = ["V", "NFG", "CIFG"]', 'variants = ["V"]'),
                              ("trials_per_variant = 4", "trials_per_variant = 1"),
                              ("max_epochs = 3", "max_epochs = 1")):
        assert text.count(line) == 1, f"examples/synthetic-tiny.toml changed: {line}"
        text = text.replace(line, replacement)
    return text


TINY = _cut_example()


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _odyssey(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    env.pop("ODYSSEY_STORAGE", None)
    return subprocess.run([*ODYSSEY, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# --------------------------------------------------------------------------------- options and messages


def _all_commands() -> Iterator[tuple[str, click.Command]]:
    group = LazyGroup()
    for name in COMMANDS:
        command = group.get_command(click.Context(group), name)
        if isinstance(command, click.Group):
            for sub, subcommand in command.commands.items():
                yield f"{name} {sub}", subcommand
        else:
            yield name, command


def test_every_storage_option_reads_the_same() -> None:
    seen = {}
    for name, command in _all_commands():
        for param in command.params:
            if "--storage" in getattr(param, "opts", []):
                seen[name] = (param.help, param.metavar)
    assert {"run", "report", "query", "export", "worker", "study create", "study list"} <= set(seen)
    assert set(seen.values()) == {(STORAGE_HELP, "URL")}, seen


def test_run_and_report_name_and_default_their_folder_alike() -> None:
    commands = dict(_all_commands())
    for name in ("run", "report", "export"):
        (out,) = [p for p in commands[name].params if "-o" in getattr(p, "opts", [])]
        assert out.opts == ["-o", "--out"], name
    for name in ("run", "report"):
        (out,) = [p for p in commands[name].params if "-o" in getattr(p, "opts", [])]
        assert "(default: reports/STUDY)" in out.help, name


def test_report_writes_into_reports_study_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import analysis.report

    seen = {}

    def fake_build_report(url: str, study: str, outdir: Path, **kwargs: object) -> Path:
        seen["outdir"] = Path(outdir)
        return Path(outdir) / "report.html"

    monkeypatch.setattr(analysis.report, "build_report", fake_build_report)
    monkeypatch.chdir(tmp_path)
    code, out, _ = _cli(["report", "some-study", "--storage", f"sqlite:///{tmp_path / 'x.db'}"], capsys)
    assert code == 0 and seen["outdir"] == Path("reports") / "some-study"


def test_char_dataset_without_data_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["train", "--dataset", "char", "--epochs", "1"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--data" in lines[0] and "option path" not in lines[0], lines


def test_study_create_prints_one_line_in_the_singular(spec_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    done = _odyssey(["study", "create", str(spec_file), "--storage", url], tmp_path)
    assert done.returncode == 0, done.stderr
    # No empty line from the (hidden, not a terminal) progress bar, and "1 trial", "1 variant".
    assert done.stderr == ""
    assert done.stdout.count("\n") == 1
    assert "1 trial enqueued (1 variant x 1," in done.stdout, done.stdout


def test_study_list_shows_whole_headers_in_80_columns(spec_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    assert _odyssey(["study", "create", str(spec_file), "--storage", url], tmp_path).returncode == 0
    shown = _odyssey(["study", "list", "--storage", url], tmp_path)
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "study" in line and "dataset" in line)
    assert re.findall(r"\w+", header) == ["study", "dataset", "trials", "waiting", "running", "complete",
                                          "failed", "diverged"], shown.stdout
    assert "…" not in shown.stdout


def _record_failed_study(url: str, n: int) -> None:
    spec = {"variants": ["V"], "design": "sobol", "dataset": {"name": "synthetic"},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1}}}
    results.register_study(url, "all-failed", spec)
    results.record_designed_trials(url, "all-failed", [
        {"slot": s, "variant": "V", "seed": s, "params": {"learning_rate": 1e-2}} for s in range(n + 2)])
    for slot in range(n):
        results.record_trial_started(url, "all-failed", slot, trial_number=slot, host="h", device="cpu")
        time.sleep(0.01)
        results.record_trial_finished(url, "all-failed", slot, "failed", {"error": "boom"})


def test_status_gives_no_throughput_when_every_finished_trial_failed(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _record_failed_study(sqlite_url, 3)
    code, out, _ = _cli(["study", "status", "all-failed", "--storage", sqlite_url], capsys)
    assert code == 0
    assert "throughput: unknown; left: 2; ETA: unknown" in out, out


# --------------------------------------------------------------------------------- export


def _record_int_study(url: str) -> None:
    spec = {"variants": ["V"], "design": "sobol", "dataset": {"name": "synthetic"},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1},
                      "hidden_size": {"type": "int", "low": 2, "high": 64}}}
    results.register_study(url, "ints", spec)
    results.record_designed_trials(url, "ints", [
        {"slot": 0, "variant": "V", "seed": 1, "params": {"learning_rate": 1e-2, "hidden_size": 22}},
        {"slot": 1, "variant": "V", "seed": 2, "params": {"learning_rate": 2e-2, "hidden_size": 7}},
    ])


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_respects_the_umask_and_keeps_integers(sqlite_url: str, tmp_path: Path, fmt: str,
                                                      umask_022: None) -> None:
    _record_int_study(sqlite_url)
    path = export(sqlite_url, "ints", tmp_path / f"ints.{fmt}")
    assert path.stat().st_mode & 0o777 == 0o644
    if fmt == "csv":
        frame = pd.read_csv(path, dtype=str)
        assert frame["hidden_size"].tolist() == ["22", "7"]
    else:
        frame = pd.read_parquet(path)
        assert pd.api.types.is_integer_dtype(frame["hidden_size"]), frame["hidden_size"].dtype
        assert frame["hidden_size"].tolist() == [22, 7]
    assert frame["learning_rate"].astype(float).tolist() == [1e-2, 2e-2]
    os.umask(0o077)
    private = export(sqlite_url, "ints", tmp_path / f"private.{fmt}")
    assert private.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------------- odyssey run


def test_run_rejects_a_device_before_creating_the_study(spec_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "o.db"
    code, _, err = _cli(["run", str(spec_file), "--storage", f"sqlite:///{db}", "--devices", "gpu"], capsys)
    assert code == 1 and "'gpu'" in err and "Traceback" not in err
    assert not db.exists(), "a rejected command must not have created the study"


def test_eta_counts_only_the_trials_of_this_session() -> None:
    # Resumed with 3 of 36 done: nothing finished yet in this session, so no estimate...
    resumed = Progress(total=36, finished=3, per_variant={}, best={}, running=2, elapsed=2.0,
                       finished_before=3)
    assert resumed.eta_seconds is None
    # ... then one trial in 10 s: 32 left take 320 s (not 10 / 4 * 32 = 80 s).
    later = Progress(total=36, finished=4, per_variant={}, best={}, running=2, elapsed=10.0,
                     finished_before=3)
    assert later.eta_seconds == pytest.approx(320.0)


def test_read_progress_carries_the_sessions_starting_point(sqlite_url: str) -> None:
    spec = parse_spec({**_tiny_dict(), "name": "progress"})
    results.register_study(sqlite_url, "progress", spec.normalised())
    results.record_designed_trials(sqlite_url, "progress", [
        {"slot": s, "variant": "V", "seed": s, "params": {"learning_rate": 1e-2, "hidden_size": 4}}
        for s in range(4)])
    results.record_trial_started(sqlite_url, "progress", 0, trial_number=0, host="h", device="cpu")
    results.record_trial_finished(sqlite_url, "progress", 0, "complete", {"best_valid": 1.0})
    before = read_progress(sqlite_url, spec, time.monotonic()).finished
    assert before == 1
    now = read_progress(sqlite_url, spec, time.monotonic() - 5, finished_before=before)
    assert now.finished_before == 1 and now.eta_seconds is None


def _tiny_dict() -> dict:
    import tomllib

    return tomllib.loads(TINY)


def test_run_on_a_complete_study_prints_its_report_and_starts_no_worker(spec_file: Path,
                                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    first = _odyssey(["run", str(spec_file), "--storage", url, "--workers", "1", "--no-report",
                      "--objective", "noop"], tmp_path)
    assert first.returncode == 0, first.stderr
    page = tmp_path / "reports" / "cli-tiny" / "report.html"
    page.parent.mkdir(parents=True)
    page.write_text("the report of the first run")

    again = _odyssey(["run", str(spec_file), "--storage", url], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "study 'cli-tiny' is complete (1 trial finished)" in again.stderr
    assert "worker" not in again.stderr, "no worker may start for a complete study"
    assert again.stdout.strip() == f"report: {Path('reports') / 'cli-tiny' / 'report.html'}"
    assert f"odyssey report cli-tiny --storage {url}" in again.stderr
    assert page.read_text() == "the report of the first run", "the report must not be rebuilt"

    quiet = _odyssey(["run", str(spec_file), "--storage", url, "--no-report"], tmp_path)
    assert quiet.returncode == 0 and "is complete" in quiet.stderr and quiet.stdout == ""


# --------------------------------------------------------------------------------- README


def test_readme_setup_is_two_commands_and_its_dashboard_line_serves_the_database(spec_file: Path,
                                                                                  tmp_path: Path) -> None:
    import json
    import socket
    import urllib.request

    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert setup.count("```bash") == 2, "the first section keeps exactly two set-up commands"
    (command,) = re.findall(r"`\.venv/bin/(optuna-dashboard sqlite:///odyssey\.db)`", readme)
    assert "pip install -e '.[dashboard]'" in readme
    # The main job's database, in the folder the dashboard is started from.
    created = _odyssey(["study", "create", str(spec_file), "--storage", "sqlite:///odyssey.db"], tmp_path)
    assert created.returncode == 0, created.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    program, url = command.split()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / program), url, "--port", str(port)],
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert dashboard.poll() is None, dashboard.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 120 s"
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["cli-tiny"]
    finally:
        dashboard.terminate()
        dashboard.wait(30)
