"""Per-variant statistics and significance tests against the vanilla LSTM (as in Greff et al.).

For every variant: trial and divergence counts, the parameter count at the study's median hidden size,
the best and median score, and mean +- std of the best 10% of trials. As in the paper, the best 10% are
chosen by one column (the validation metric by default) and their scores in another (the test metric)
are reported, so the test set never takes part in the choice. The best 10% of each variant are
compared with the baseline's best 10% by Welch's t-test (unequal variances); p < alpha marks a significant
difference. When the design gives every variant the same hyperparameter points (random or Sobol design
slots shared across variants), the matched points are also compared by a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.space import cap_diverged, finished, is_diverged
from sweep.core.errors import ConfigError

MIN_PAIRS = 6  # a two-sided Wilcoxon test on fewer pairs can never reach p < 0.05
#: Fewest trials a variant's best fraction should hold for its mean, spread and t-test to say anything.
MIN_TOP_TRIALS = 5

COLUMNS = [
    "variant", "n_trials", "n_diverged", "n_capped", "n_params", "best", "median", "top_n", "top_mean",
    "top_std", "delta", "welch_t", "welch_p", "significant", "paired_n", "paired_median_diff",
    "paired_stat", "paired_p", "paired_significant",
]  # fmt: skip


def top_count(n: int, fraction: float) -> int:
    """How many trials form the best ``fraction`` of ``n`` (at least 2 where possible, so a std exists)."""
    return min(n, max(2, int(round(n * fraction))))


def best_fraction(scores: pd.Series, fraction: float, direction: str = "minimize") -> pd.Series:
    """The best ``fraction`` of ``scores`` (lowest when minimising); ties keep their order."""
    ordered = scores.sort_values(ascending=direction == "minimize", kind="stable")
    return ordered.iloc[: top_count(len(ordered), fraction)]


def selection_direction(select_by: str, direction: str) -> str:
    """The direction in which ``select_by`` is better: training time is always better short."""
    return "minimize" if select_by == "seconds" else direction


def params_at_size(trials: pd.DataFrame, size: float, hidden: str = "hidden_size") -> float:
    """A variant's parameter count at hidden size ``size``.

    Parameter counts of recurrent layers are quadratic in the hidden size, so with three or more distinct
    sizes a quadratic through the trials' (size, n_params) points gives the count exactly; otherwise the
    count of the trial nearest ``size`` is used.
    """
    if "n_params" not in trials:
        return float("nan")
    points = trials[[hidden, "n_params"]] if hidden in trials else None
    if points is None or not np.isfinite(size):
        return float(pd.to_numeric(trials["n_params"], errors="coerce").median())
    points = points.apply(pd.to_numeric, errors="coerce").dropna().drop_duplicates(hidden)
    if points.empty:
        return float("nan")
    if len(points) >= 3:
        coef = np.polyfit(points[hidden].to_numpy(float), points["n_params"].to_numpy(float), 2)
        return float(np.round(np.polyval(coef, size)))
    nearest = (points[hidden] - size).abs().idxmin()
    return float(points.loc[nearest, "n_params"])


def _paired_test(
    trials: pd.DataFrame, score: pd.Series, variant: str, baseline: str, pair_on: Sequence[str]
) -> tuple[int, float, float, float]:
    """Wilcoxon signed-rank test of ``variant`` against ``baseline`` on identical hyperparameter points."""
    # Rounding absorbs float noise from the database round trip; distinct random points never collide.
    keys = trials[list(pair_on)].apply(pd.to_numeric, errors="coerce").round(9)
    frame = keys.assign(_variant=trials["variant"].astype(str), _score=score)
    a = frame[frame["_variant"] == variant].drop_duplicates(list(pair_on))
    b = frame[frame["_variant"] == baseline].drop_duplicates(list(pair_on))
    pairs = a.merge(b, on=list(pair_on), suffixes=("_a", "_b"))
    n = len(pairs)
    if n < MIN_PAIRS:
        return n, float("nan"), float("nan"), float("nan")
    diff = (pairs["_score_a"] - pairs["_score_b"]).to_numpy(float)
    if np.all(diff == 0):
        return n, 0.0, float("nan"), 1.0
    res = sps.wilcoxon(diff)
    return n, float(np.median(diff)), float(res.statistic), float(res.pvalue)


def variant_stats(
    trials: pd.DataFrame,
    metric: str = "best_test",
    baseline: str = "V",
    direction: str = "minimize",
    top_fraction: float = 0.1,
    alpha: float = 0.05,
    pair_on: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    hidden: str = "hidden_size",
    select_by: str | None = None,
) -> pd.DataFrame:
    """One row per variant with the statistics above (columns in ``COLUMNS``).

    ``trials`` is ``StudyData.trials`` (unfinished trials are ignored; the diverged rule of
    :func:`analysis.space.cap_diverged` is applied to ``metric`` and to ``select_by``). ``select_by``
    is the column that ranks trials for the best ``top_fraction`` (default: ``metric`` itself; the paper
    ranks by the validation metric, e.g. ``best_valid``, and reports ``metric`` = ``best_test``); its
    direction is ``direction`` except for ``seconds`` (shorter is better). ``pair_on`` names the
    hyperparameter columns that identify a shared design point; give it only for random/Sobol designs
    whose points are shared across variants. ``variants`` fixes the row order (default: order of
    appearance). The baseline's own test columns are NaN, as are they for every variant when the
    baseline has no finished trial.
    """
    done = finished(trials)
    if done.empty:
        return pd.DataFrame(columns=COLUMNS)
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
    score, capped = cap_diverged(done, metric, direction)
    rank, rank_direction = score, direction
    if select_by and select_by != metric:
        rank_direction = selection_direction(select_by, direction)
        rank = cap_diverged(done, select_by, rank_direction)[0]

    def best(mask: pd.Series) -> pd.Series:
        """The shown scores of the best ``top_fraction`` of the trials in ``mask``, ranked by select_by."""
        return score[best_fraction(rank[mask], top_fraction, rank_direction).index]

    diverged = is_diverged(done)
    names = done["variant"].astype(str)
    order = [v for v in (variants or names.unique()) if (names == v).any()]
    size = float(pd.to_numeric(done[hidden], errors="coerce").median()) if hidden in done else float("nan")

    base_top = best(names == baseline)
    base_mean = base_top.mean() if len(base_top) else float("nan")
    rows = []
    for variant in order:
        mask = names == variant
        s = score[mask]
        top = best(mask)
        row = {
            "variant": variant,
            "n_trials": int(mask.sum()),
            "n_diverged": int(diverged[mask].sum()),
            "n_capped": int(capped[mask].sum()),
            "n_params": params_at_size(done[mask], size, hidden),
            "best": s.min() if direction == "minimize" else s.max(),
            "median": s.median(),
            "top_n": len(top),
            "top_mean": top.mean(),
            "top_std": top.std(ddof=1) if len(top) > 1 else float("nan"),
            "delta": top.mean() - base_mean if variant != baseline else float("nan"),
            "welch_t": float("nan"),
            "welch_p": float("nan"),
            "paired_n": 0,
            "paired_median_diff": float("nan"),
            "paired_stat": float("nan"),
            "paired_p": float("nan"),
        }
        # Two constant samples have no t statistic (scipy would only warn about precision).
        spread = top.std() > 0 or base_top.std() > 0
        if variant != baseline and len(top) > 1 and len(base_top) > 1 and spread:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # near-constant samples: scipy's caveat
                res = sps.ttest_ind(top, base_top, equal_var=False)
            row["welch_t"], row["welch_p"] = float(res.statistic), float(res.pvalue)
        if variant != baseline and pair_on:
            n, med, stat, p = _paired_test(done, score, variant, baseline, pair_on)
            row.update(paired_n=n, paired_median_diff=med, paired_stat=stat, paired_p=p)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("significant", "paired_significant")])
    out.insert(out.columns.get_loc("welch_p") + 1, "significant", out["welch_p"] < alpha)
    out["paired_significant"] = out["paired_p"] < alpha
    return out[COLUMNS]
