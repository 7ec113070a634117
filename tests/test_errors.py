"""The error hierarchy as a user meets it: what they can fix is an OdysseyError (a ConfigError for wrong
input, also a ValueError; a StorageError for the database), printed by `odyssey` as one line; a programming
error is a built-in exception and keeps its traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch

from storage.engine import check_connection, get_engine
from storage.schema_version import SchemaOutdatedError, SchemaTooNewError
from storage.urls import resolve_url
from sweep.cli.main import LazyGroup, main
from sweep.core.errors import ConfigError, OdysseyError, StorageError
from sweep.data.base import SequenceSplit, StreamSplit, load_dataset
from sweep.nn.cells import make_recurrent
from sweep.spec import load_spec, parse_spec
from sweep.study import load_optuna_study

ROOT = Path(__file__).resolve().parents[1]


def _odyssey(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ODYSSEY_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "sweep.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line(done: subprocess.CompletedProcess[str], needle: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_spec_field_is_a_config_error_and_a_value_error(tmp_path: Path) -> None:
    data = {"name": "s", "dataset": {"name": "synthetic"}, "trials_per_variant": 2,
            "space": {"learning_rate": {"low": 0.1, "high": 0.01}}}
    with pytest.raises(ConfigError) as info:
        parse_spec(data, "x.toml")
    assert isinstance(info.value, ValueError) and isinstance(info.value, OdysseyError)
    assert str(info.value) == "spec x.toml: space.learning_rate.high must be > low (0.1)"
    with pytest.raises(ConfigError, match="no such file"):
        load_spec(tmp_path / "missing.toml")


def test_wrong_dataset_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ConfigError, match=f"jsb: {tmp_path}/none.json not found"):
        load_dataset("jsb", path=tmp_path / "none.json")
    # The two split classes refuse empty data as the loaders do (they raised a bare ValueError).
    with pytest.raises(ConfigError, match="at least one sequence"):
        SequenceSplit([])
    with pytest.raises(ConfigError, match="at least two tokens"):
        StreamSplit(torch.tensor([3]))


def test_bad_storage_urls_and_unreachable_databases_are_storage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="unsupported storage URL scheme 'mysql'"):
        resolve_url("mysql://root:hunter2@db/x")
    with pytest.raises(StorageError, match="does not exist"):
        get_engine(f"sqlite:///{tmp_path}/nowhere/x.db")
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageError, match="cannot connect to"):
        check_connection(f"postgresql://odyssey:pw@127.0.0.1:{port}/odyssey")
    with pytest.raises(StorageError, match="no study named 'ghost'"):
        load_optuna_study(f"sqlite:///{tmp_path / 'studies.db'}", "ghost")
    assert issubclass(SchemaOutdatedError, StorageError) and issubclass(SchemaTooNewError, StorageError)
    assert not issubclass(StorageError, ValueError)


def test_a_cell_handed_a_wrong_shaped_tensor_raises_a_builtin_error() -> None:
    with pytest.raises(ConfigError, match="hidden_size must be a positive integer"):
        make_recurrent("V", 3, 0)
    model = make_recurrent("V", 3, 4)
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, time, 3\)") as info:
        model(torch.zeros(2, 5, 4))
    assert not isinstance(info.value, OdysseyError)  # a bug in the calling code: it keeps its traceback


def test_odyssey_prints_one_line_for_a_bad_url_and_a_bad_spec(tmp_path: Path) -> None:
    _one_line(_odyssey("study", "list", "--storage", "mysql://root:hunter2@db/x", cwd=tmp_path),
              "unsupported storage URL scheme 'mysql'")
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "s"\ndataset = { name = "synthetic" }\ntrials_per_variant = 0\n')
    _one_line(_odyssey("study", "create", str(spec), "--storage", f"sqlite:///{tmp_path / 'r.db'}",
                       cwd=tmp_path), f"spec {spec}: trials_per_variant")
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("error", [OdysseyError("it broke"), ConfigError("it broke"),
                                   StorageError("it broke")])
def test_every_odyssey_error_is_one_line_on_stderr(error: OdysseyError, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _install_failing_command(monkeypatch, error)
    with pytest.raises(SystemExit) as info:
        main(["fail"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: it broke\n"


@pytest.mark.parametrize("error", [ValueError("bug"), TypeError("bug"), RuntimeError("bug")])
def test_a_builtin_error_is_not_caught_so_python_prints_its_traceback(
        error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _install_failing_command(monkeypatch, error)
    with pytest.raises(type(error), match="bug"):
        main(["fail"])
    assert "error:" not in capsys.readouterr().err


def _install_failing_command(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    @click.command("fail")
    def fail() -> None:
        raise error

    real = LazyGroup.get_command
    monkeypatch.setattr(LazyGroup, "get_command",
                        lambda self, ctx, name: fail if name == "fail" else real(self, ctx, name))
