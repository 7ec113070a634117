"""Variant statistics and the sampled space: numbers checked against scipy on hand-made samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.space import cap_diverged, scored_trials, space_from_spec, to_sampled
from analysis.stats import params_at_size, top_count, variant_stats
from sweep.core.errors import OdysseyError

SPEC = {
    "space": {
        "learning_rate": {"type": "float", "scale": "log", "low": 1e-6, "high": 1e-2},
        "momentum": {"type": "float", "scale": "log1m", "low": 0.0, "high": 0.99},
        "hidden_size": {"type": "int", "scale": "log", "low": 20, "high": 200},
        "input_noise": {"type": "float", "scale": "linear", "low": 0.0, "high": 1.0},
        "forget_bias": {"value": 1.0},
    }
}


def frame(variant: str, scores, **cols) -> pd.DataFrame:
    n = len(scores)
    data = {"variant": [variant] * n, "state": ["complete"] * n, "diverged": [False] * n, "best_test": scores}
    data.update(cols)
    return pd.DataFrame(data)


def test_space_scales_bounds_and_fixed():
    space = space_from_spec(SPEC)
    assert space.names == ["learning_rate", "momentum", "hidden_size", "input_noise"]
    assert space.fixed == {"forget_bias": 1.0}
    assert space.bounds["learning_rate"] == pytest.approx((-6, -2))
    assert space.bounds["momentum"] == pytest.approx((-2, 0))  # log10(1 - 0.99) .. log10(1 - 0)
    trials = pd.DataFrame(
        {"learning_rate": [1e-3], "momentum": [0.9], "hidden_size": [100], "input_noise": [0.5]}
    )
    sampled = to_sampled(trials, space)
    assert sampled.iloc[0].tolist() == pytest.approx([-3, -1, 2, 0.5])
    param = space.params["momentum"]
    assert param.to_real(param.to_sampled(np.array([0.9])))[0] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"scale": "cubic", "low": 1, "high": 2}, "unknown scale"),
        ({"scale": "log", "low": 0, "high": 1}, "invalid for scale"),
        ({"scale": "linear", "low": "a", "high": 1}, "numeric 'low' and 'high'"),
    ],
)
def test_bad_space_entries_raise_one_line_errors(entry, message):
    with pytest.raises(OdysseyError, match=message) as err:
        space_from_spec({"space": {"x": entry}})
    assert "\n" not in str(err.value)


def test_impossible_value_on_log_scale_is_reported():
    space = space_from_spec(SPEC)
    trials = pd.DataFrame(
        {"learning_rate": [-1.0], "momentum": [0.9], "hidden_size": [10], "input_noise": [0]}
    )
    with pytest.raises(OdysseyError, match="'learning_rate' has value -1.0, impossible on scale 'log'"):
        to_sampled(trials, space)
    with pytest.raises(OdysseyError, match="1 finished trial\\(s\\) have no value for 'learning_rate'"):
        to_sampled(trials.assign(learning_rate=[None]), space)


def test_diverged_rule_caps_at_worst_finite_completed_score():
    trials = pd.DataFrame(
        {
            "state": ["complete", "complete", "diverged", "diverged", "complete"],
            "diverged": [False, False, True, True, False],
            "best_test": [3.0, 5.0, np.nan, 9.0, np.inf],
        }
    )
    score, capped = cap_diverged(trials, "best_test")
    assert score.tolist() == [3.0, 5.0, 5.0, 5.0, 5.0]
    assert capped.tolist() == [False, False, True, True, True]
    # A diverged run that had reached a good score before diverging keeps it.
    trials.loc[3, "best_test"] = 4.0
    score, capped = cap_diverged(trials, "best_test")
    assert score[3] == 4.0 and not capped[3]
    score, _ = cap_diverged(trials.assign(best_test=[3.0, 5.0, np.nan, 1.0, 4.0]), "best_test", "maximize")
    assert score.tolist() == [3.0, 5.0, 3.0, 3.0, 4.0]


def test_scored_trials_ignore_unfinished_and_failed():
    space = space_from_spec({"space": {"learning_rate": SPEC["space"]["learning_rate"]}})
    trials = pd.DataFrame(
        {
            "variant": ["V"] * 4,
            "state": ["complete", "running", "failed", "diverged"],
            "diverged": [False, False, False, True],
            "learning_rate": [1e-3, 1e-4, 1e-5, 1e-2],
            "best_test": [2.0, np.nan, np.nan, np.nan],
        }
    )
    out = scored_trials(trials, space, "best_test")
    assert out["learning_rate"].tolist() == pytest.approx([-3, -2])
    assert out["score"].tolist() == [2.0, 2.0]
    assert out["capped"].tolist() == [False, True]


def test_variant_stats_match_scipy_welch_on_best_ten_percent():
    rng = np.random.default_rng(0)
    v = rng.normal(10, 2, 40)
    a = rng.normal(13, 2, 40)  # clearly worse
    b = rng.normal(10.1, 2, 40)  # indistinguishable
    trials = pd.concat([frame("V", v), frame("A", a), frame("B", b)], ignore_index=True)
    out = variant_stats(trials).set_index("variant")
    assert list(out.index) == ["V", "A", "B"]
    assert top_count(40, 0.1) == 4
    for name, sample in {"V": v, "A": a, "B": b}.items():
        top = np.sort(sample)[:4]
        assert out.loc[name, "n_trials"] == 40
        assert out.loc[name, "best"] == pytest.approx(sample.min())
        assert out.loc[name, "median"] == pytest.approx(np.median(sample))
        assert out.loc[name, "top_mean"] == pytest.approx(top.mean())
        assert out.loc[name, "top_std"] == pytest.approx(top.std(ddof=1))
        if name != "V":
            ref = sps.ttest_ind(top, np.sort(v)[:4], equal_var=False)
            assert out.loc[name, "welch_t"] == pytest.approx(ref.statistic)
            assert out.loc[name, "welch_p"] == pytest.approx(ref.pvalue)
            assert out.loc[name, "delta"] == pytest.approx(top.mean() - np.sort(v)[:4].mean())
    assert np.isnan(out.loc["V", "welch_p"]) and not out.loc["V", "significant"]
    assert out.loc["A", "significant"] and out.loc["A", "delta"] > 0
    assert not out.loc["B", "significant"]


def test_variant_stats_maximize_takes_the_highest_scores():
    trials = pd.concat(
        [frame("V", [1.0, 2.0, 3.0, 4.0]), frame("A", [5.0, 6.0, 7.0, 8.0])], ignore_index=True
    )
    out = variant_stats(trials, direction="maximize", top_fraction=0.5).set_index("variant")
    assert out.loc["A", "best"] == 8.0 and out.loc["A", "top_mean"] == 7.5
    ref = sps.ttest_ind([8.0, 7.0], [4.0, 3.0], equal_var=False)
    assert out.loc["A", "welch_p"] == pytest.approx(ref.pvalue)


def test_paired_wilcoxon_on_shared_design_points_matches_scipy():
    rng = np.random.default_rng(1)
    lr = 10 ** rng.uniform(-6, -2, 30)
    v = rng.normal(5, 1, 30)
    a = v + rng.normal(0.4, 0.3, 30)  # worse at the same points
    # The variant's rows come back shuffled and with float noise, as from a database.
    perm = rng.permutation(30)
    trials = pd.concat(
        [frame("V", v, learning_rate=lr), frame("A", a[perm], learning_rate=lr[perm] * (1 + 1e-14))],
        ignore_index=True,
    )
    out = variant_stats(trials, pair_on=["learning_rate"]).set_index("variant")
    ref = sps.wilcoxon(a - v)
    assert out.loc["A", "paired_n"] == 30
    assert out.loc["A", "paired_stat"] == pytest.approx(ref.statistic)
    assert out.loc["A", "paired_p"] == pytest.approx(ref.pvalue)
    assert out.loc["A", "paired_median_diff"] == pytest.approx(np.median(a - v))
    assert out.loc["A", "paired_significant"]
    # Independent random points never pair up: no paired test.
    trials.loc[trials["variant"] == "A", "learning_rate"] = 10 ** rng.uniform(-6, -2, 30)
    out = variant_stats(trials, pair_on=["learning_rate"]).set_index("variant")
    assert out.loc["A", "paired_n"] == 0 and np.isnan(out.loc["A", "paired_p"])


def test_diverged_trials_are_counted_and_capped_in_stats():
    v = frame(
        "V", [1.0, 2.0, 3.0, np.nan], state=["complete"] * 3 + ["diverged"], diverged=[False] * 3 + [True]
    )
    a = frame("A", [2.0, 2.5, np.nan, np.nan], state=["complete"] * 2 + ["diverged"] * 2)
    out = variant_stats(pd.concat([v, a], ignore_index=True)).set_index("variant")
    assert out.loc["V", "n_diverged"] == 1 and out.loc["A", "n_diverged"] == 2
    assert out.loc["A", "n_capped"] == 2
    assert out.loc["A", "median"] == pytest.approx(np.median([2.0, 2.5, 3.0, 3.0]))


def test_parameter_count_at_median_hidden_size_is_exact_for_quadratic_counts():
    sizes = np.array([20, 50, 80, 150, 200])
    trials = pd.DataFrame({"hidden_size": sizes, "n_params": 4 * sizes**2 + 4 * sizes * 89 + 88 * sizes})
    assert params_at_size(trials, 100) == 4 * 100**2 + 4 * 100 * 89 + 88 * 100
    assert params_at_size(trials.iloc[:2], 40) == trials["n_params"].iloc[1]  # nearest trial


def test_no_finished_trials_gives_empty_table_and_missing_baseline_gives_nan_tests():
    running = frame("V", [np.nan], state=["running"])
    assert variant_stats(running).empty
    out = variant_stats(pd.concat([frame("A", [1.0, 2.0]), frame("B", [1.5, 2.5])], ignore_index=True))
    assert out["welch_p"].isna().all() and not out["significant"].any()


def test_best_fraction_chosen_by_another_column_reports_the_shown_one():
    rng = np.random.default_rng(3)
    v_test, a_test = rng.normal(10, 2, 40), rng.normal(12, 2, 40)
    v_valid, a_valid = rng.normal(10, 2, 40), rng.normal(12, 2, 40)  # rankings unrelated to the test's
    trials = pd.concat(
        [frame("V", v_test, best_valid=v_valid), frame("A", a_test, best_valid=a_valid)], ignore_index=True
    )
    out = variant_stats(trials, select_by="best_valid").set_index("variant")
    v_top, a_top = v_test[np.argsort(v_valid)[:4]], a_test[np.argsort(a_valid)[:4]]
    assert out.loc["V", "top_mean"] == pytest.approx(v_top.mean())
    assert out.loc["A", "top_std"] == pytest.approx(a_top.std(ddof=1))
    ref = sps.ttest_ind(a_top, v_top, equal_var=False)
    assert out.loc["A", "welch_p"] == pytest.approx(ref.pvalue)
    assert out.loc["V", "best"] == pytest.approx(v_test.min())  # best and median stay on the shown column
    # Selection by training time is always shortest first, whatever the study's direction.
    timed = trials.assign(seconds=np.r_[np.arange(40.0), np.arange(40.0)])
    out = variant_stats(timed, direction="maximize", select_by="seconds").set_index("variant")
    assert out.loc["V", "top_mean"] == pytest.approx(v_test[:4].mean())
