"""Where a claimed trial's hyperparameters come from: the design, or a sampler that learns per variant.

Designed trials (grid, random, sobol) are enqueued with every parameter already set. A `tpe` study's
trials carry only their variant (and the fixed values); the worker asks the study's sampler for the rest
when it runs the trial, and `PerVariantTPESampler` fits TPE on that variant's own trials only.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from storage.engine import with_retry
from sweep.spec import StudySpec
from sweep.study import VARIANT_PARAM, distributions


class _VariantView:
    """A study seen as one variant's trials only, so a sampler learns from that variant's results."""

    def __init__(self, study: optuna.Study, variant: str) -> None:
        self._study, self._variant = study, variant

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: Any) -> list[FrozenTrial]:
        return [t for t in trials if t.params.get(VARIANT_PARAM) == self._variant]

    def _get_trials(
        self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PerVariantTPESampler(optuna.samplers.BaseSampler):
    """TPE fitted on each variant's own trials (variants differ too much to share one model).

    Unseeded on purpose: workers sampling at the same moment must not propose the same points.
    """

    def __init__(self) -> None:
        self._inner = optuna.samplers.TPESampler()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        variant = trial.params.get(VARIANT_PARAM)
        view: Any = _VariantView(study, variant) if variant is not None else study
        return self._inner.sample_independent(view, trial, param_name, param_distribution)


def _suggest(trial: optuna.Trial, name: str, dist: Any) -> Any:
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def trial_params(url: str, study: optuna.Study, spec: StudySpec, frozen: FrozenTrial) -> dict[str, Any]:
    """The real hyperparameters of claimed trial `frozen` (fixed ones included, ints as int, without
    `variant`): a designed trial's own values; a tpe trial's missing ones are suggested by the study's
    sampler (and so stored on the Optuna trial)."""
    values = dict(frozen.params)
    dists = distributions(spec)
    if any(name not in values for name in dists):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        for name, dist in dists.items():
            if name not in values:
                values[name] = with_retry(partial(_suggest, trial, name, dist), url,
                                          what="suggest a parameter")
    real = {k: v for k, v in values.items() if k != VARIANT_PARAM}
    real.update(spec.fixed)
    for name, value in real.items():
        if spec.space[name].type == "int":
            real[name] = int(value)
    return real
