"""Trial states are defined once (`sweep.core.states`): the results schema allows exactly them, and every
count per state (`odyssey study list`, `odyssey study status`, `odyssey run`'s progress, the report's
"Trials by state") comes from the one tally (`storage.results.count_states`) in the enum's order."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from analysis.api import StudyAnalysis
from analysis.report import build_report_from_data
from analysis.space import finished
from analysis.synthetic import synthetic_study
from storage import results
from storage.engine import get_engine
from sweep.cli.main import main
from sweep.core.states import ENDED_STATES, PENDING_STATES, SCORED_STATES, ResultState

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["waiting", "running", "complete", "failed", "diverged"]
# Slots per variant and the state each is left in: V has one of each, NP one complete and one waiting.
PLAN = {"V": ORDER, "NP": ["complete", "waiting"]}


def test_the_states_keep_their_stored_strings_in_lifecycle_order_and_name_their_subsets() -> None:
    assert [s.value for s in ResultState] == ORDER  # the database and users' SQL hold these strings
    assert list(PENDING_STATES) + list(ENDED_STATES) == list(ResultState)
    assert set(SCORED_STATES) == set(ENDED_STATES) - {ResultState.FAILED}
    assert all(isinstance(s, str) and s == s.value for s in ResultState)


def _stored_study(url: str) -> None:
    """A results-only study (no Optuna) with the slots of PLAN in their states, written as workers do."""
    space = {"lr": {"type": "float", "scale": "log", "low": 1e-3, "high": 1.0, "value": None}}
    spec = {"name": "states", "dataset": "synthetic", "variants": list(PLAN), "space": space}
    results.register_study(url, "states", spec)
    slots = [(variant, state) for variant, states in PLAN.items() for state in states]
    results.record_designed_trials(url, "states", [{"slot": i, "variant": v, "params": {"lr": 0.1}, "seed": i}
                                                   for i, (v, _) in enumerate(slots)])
    for slot, (_, state) in enumerate(slots):
        if state != "waiting":
            results.record_trial_started(url, "states", slot, slot, "host", "cpu")
        if state in ENDED_STATES:
            results.record_trial_finished(url, "states", slot, state, {"best_valid": 1.0 + slot})


def _check_values(sql: str) -> list[str]:
    """The quoted values of a CHECK constraint on ``state``, in order (PostgreSQL reads ``state IN (...)``
    back as ``state = ANY (ARRAY[...])``)."""
    assert "state" in sql, sql
    return re.findall(r"'([^']*)'", sql)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_results_schema_allows_exactly_the_result_states(backend: str, request) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    _stored_study(url)  # creates the tables through the migrations, as every open does
    # The head schema and the database (made by the frozen revision 0001) name the enum's values.
    (check,) = [c for c in results.trials.constraints if isinstance(c, sa.CheckConstraint)]
    assert _check_values(str(check.sqltext)) == ORDER
    with get_engine(url).connect() as conn:
        reflected = sa.inspect(conn).get_check_constraints("odyssey_trials")
    assert [_check_values(c["sqltext"]) for c in reflected] == [ORDER]
    # And the database enforces them: every state is accepted, anything else refused.
    engine = get_engine(url)
    for state in ResultState:
        with engine.begin() as conn:
            conn.execute(sa.update(results.trials).where(results.trials.c.slot == 0).values(state=state))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.update(results.trials).where(results.trials.c.slot == 0).values(state="pruned"))
    with pytest.raises(ValueError, match="must be one of complete, failed, diverged, got 'running'"):
        results.record_trial_finished(url, "states", 1, "running", {})


def test_every_count_per_state_is_the_one_tally_in_enum_order(sqlite_url: str, capsys) -> None:
    _stored_study(sqlite_url)
    expected = pd.DataFrame({v: [PLAN[v].count(s) for s in ORDER] for v in PLAN}, index=ORDER).T
    expected.index.name = "variant"

    by_variant = results.count_trials(sqlite_url, "states", by_variant=True)
    pd.testing.assert_frame_equal(by_variant.sort_index(), expected.sort_index())
    frame = results.load_study(sqlite_url, "states", with_epochs=False).trials
    pd.testing.assert_frame_equal(results.count_states(frame, "variant"), by_variant, check_like=True)
    everything = results.count_trials(sqlite_url, by_variant=True)
    assert list(everything.index.names) == ["study", "variant"]
    assert everything.loc["states"].equals(by_variant)

    listed = results.list_studies(sqlite_url)
    assert list(listed.columns) == ["study", "dataset", "created_at", "trials", *ResultState]
    assert listed.iloc[0][ORDER].tolist() == expected.sum().tolist() and listed.iloc[0]["trials"] == 7
    assert results.count_trials(sqlite_url, "states").loc["states"].tolist() == expected.sum().tolist()

    for command in (["study", "list"], ["study", "status", "states"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--storage", sqlite_url])
        out = capsys.readouterr().out
        assert exit_.value.code == 0
        header = next(line for line in out.splitlines() if "waiting" in line)
        assert re.findall("|".join(ORDER), header) == ORDER, header
    assert "left: 3" in out  # two waiting, one running

    analysis = StudyAnalysis(results.load_study(sqlite_url, "states"))
    counts = analysis.counts()
    assert list(counts.columns) == [*ORDER, "total"]
    pd.testing.assert_frame_equal(counts[ORDER], expected.loc[["V", "NP"]], check_names=False)
    assert analysis.completeness()["finished"] == 3 == len(finished(analysis.trials))


def test_the_reports_state_table_is_in_enum_order(tmp_path: Path) -> None:
    data = synthetic_study(("V", "NP"), trials_per_variant=20, unfinished=0.3, seed=1)
    assert isinstance(data, results.StudyData)  # the synthetic study has the stored shape
    stored = results.TRIAL_HEAD + data.param_names + results.TRIAL_TAIL
    assert list(data.trials.columns) == stored and list(data.epochs.columns) == results.EPOCH_COLUMNS
    path = build_report_from_data(data, tmp_path, n_trees=4)
    page = path.read_text()
    table = page[page.index("<h3>Trials by state</h3>"):]
    header = re.findall(r"<th>([^<]*)</th>", table[: table.index("</thead>")])
    assert header == ["variant", *ORDER, "total"]
    counts = json.loads((path.parent / "summary.json").read_text())["counts"]
    assert [list(row) for row in counts] == [["variant", *ORDER, "total"]] * 2
    tally = data.trials.groupby("variant")["state"].value_counts().unstack(fill_value=0)
    for row in counts:
        assert [row[s] for s in ORDER] == [int(tally.loc[row["variant"]].get(s, 0)) for s in ORDER]


def _state_collections(path: Path) -> list[int]:
    """Lines of ``path`` with a tuple, list or set literal of two or more state strings."""
    names = {s.value for s in ResultState}
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) > 1 and all(
            isinstance(e, ast.Constant) and e.value in names for e in node.elts
        ):
            lines.append(node.lineno)
    return lines


def test_no_module_keeps_its_own_list_of_states() -> None:
    """Only `sweep.core.states` lists states (and the frozen first migration, which must never change)."""
    allowed = {ROOT / "sweep/core/states.py", ROOT / "storage/migrations/versions/0001_results_tables.py"}
    found = {
        str(path.relative_to(ROOT)): lines
        for package in ("sweep", "storage", "analysis")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in allowed and (lines := _state_collections(path))
    }
    assert found == {}
