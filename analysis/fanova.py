"""Functional ANOVA (Hutter, Hoos & Leyton-Brown, ICML 2014) on a scikit-learn random forest.

Each tree of the forest is decomposed exactly under the uniform measure on the bounded input domain
(see ``analysis.fanova_trees``); importances and marginals are the mean and the (population) std of
the per-tree results across trees, as in the original fanova package. Method, measure, categorical and
bounds rules: docs/fanova.md.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestRegressor
from sklearn.utils.validation import check_is_fitted

from analysis.fanova_trees import TreeAnova
from sweep.core.errors import ConfigError

# A marginal's grid for one input: None (the default), a number of points, or the values themselves.
Grid = int | Iterable[Any] | None

__all__ = ["Fanova", "MIN_FOREST_TRIALS", "MIN_ROWS"]

log = logging.getLogger(f"odyssey.{__name__}")

#: Fewest rows a forest is fitted on; below this the decomposition is noise.
MIN_ROWS = 4
#: Fewest rows for a decomposition worth reading: with fewer, the per-tree spread of the fractions is
#: about as large as the fractions (reports fit smaller forests but say so).
MIN_FOREST_TRIALS = 20
#: Default grid sizes of ``marginal`` and ``marginal_2d`` for continuous inputs.
GRID_1D = 100
GRID_2D = 30
# Data may lie this far (relative to the range) outside the given bounds, e.g. log10 rounding.
_BOUNDS_SLACK = 1e-9


class Fanova(BaseEstimator):
    """fANOVA of a target over inputs, a scikit-learn estimator: ``Fanova(...).fit(X, y)``.

    The constructor only stores its arguments (so :func:`sklearn.base.clone`, ``get_params`` and
    ``set_params`` work); they are checked, and the forest fitted, by :meth:`fit`. ``bounds`` maps
    continuous inputs to their domain (default: the data's min/max); ``categorical`` names inputs
    treated as factors (a discrete uniform measure over the observed levels). ``n_trees``, ``max_depth``,
    ``min_samples_leaf`` and ``seed`` set the random forest. ``n_jobs`` (scikit-learn's meaning: None = 1,
    -1 = all cores) serves the forest's fit and, as threads, the per-tree decomposition; results do not
    depend on it. ``max_features`` (inputs tried per split) defaults to the original fanova's rule,
    max(1, floor(0.7 * inputs)); 1.0 gives scikit-learn's (and Optuna's) all.

    Fitted attributes (set by :meth:`fit`; each ends with an underscore, as in scikit-learn):
    ``feature_names_in_`` and ``n_features_in_`` (the columns of ``X``), ``params_`` (the inputs
    analysed), ``dropped_`` and ``notes_`` (constant inputs left out), ``bounds_`` (each continuous
    input's domain), ``categories_`` (each categorical input's levels), ``forest_`` (the fitted
    ``RandomForestRegressor``, on the standardised target), ``target_offset_`` and ``target_scale_``
    (the target's mean and std: the forest is fitted on ``(y - target_offset_) / target_scale_``, so
    results do not depend on the target's scale or offset; marginals are in its units),
    ``n_trees_used_`` and ``total_variance_``. A query before :meth:`fit` raises scikit-learn's
    ``NotFittedError`` (a ``ValueError``): calling in the wrong order is a programming error, not bad
    data, and scikit-learn's own tools (``check_is_fitted``) recognise it.
    """

    def __init__(
        self,
        n_trees: int = 64,
        max_depth: int | None = 64,
        seed: int = 0,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        categorical: Sequence[str] | str = (),
        min_samples_leaf: int = 1,
        n_jobs: int | None = None,
        max_features: float | int | None = None,
    ) -> None:
        self.n_trees = n_trees
        self.max_depth = max_depth
        self.seed = seed
        self.bounds = bounds
        self.categorical = categorical
        self.min_samples_leaf = min_samples_leaf
        self.n_jobs = n_jobs
        self.max_features = max_features

    def fit(self, X: pd.DataFrame, y: Iterable[float]) -> Fanova:
        """Fit the forest and decompose its trees; returns self.

        ``X``: DataFrame, one column per input, already in the sampled space (log10 for log-sampled
        parameters); ``y``: the target, one value per row. Columns with a single value are left out
        (see ``dropped_`` and ``notes_``). Any earlier fit is forgotten first, so a failed refit leaves
        the estimator unfitted. Raises ``OdysseyError`` (one line) for bad settings or data.
        """
        for name in [k for k in vars(self) if k.endswith("_")]:
            delattr(self, name)
        _check_settings(self.n_trees, self.max_depth, self.min_samples_leaf)
        if not isinstance(X, pd.DataFrame) or X.shape[1] == 0:
            raise ConfigError("fANOVA: inputs must be a pandas DataFrame with at least one column")
        target = _check_target(y, X)
        # Trees are fitted on the standardised target, so neither the metric's scale nor a large offset
        # matters (a variance of 1e-16 is not mistaken for a constant, nor 1e9 + noise rounded away);
        # fractions are scale-free and marginals are mapped back to the target's units. Rounding to
        # 1e-9 std makes the same data at any scale give the same forest bit for bit (the rounding
        # noise of the division would otherwise break exact ties between splits differently).
        offset = float(target.mean())
        scale = float(target.std()) or 1.0
        standard = np.round((target - offset) / scale, 9)
        inputs = _prepare_inputs(X, self.bounds, self.categorical)
        params, categories = inputs.params, inputs.categories
        levels = [len(categories[p]) if p in categories else None for p in params]
        max_features = self.max_features
        if max_features is None:
            max_features = max(1, (len(params) * 7) // 10)
        forest = RandomForestRegressor(
            n_estimators=self.n_trees,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            max_features=max_features,
            bootstrap=True,
            random_state=self.seed,
            n_jobs=self.n_jobs,
        )
        start = time.perf_counter()
        forest.fit(inputs.unit, standard)
        trees = self._map(lambda est: TreeAnova(est.tree_, levels), forest.estimators_)
        log.info(
            "fANOVA: %d trees on %d trials x %d inputs, main effects in %.1f s",
            self.n_trees,
            len(target),
            len(params),
            time.perf_counter() - start,
        )
        variances = np.array([t.variance for t in trees])
        # As in the original, trees without variance (a bootstrap of equal targets) have no fractions;
        # the floor keeps rounding noise of a constant tree from being divided by.
        used = np.flatnonzero(variances > (1e-12 * np.ptp(standard)) ** 2)
        if not used.size:
            raise ConfigError(
                f"fANOVA: every one of the {self.n_trees} trees is constant (each bootstrap sample of the "
                f"{len(target)} trials drew equal targets); fit more trees or add trials"
            )
        for note in inputs.notes:
            log.info("fANOVA: %s", note)
        # Fitted state, all set here and only here (the leading underscore marks the private part).
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = int(X.shape[1])
        self.params_, self.categories_, self.bounds_ = params, categories, inputs.domain
        self.dropped_, self.notes_ = inputs.dropped, inputs.notes
        self.target_offset_, self.target_scale_ = offset, scale
        self.forest_ = forest
        self._trees_ = trees
        self._used_ = used
        self._variance_ = variances[used]
        self._main_ = np.array([trees[i].main_variance for i in used]) / self._variance_[:, None]
        self._pairs_: dict[tuple[int, int], np.ndarray] = {}
        #: Trees with non-zero variance, over which fractions are averaged.
        self.n_trees_used_ = int(used.size)
        #: Mean over trees of each tree's total variance, in the target's units squared.
        self.total_variance_ = float(self._variance_.mean()) * scale**2
        return self

    def _check_fitted(self, method: str) -> None:
        check_is_fitted(self, msg=f"This Fanova instance is not fitted yet; call fit(X, y) before {method}()")

    def _map(self, fn: Callable, items: Sequence) -> list:
        """fn over items, on ``n_jobs`` threads (the per-tree work is numpy, which releases the GIL)."""
        workers = effective_n_jobs(self.n_jobs)
        if workers <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))

    def _index(self, param: str) -> int:
        if param in self.dropped_:
            value = self.dropped_[param]
            raise ConfigError(f"fANOVA: input '{param}' is constant ({_show(value)}) and was left out")
        try:
            return self.params_.index(param)
        except ValueError:
            raise ConfigError(f"fANOVA: unknown input '{param}'; inputs are {self.params_}") from None

    # --------------------------------------------------------------------------------- importances
    def main_effects(self) -> pd.DataFrame:
        """Variance fraction of each input's main effect: columns param, fraction, std (largest first)."""
        self._check_fitted("main_effects")
        frame = pd.DataFrame(
            {"param": self.params_, "fraction": self._main_.mean(axis=0), "std": self._main_.std(axis=0)}
        )
        return frame.sort_values("fraction", ascending=False, kind="stable", ignore_index=True)

    def _pair_fractions(self, j: int, k: int) -> np.ndarray:
        """Per-tree (interaction, total) fractions of the pair (j, k), shape (trees, 2)."""
        if (j, k) not in self._pairs_:
            used = [self._trees_[i] for i in self._used_]
            total = np.array(self._map(lambda t: t.pair_variance(j, k), used)) / self._variance_
            inter = total - self._main_[:, j] - self._main_[:, k]
            self._pairs_[(j, k)] = np.column_stack([inter, total])
        return self._pairs_[(j, k)]

    def interactions(self) -> pd.DataFrame:
        """Every pair's interaction fraction (pair variance minus both main effects), its std across
        trees, and ``total`` (the pair's whole variance fraction, main effects included), largest first."""
        self._check_fitted("interactions")
        rows = []
        for j, k in itertools.combinations(range(len(self.params_)), 2):
            per_tree = self._pair_fractions(j, k)
            rows.append(
                {
                    "param_a": self.params_[j],
                    "param_b": self.params_[k],
                    "fraction": per_tree[:, 0].mean(),
                    "std": per_tree[:, 0].std(),
                    "total": per_tree[:, 1].mean(),
                }
            )
        frame = pd.DataFrame(rows, columns=["param_a", "param_b", "fraction", "std", "total"])
        return frame.sort_values("fraction", ascending=False, kind="stable", ignore_index=True)

    def decomposition(self) -> pd.DataFrame:
        """The whole variance split into parts, with their spread across trees: one row per main
        effect (in ``params_`` order), ``pairwise`` (all pairs' interactions together) and ``higher
        order`` (the rest); columns component, fraction, std. Fractions sum to 1."""
        self._check_fitted("decomposition")
        combos = itertools.combinations(range(len(self.params_)), 2)
        pairs = [self._pair_fractions(j, k)[:, 0] for j, k in combos]
        pairwise = np.sum(pairs, axis=0) if pairs else np.zeros(len(self._used_))
        higher = 1.0 - self._main_.sum(axis=1) - pairwise
        parts = np.column_stack([self._main_, pairwise, higher])
        return pd.DataFrame(
            {"component": [*self.params_, "pairwise", "higher order"], "fraction": parts.mean(axis=0),
             "std": parts.std(axis=0)}
        )  # fmt: skip

    def higher_order(self) -> float:
        """Variance fraction left to interactions of three or more inputs: 1 - mains - pairs."""
        self._check_fitted("higher_order")
        pairs = self.interactions()["fraction"].sum() if len(self.params_) > 1 else 0.0
        return float(1.0 - self._main_.mean(axis=0).sum() - pairs)

    # ----------------------------------------------------------------------------------- marginals
    def _grid(self, param: str, grid: Grid, default: int) -> tuple[np.ndarray, np.ndarray]:
        """(values to report, their unit coordinates) for one input."""
        if param in self.categories_:
            levels = self.categories_[param]
            if grid is None or isinstance(grid, int | np.integer):
                chosen = list(levels)
            else:
                chosen = list(grid)
                missing = [v for v in chosen if v not in levels]
                if missing:
                    raise ConfigError(
                        f"fANOVA: unknown level(s) {missing} of '{param}'; levels are {levels}"
                    )
            codes = np.array([levels.index(v) for v in chosen], dtype=float)
            return np.array(chosen, dtype=object), (codes + 0.5) / len(levels)
        lo, hi = self.bounds_[param]
        if grid is None or isinstance(grid, int | np.integer):
            n = default if grid is None else int(grid)
            if n < 2:
                raise ConfigError(f"fANOVA: a grid for '{param}' needs at least 2 points, got {n}")
            values = np.linspace(lo, hi, n)
        else:
            values = np.asarray(list(grid), dtype=float)
            if not values.size or not np.isfinite(values).all():
                raise ConfigError(f"fANOVA: the grid for '{param}' must be non-empty and finite")
        return values, (values - lo) / (hi - lo)

    def marginal(self, param: str, grid: Grid = None) -> pd.DataFrame:
        """Marginal predicted target of one input (mean over all others): columns value, mean, std.

        ``grid``: None (100 points over the bounds, or every level of a categorical input), a number of
        points, or the values themselves. ``std`` is across trees.
        """
        self._check_fitted("marginal")
        j = self._index(param)
        values, unit = self._grid(param, grid, GRID_1D)
        per_tree = np.array([t.main[j][t.cell_index(j, unit)] for t in self._trees_])
        mean, std = self._to_target(per_tree.mean(axis=0)), per_tree.std(axis=0) * self.target_scale_
        return pd.DataFrame({"value": values, "mean": mean, "std": std})

    def _to_target(self, level: np.ndarray) -> np.ndarray:
        """Map a level predicted by the trees (standardised target) back to the target's units."""
        return level * self.target_scale_ + self.target_offset_

    def marginal_2d(
        self, a: str, b: str, grid: Grid | tuple[Grid, Grid] | list[Grid] = None
    ) -> pd.DataFrame:
        """Marginal predicted target of a pair on a grid (long form): columns a, b, mean, std, interaction.

        ``interaction`` is the pair marginal minus both main-effect marginals plus the overall mean: the
        part neither input explains alone, centred on 0, in the target's units.
        ``grid``: None (30 points per continuous input), a number of points per input, or a pair of
        value sequences.
        """
        self._check_fitted("marginal_2d")
        j, k = self._index(a), self._index(b)
        if j == k:
            raise ConfigError(f"fANOVA: marginal_2d needs two different inputs, got '{a}' twice")
        if isinstance(grid, tuple | list) and len(grid) == 2 and not np.isscalar(grid[0]):
            grid_a, grid_b = grid
        else:
            grid_a = grid_b = grid
        va, ua = self._grid(a, grid_a, GRID_2D)
        vb, ub = self._grid(b, grid_b, GRID_2D)
        pair, inter = [], []
        for t in self._trees_:
            ia, ib = t.cell_index(j, ua), t.cell_index(k, ub)
            surface = t.marginal_2d(j, k)[np.ix_(ia, ib)] + t.mean
            pair.append(surface)
            inter.append(surface - t.main[j][ia][:, None] - t.main[k][ib][None, :] + t.mean)
        pair_arr, inter_arr = np.array(pair), np.array(inter)
        ga, gb = np.meshgrid(np.arange(va.size), np.arange(vb.size), indexing="ij")
        return pd.DataFrame(
            {
                a: va[ga.ravel()],
                b: vb[gb.ravel()],
                "mean": self._to_target(pair_arr.mean(axis=0).ravel()),
                "std": pair_arr.std(axis=0).ravel() * self.target_scale_,
                "interaction": inter_arr.mean(axis=0).ravel() * self.target_scale_,
            }
        )


@dataclass
class _Inputs:
    """The inputs as the forest sees them: analysed names, levels, domains, unit-scaled columns, and the
    constant inputs left out."""

    params: list[str]
    categories: dict[str, list]
    domain: dict[str, tuple[float, float]]
    unit: np.ndarray
    dropped: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _prepare_inputs(
    X: pd.DataFrame, bounds: Mapping[str, tuple[float, float]] | None, categorical: Sequence[str] | str
) -> _Inputs:
    names = [str(c) for c in X.columns]
    if len(set(names)) != len(names):
        raise ConfigError(f"fANOVA: duplicate input columns in {names}")
    categorical = [str(c) for c in ([categorical] if isinstance(categorical, str) else categorical)]
    unknown = sorted(set(categorical) - set(names))
    if unknown:
        raise ConfigError(f"fANOVA: categorical input(s) {unknown} are not columns of the data {names}")
    bounds = dict(bounds or {})
    unknown = sorted(set(map(str, bounds)) - set(names))
    if unknown:
        raise ConfigError(f"fANOVA: bounds given for unknown input(s) {unknown}; inputs are {names}")
    out = _Inputs([], {}, {}, np.empty(0))
    columns: list[np.ndarray] = []

    def drop(name: str, value: object) -> None:
        out.dropped[name] = value
        out.notes.append(f"input '{name}' is constant ({_show(value)}) and was left out")

    for name, (_, col) in zip(names, X.items(), strict=True):
        if col.isna().any():
            raise ConfigError(f"fANOVA: input '{name}' has {int(col.isna().sum())} missing value(s)")
        if name in categorical:
            if name in bounds:
                raise ConfigError(f"fANOVA: bounds given for categorical input '{name}'")
            levels = _sorted_levels(col.unique().tolist())
            if len(levels) < 2:
                drop(name, levels[0])
                continue
            codes = pd.Categorical(col, categories=levels).codes.astype(float)
            out.params.append(name)
            out.categories[name] = levels
            columns.append(codes)
            continue
        values = _numeric_column(name, col)
        lo, hi = _domain(name, values, bounds.get(name))
        if values.min() == values.max():
            drop(name, float(values[0]))
            continue
        out.params.append(name)
        out.domain[name] = (lo, hi)
        columns.append(np.clip((values - lo) / (hi - lo), 0.0, 1.0))
    if not out.params:
        raise ConfigError("fANOVA: every input is constant; nothing to analyse")
    out.unit = np.column_stack(columns)
    return out


def _check_settings(n_trees: int, max_depth: int | None, min_samples_leaf: int) -> None:
    if not isinstance(n_trees, int | np.integer) or n_trees < 1:
        raise ConfigError(f"fANOVA: n_trees must be a positive integer, got {n_trees!r}")
    if max_depth is not None and (not isinstance(max_depth, int | np.integer) or max_depth < 1):
        raise ConfigError(f"fANOVA: max_depth must be a positive integer or None, got {max_depth!r}")
    if not isinstance(min_samples_leaf, int | np.integer) or min_samples_leaf < 1:
        raise ConfigError(f"fANOVA: min_samples_leaf must be a positive integer, got {min_samples_leaf!r}")


def _check_target(y: Iterable[float], X: pd.DataFrame) -> np.ndarray:
    try:
        target = np.asarray(y, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ConfigError("fANOVA: the target must be numeric") from None
    if len(target) != len(X):
        raise ConfigError(f"fANOVA: {len(target)} target values for {len(X)} rows of inputs")
    if len(target) < MIN_ROWS:
        raise ConfigError(f"fANOVA: needs at least {MIN_ROWS} trials, got {len(target)}")
    bad = int((~np.isfinite(target)).sum())
    if bad:
        raise ConfigError(f"fANOVA: the target has {bad} NaN or infinite value(s); drop those trials first")
    if np.unique(target).size < 2:
        raise ConfigError(f"fANOVA: the target is constant ({target[0]:g}); there is no variance to explain")
    return target


def _show(value: object) -> str:
    """A value as a reader writes it: 5 or 0.001, never np.float64(5.0)."""
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return f"{float(value):g}"
    return str(value)


def _sorted_levels(levels: list) -> list:
    """Levels in their natural order (numbers numerically), else by their text."""
    try:
        return sorted(levels)
    except TypeError:
        return sorted(levels, key=str)


def _numeric_column(name: str, col: pd.Series) -> np.ndarray:
    try:
        values = col.to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"fANOVA: input '{name}' is not numeric; pass it in categorical=") from None
    if not np.isfinite(values).all():
        raise ConfigError(f"fANOVA: input '{name}' has infinite values")
    return values


def _domain(name: str, values: np.ndarray, given: tuple[float, float] | None) -> tuple[float, float]:
    """Domain of a continuous input: the given bounds (which must hold the data) or its min/max."""
    vmin, vmax = float(values.min()), float(values.max())
    if given is None:
        return vmin, vmax
    try:
        lo, hi = (float(v) for v in given)
    except (TypeError, ValueError):
        raise ConfigError(f"fANOVA: bounds for '{name}' must be a pair of numbers, got {given!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(f"fANOVA: bounds for '{name}' must be finite with low < high, got {given!r}")
    slack = _BOUNDS_SLACK * (hi - lo)
    if vmin < lo - slack or vmax > hi + slack:
        raise ConfigError(
            f"fANOVA: data of '{name}' span [{vmin:g}, {vmax:g}], outside its bounds [{lo:g}, {hi:g}]"
        )
    return lo, hi
