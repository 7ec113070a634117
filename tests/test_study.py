"""`odyssey study`: create (paired designs, idempotence), list, status, delete, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage import results
from sweep.core.errors import OdysseyError
from sweep.spec import parse_spec
from sweep.study import (
    SLOT_ATTR,
    VARIANT_ATTR,
    create_study,
    delete_study,
    load_optuna_study,
    study_status,
)

ROOT = Path(__file__).resolve().parent.parent
PG_PASSWORD_MARK = "Tst-pw-9f3Kq"  # tests/conftest.py's PostgreSQL password


def spec_dict(**extra: object) -> dict[str, object]:
    return {
        "name": "tiny", "variants": ["V", "NFG", "CIFG"], "design": "random", "trials_per_variant": 4,
        "seed": 7, "dataset": {"name": "synthetic", "n_train": 8, "n_valid": 4, "n_test": 4},
        "training": {"max_epochs": 2, "patience": 1, "batch_size": 4, "optimizer": "adam"},
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-1}, "hidden_size": {"low": 2, "high": 6}},
        **extra,
    }


def write_spec(path: Path, data: dict[str, object]) -> Path:
    import json

    lines = []
    tables: list[tuple[str, dict[str, object]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, table in tables:
        sub = [(k, v) for k, v in table.items() if isinstance(v, dict)]
        lines.append(f"[{key}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for k, v in sub:
            lines.append(f"[{key}.{k}]")
            lines += [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def odyssey(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sweep.cli.main", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess]:
    """Run the CLI's entry point in this process (much faster than a new interpreter)."""
    from sweep.cli.main import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), int(info.value.code or 0), out.out, out.err)

    return run


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert PG_PASSWORD_MARK not in done.stderr + done.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def optuna_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return load_optuna_study(url, name).get_trials(deepcopy=False)


@pytest.mark.parametrize("design", ["random", "sobol"])
def test_create_enqueues_a_paired_design(url: str, design: str) -> None:
    spec = parse_spec(spec_dict(design=design))
    outcome = create_study(url, spec)
    assert outcome.created and outcome.enqueued == 12

    trials = optuna_trials(url, "tiny")
    assert len(trials) == 12 and all(t.state == TrialState.WAITING for t in trials)
    assert sorted(t.user_attrs[SLOT_ATTR] for t in trials) == list(range(12))
    by_variant: dict[str, list[tuple]] = {}
    for t in sorted(trials, key=lambda t: t.user_attrs[SLOT_ATTR]):
        assert t.params["variant"] == t.user_attrs[VARIANT_ATTR]
        point = tuple(sorted((k, v) for k, v in t.params.items() if k != "variant"))
        by_variant.setdefault(t.params["variant"], []).append(point)
    # every variant gets the same four points: a paired comparison
    assert by_variant["V"] == by_variant["NFG"] == by_variant["CIFG"]
    assert len(set(by_variant["V"])) == 4
    for point in by_variant["V"]:
        values = dict(point)
        assert 1e-3 <= values["learning_rate"] <= 1e-1 and 2 <= values["hidden_size"] <= 6

    data = results.load_study(url, "tiny")
    assert data.spec == spec.normalised()
    assert len(data.trials) == 12 and set(data.trials["state"]) == {"waiting"}
    stored = {(r.variant, round(r.learning_rate, 12)) for r in data.trials.itertuples()}
    expected = {(t.params["variant"], round(t.params["learning_rate"], 12)) for t in trials}
    assert stored == expected
    # momentum, not searched by Optuna on its own scale, is still a real value in [0, 0.99]
    assert data.trials["momentum"].between(0, 0.99).all()


def test_create_is_idempotent_and_refuses_a_changed_spec(
    sqlite_url: str, tmp_path: Path, cli: Callable
) -> None:
    path = write_spec(tmp_path / "tiny.toml", spec_dict())
    first = cli("study", "create", str(path), "--storage", sqlite_url)
    assert first.returncode == 0, first.stderr
    assert "12 trials enqueued" in first.stdout
    again = cli("study", "create", str(path), "--storage", sqlite_url)
    assert again.returncode == 0 and "nothing added" in again.stdout
    assert len(optuna_trials(sqlite_url, "tiny")) == 12

    changed = write_spec(tmp_path / "changed.toml", spec_dict(trials_per_variant=5))
    done = cli("study", "create", str(changed), "--storage", sqlite_url)
    assert_one_line_error(done, "already exists with a different spec", "trials_per_variant")
    assert len(optuna_trials(sqlite_url, "tiny")) == 12
    assert len(results.load_study(sqlite_url, "tiny").trials) == 12


def test_interrupted_create_is_completed(sqlite_url: str) -> None:
    spec = parse_spec(spec_dict())
    storage = optuna.storages.RDBStorage(sqlite_url)
    optuna.create_study(study_name="tiny", storage=storage)  # as if create died before enqueueing
    outcome = create_study(sqlite_url, spec)
    assert outcome.enqueued == 12 and "interrupted" in outcome.message
    assert create_study(sqlite_url, spec).enqueued == 0
    assert len(optuna_trials(sqlite_url, "tiny")) == 12


def test_tpe_enqueues_one_placeholder_per_trial(sqlite_url: str) -> None:
    create_study(sqlite_url, parse_spec(spec_dict(design="tpe")))
    trials = optuna_trials(sqlite_url, "tiny")
    assert len(trials) == 12
    assert all(set(t.params) == {"variant"} for t in trials)
    assert sorted(t.params["variant"] for t in trials) == sorted(["V", "NFG", "CIFG"] * 4)


def test_status_list_and_delete(url: str, cli: Callable) -> None:
    create_study(url, parse_spec(spec_dict()))
    create_study(url, parse_spec(spec_dict(name="other", variants=["GRU"])))
    status = study_status(url, "tiny")
    assert [v.variant for v in status.variants] == ["V", "NFG", "CIFG"]
    assert all(v.counts == {"waiting": 4, "running": 0, "complete": 0, "failed": 0, "diverged": 0}
               for v in status.variants)
    assert status.throughput_per_hour is None

    shown = cli("study", "status", "tiny", "--storage", url)
    assert shown.returncode == 0, shown.stderr
    assert "CIFG" in shown.stdout and "left: 12" in shown.stdout
    listed = cli("study", "list", "--storage", url)
    assert listed.returncode == 0 and "tiny" in listed.stdout and "other" in listed.stdout
    assert PG_PASSWORD_MARK not in listed.stdout + shown.stdout

    refused = cli("study", "delete", "tiny", "--storage", url)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert len(optuna_trials(url, "tiny")) == 12

    deleted = cli("study", "delete", "tiny", "--yes", "--storage", url)
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(OdysseyError, match="no study named 'tiny'"):
        load_optuna_study(url, "tiny")
    with pytest.raises(OdysseyError, match="not found"):
        results.load_study(url, "tiny")
    assert len(optuna_trials(url, "other")) == 4  # the other study is untouched
    assert list(results.list_studies(url)["study"]) == ["other"]


def test_missing_study_is_a_one_line_error(sqlite_url: str, cli: Callable) -> None:
    create_study(sqlite_url, parse_spec(spec_dict()))
    for args in (("study", "status", "nope"), ("study", "delete", "nope", "--yes")):
        done = cli(*args, "--storage", sqlite_url)
        assert_one_line_error(done, "nope")
    with pytest.raises(OdysseyError, match="no study named 'nope'"):
        delete_study(sqlite_url, "nope")
    assert len(optuna_trials(sqlite_url, "tiny")) == 12


def test_invalid_spec_and_unknown_variant_change_nothing(
    sqlite_url: str, tmp_path: Path, cli: Callable
) -> None:
    create_study(sqlite_url, parse_spec(spec_dict()))
    bad = write_spec(tmp_path / "bad.toml", spec_dict(name="bad", variants=["V", "LSTMX"]))
    assert_one_line_error(cli("study", "create", str(bad), "--storage", sqlite_url),
                          "bad.toml", "unknown variant 'LSTMX'")
    log_scale = write_spec(tmp_path / "log.toml",
                           spec_dict(name="bad", space={"learning_rate": {"low": 0, "high": 1}}))
    assert_one_line_error(cli("study", "create", str(log_scale), "--storage", sqlite_url),
                          "space.learning_rate.low must be > 0 for a log scale")
    no_data = write_spec(tmp_path / "char.toml",
                         spec_dict(name="bad", dataset={"name": "char", "path": str(tmp_path / "none.txt")}))
    assert_one_line_error(cli("study", "create", str(no_data), "--storage", sqlite_url), "none.txt")
    assert_one_line_error(cli("study", "create", str(tmp_path / "absent.toml"), "--storage", sqlite_url),
                          "no such file")
    assert [s.study_name for s in optuna.get_all_study_summaries(sqlite_url)] == ["tiny"]
    assert len(results.load_study(sqlite_url, "tiny").trials) == 12


@pytest.mark.postgres
def test_bad_databases_are_one_line_errors(pg_server, tmp_path: Path, cli: Callable) -> None:  # noqa: ANN001
    # A fresh interpreter, as a user runs it: exit status 1, one line, no traceback, no password.
    path = write_spec(tmp_path / "tiny.toml", spec_dict())
    wrong_password = pg_server.url.replace(PG_PASSWORD_MARK, "not-the-password")
    assert_one_line_error(odyssey("study", "create", str(path), "--storage", wrong_password),
                          "password authentication failed")
    unreachable = "postgresql://odyssey:" + PG_PASSWORD_MARK + "@127.0.0.1:9/odyssey"
    done = odyssey("study", "list", "--storage", unreachable, env={"ODYSSEY_DB_RETRY_SECONDS": "0.5"})
    assert_one_line_error(done, "cannot connect", "***")
    assert_one_line_error(cli("study", "list", "--storage", "mysql://x@y/z"), "unsupported")


def test_delete_finishes_a_half_done_delete(sqlite_url: str) -> None:
    create_study(sqlite_url, parse_spec(spec_dict()))
    optuna.delete_study(study_name="tiny", storage=sqlite_url)  # as if delete died half-way
    delete_study(sqlite_url, "tiny")
    assert results.list_studies(sqlite_url).empty
