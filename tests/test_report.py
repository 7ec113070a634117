"""The study report: figures, numbers, degenerate studies, a real SQLite round trip, the CLI, and the page
loading in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from analysis.api import StudyAnalysis
from analysis.report import build_report, build_report_from_data
from analysis.synthetic import OFFSETS, n_params, synthetic_study
from storage.results import StudyData
from sweep.core.errors import OdysseyError
from sweep.core.variants import GREFF_VARIANTS as GREFF
from sweep.core.variants import REGISTRY, VARIANTS

CHROMIUM = "/usr/bin/chromium"
FIGURES = ("fig-variants", "fig-marginals", "fig-variance", "fig-heatmap", "fig-curves")
TREES = 16  # enough for stable rankings on these strong effects, and fast


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, StudyData]:
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
    assert capped > 0 and f"Capped here: {capped} trial{'s' if capped != 1 else ''}." in page


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
    assert list(heat.columns) == ["scope", "param_a", "value_a", "real_value_a", "param_b", "value_b",
                                  "real_value_b", "mean", "std", "interaction"]  # fmt: skip
    shown = set(zip(heat["param_a"], heat["param_b"], strict=True))
    top = pairs[pairs["scope"] == "pooled"].sort_values("fraction", ascending=False).iloc[0]
    assert (top["param_a"], top["param_b"]) in shown  # the largest interaction
    assert {("learning_rate", "hidden_size"), ("hidden_size", "learning_rate")} & shown  # the paper's pair
    lr_rows = heat[heat["param_a"] == "learning_rate"]
    assert np.allclose(lr_rows["real_value_a"], 10 ** lr_rows["value_a"])
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["variant"]) == {"V", "NFG", "CIFG"} and (curves["q25"] <= curves["q75"]).all()

    s = summary(path)  # strict JSON: NaN became null
    assert s["completeness"]["fraction"] == 1.0 and s["baseline"] == "V"
    assert s["heatmap_pair"] == [top["param_a"], top["param_b"]]
    assert s["fixed"] == {"forget_bias": 1.0}
    assert s["selected_by"] == "best_valid" and s["too_small"] is False


class _DrawnMarks(HTMLParser):
    """Counts, per report figure, the marks plotly actually drew in its plot area: boxes, lines, fills,
    markers and bars with a non-empty path, heatmap images. Legends and axes do not count."""

    MARKS = {"box", "js-line", "js-fill", "point"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
            "wbr"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, set[str], str]] = []
        self.marks: dict[str, int] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        figure = a.get("id", "") if tag == "div" and (a.get("id") or "").startswith("fig-") else ""
        if figure:
            self.marks.setdefault(figure, 0)
        owner = figure or next((f for _, _, f in reversed(self.stack) if f), "")
        inside = [c for _, c, _ in self.stack]
        in_trace = any("trace" in c or "hm" in c for c in inside) and not any("legend" in c for c in inside)
        if owner and in_trace:
            drawn = tag == "path" and re.search(r"\d", a.get("d") or "") and (
                classes & self.MARKS or any("point" in c for c in inside)
            )
            image = tag == "image" and (a.get("xlink:href") or a.get("href") or "").startswith("data:image")
            if drawn or image:
                self.marks[owner] += 1
        if tag not in self.VOID:
            self.stack.append((tag, classes, figure))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def drawn_marks(dom: str) -> dict[str, int]:
    parser = _DrawnMarks()
    parser.feed(dom)
    return parser.marks


def chromium(*args: str, width: int = 1400, height: int = 9000) -> subprocess.CompletedProcess:
    """Headless Chromium at a desktop width with a fresh profile, the network off."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install chromium (scripts/test.sh does) to check the page")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
             "--hide-scrollbars", f"--window-size={width},{height}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=15000", *args],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert not errors, errors
    return done


def test_whole_page_renders_every_figure_at_desktop_width(full, tmp_path):
    path, _ = full
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", path.as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (1400, 9000)
    dom = chromium("--dump-dom", path.as_uri()).stdout
    assert dom.count('class="plot-container plotly"') == len(FIGURES)
    marks = drawn_marks(dom)
    assert set(marks) == set(FIGURES)
    empty = [figure for figure, n in marks.items() if n == 0]
    assert not empty, f"figures with nothing drawn: {empty}"
    assert marks["fig-heatmap"] >= 2 and marks["fig-variants"] >= 3 * 6  # two heatmaps; boxes of 3 variants


def test_the_page_check_catches_an_empty_figure(full, tmp_path):
    # The check above must fail for a figure plotly draws without any data (an empty plot area).
    path, _ = full
    page = read(path)
    start = page.index('"fig-variance"')
    data = page.index("[{", start)  # Plotly.newPlot("fig-variance", [{...}], layout, config)
    end = page.index("}],", data) + 2
    broken = tmp_path / "report.html"
    broken.write_text(page[:data] + "[]" + page[end:], encoding="utf-8")
    marks = drawn_marks(chromium("--dump-dom", broken.as_uri()).stdout)
    assert marks["fig-variance"] == 0 and marks["fig-marginals"] > 0


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
    assert "fANOVA forests of" not in page  # there is no forest to be too small


def test_target_seconds_and_bad_target(tmp_path):
    from sweep.core.errors import OdysseyError

    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    build_report_from_data(data, tmp_path, n_trees=8, target="seconds")
    marg = pd.read_csv(tmp_path / "marginals.csv")
    assert set(marg["target"]) == {"score"}  # the score is the time already
    layout = figure_json(read(tmp_path / "report.html"), "variants")["layout"]
    titles = [a["text"] for a in layout["annotations"]]
    assert not any(t.startswith("training time") for t in titles)
    with pytest.raises(OdysseyError, match="unknown target 'accuracy'"):
        build_report_from_data(data, tmp_path, target="accuracy")


def test_synthetic_variants_and_parameter_counts_come_from_the_registry():
    """The synthetic study knows every registered variant (and only those) and counts their parameters as
    the registry does, plus the linear read-out."""
    assert sorted(OFFSETS) == sorted(VARIANTS)
    hidden = np.array([20, 57, 200])
    for name, variant in REGISTRY.items():
        expected = [variant.num_parameters(88, int(h)) + 88 * h + 88 for h in hidden]
        assert n_params(name, hidden).tolist() == expected, name
    data = synthetic_study(("V", "GRU"), trials_per_variant=5)
    rows = data.trials.itertuples()
    assert data.trials["n_params"].tolist() == [
        REGISTRY[r.variant].num_parameters(88, r.hidden_size) + 88 * r.hidden_size + 88 for r in rows]
    with pytest.raises(OdysseyError, match="unknown variant 'LSTM'"):
        synthetic_study(("V", "LSTM"), trials_per_variant=5)


def store(url: str, data: StudyData, epochs: bool = True) -> None:
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
    from sweep.cli.main import main

    data = synthetic_study(("V", "NP"), trials_per_variant=8, seed=2, name="cli-study")
    store(sqlite_url, data, epochs=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["report", "cli-study", "--storage", sqlite_url, "-o", str(out), "--trees", "8", "--seed", "1",
              "--select-by", "best_test"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    assert f"report written to {(out / 'report.html').resolve()}" in captured.out
    assert "fANOVA pooled" in captured.err  # progress lines
    assert (out / "report.html").exists() and (out / "variant_stats.csv").exists()
    assert 'id="curves"' in read(out / "report.html")  # no epochs stored: a note, not a figure
    assert summary(out / "report.html")["selected_by"] == "best_test"
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
    assert 'id="notes"' in page and "NP, score: fANOVA: the target is constant (5)" in page
    assert "np.float64" not in page and "np.float64" not in json.dumps(summary(path))
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


# ------------------------------------------------------------------------ the paper's rules, shown truly


def figure_json(page: str, key: str) -> dict:
    """The data and layout a report figure was drawn from (as written into the page), with plotly's
    base64 typed arrays decoded into lists."""
    start = page.index(f'"fig-{key}"')
    data, end = json.JSONDecoder(object_hook=_typed_array).raw_decode(page, page.index("[", start))
    layout, _ = json.JSONDecoder(object_hook=_typed_array).raw_decode(page, page.index("{", end))
    return {"data": data, "layout": layout}


def _typed_array(obj: dict):
    if set(obj) >= {"dtype", "bdata"}:
        values = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
        shape = [int(n) for n in str(obj.get("shape", len(values))).split(",")]
        return values.reshape(shape).tolist()
    return obj


def test_best_trials_are_chosen_by_validation_and_shown_by_test():
    data = synthetic_study(("V", "NP"), trials_per_variant=60, seed=4)
    # Make the two rankings disagree on purpose: validation scores reversed within each variant.
    for _, g in data.trials.groupby("variant"):
        data.trials.loc[g.index, "best_valid"] = g["best_test"].max() - g["best_test"] + 1.0
    a = StudyAnalysis(data, n_trees=4)
    assert a.select_by == "best_valid"
    top = a.top_trials()
    for variant, g in a.scored.groupby("variant"):
        by_valid = set(g.nsmallest(6, "select").index)
        by_test = set(g.nsmallest(6, "score").index)
        assert set(top[top["variant"] == variant].index) == by_valid and by_valid != by_test
    stats = a.stats().set_index("variant")
    for variant in ("V", "NP"):  # the shown numbers are the test scores of the validation choice
        chosen = top[top["variant"] == variant]
        assert stats.loc[variant, "top_mean"] == pytest.approx(chosen["score"].mean())
    optimistic = StudyAnalysis(data, select_by="best_test", n_trees=4)
    assert set(optimistic.top_trials().index) != set(top.index)
    assert optimistic.stats()["top_mean"].lt(stats["top_mean"].to_numpy()).all()  # choosing by test flatters


def test_selection_is_named_in_the_figure_and_the_setup_table(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    page = read(build_report_from_data(data, tmp_path / "valid", n_trees=4))
    assert "best 10% chosen by validation nll" in page
    assert "<th>best trials chosen by</th><td>best_valid (validation nll)" in page
    page = read(build_report_from_data(data, tmp_path / "test", n_trees=4, select_by="best_test"))
    assert "best 10% chosen by test nll" in page and "the paper&#x27;s rule" not in page
    from sweep.core.errors import OdysseyError

    with pytest.raises(OdysseyError, match="unknown selection column 'valid'"):
        build_report_from_data(data, tmp_path, select_by="valid")


def test_variant_figure_has_both_panels_means_significance_counts_and_time(full):
    path, data = full
    fig = figure_json(read(path), "variants")
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles[:4] == ["Test nll: all trials", "training time: all trials",
                          "Test nll: best 10% by validation nll", "training time: best 10%"]  # fmt: skip
    boxes = [t for t in fig["data"] if t["type"] == "box"]
    finished = data.trials["state"].isin(["complete", "diverged"])
    all_v = [t for t in boxes if t["name"] == "V" and t.get("xaxis", "x") == "x"]
    assert len(all_v) == 1 and len(all_v[0]["y"]) == int((finished & (data.trials["variant"] == "V")).sum())
    means = [t for t in fig["data"] if t.get("name") == "mean"]
    assert len(means) == 2 and all(len(t["y"]) == 3 for t in means)
    labels = means[0]["x"]
    assert labels[0].startswith("V<br>baseline") and "* worse" in labels[1] and "n.s." in labels[2]
    counts = next(t for t in fig["data"] if t["type"] == "bar")
    assert counts["x"] == ["V", "NFG", "CIFG"] and all(text.endswith("params") for text in counts["text"])


def test_log_sampled_parameters_are_drawn_in_real_units_on_log_axes(full):
    path, _ = full
    page = read(path)
    fig = figure_json(page, "marginals")
    layout = fig["layout"]
    axes = {layout[k]["title"]["text"]: layout[k] for k in layout if k.startswith("xaxis") and
            layout[k].get("title", {}).get("text")}  # fmt: skip
    lr = axes["learning_rate (log scale)"]
    assert lr["type"] == "log" and lr["tickvals"] == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    assert lr["ticktext"][0] == "10<sup>-6</sup>"
    hidden = axes["hidden_size (log scale)"]
    assert hidden["type"] == "log" and hidden["tickvals"] == [20, 50, 100, 200]
    momentum = axes["momentum (log scale of 1 - momentum)"]
    assert momentum["type"] == "log" and momentum["autorange"] == "reversed"
    assert dict(zip(momentum["tickvals"], momentum["ticktext"], strict=True))[0.1] == "0.9"
    assert axes["input_noise"]["type"] == "linear"
    lines = [t for t in fig["data"] if t.get("mode") == "lines" and t.get("visible")]
    xs = np.concatenate([np.asarray(t["x"], float) for t in lines if t["xaxis"] == "x"])
    assert xs.min() == pytest.approx(1e-6) and xs.max() == pytest.approx(1e-2)  # real learning rates
    heat = figure_json(page, "heatmap")
    assert heat["layout"]["xaxis"]["type"] == "log" and heat["layout"]["yaxis"]["type"] in ("log", "linear")
    first = heat["data"][0]
    assert min(first["x"]) > 0  # real units, not log10


def test_interaction_heatmap_shares_the_totals_colour_range_and_names_its_pair(full):
    path, _ = full
    page = read(path)
    fig = figure_json(page, "heatmap")
    pairs = pd.read_csv(path.parent / "interactions.csv").query("scope == 'pooled'")
    pairs = pairs[~pairs["param_a"].eq("variant") & ~pairs["param_b"].eq("variant")]
    top = pairs.sort_values("fraction", ascending=False).iloc[0]
    title = fig["layout"]["title"]["text"]
    assert title.startswith(f"{top['param_a']} x {top['param_b']}: predicted nll")
    assert f"interaction {top['fraction']:.1%}" in title and "of the total" in title
    total, inter = fig["data"][0], fig["data"][1]
    assert inter["zmax"] - inter["zmin"] == pytest.approx(total["zmax"] - total["zmin"])
    assert inter["zmin"] == pytest.approx(-inter["zmax"])
    menus = fig["layout"]["updatemenus"]
    labels = [b["label"] for b in menus[0]["buttons"]] if menus else [f"{top['param_a']} x {top['param_b']}"]
    assert "learning_rate x hidden_size" in labels or "hidden_size x learning_rate" in labels
    assert "largest interaction" in page and "the two most important hyperparameters" not in page


def test_variance_figure_shows_the_spread_across_trees(full):
    path, _ = full
    fig = figure_json(read(path), "variance")
    bars = {t["name"]: t for t in fig["data"]}
    assert set(bars) == {"V", "NFG", "CIFG", "pooled"}
    pooled = bars["pooled"]
    assert pooled["error_y"]["visible"] and len(pooled["error_y"]["array"]) == len(pooled["x"])
    assert {"pairwise", "higher order", "variant", "learning_rate"} <= set(pooled["x"])
    assert sum(pooled["y"]) == pytest.approx(1.0)


def test_small_study_says_so_at_the_top_and_beside_each_figure(tmp_path):
    # The size of examples/jsb-quick.toml: 9 variants x 4 trials.
    data = synthetic_study(GREFF, trials_per_variant=4, seed=1)
    page = read(build_report_from_data(data, tmp_path, n_trees=8))
    top = page[page.index("<h1>"):page.index('id="setup"')]
    assert 'id="sample-size"' in top and "This study is too small for any conclusion" in top
    assert "hold only 2 trials (at least 5 needed)" in top
    # The design is paired: the pooled forest has 36 trials but only 4 distinct settings.
    assert "forests of V, NIG, NFG, NOG, NIAF, NOAF, NP, CIFG, FGR and pooled rest on only 4 distinct" in top
    for key in ("variants", "marginals", "variance", "heatmap"):
        section = page[page.index(f'<section id="{key}">'):]
        section = section[: section.index("</section>")]
        assert 'class="warn sample-size"' in section, key
    assert summary(tmp_path / "report.html")["too_small"] is True


def test_a_study_with_enough_trials_has_no_sample_warning(full):
    path, _ = full  # 50 trials per variant: best 10% = 5 trials, forests of 50
    page = read(path)
    assert 'id="sample-size"' not in page and "sample-size" not in page


def test_boxes_too_small_but_forests_large_enough_warns_only_about_boxes(tmp_path):
    data = synthetic_study(("V", "NP", "NFG"), trials_per_variant=30, seed=2)
    page = read(build_report_from_data(data, tmp_path, n_trees=4))
    assert "hold only 3 trials" in page and "too small for any conclusion" not in page
    assert "fANOVA forests of" not in page


def test_heatmap_section_names_the_true_reason(tmp_path):
    data = synthetic_study(("V", "NP"), trials_per_variant=20)
    for name in ("hidden_size", "momentum", "input_noise"):
        data.spec["space"][name] = {"value": float(data.trials[name].iloc[0])}
        data.trials[name] = data.trials[name].iloc[0]
    page = read(build_report_from_data(data, tmp_path / "one", n_trees=4))
    assert "A joint heatmap needs two hyperparameters that vary within the fitted trials; 1 does " \
           "(learning_rate)." in page  # fmt: skip
    assert "Fewer than two varied hyperparameters" not in page


def test_complete_study_is_not_a_warning_and_the_state_table_has_one_header_row(full, tmp_path):
    path, _ = full
    page = read(path)
    assert '<p class="note" id="completeness">' in page
    table = page[page.index("<h3>Trials by state</h3>"):]
    head = table[table.index("<thead>"): table.index("</thead>")]
    assert head.count("<tr") == 1 and "<th>variant</th>" in head
    partial = synthetic_study(("V", "NP"), trials_per_variant=20, unfinished=0.3, seed=1)
    assert '<p class="warn" id="completeness">' in read(build_report_from_data(partial, tmp_path, n_trees=4))


def test_curves_stay_readable_with_nine_variants(tmp_path):
    data = synthetic_study(GREFF, trials_per_variant=6, max_epochs=7)
    fig = figure_json(read(build_report_from_data(data, tmp_path, n_trees=4)), "curves")
    lines = [t for t in fig["data"] if t.get("mode") == "lines+markers"]
    bands = [t for t in fig["data"] if t.get("fill") == "toself"]
    assert len(lines) == len(bands) == 9
    assert len({t["line"]["color"] for t in lines}) == 9 and all(t["line"]["width"] <= 2 for t in lines)
    assert not any(t["visible"] for t in bands)  # bands only on request (the menu)
    xaxis = fig["layout"]["xaxis"]
    assert xaxis["tickmode"] == "linear" and xaxis["dtick"] == 1 and xaxis["tickformat"] == "d"


def test_docs_list_the_columns_each_csv_really_has(full):
    path, _ = full
    docs = (Path(__file__).resolve().parents[1] / "docs" / "analysis.md").read_text()
    rows = re.findall(r"^\| `(\w+\.csv)` \| `([^`]+)`", docs, flags=re.M)
    assert {name for name, _ in rows} == {"variant_stats.csv", "main_effects.csv", "interactions.csv",
                                          "marginals.csv", "heatmap.csv", "curves.csv"}  # fmt: skip
    for name, columns in rows:
        actual = list(pd.read_csv(path.parent / name, nrows=0).columns)
        assert [c.strip() for c in columns.split(",")] == actual, name


def test_a_greff_sized_study_meets_the_sample_size_rule():
    # 9 variants x 600 trials, as bench/report.py builds (which also checks the page has no warning).
    a = StudyAnalysis(synthetic_study(GREFF, trials_per_variant=600, max_epochs=5))
    size = a.sample_size().set_index("scope")
    assert not size["small_top"].fillna(False).astype(bool).any() and not size["small_forest"].any()
    assert size.loc["V", "top_n"] == 60 and size.loc["pooled", "points"] == 600 and not a.too_small
