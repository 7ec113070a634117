"""fANOVA: reference numbers of the original package, exactness, known structure, categorical, errors,
scikit-learn estimator conventions (clone, get/set_params, fit/refit, NotFittedError)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from analysis.fanova import Fanova
from sweep.core.errors import OdysseyError
from tests.shared import SHARED, shared_path

# The original fanova's numbers, in the shared material beside the checkout (../shared, as in CI).
REF = SHARED / "fanova-ref"
SEEDS = ("", "_seed2", "_seed3")


# ------------------------------------------------------------------------------------------ reference
def _reference(name: str):
    data = pd.read_csv(REF / f"{name}.csv")
    runs = [json.loads((REF / f"{name}{s}.json").read_text()) for s in SEEDS]
    bounds = {d["name"]: (d["lower"], d["upper"]) for d in runs[0]["dims"]}
    return data.drop(columns="y"), data["y"].to_numpy(), bounds, runs


def _resolved_order(ref: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(higher, lower) for every two items the reference itself separates: their ranges over the
    reference's three seeds do not overlap (closer items are ties at the reference's own noise)."""
    out = []
    for a, b in itertools.permutations(ref, 2):
        if ref[a].min() > ref[b].max():
            out.append((a, b))
    return out


@pytest.fixture(scope="module", params=["synthetic_additive", "synthetic_interaction"])
def reference_case(request):
    shared_path("fanova-ref")  # fails, never skips, when the reference data is missing
    X, y, bounds, runs = _reference(request.param)
    return Fanova(bounds=bounds, seed=0).fit(X, y), X, y, runs


def test_main_effects_match_reference(reference_case):
    f, X, _, runs = reference_case
    ours = f.main_effects().set_index("param")["fraction"]
    ref = {p: np.array([r["single"][p]["individual"] for r in runs]) for p in X.columns}
    for p, values in ref.items():
        assert abs(ours[p] - values.mean()) <= 0.05, p
    for hi, lo in _resolved_order(ref):
        assert ours[hi] > ours[lo], (hi, lo)


def test_pairs_match_reference(reference_case):
    f, _, _, runs = reference_case
    ours = f.interactions()
    ours.index = ours["param_a"] + "|" + ours["param_b"]
    ref = {k: np.array([r["pairs"][k]["individual"] for r in runs]) for k in runs[0]["pairs"]}
    ref_total = {k: np.mean([r["pairs"][k]["total"] for r in runs]) for k in runs[0]["pairs"]}
    assert set(ours.index) == set(ref)
    for k, values in ref.items():
        assert abs(ours.loc[k, "fraction"] - values.mean()) <= 0.05, k
        assert abs(ours.loc[k, "total"] - ref_total[k]) <= 0.05, k
    for hi, lo in _resolved_order(ref):
        assert ours.loc[hi, "fraction"] > ours.loc[lo, "fraction"], (hi, lo)


def test_marginals_match_reference(reference_case):
    f, X, y, runs = reference_case
    tolerance = 0.05 * (y.max() - y.min())
    for p in X.columns:
        grid = runs[0]["marginals"][p]["grid"]
        ref = np.mean([r["marginals"][p]["mean"] for r in runs], axis=0)
        ours = f.marginal(p, grid=grid)
        np.testing.assert_allclose(ours["value"], grid)
        assert np.abs(ours["mean"].to_numpy() - ref).max() <= tolerance, p


# ------------------------------------------------------------------------------------------ exactness
def _uniform(n: int, d: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.uniform(0, 1, (n, d)), columns=[f"x{i}" for i in range(d)])


def test_single_tree_decomposition_is_exact():
    """Against brute force over every cell of the tree's split grid (cell midpoints weighted by area)."""
    X = _uniform(80, 3, 1)
    y = np.sin(4 * X.x0) * X.x1 + X.x2**2
    f = Fanova(n_trees=1, seed=3, bounds={c: (0.0, 1.0) for c in X}, max_features=1.0).fit(X, y)
    tree = f.forest_.estimators_[0].tree_
    mids, widths = [], []
    for j in range(3):
        edges = np.unique(np.r_[0.0, tree.threshold[tree.feature == j], 1.0])
        mids.append((edges[:-1] + edges[1:]) / 2)
        widths.append(np.diff(edges))
    grid = np.stack(np.meshgrid(*mids, indexing="ij"), axis=-1)
    pred = f.forest_.predict(grid.reshape(-1, 3)).reshape(grid.shape[:3]) * f.target_scale_ + f.target_offset_
    w = widths[0][:, None, None] * widths[1][None, :, None] * widths[2][None, None, :]
    mean = (w * pred).sum()
    total = (w * (pred - mean) ** 2).sum()

    def var_of(dims):
        others = tuple(i for i in range(3) if i not in dims)
        marg = (w * pred).sum(axis=others) / w.sum(axis=others)
        return (w.sum(axis=others) * (marg - mean) ** 2).sum(), marg

    main = f.main_effects().set_index("param")["fraction"]
    pairs = f.interactions().set_index(["param_a", "param_b"])
    for j in range(3):
        v, marg = var_of((j,))
        assert main[f"x{j}"] == pytest.approx(v / total, abs=1e-10)
        ours = f.marginal(f"x{j}", grid=mids[j])["mean"].to_numpy()
        np.testing.assert_allclose(ours, marg, atol=1e-10)
    for j, k in itertools.combinations(range(3), 2):
        v, _ = var_of((j, k))
        row = pairs.loc[(f"x{j}", f"x{k}")]
        assert row["total"] == pytest.approx(v / total, abs=1e-10)
        assert row["fraction"] == pytest.approx((v - var_of((j,))[0] - var_of((k,))[0]) / total, abs=1e-10)
    assert f.higher_order() == pytest.approx(1 - main.sum() - pairs["fraction"].sum())


def test_main_effects_equal_optunas_on_the_same_forest():
    optuna = pytest.importorskip("optuna")
    X = _uniform(150, 3, 2)
    y = (X.x0 - 0.3) ** 2 + 0.5 * X.x1 * X.x2
    # Our forest is fitted on the standardised target (rounded to 1e-9): give Optuna's the same one.
    y = ((y - y.mean()) / y.std(ddof=0)).round(9)
    dists = {c: optuna.distributions.FloatDistribution(0.0, 1.0) for c in X}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.add_trials(
        [
            optuna.trial.create_trial(params=p, distributions=dists, value=float(v))
            for p, v in zip(X.to_dict("records"), y, strict=True)
        ]
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=8, max_depth=64, seed=5)
    theirs = evaluator.evaluate(study)
    ours = Fanova(n_trees=8, seed=5, bounds={c: (0.0, 1.0) for c in X}, max_features=1.0).fit(X, y)
    main = ours.main_effects().set_index("param")["fraction"]
    for p in X.columns:
        assert main[p] == pytest.approx(theirs[p], abs=1e-9)


# ---------------------------------------------------------------------------- scale and offset of y
@pytest.mark.parametrize(
    ("name", "forward", "back"),
    [("times 1e-12", lambda y: y * 1e-12, lambda m: m / 1e-12),
     ("times 1e12", lambda y: y * 1e12, lambda m: m / 1e12),
     ("plus 1e9", lambda y: y + 1e9, lambda m: m - 1e9)],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_results_do_not_depend_on_the_targets_scale_or_offset(name, forward, back):
    X = _uniform(300, 3, 21)
    y = (3 * np.sin(6 * X.x0) + X.x1**2 + 4 * (X.x0 - 0.5) * (X.x2 - 0.5)).to_numpy()
    y = y + np.random.default_rng(21).normal(0, 0.1, 300)
    base, moved = Fanova(n_trees=16).fit(X, y), Fanova(n_trees=16).fit(X, forward(y))
    # A scale changes nothing at all; an offset of 1e9 rounds the data itself (to 1e-7), which may
    # break a few exact ties between splits differently.
    tol = 0.0 if name.startswith("times") else 0.01
    pd.testing.assert_frame_equal(moved.main_effects(), base.main_effects(), atol=tol, rtol=0)
    pd.testing.assert_frame_equal(moved.interactions(), base.interactions(), atol=tol, rtol=0)
    pd.testing.assert_frame_equal(moved.decomposition(), base.decomposition(), atol=tol, rtol=0)
    # Marginals come back in the target's own units.
    spread = np.ptp(y)
    ours, theirs = moved.marginal("x0", grid=11), base.marginal("x0", grid=11)
    np.testing.assert_allclose(back(ours["mean"]), theirs["mean"], atol=0.02 * spread, rtol=0)
    np.testing.assert_allclose(back(ours["std"] + ours["mean"]) - back(ours["mean"]), theirs["std"],
                               atol=0.02 * spread, rtol=0)  # fmt: skip
    surface, reference = moved.marginal_2d("x0", "x2", grid=6), base.marginal_2d("x0", "x2", grid=6)
    np.testing.assert_allclose(back(surface["mean"]), reference["mean"], atol=0.02 * spread, rtol=0)
    inter = back(surface["interaction"] + surface["mean"]) - back(surface["mean"])
    np.testing.assert_allclose(inter, reference["interaction"], atol=0.02 * spread, rtol=0)
    assert moved.total_variance_ == pytest.approx(base.total_variance_ * (forward(2.0) - forward(1.0)) ** 2,
                                                 rel=0.05)  # fmt: skip


def test_a_tiny_spread_is_not_mistaken_for_a_constant_target():
    # An error rate scaled by 1e-9: a variance of about 1e-19, far below float noise of a unit target.
    X = _uniform(200, 3, 22)
    y = 1e-9 * (0.2 + 0.1 * X.x0 + 0.01 * X.x1)
    assert np.var(y) < 2e-16
    f = Fanova(n_trees=8).fit(X, y)
    main = f.main_effects().set_index("param")["fraction"]
    assert main["x0"] > 0.8 and main["x0"] > main["x1"] > main["x2"]
    assert f.marginal("x0", grid=3)["mean"].between(0.19e-9, 0.32e-9).all()


def test_decomposition_sums_to_one_with_spread_across_trees():
    X = _uniform(120, 3, 23)
    y = X.x0 + (X.x1 - 0.5) * (X.x2 - 0.5) * 6
    f = Fanova(n_trees=16).fit(X, y)
    parts = f.decomposition().set_index("component")
    assert list(parts.index) == ["x0", "x1", "x2", "pairwise", "higher order"]
    assert parts["fraction"].sum() == pytest.approx(1.0)
    main = f.main_effects().set_index("param")
    assert parts.loc["x0", "fraction"] == pytest.approx(main.loc["x0", "fraction"])
    assert parts.loc["x0", "std"] == pytest.approx(main.loc["x0", "std"])
    assert parts.loc["pairwise", "fraction"] == pytest.approx(f.interactions()["fraction"].sum())
    assert parts.loc["higher order", "fraction"] == pytest.approx(f.higher_order())
    assert (parts["std"] > 0).all()  # 120 noisy points: the trees disagree a little


def test_constant_values_are_written_as_numbers_not_numpy_reprs():
    X = _uniform(40, 2, 24).assign(fixed=np.float64(5.0))
    f = Fanova(n_trees=2).fit(X, X.x0 + X.x1)
    assert f.notes_ == ["input 'fixed' is constant (5) and was left out"]
    with pytest.raises(OdysseyError) as err:
        Fanova().fit(X, np.full(40, np.float64(5.0)))
    assert "np.float64" not in str(err.value) and "(5)" in str(err.value)


# --------------------------------------------------------------------------------- known structure
def test_additive_function_has_no_interaction():
    X = _uniform(400, 3, 3)
    y = 2 * X.x0 + np.sin(3 * X.x1)
    f = Fanova(n_trees=16).fit(X, y)
    main = f.main_effects().set_index("param")["fraction"]
    assert main["x0"] > main["x1"] > 0.1
    assert main["x2"] < 0.02
    assert main.sum() > 0.9
    assert f.interactions()["fraction"].abs().max() < 0.03
    surface = f.marginal_2d("x0", "x1", grid=12)
    assert surface.shape == (144, 5)
    assert surface["interaction"].abs().max() < 0.1 * np.ptp(y)


def test_product_interaction_dominates():
    X = _uniform(600, 3, 4)
    y = (X.x0 - 0.5) * (X.x1 - 0.5) * 8
    f = Fanova(n_trees=16).fit(X, y)
    pairs = f.interactions()
    assert (pairs.loc[0, "param_a"], pairs.loc[0, "param_b"]) == ("x0", "x1")
    assert pairs.loc[0, "fraction"] > 0.6
    assert f.main_effects()["fraction"].max() < 0.1
    surface = f.marginal_2d("x0", "x1", grid=(np.linspace(0.1, 0.9, 9), np.linspace(0.1, 0.9, 7)))
    assert list(surface.columns) == ["x0", "x1", "mean", "std", "interaction"]
    truth = (surface.x0 - 0.5) * (surface.x1 - 0.5) * 8
    assert np.corrcoef(truth, surface["interaction"])[0, 1] > 0.95
    flat = f.marginal("x0", grid=np.linspace(0.1, 0.9, 5))  # edge cells hold few points
    assert np.ptp(flat["mean"]) < 0.1 * np.ptp(y)


def test_categorical_factor_uses_discrete_uniform_measure():
    rng = np.random.default_rng(5)
    n = 500
    # Heavily unbalanced levels: the measure must still give each level weight 1/3.
    variant = rng.choice(["V", "NFG", "GRU"], size=n, p=[0.8, 0.1, 0.1])
    offset = {"V": 0.0, "NFG": 3.0, "GRU": 1.5}
    X = pd.DataFrame({"variant": variant, "lr": rng.uniform(-4, -1, n)})
    y = np.array([offset[v] for v in variant]) + 0.1 * X.lr + rng.normal(0, 0.05, n)
    f = Fanova(n_trees=16, categorical=["variant"]).fit(X, y)
    main = f.main_effects().set_index("param")["fraction"]
    assert main["variant"] > 0.9
    by_level = f.marginal("variant").set_index("value")["mean"]
    assert list(by_level.index) == ["GRU", "NFG", "V"]
    expected_lr_mean = 0.1 * -2.5
    for level, off in offset.items():
        assert by_level[level] == pytest.approx(off + expected_lr_mean, abs=0.1)
    lr_curve = f.marginal("lr", grid=7)["mean"]
    assert lr_curve.mean() == pytest.approx(np.mean(list(offset.values())) + expected_lr_mean, abs=0.15)
    assert len(f.marginal("variant", grid=["V"])) == 1
    surface = f.marginal_2d("variant", "lr", grid=4)
    assert len(surface) == 12 and set(surface["variant"]) == set(offset)
    with pytest.raises(OdysseyError, match="unknown level"):
        f.marginal("variant", grid=["LSTM"])


def test_seeded_and_reproducible():
    X = _uniform(200, 3, 6)
    y = X.x0 * X.x1 + X.x2
    a = Fanova(n_trees=8, seed=11).fit(X, y)
    b = Fanova(n_trees=8, seed=11, n_jobs=2).fit(X, y)  # threads and parallel fitting change nothing
    c = Fanova(n_trees=8, seed=12).fit(X, y)
    pd.testing.assert_frame_equal(a.main_effects(), b.main_effects())
    pd.testing.assert_frame_equal(a.interactions(), b.interactions())
    pd.testing.assert_frame_equal(a.marginal("x0", grid=9), b.marginal("x0", grid=9))
    assert not np.allclose(a.main_effects()["fraction"], c.main_effects()["fraction"])


# ------------------------------------------------------------------- scikit-learn estimator conventions
QUERIES = [
    ("main_effects", ()),
    ("interactions", ()),
    ("decomposition", ()),
    ("higher_order", ()),
    ("marginal", ("x0",)),
    ("marginal_2d", ("x0", "x1")),
]


def _answers(f: Fanova) -> list:
    return [getattr(f, name)(*args) for name, args in QUERIES]


def _assert_same_answers(a: Fanova, b: Fanova) -> None:
    for (name, _), mine, theirs in zip(QUERIES, _answers(a), _answers(b), strict=True):
        if isinstance(mine, pd.DataFrame):
            pd.testing.assert_frame_equal(mine, theirs, obj=name)
        else:
            assert mine == theirs, name


def test_constructor_stores_its_arguments_unchanged_and_get_set_params_round_trip():
    bounds = {"x0": (0.0, 1.0)}
    f = Fanova(n_trees=8, max_depth=5, seed=4, bounds=bounds, categorical="x1", n_jobs=2)
    params = f.get_params()
    assert params == {"n_trees": 8, "max_depth": 5, "seed": 4, "bounds": bounds, "categorical": "x1",
                      "min_samples_leaf": 1, "n_jobs": 2, "max_features": None}  # fmt: skip
    assert f.bounds is bounds and set(vars(f)) == set(params)
    assert Fanova(**params).get_params() == params
    assert f.set_params(n_trees=3, categorical=()) is f
    assert f.get_params() == {**params, "n_trees": 3, "categorical": ()}
    # Fitting reads the arguments but never rewrites them (the defaults stay None, a name stays a name).
    X = _uniform(60, 2, 30).assign(x1=lambda d: (d.x1 > 0.5).astype(int))
    f.set_params(categorical="x1").fit(X, X.x0 + X.x1)
    assert f.get_params() == {**params, "n_trees": 3}
    with pytest.raises(ValueError, match="Invalid parameter 'trees'"):
        f.set_params(trees=4)


def test_fit_returns_self_and_every_fitted_attribute_ends_with_an_underscore():
    X = _uniform(80, 3, 31).assign(fixed=2.0)
    f = Fanova(n_trees=4, seed=1)
    unfitted = set(vars(f))
    assert f.fit(X, X.x0 + X.x1) is f
    fitted = set(vars(f)) - unfitted
    assert fitted and all(name.endswith("_") for name in fitted), sorted(fitted)
    check_is_fitted(f)
    assert list(f.feature_names_in_) == ["x0", "x1", "x2", "fixed"] and f.n_features_in_ == 4
    assert f.params_ == ["x0", "x1", "x2"] and f.dropped_ == {"fixed": 2.0} and len(f.notes_) == 1
    assert f.n_trees_used_ == 4 and f.total_variance_ > 0
    assert isinstance(f.forest_, RandomForestRegressor) and len(f.forest_.estimators_) == 4


def test_queries_before_fit_raise_not_fitted_error():
    f = Fanova(n_trees=4)
    for name, args in QUERIES:
        with pytest.raises(NotFittedError, match=rf"call fit\(X, y\) before {name}\(\)") as err:
            getattr(f, name)(*args)
        assert "\n" not in str(err.value)
    assert issubclass(NotFittedError, ValueError)
    with pytest.raises(AttributeError):
        _ = f.n_trees_used_


def test_clone_and_refit_equals_a_fresh_fit():
    X = _uniform(150, 3, 32)
    y = X.x0 * X.x1 + np.sin(3 * X.x2)
    settings = dict(n_trees=8, seed=9, bounds={c: (0.0, 1.0) for c in X}, max_features=1.0)
    fitted = Fanova(**settings).fit(X, y)
    fitted.interactions()  # fill the pair cache, which a clone must not carry over
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params() and twin.bounds is not fitted.bounds
    with pytest.raises(NotFittedError):
        twin.main_effects()
    _assert_same_answers(twin.fit(X, y), fitted)
    _assert_same_answers(twin, Fanova(**settings).fit(X, y))


def test_refit_on_other_data_answers_for_the_new_data_only():
    X = _uniform(200, 3, 33)
    first = X.assign(fixed=1.0)
    f = Fanova(n_trees=8, seed=2).fit(first, 4 * X.x0 + 0.1 * X.x1)
    assert f.main_effects().loc[0, "param"] == "x0" and f.dropped_ == {"fixed": 1.0}
    f.interactions()
    renamed = X.rename(columns={"x2": "lr"})
    y = 4 * (X.x1 - 0.5) * (renamed.lr - 0.5) + X.x1
    assert f.fit(renamed, y) is f
    fresh = Fanova(n_trees=8, seed=2).fit(renamed, y)
    _assert_same_answers(f, fresh)
    assert f.params_ == ["x0", "x1", "lr"] and f.dropped_ == {} and f.notes_ == []
    assert f.main_effects().loc[0, "param"] == "x1"
    top = f.interactions().loc[0]
    assert (top["param_a"], top["param_b"]) == ("x1", "lr")
    with pytest.raises(OdysseyError, match="unknown input 'x2'"):
        f.marginal("x2")


def test_a_failed_refit_leaves_the_estimator_unfitted():
    X = _uniform(60, 2, 34)
    f = Fanova(n_trees=4).fit(X, X.x0 + X.x1)
    with pytest.raises(OdysseyError, match="NaN or infinite"):
        f.fit(X, np.full(60, np.nan))
    with pytest.raises(NotFittedError):
        f.main_effects()  # never the old data's answers
    assert f.fit(X, X.x0 - X.x1).main_effects()["fraction"].sum() > 0.5


def test_bounds_default_to_data_range_and_shape_the_measure():
    X = _uniform(300, 2, 7)
    y = np.where(X.x0 > 0.5, 1.0, 0.0) + 0.1 * X.x1
    f = Fanova(n_trees=8).fit(X, y)
    assert f.bounds_["x0"] == (X.x0.min(), X.x0.max())
    grid = f.marginal("x0")
    assert len(grid) == 100 and grid["value"].iloc[0] == X.x0.min() and grid["value"].iloc[-1] == X.x0.max()
    # A wider domain for x1 changes nothing about x0's marginal; a wider x0 domain [0, 3] spends most
    # of its mass on the x0 > 0.5 plateau, so the overall mean rises.
    wide = Fanova(n_trees=8, bounds={"x0": (0.0, 3.0)}).fit(X, y)
    assert wide.marginal("x1", grid=3)["mean"].mean() > f.marginal("x1", grid=3)["mean"].mean() + 0.2


def test_constant_input_is_dropped_with_a_note():
    X = _uniform(100, 2, 8).assign(fixed=0.9)
    y = X.x0 + X.x1**2
    f = Fanova(n_trees=4).fit(X, y)
    assert f.params_ == ["x0", "x1"]
    assert f.dropped_ == {"fixed": 0.9}
    assert "fixed" in f.notes_[0]
    assert set(f.main_effects()["param"]) == {"x0", "x1"}
    with pytest.raises(OdysseyError, match="'fixed' is constant"):
        f.marginal("fixed")


# ------------------------------------------------------------------------------------------ bad input
def _bad_cases():
    X = _uniform(50, 2, 9)
    y = (X.x0 + X.x1).to_numpy()
    nan_y = y.copy()
    nan_y[3] = np.nan
    inf_y = y.copy()
    inf_y[0] = np.inf
    nan_x = X.copy()
    nan_x.loc[2, "x1"] = np.nan
    text = X.assign(x1=["a"] * 50)
    return [
        ("nan target", dict(X=X, y=nan_y), "NaN or infinite"),
        ("inf target", dict(X=X, y=inf_y), "NaN or infinite"),
        ("constant target", dict(X=X, y=np.ones(50)), "target is constant"),
        ("too few rows", dict(X=X.head(3), y=y[:3]), "at least"),
        ("length mismatch", dict(X=X, y=y[:40]), "40 target values for 50 rows"),
        ("nan input", dict(X=nan_x, y=y), "'x1' has 1 missing"),
        ("text input", dict(X=text, y=y), "'x1' is not numeric"),
        ("all constant", dict(X=X.assign(x0=1.0, x1=2.0), y=y), "every input is constant"),
        ("data outside bounds", dict(X=X, y=y, bounds={"x0": (0.2, 0.5)}), "outside its bounds"),
        ("reversed bounds", dict(X=X, y=y, bounds={"x0": (1.0, 0.0)}), "low < high"),
        ("unknown bound", dict(X=X, y=y, bounds={"lr": (0.0, 1.0)}), "unknown input"),
        ("unknown categorical", dict(X=X, y=y, categorical=["variant"]), "not columns"),
        ("no columns", dict(X=X[[]], y=y), "at least one column"),
        ("bad n_trees", dict(X=X, y=y, n_trees=0), "n_trees"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_one_line_error(case):
    _, kwargs, message = case
    data = {k: kwargs[k] for k in ("X", "y")}
    settings = {k: v for k, v in kwargs.items() if k not in data}
    estimator = Fanova(**settings)  # scikit-learn convention: the constructor checks nothing
    with pytest.raises(OdysseyError, match=message) as err:
        estimator.fit(**data)
    assert "\n" not in str(err.value)


def test_bad_queries_raise():
    X = _uniform(60, 2, 10)
    f = Fanova(n_trees=4).fit(X, X.x0 - X.x1)
    with pytest.raises(OdysseyError, match="unknown input 'lr'"):
        f.marginal("lr")
    with pytest.raises(OdysseyError, match="at least 2 points"):
        f.marginal("x0", grid=1)
    with pytest.raises(OdysseyError, match="two different inputs"):
        f.marginal_2d("x0", "x0")


def test_single_input_explains_everything_and_numeric_levels_keep_their_order():
    rng = np.random.default_rng(11)
    layers = rng.choice([1, 2, 10], size=120)
    y = np.log(layers) + rng.normal(0, 0.01, 120)
    f = Fanova(n_trees=4, categorical="layers").fit(pd.DataFrame({"layers": layers}), y)
    assert f.main_effects()["fraction"].iloc[0] == pytest.approx(1.0)
    assert f.interactions().empty and list(f.interactions().columns)[:2] == ["param_a", "param_b"]
    assert f.higher_order() == pytest.approx(0.0, abs=1e-12)
    curve = f.marginal("layers")
    assert list(curve["value"]) == [1, 2, 10]
    np.testing.assert_allclose(curve["mean"], np.log([1, 2, 10]), atol=0.05)


def test_inputs_must_be_a_dataframe():
    with pytest.raises(OdysseyError, match="DataFrame"):
        Fanova().fit(np.zeros((10, 2)), np.arange(10.0))
