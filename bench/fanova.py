"""Benchmark: our fANOVA against Optuna's FanovaImportanceEvaluator on the same data, same run.

5400 trials x 4 hyperparameters (a Greff-sized sweep, in the sampled space), 64 trees, max depth 64.
Ours computes every main effect AND all 6 pairs; Optuna's evaluator computes main effects only.
Both use scikit-learn forests; times are medians over repeats because the machine's cores are shared.

    .venv/bin/python bench/fanova.py [--rows 5400] [--repeats 3]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np
import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.fanova import Fanova  # noqa: E402

BOUNDS = {
    "log_learning_rate": (-6.0, -2.0),
    "hidden_size": (20.0, 200.0),
    "log1m_momentum": (-2.0, 0.0),
    "input_noise": (0.0, 1.0),
}


def make_sweep(rows: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A synthetic sweep: learning rate dominates, hidden size and momentum matter less and interact."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({k: rng.uniform(lo, hi, rows) for k, (lo, hi) in BOUNDS.items()})
    lr, hid, mom, noise = (X[k].to_numpy() for k in BOUNDS)
    y = (
        (lr + 3.5) ** 2
        + 0.4 * np.log(hid)
        + 0.3 * mom * (lr + 4.0)
        + 0.2 * noise
        + rng.normal(0.0, 0.3, rows)
    )
    return X, y


def optuna_study(X: pd.DataFrame, y: np.ndarray) -> optuna.Study:
    """A study holding the same trials (linear distributions over the same bounds, the sampled space)."""
    dists = {k: optuna.distributions.FloatDistribution(lo, hi) for k, (lo, hi) in BOUNDS.items()}
    study = optuna.create_study()
    records = X.to_dict("records")
    study.add_trials(
        [
            optuna.trial.create_trial(params=p, distributions=dists, value=float(v))
            for p, v in zip(records, y, strict=True)
        ]
    )
    return study


def ours(X: pd.DataFrame, y: np.ndarray, **kw) -> tuple[tuple[float, float], pd.DataFrame]:
    """((wall s, CPU s), main effects) of a fit + main effects + all pairs."""
    start, cpu = time.perf_counter(), time.process_time()
    f = Fanova(n_trees=64, max_depth=64, seed=0, bounds=BOUNDS, **kw).fit(X, y)
    main = f.main_effects()
    f.interactions()
    return (time.perf_counter() - start, time.process_time() - cpu), main


def theirs(study: optuna.Study) -> tuple[tuple[float, float], dict[str, float]]:
    """((wall s, CPU s), main effects) of Optuna's evaluator."""
    start, cpu = time.perf_counter(), time.process_time()
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=64, max_depth=64, seed=0)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=False)
    return (time.perf_counter() - start, time.process_time() - cpu), imp


@click.command()
@click.option("--rows", default=5400, show_default=True, help="trials in the synthetic sweep")
@click.option("--repeats", default=5, show_default=True, help="timed repeats of ours (median reported)")
@click.option(
    "--optuna-repeats",
    default=1,
    show_default=True,
    help="timed repeats of Optuna's evaluator (one run takes minutes at 5400 trials)",
)
def main(rows: int, repeats: int, optuna_repeats: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    X, y = make_sweep(rows)
    study = optuna_study(X, y)
    t_ours, t_same, t_opt = [], [], []

    def run_ours(label: str, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        for i in range(count):
            t, main_ours = ours(X, y)
            t_ours.append(t)
            t, main_same = ours(X, y, max_features=1.0)
            t_same.append(t)
            print(
                f"ours ({label}) {i + 1}/{count}: wall/CPU {t_ours[-1][0]:.2f}/{t_ours[-1][1]:.2f} s, "
                f"max_features=1.0: {t_same[-1][0]:.2f}/{t_same[-1][1]:.2f} s",
                flush=True,
            )
        return main_ours, main_same

    # Half of our repeats before Optuna's run and half after, so a change in load hits both sides.
    run_ours("before", (repeats + 1) // 2)
    for i in range(optuna_repeats):
        t, imp = theirs(study)
        t_opt.append(t)
        wall, cpu = t_opt[-1]
        print(f"optuna {i + 1}/{optuna_repeats}: wall/CPU {wall:.2f}/{cpu:.2f} s", flush=True)
    main_ours, main_same = run_ours("after", repeats // 2 or 1)
    # CPU time is reported next to wall time: it is far less sensitive to other jobs on shared cores.
    mo, ms, mt = ([statistics.median(x[i] for x in t) for i in (0, 1)] for t in (t_ours, t_same, t_opt))
    print(
        f"\n{rows} trials x {len(BOUNDS)} inputs, 64 trees, max depth 64 "
        f"(medians of {repeats} and {optuna_repeats} runs; wall s / CPU s)"
    )
    print(f"  ours, main effects + all 6 pairs:                    {mo[0]:8.2f} / {mo[1]:8.2f}")
    print(f"  ours, max_features=1.0 (Optuna's forest), + pairs:   {ms[0]:8.2f} / {ms[1]:8.2f}")
    print(f"  optuna FanovaImportanceEvaluator, main effects only: {mt[0]:8.2f} / {mt[1]:8.2f}")
    print(f"  speed-up, wall: {mt[0] / mo[0]:.1f}x (default), {mt[0] / ms[0]:.1f}x (same forest as Optuna)")
    print(f"  speed-up, CPU:  {mt[1] / mo[1]:.1f}x (default), {mt[1] / ms[1]:.1f}x (same forest as Optuna)")
    table = pd.DataFrame(
        {
            "ours": main_ours.set_index("param")["fraction"],
            "ours_max_features_1": main_same.set_index("param")["fraction"],
            "optuna": pd.Series(imp),
        }
    )
    table["abs_diff_same_forest"] = (table["ours_max_features_1"] - table["optuna"]).abs()
    print("\nmain-effect variance fractions (unnormalised):")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
