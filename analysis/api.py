"""The Python API of the analysis: one object per study, every result a pandas frame.

    >>> from analysis.api import load
    >>> a = load("sqlite:///odyssey.db", "jsb-greff")
    >>> a.stats()                      # per-variant statistics and significance against V
    >>> a.main_effects()               # fANOVA main effects per variant and pooled
    >>> a.marginals()                  # marginal score / training time per hyperparameter

Scores follow the diverged rule of :mod:`analysis.space`; hyperparameters are on their sampled scale.
fANOVA forests are fitted lazily and cached, one per scope (a variant, or ``"pooled"``: all variants
together with the variant as a categorical factor) and target (``"score"`` or ``"seconds"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from analysis import TARGETS
from analysis.fanova import MIN_FOREST_TRIALS, MIN_ROWS, Fanova
from analysis.space import Space, cap_diverged, finished, is_diverged, scored_trials, space_from_spec
from analysis.stats import MIN_TOP_TRIALS, best_fraction, selection_direction, top_count, variant_stats
from storage.results import STATE_COLUMNS, StudyData, count_states
from sweep.core.errors import ConfigError, OdysseyError
from sweep.core.states import SCORED_STATES, ResultState

POOLED = "pooled"
PAIRED_DESIGNS = ("random", "sobol")
#: The pair of the paper's heatmaps (its largest interaction); always offered when both vary.
PAPER_PAIR = ("learning_rate", "hidden_size")
#: The validation column that ranks trials for each shown column (the paper's rule: choose by
#: validation, report test); the default of ``select_by``.
VALIDATION_OF = {"best_test": "best_valid", "best_valid": "best_valid", "final_test": "final_valid",
                 "final_valid": "final_valid", "seconds": "best_valid"}  # fmt: skip


def load(url: str | None, study: str, **options: Any) -> StudyAnalysis:
    """Load a study from storage and return its :class:`StudyAnalysis` (options as its constructor)."""
    from storage.results import load_study

    return StudyAnalysis(load_study(url, study), **options)


class StudyAnalysis:
    """Statistics, fANOVA and marginals of one study.

    ``target`` is the trial column analysed (``best_test`` by default, as in the paper); ``select_by``
    the column that ranks trials for the best ``top_fraction`` (default: the target's validation
    counterpart, :data:`VALIDATION_OF`, so the test set never chooses; pass ``select_by=target`` for the
    optimistic choice by the shown score); ``baseline`` the variant the others are tested against (the
    first variant when it is absent); ``n_trees``/``seed`` configure the fANOVA forests; ``progress``
    receives a line of text before each slow step. Unknown columns raise ``OdysseyError``.
    """

    def __init__(
        self,
        data: StudyData,
        target: str = "best_test",
        *,
        select_by: str | None = None,
        baseline: str = "V",
        top_fraction: float = 0.1,
        alpha: float = 0.05,
        n_trees: int = 64,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if target not in TARGETS:
            raise ConfigError(f"unknown target {target!r} (expected one of {', '.join(TARGETS)})")
        select_by = select_by or VALIDATION_OF[target]
        if select_by not in TARGETS:
            expected = ", ".join(TARGETS)
            raise ConfigError(f"unknown selection column {select_by!r} (expected one of {expected})")
        if not 0 < top_fraction <= 1:
            raise ConfigError(f"top fraction must be in (0, 1], got {top_fraction}")
        self.spec: Mapping = data.spec or {}
        self.name = str(self.spec.get("name") or data.name or "study")
        self.trials = data.trials
        self.epochs = data.epochs
        self.target = target
        self.select_by = select_by
        self.alpha = alpha
        self.top_fraction = top_fraction
        self.n_trees = n_trees
        self.seed = seed
        self.progress = progress or (lambda _msg: None)
        self.space: Space = space_from_spec(self.spec)
        # Training time is always better short, whatever the study optimises.
        self.direction = "minimize" if target == "seconds" else str(self.spec.get("direction", "minimize"))
        self.metric = str(self.spec.get("metric") or "score") if target != "seconds" else "seconds"
        self.select_direction = selection_direction(select_by, str(self.spec.get("direction", "minimize")))
        self.design = str(self.spec.get("design", "random"))
        listed = [str(v) for v in self.spec.get("variants", ())]
        present = list(dict.fromkeys(self.trials["variant"].astype(str))) if len(self.trials) else []
        self.variants = [v for v in listed if v in present] + [v for v in present if v not in listed]
        self._baseline = baseline
        self._fanovas: dict[tuple[str, str], Fanova | None] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------------ the data
    @cached_property
    def scored(self) -> pd.DataFrame:
        """Finished trials: ``variant``, sampled hyperparameters, ``score`` (the target), ``capped``,
        ``select`` (the ``select_by`` column, diverged rule applied) and ``seconds``."""
        frame = scored_trials(self.trials, self.space, self.target, self.direction)
        if len(frame):
            done = self.trials.loc[frame.index]
            frame["select"] = (
                frame["score"] if self.select_by == self.target
                else cap_diverged(done, self.select_by, self.select_direction)[0]
            )  # fmt: skip
            if "seconds" in self.trials:
                frame["seconds"] = pd.to_numeric(done["seconds"], errors="coerce")
        return frame

    @cached_property
    def baseline(self) -> str:
        """The variant others are tested against: the requested one if it has finished trials, else the
        first variant."""
        if self._baseline in set(finished(self.trials)["variant"].astype(str)) or not self.variants:
            return self._baseline
        return self.variants[0]

    def counts(self) -> pd.DataFrame:
        """Trials per variant and state (`storage.results.count_states`: columns waiting, running,
        complete, failed, diverged, then total); a trial flagged diverged counts as diverged."""
        if self.trials.empty:
            return pd.DataFrame(columns=[*STATE_COLUMNS, "total"])
        state = self.trials["state"].astype(str).where(~is_diverged(self.trials), ResultState.DIVERGED.value)
        rows = pd.DataFrame({"variant": self.trials["variant"].astype(str), "state": state})
        table = count_states(rows, "variant").reindex(index=self.variants, fill_value=0)
        table["total"] = table.sum(axis=1)
        return table

    def completeness(self) -> dict[str, int | float]:
        """How far the study has come: finished, planned, running, not started and failed trials, and
        the finished fraction of the planned ones."""
        counts = self.counts()
        per_variant = int(self.spec.get("trials_per_variant") or 0)
        planned = max(per_variant * len(self.spec.get("variants") or self.variants), len(self.trials))
        done = int(counts[list(SCORED_STATES)].sum().sum())
        return {
            "finished": done,
            "planned": planned,
            "running": int(counts[ResultState.RUNNING].sum()),
            "waiting": int(max(planned - len(self.trials), 0) + counts[ResultState.WAITING].sum()),
            "failed": int(counts[ResultState.FAILED].sum()),
            "fraction": done / planned if planned else 0.0,
        }

    # ---------------------------------------------------------------------------------- statistics
    def stats(self) -> pd.DataFrame:
        """Per-variant statistics (see :func:`analysis.stats.variant_stats`); paired tests when the
        design shares its points across variants."""
        pair_on = self.space.names if self.design in PAIRED_DESIGNS else None
        return variant_stats(
            self.trials, metric=self.target, baseline=self.baseline, direction=self.direction,
            top_fraction=self.top_fraction, alpha=self.alpha, pair_on=pair_on, variants=self.variants,
            select_by=self.select_by,
        )  # fmt: skip

    def top_trials(self) -> pd.DataFrame:
        """The best ``top_fraction`` of each variant's finished trials ranked by ``select_by`` (columns
        as :attr:`scored`)."""
        parts = [
            self.scored.loc[best_fraction(g["select"], self.top_fraction, self.select_direction).index]
            for _, g in self.scored.groupby("variant", sort=False)
        ]
        return pd.concat(parts) if parts else self.scored.iloc[:0]

    def sample_size(self) -> pd.DataFrame:
        """Whether each scope has the trials its statistics need: columns scope, trials, top_n,
        small_top (the best fraction holds fewer than ``MIN_TOP_TRIALS``; NaN for ``pooled``, which has
        no box), points (distinct hyperparameter settings among the trials: a paired design trains every
        variant on the same ones, so the pooled forest has no more points than one variant) and
        small_forest (the fANOVA forest rests on fewer than ``MIN_FOREST_TRIALS`` points)."""
        columns = ["scope", "trials", "top_n", "small_top", "points", "small_forest"]
        scored = self.scored
        names = self.space.names
        # With every hyperparameter fixed there is no forest, so no forest can be too small.
        forest = MIN_FOREST_TRIALS if names else 0
        rows = []
        for variant in self.variants:
            mine = scored[scored["variant"] == variant] if len(scored) else scored
            top = top_count(len(mine), self.top_fraction)
            points = len(mine[names].drop_duplicates()) if names else 0
            rows.append({"scope": variant, "trials": len(mine), "top_n": top,
                         "small_top": top < MIN_TOP_TRIALS, "points": points,
                         "small_forest": points < forest})  # fmt: skip
        if len(self.variants) > 1:
            points = len(scored[names].drop_duplicates()) if names else 0
            rows.append({"scope": POOLED, "trials": len(scored), "top_n": np.nan, "small_top": np.nan,
                         "points": points, "small_forest": points < forest})  # fmt: skip
        return pd.DataFrame(rows, columns=columns)

    @property
    def too_small(self) -> bool:
        """True when no variant has the trials for either statistic: no conclusion can be drawn."""
        size = self.sample_size()
        variants = size[size["scope"] != POOLED]
        return bool(len(variants)) and bool((variants["small_top"] & variants["small_forest"]).all())

    # ------------------------------------------------------------------------------------- fANOVA
    @property
    def scopes(self) -> list[str]:
        """Scopes with enough finished trials for fANOVA: the variants, then ``pooled`` if several."""
        if not self.space.params:
            return []
        sizes = self.scored["variant"].value_counts()
        scopes = [v for v in self.variants if sizes.get(v, 0) >= MIN_ROWS]
        if sizes.size > 1 and sizes.sum() >= MIN_ROWS:
            scopes.append(POOLED)
        return scopes

    def fanova(self, scope: str = POOLED, target: str = "score") -> Fanova | None:
        """The fitted fANOVA of ``scope`` for ``target`` (``score`` or ``seconds``), or None (and a note)
        when it cannot be fitted (too few trials, no variation)."""
        key = (scope, target)
        if key not in self._fanovas:
            self._fanovas[key] = self._fit(scope, target)
        return self._fanovas[key]

    def fit_all(self, targets: tuple[str, ...] = ("score", "seconds"), jobs: int = 1) -> None:
        """Fit every scope's forests for ``targets`` (score pairs included) up front, ``jobs`` at a time.

        Threads suffice: tree fitting and the numpy work of the decomposition release the GIL.
        """
        targets = tuple(t for t in targets if t == "score" or (t in self.scored and self.target != t))
        # The pooled fits are the largest: start them first so the threads finish together.
        scopes = sorted(self.scopes, key=lambda s: s != POOLED)
        todo = [(s, t) for t in targets for s in scopes if (s, t) not in self._fanovas]

        def work(key: tuple[str, str]) -> Fanova | None:
            fa = self._fit(*key)
            if fa is not None and key[1] == "score":
                fa.interactions()  # cached inside the Fanova
            return fa

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            self._fanovas.update(zip(todo, pool.map(work, todo), strict=True))

    def _fit(self, scope: str, target: str) -> Fanova | None:
        frame = self.scored if scope == POOLED else self.scored[self.scored["variant"] == scope]
        frame = frame[np.isfinite(frame[target])] if target in frame else frame.iloc[:0]
        columns = [*self.space.names, "variant"] if scope == POOLED else self.space.names
        self.progress(f"fANOVA {scope} ({target}, {len(frame)} trials)")
        try:
            return Fanova(
                n_trees=self.n_trees, seed=self.seed, bounds=self.space.bounds,
                categorical=("variant",) if scope == POOLED else (),
            ).fit(frame[columns], frame[target])  # fmt: skip
        except OdysseyError as exc:
            self.notes.append(f"{scope}, {target}: {exc}")
            return None

    def _collect(self, method: str, target: str = "score") -> pd.DataFrame:
        parts = []
        for scope in self.scopes:
            fa = self.fanova(scope, target)
            if fa is not None:
                parts.append(getattr(fa, method)().assign(scope=scope))
        if not parts:
            return pd.DataFrame()
        out = pd.concat(parts, ignore_index=True)
        return out[["scope", *[c for c in out.columns if c != "scope"]]]

    def main_effects(self, target: str = "score") -> pd.DataFrame:
        """Main-effect variance fractions: columns scope, param, fraction, std."""
        out = self._collect("main_effects", target)
        return out if len(out) else pd.DataFrame(columns=["scope", "param", "fraction", "std"])

    def interactions(self, target: str = "score") -> pd.DataFrame:
        """Pairwise interaction fractions: columns scope, param_a, param_b, fraction, std, total."""
        out = self._collect("interactions", target)
        return (
            out
            if len(out)
            else pd.DataFrame(columns=["scope", "param_a", "param_b", "fraction", "std", "total"])
        )

    def decomposition(self, target: str = "score") -> pd.DataFrame:
        """Variance fractions per scope and component (each main effect, ``pairwise`` for all pairs
        together, ``higher order``) with their std across trees: columns scope, component, fraction, std."""
        out = self._collect("decomposition", target)
        return out if len(out) else pd.DataFrame(columns=["scope", "component", "fraction", "std"])

    def higher_order(self, target: str = "score") -> pd.Series:
        """Variance fraction of interactions of three or more inputs, per scope."""
        values = {s: fa.higher_order() for s in self.scopes if (fa := self.fanova(s, target)) is not None}
        return pd.Series(values, name="fraction", dtype=float)

    def marginals(self, targets: tuple[str, ...] = ("score", "seconds"), grid: int = 40) -> pd.DataFrame:
        """Marginal predictions per scope, target and hyperparameter on a grid of the sampled scale.

        Columns scope, target, param, value (sampled scale), real_value, mean, std.
        """
        parts = []
        for target in targets:
            if target == "seconds" and ("seconds" not in self.scored or self.target == "seconds"):
                continue
            for scope in self.scopes:
                fa = self.fanova(scope, target)
                if fa is None:
                    continue
                for name in fa.params_:
                    if name not in self.space.params:
                        continue
                    m = fa.marginal(name, grid)
                    m.insert(0, "param", name)
                    m.insert(0, "target", target)
                    m.insert(0, "scope", scope)
                    m.insert(4, "real_value", self.space.params[name].to_real(m["value"]))
                    parts.append(m)
        columns = ["scope", "target", "param", "value", "real_value", "mean", "std"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    @property
    def main_scope(self) -> str | None:
        """The scope summarising the study: ``pooled`` if fitted, else the first fitted variant."""
        ordered = sorted(self.scopes, key=lambda s: s != POOLED)
        return next((s for s in ordered if self.fanova(s) is not None), None)

    def heatmap_pairs(self) -> pd.DataFrame:
        """Hyperparameter pairs of :attr:`main_scope` for the heatmaps, largest interaction first, with
        learning rate x hidden size (the paper's pair) second when it is not already first: columns
        param_a, param_b, fraction, std, total (as :meth:`interactions`). Empty when fewer than two
        hyperparameters vary within the fitted trials."""
        scope = self.main_scope
        columns = ["param_a", "param_b", "fraction", "std", "total"]
        model = None if scope is None else self.fanova(scope)
        if model is None:
            return pd.DataFrame(columns=columns)
        pairs = model.interactions()
        pairs = pairs[pairs["param_a"].isin(self.space.params) & pairs["param_b"].isin(self.space.params)]
        if pairs.empty:
            return pd.DataFrame(columns=columns)
        paper = pairs[pairs["param_a"].isin(PAPER_PAIR) & pairs["param_b"].isin(PAPER_PAIR)]
        shown = pd.concat([pairs.iloc[:1], paper]).drop_duplicates(["param_a", "param_b"])
        return shown.reset_index(drop=True)

    def heatmap_pair(self) -> tuple[str, str] | None:
        """The pair with the largest interaction in :attr:`main_scope` (see :meth:`heatmap_pairs`)."""
        pairs = self.heatmap_pairs()
        return None if pairs.empty else (pairs.loc[0, "param_a"], pairs.loc[0, "param_b"])

    def marginal_2d(self, a: str, b: str, scope: str = POOLED, grid: int = 30) -> pd.DataFrame:
        """Joint marginal of ``a`` x ``b``: columns a, b (sampled scale), mean, std, interaction."""
        fa = self.fanova(scope)
        if fa is None:
            raise ConfigError(f"no fANOVA for {scope!r}: {'; '.join(self.notes) or 'too few trials'}")
        return fa.marginal_2d(a, b, grid)

    # ------------------------------------------------------------------------------------- curves
    def curves(self) -> pd.DataFrame:
        """Validation metric per epoch and variant: columns variant, epoch, median, q25, q75, n."""
        columns = ["variant", "epoch", "median", "q25", "q75", "n"]
        ep = self.epochs
        if ep is None or ep.empty:
            return pd.DataFrame(columns=columns)
        values = pd.to_numeric(ep["valid_metric"], errors="coerce")
        ep = ep.assign(valid_metric=values)[np.isfinite(values)]
        g = ep.groupby([ep["variant"].astype(str), "epoch"])["valid_metric"]
        out = pd.DataFrame(
            {"median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75), "n": g.size()}
        ).reset_index()
        order = {v: i for i, v in enumerate(self.variants)}
        out = out.sort_values(["variant", "epoch"], key=lambda s: s.map(order) if s.name == "variant" else s)
        return out[columns].reset_index(drop=True)
