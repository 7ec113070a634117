"""The study report: figures, numbers, degenerate studies, a real SQLite round trip, the CLI, and the page
loading in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from analysis.report import build_report, build_report_from_data
from analysis.synthetic import SyntheticStudy, synthetic_study

CHROMIUM = "/usr/bin/chromium"
FIGURES = ("fig-variants", "fig-marginals", "fig-variance", "fig-heatmap", "fig-curves")
TREES = 16  # enough for stable rankings on these strong effects, and fast


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, SyntheticStudy]:
    data = synthetic_study(("V", "NFG", "CIFG"), trials_per_variant=50, seed=3)
    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    path = build_report_from_data(data, out, n_trees=TREES, progress=lines.append)
    assert any(line.startswith("fANOVA pooled") for line in lines)  # progress is reported
    return path, data


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def summary(path: Path) -> dict:
    return json.loads((path.parent / "summary.json").read_text())


def test_report_has_every_figure_guide_and_setup_with_plotlyjs_embedded_once(full):
    path, data = full
    page = read(path)
    for div in FIGURES:
        assert f'id="{div}"' in page, div
    assert page.count(get_plotlyjs()[:500]) == 1  # offline, and not once per figure
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched from elsewhere
    assert page.count('class="guide"') == len(FIGURES)
    for text in ("Test nll per variant", "Marginal score and training time", "Variance decomposition",
                 "learning_rate x hidden_size", "Validation nll per epoch"):  # fmt: skip
        assert text in page, text
    assert 'id="setup"' in page and "log10(1 - momentum)" in page and "forget_bias" in page
    assert "150 of 150 planned trials finished (100%)" in page
    capped = int(data.trials["best_test"].isna().sum())
    assert capped > 0 and f"Capped here: {capped} trial(s)" in page


def test_report_numbers_are_written_and_sensible(full):
    path, data = full
    out = path.parent
    stats = pd.read_csv(out / "variant_stats.csv").set_index("variant")
    assert list(stats.index) == ["V", "NFG", "CIFG"]
    assert stats.loc["NFG", "significant"] and stats.loc["NFG", "delta"] > 1.0
    assert not stats.loc["CIFG", "significant"]
    assert stats.loc["NFG", "n_params"] < stats.loc["V", "n_params"]
    diverged = data.trials.groupby("variant")["diverged"].sum()
    assert (stats["n_diverged"] == diverged.reindex(stats.index)).all()
    assert (stats["paired_n"].iloc[1:] == 50).all()  # the synthetic design is paired

    main = pd.read_csv(out / "main_effects.csv")
    assert set(main["scope"]) == {"V", "NFG", "CIFG", "pooled"}
    for scope, g in main.groupby("scope"):
        top = g.sort_values("fraction", ascending=False).iloc[0]
        assert top["param"] == "learning_rate" and top["fraction"] > 0.4, scope
    pooled = main[main["scope"] == "pooled"].set_index("param")["fraction"]
    assert "variant" in pooled and pooled["variant"] < pooled["learning_rate"]
    assert "forget_bias" not in set(main["param"])  # held fixed
    pairs = pd.read_csv(out / "interactions.csv")
    assert len(pairs[pairs["scope"] == "V"]) == 6 and pairs["fraction"].between(-0.2, 1).all()

    marg = pd.read_csv(out / "marginals.csv")
    lr = marg[(marg["scope"] == "pooled") & (marg["target"] == "score") & (marg["param"] == "learning_rate")]
    assert abs(lr.loc[lr["mean"].idxmin(), "value"] - (-3.0)) < 0.8  # the synthetic optimum is 1e-3
    assert np.allclose(lr["real_value"], 10 ** lr["value"])
    hs = marg[(marg["scope"] == "pooled") & (marg["target"] == "seconds") & (marg["param"] == "hidden_size")]
    assert hs["mean"].iloc[-1] > 2 * hs["mean"].iloc[0]  # bigger networks train longer
    heat = pd.read_csv(out / "heatmap.csv")
    assert {"learning_rate", "hidden_size", "mean", "interaction"} <= set(heat.columns)
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["variant"]) == {"V", "NFG", "CIFG"} and (curves["q25"] <= curves["q75"]).all()

    s = summary(path)  # strict JSON: NaN became null
    assert s["completeness"]["fraction"] == 1.0 and s["baseline"] == "V"
    assert s["heatmap_pair"] == ["learning_rate", "hidden_size"]
    assert s["fixed"] == {"forget_bias": 1.0}


def test_report_loads_in_headless_chromium_without_errors(full, tmp_path):
    path, _ = full
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install chromium to check that the report renders")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert not errors, errors
    dom = done.stdout
    assert dom.count('class="plot-container plotly"') == len(FIGURES)
    assert dom.count("main-svg") >= len(FIGURES)


def test_partial_study_says_how_complete_it_is(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=40, unfinished=0.3, seed=1)
    path = build_report_from_data(data, tmp_path, n_trees=8)
    page = read(path)
    done = int(data.trials["state"].isin(["complete", "diverged"]).sum())
    assert f"{done} of 80 planned trials finished" in page and "incomplete" in page
    assert all(f'id="{div}"' in page for div in FIGURES)
    assert summary(path)["completeness"]["finished"] == done


def test_no_finished_trial_gives_a_reduced_report(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=6)
    data.trials["state"] = "waiting"
    data.trials["diverged"] = False
    path = build_report_from_data(data, tmp_path, n_trees=8)
    page = read(path)
    assert "no finished trials yet" in page and "0 of 12 planned trials finished" in page
    assert not any(f'id="{div}"' in page for div in FIGURES)
    assert summary(path)["completeness"]["finished"] == 0
    data.trials, data.epochs = data.trials.iloc[:0], data.epochs.iloc[:0]  # a study nobody started
    page = read(build_report_from_data(data, tmp_path / "empty", n_trees=8))
    assert "no finished trials yet" in page and "0 of 12 planned trials finished" in page


def test_only_diverged_trials_gives_a_reduced_report_naming_the_problem(tmp_path):
    data = synthetic_study(("V",), trials_per_variant=6)
    data.trials["state"] = "diverged"
    data.trials["best_test"] = np.nan
    page = read(build_report_from_data(data, tmp_path, n_trees=8))
    assert "no finished trial has a finite &#x27;best_test&#x27;" in page


def test_single_variant_has_no_significance_and_no_pooled_scope(tmp_path):
    data = synthetic_study(("NP",), trials_per_variant=30)
    path = build_report_from_data(data, tmp_path, n_trees=8)
    page = read(path)
    assert all(f'id="{div}"' in page for div in FIGURES)
    assert "Only one variant: no significance test." in page
    assert set(pd.read_csv(tmp_path / "main_effects.csv")["scope"]) == {"NP"}
    assert summary(path)["baseline"] == "NP"  # V is absent: the only variant is its own baseline


def test_fixed_parameter_is_dropped_and_noted(tmp_path):
    data = synthetic_study(("V", "NOAF"), trials_per_variant=30)
    data.spec["space"]["hidden_size"] = {"type": "int", "value": 100}
    data.trials["hidden_size"] = 100
    path = build_report_from_data(data, tmp_path, n_trees=8)
    page = read(path)
    assert "Held fixed, so left out of the analysis: hidden_size, forget_bias." in page
    assert "hidden_size" not in set(pd.read_csv(tmp_path / "main_effects.csv")["param"])
    assert summary(path)["heatmap_pair"][0] == "learning_rate"  # next-best partner instead
    assert all(f'id="{div}"' in page for div in FIGURES)


def test_every_parameter_fixed_still_compares_variants(tmp_path):
    data = synthetic_study(("V", "NOAF"), trials_per_variant=20)
    for name in list(data.spec["space"]):
        data.spec["space"][name] = {"value": float(data.trials[name].iloc[0])}
    page = read(build_report_from_data(data, tmp_path, n_trees=8))
    assert 'id="fig-variants"' in page and 'id="fig-marginals"' not in page
    assert "Every hyperparameter was held fixed" in page


def test_target_seconds_and_bad_target(tmp_path):
    from storage.errors import OdysseyError

    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    build_report_from_data(data, tmp_path, n_trees=8, target="seconds")
    marg = pd.read_csv(tmp_path / "marginals.csv")
    assert set(marg["target"]) == {"score"}  # the score is the time already
    with pytest.raises(OdysseyError, match="unknown target 'accuracy'"):
        build_report_from_data(data, tmp_path, target="accuracy")


def store(url: str, data: SyntheticStudy, epochs: bool = True) -> None:
    """Write a synthetic study through the storage write API, as workers would."""
    from storage import results

    name = data.spec["name"]
    results.register_study(url, name, data.spec)
    params = list(data.spec["space"])
    trials = data.trials
    results.record_designed_trials(
        url, name,
        [{"slot": i, "variant": r.variant, "params": {p: getattr(r, p) for p in params}, "seed": r.seed}
         for i, r in enumerate(trials.itertuples())],
    )  # fmt: skip
    for i, r in enumerate(trials.itertuples()):
        if r.state == "waiting":
            continue
        results.record_trial_started(url, name, i, r.trial_number, "host", "cpu")
        if epochs:
            ep = data.epochs[data.epochs["trial_number"] == r.trial_number]
            for e in ep.itertuples():
                metrics = (e.train_loss, e.valid_metric, e.test_metric, e.seconds)
                results.record_epoch(url, name, i, e.epoch, *metrics)
        if r.state != "running":
            result = {k: getattr(r, k) for k in ("best_valid", "best_test", "final_valid", "final_test",
                                                  "best_epoch", "epochs", "seconds", "n_params")}  # fmt: skip
            results.record_trial_finished(url, name, i, r.state, result)


def test_report_from_a_sqlite_study_matches_the_in_memory_one(sqlite_url, tmp_path):
    data = synthetic_study(("V", "NFG", "CIFG"), trials_per_variant=12, max_epochs=6, seed=5, name="db-t")
    data.trials.loc[data.trials.index[-3:], "state"] = ["running", "waiting", "waiting"]
    store(sqlite_url, data)
    path = build_report(sqlite_url, "db-t", tmp_path / "db", n_trees=8)
    page = read(path)
    assert all(f'id="{div}"' in page for div in FIGURES)
    assert "33 of 36 planned trials finished" in page and "1 running" in page
    memory = build_report_from_data(data, tmp_path / "mem", n_trees=8)
    a = pd.read_csv(path.parent / "variant_stats.csv")
    b = pd.read_csv(memory.parent / "variant_stats.csv")
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    m1 = pd.read_csv(path.parent / "main_effects.csv")
    m2 = pd.read_csv(memory.parent / "main_effects.csv")
    pd.testing.assert_frame_equal(m1, m2, check_dtype=False, atol=1e-9)


def test_cli_report_writes_the_report_and_fails_cleanly(sqlite_url, tmp_path, capsys):
    from sweep.cli import main

    data = synthetic_study(("V", "NP"), trials_per_variant=8, seed=2, name="cli-study")
    store(sqlite_url, data, epochs=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["report", "cli-study", "--storage", sqlite_url, "-o", str(out), "--trees", "8", "--seed", "1"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    assert f"report written to {(out / 'report.html').resolve()}" in captured.out
    assert "fANOVA pooled" in captured.err  # progress lines
    assert (out / "report.html").exists() and (out / "variant_stats.csv").exists()
    assert 'id="curves"' in read(out / "report.html")  # no epochs stored: a note, not a figure
    with pytest.raises(SystemExit) as exit_:
        main(["report", "nope", "--storage", sqlite_url, "-o", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "error: study 'nope' not found" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["report", "cli-study", "--storage", sqlite_url, "-o", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "error: cannot create report directory" in err


def test_a_scope_fanova_cannot_fit_is_noted_and_the_rest_reported(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    flat = data.trials["variant"] == "NP"
    data.trials.loc[flat, ["state", "diverged", "best_test"]] = ["complete", False, 5.0]
    path = build_report_from_data(data, tmp_path, n_trees=8)
    page = read(path)
    assert 'id="notes"' in page and "NP, score: fANOVA: the target is constant" in page
    assert set(pd.read_csv(tmp_path / "main_effects.csv")["scope"]) == {"V", "pooled"}
    assert all(f'id="{div}"' in page for div in FIGURES)


def test_one_trial_per_variant_gives_a_reduced_report_not_a_crash(tmp_path):
    # Per variant too few trials to fit; pooled, only the variant varies (one shared design point).
    data = synthetic_study(("V", "NIG", "NFG", "NOG", "CIFG"), trials_per_variant=1)
    page = read(build_report_from_data(data, tmp_path, n_trees=8))
    assert 'id="fig-variants"' in page
    assert 'id="fig-marginals"' not in page


def test_box_plot_title_names_the_target(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    page = read(build_report_from_data(data, tmp_path, n_trees=8, target="best_valid"))
    assert "Validation " in page and "Test nll per variant" not in page


def test_a_reduced_report_leaves_no_numbers_from_an_earlier_run(tmp_path):
    build_report_from_data(synthetic_study(("V", "NP"), trials_per_variant=20), tmp_path, n_trees=8)
    assert (tmp_path / "main_effects.csv").exists()
    empty = synthetic_study(("V", "NP"), trials_per_variant=20, unfinished=1.0)
    build_report_from_data(empty, tmp_path, n_trees=8)
    assert not (tmp_path / "main_effects.csv").exists()
    assert not (tmp_path / "variant_stats.csv").exists()
