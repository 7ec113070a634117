"""The C++ cell kernels: built once per machine and shared by every checkout and venv, built before any
trial, stopped at once by Ctrl-C or SIGTERM, and one warning without a compiler (`sweep/nn/kernels.py`).

The builds that must really finish use the machine's kernels (compiled by the first test that asks, once per
machine). A slow or failing build is a fake compiler (`$CXX`, a shell script) that torch's real build runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from storage.results import load_study
from sweep.core.errors import OdysseyError
from sweep.nn import base as cells_base
from sweep.nn import kernels
from sweep.nn.base import kernel_for
from sweep.nn.cells import make_recurrent

ROOT = Path(__file__).resolve().parents[1]
ODYSSEY = [sys.executable, "-m", "sweep.cli.main"]

SPEC = """
name = "kernels-tiny"
variants = ["V"]
design = "sobol"
trials_per_variant = 2
seed = 1

[dataset]
name = "synthetic"
n_train = 16
n_valid = 8
n_test = 8

[training]
max_epochs = 1
batch_size = 8
optimizer = "adam"

[space.learning_rate]
value = 0.01

[space.hidden_size]
value = 4
"""


def fake_compiler(tmp_path: Path, compile_body: str) -> Path:
    """A `$CXX` that answers version queries like g++ and runs `compile_body` (sh) for compile and link
    commands. Its name contains g++ so that torch accepts it without a warning."""
    path = tmp_path / "bin" / "fake-g++"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"""#!/bin/sh
case " $* " in
  *" -c "*|*" -o "*) ;;
  *) echo "fake-g++ (test) 12.2.0"; exit 0 ;;
esac
{compile_body}
""")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def odyssey_env(extensions: Path, cxx: Path | str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    env.pop("ODYSSEY_STORAGE", None)
    env.pop(kernels.UNAVAILABLE_ENV, None)
    env.pop(cells_base.ENV_VAR, None)
    if cxx is not None:
        env["CXX"] = str(cxx)
    return env


def wait_for(condition, seconds: float, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"odyssey exited ({proc.returncode}) before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie has exited already
        return handle.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path: Path):
    """This process's `kernels.load` as if never called, building into an empty folder."""
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    # empty reads as unset; setenv (unlike delenv of an unset variable) also undoes what load() puts there
    monkeypatch.setenv(kernels.UNAVAILABLE_ENV, "")
    monkeypatch.delenv(cells_base.ENV_VAR, raising=False)
    return tmp_path / "ext"


def test_no_compiler_warns_once_and_the_cells_fall_back(fresh_kernels, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CXX", str(fresh_kernels / "no-such-c++"))
    layer = make_recurrent("V", 3, 5)
    x = torch.randn(2, 4, 3)
    logs = caplog.at_level(logging.INFO, logger="odyssey.sweep.kernels")
    with logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kernels.load() is None and kernels.load() is None
        expected = layer.set_reference(True)(x)[0]
        assert torch.allclose(layer.set_reference(False)(x)[0], expected, atol=1e-6)
        state = kernels.status()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, caplog.text
    assert "C++ kernels unavailable (no C++ compiler" in warned[0].getMessage()
    assert "pure-PyTorch path" in warned[0].getMessage()
    assert not [w for w in caught if "compiler" in str(w.message)]  # no torch compiler warning either
    assert not state.available and "install g++ or set CXX" in state.reason
    assert layer.layers[0].kernel_for(x) == "reference" and kernel_for("gru", "cpu") == "torch"
    # forcing the C++ kernels now is a one-line error
    monkeypatch.setenv(cells_base.ENV_VAR, "cpp")
    with pytest.raises(OdysseyError, match="could not be loaded: no C\\+\\+ compiler") as info:
        layer(x)
    assert "\n" not in str(info.value)


def test_a_second_checkout_and_venv_reuse_the_build_without_compiling(tmp_path: Path) -> None:
    """Another checkout path and another venv path, same source and torch: the machine's build loads as is."""
    built = kernels.status()
    assert built.available, built.reason
    mtime = built.path.stat().st_mtime_ns
    checkout = tmp_path / "other checkout"
    for package in ("sweep", "storage"):
        skip = shutil.ignore_patterns("__pycache__", "data")
        shutil.copytree(ROOT / package, checkout / package, ignore=skip)
    venv = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    (purelib / "main-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # the same torch
    code = ("import sweep.nn.kernels as k; s = k.status(); "
            "print(k.__file__); print(s.path); print(s.built_seconds)")
    env = odyssey_env(kernels.build_root())
    env["PYTHONPATH"] = str(checkout)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    module_file, path, seconds = out.stdout.split("\n")[:3]
    assert module_file.startswith(str(checkout)), "the copy ran, not this checkout"
    assert path == str(built.path) and seconds == "None"
    assert "compiling the C++ cell kernels" not in out.stderr, out.stderr
    assert built.path.stat().st_mtime_ns == mtime


def test_a_concurrent_builder_waits_on_the_lock_and_loads_what_the_first_built(tmp_path: Path) -> None:
    built = kernels.status()
    assert built.available, built.reason
    folder = built.path.parent
    root = tmp_path / "ext"
    root.mkdir()
    code = "import sweep.nn.kernels as k; s = k.status(); print(s.path, s.built_seconds)"
    with open(root / f"{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is building
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=odyssey_env(root),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
        reader.start()
        wait_for(lambda: any("waiting for another process" in line for line in err), 240, proc, "wait")
        shutil.copytree(folder, root / folder.name)  # ... and has finished
        fcntl.flock(lock, fcntl.LOCK_UN)
        out = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, err
    reader.join(10)
    assert out.split() == [str(root / folder.name / built.path.name), "None"]
    assert not any("compiling the C++ cell kernels into" in line for line in err), err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "sig", "code"), [("run", signal.SIGINT, 130), ("worker", signal.SIGTERM, 143)]
)
def test_a_signal_during_the_build_stops_the_command_within_10_s(
    tmp_path: Path, command: str, sig: signal.Signals, code: int
) -> None:
    """`odyssey run` (Ctrl-C) and `odyssey worker` (SIGTERM) build before anything else; a signal then kills
    the compiler and exits within 10 s, leaving no half-built folder and no lock held."""
    compiler_pid = tmp_path / "compiler.pid"
    cxx = fake_compiler(tmp_path, f'echo $$ > "{compiler_pid}"\nexec sleep 600')
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    args = {"run": ["run", str(spec), "--workers", "1", "--no-report"], "worker": ["worker"]}[command]
    root = tmp_path / "ext"
    if command == "worker":  # a worker needs an existing database (`study create` builds no kernels)
        created = subprocess.run([*ODYSSEY, "study", "create", str(spec), "--storage", url], cwd=tmp_path,
                                 env=odyssey_env(root, cxx), capture_output=True, text=True, timeout=240)
        assert created.returncode == 0, created.stderr
        assert not root.exists() or not any(root.iterdir()), "study create built kernels"
    proc = subprocess.Popen([*ODYSSEY, *args, "--storage", url], cwd=tmp_path, env=odyssey_env(root, cxx),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: compiler_pid.exists() and compiler_pid.read_text().strip(), 240, proc, "compiler")
        pid = int(compiler_pid.read_text())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "compiling the C++ cell kernels" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the compiler outlived the command"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    (lock,) = root.glob("*.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody waits on a dead build
    if command == "run":
        trials = load_study(url, "kernels-tiny").trials
        assert set(trials["state"]) == {"waiting"}, "no trial may start before the build"


@pytest.mark.slow
def test_run_builds_before_the_trials_and_warns_once_when_the_build_fails(tmp_path: Path) -> None:
    """A failing build (20 s, then a compiler error) happens once, before any trial starts: no trial's
    recorded seconds include it, the two workers do not retry it, and its warning is printed once."""
    finished = tmp_path / "compiler.finished"
    cxx = fake_compiler(tmp_path, f'sleep 20\ntouch "{finished}"\necho "fake-g++: error: no" >&2\nexit 1')
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'odyssey.db'}"
    out = subprocess.run([*ODYSSEY, "run", str(spec), "--storage", url, "--workers", "2", "--no-report"],
                         cwd=tmp_path, env=odyssey_env(tmp_path / "ext", cxx), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("compiling the C++ cell kernels") == 1, out.stderr
    assert out.stderr.count("C++ kernels unavailable") == 1, out.stderr
    assert "fake-g++: error: no" in out.stderr and "pure-PyTorch path" in out.stderr
    assert "Your compiler" not in out.stderr, out.stderr
    trials = load_study(url, "kernels-tiny").trials
    assert list(trials["state"]) == ["complete", "complete"]
    build_end = datetime.fromtimestamp(finished.stat().st_mtime, UTC)
    for started in trials["started_at"]:
        assert pd_utc(started) >= build_end.replace(microsecond=0)
    assert (trials["seconds"] < 20).all(), trials["seconds"]


def pd_utc(value) -> datetime:
    stamp = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def test_kernels_command_reports_the_kernel_of_each_family() -> None:
    out = subprocess.run([*ODYSSEY, "kernels", "--require"], cwd=ROOT, capture_output=True, text=True,
                         env=odyssey_env(kernels.build_root()), timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("C++ kernels: ") and str(kernels.build_root()) in lines[0]
    rows = {line.split("  ")[0].split(" (")[0]: line for line in lines[2:6]}
    assert list(rows) == ["LSTM family", "GRU", "PLSTM", "NP"]
    assert all("C++ kernel" in rows[family] for family in ("LSTM family", "GRU", "PLSTM"))
    assert "torch.nn.LSTM" in rows["NP"]


def test_kernels_require_fails_in_one_line_without_a_compiler(tmp_path: Path) -> None:
    env = odyssey_env(tmp_path / "ext", tmp_path / "no-such-c++")
    out = subprocess.run([*ODYSSEY, "kernels", "--require"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 1
    assert out.stderr.count("C++ kernels unavailable") == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the C++ kernels could not be loaded: no C++"), out.stderr
    assert "Traceback" not in out.stderr
