"""Trial objectives: what a worker runs for one trial.

The real objective (`train`) maps the trial to a `TrainConfig`, trains on the spec's dataset, records
each epoch through `storage.results` (and its validation metric as the Optuna trial's intermediate value,
so optuna-dashboard draws learning curves) and returns the result. Tests and benchmarks swap in `noop` or
`sleep:SECONDS` through `$ODYSSEY_OBJECTIVE` (or `module:function` for their own).

Divergence rule: a run whose loss stops being finite is stopped by training and reported with status
`diverged`. Its objective value is the best *finite* validation metric it reached before diverging (the
model early stopping would have kept); Optuna records the trial as COMPLETE with that value and user attr
`odyssey_diverged = true`, and its results row gets state `diverged`. A run that never produced a finite
validation metric has no value: Optuna records it as FAIL and its results row says `diverged`.
"""

from __future__ import annotations

import importlib
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweep.core.errors import OdysseyError
from sweep.spec import StudySpec

ENV_VAR = "ODYSSEY_OBJECTIVE"


class TrialInterrupted(Exception):
    """Raised inside a trial when the worker is asked to stop; the trial is re-queued."""


@dataclass
class TrialContext:
    """Everything an objective needs about one trial."""

    url: str
    study: str
    spec: StudySpec
    slot: int
    trial_number: int
    variant: str
    params: dict[str, float | int]  # real values, fixed ones included
    seed: int
    device: str
    stop: threading.Event = field(default_factory=threading.Event)

    def check_stop(self) -> None:
        """Raise TrialInterrupted if the worker was asked to stop."""
        if self.stop.is_set():
            raise TrialInterrupted()


@dataclass
class Outcome:
    """A finished trial: its state, the value Optuna gets (None: nothing finite) and the result fields."""

    state: str  # "complete" | "diverged"
    value: float | None
    result: dict[str, Any]


Objective = Callable[[TrialContext], Outcome]


def noop_objective(ctx: TrialContext) -> Outcome:
    """Return at once with a value computed from the parameters (for tests and benchmarks)."""
    ctx.check_stop()
    value = _toy_value(ctx.params)
    return Outcome("complete", value, _toy_result(value, 0.0))


def make_sleep_objective(seconds: float) -> Objective:
    """An objective that waits `seconds` (stopping early if asked) then behaves like `noop`."""

    def sleep_objective(ctx: TrialContext) -> Outcome:
        if ctx.stop.wait(seconds):
            raise TrialInterrupted()
        value = _toy_value(ctx.params)
        return Outcome("complete", value, _toy_result(value, seconds))

    return sleep_objective


def _toy_value(params: dict[str, float | int]) -> float:
    # Deterministic in the parameters, so a re-run of a trial gives the same number.
    lr = float(params.get("learning_rate", 1e-3))
    return (math.log10(lr) + 3.0) ** 2 + 0.01 * float(params.get("hidden_size", 0))


def _toy_result(value: float, seconds: float) -> dict[str, Any]:
    return {"best_valid": value, "best_test": value, "final_valid": value, "final_test": value,
            "best_epoch": 0, "epochs": 0, "seconds": seconds, "n_params": 0}


# One loaded dataset per worker process: every trial of a study trains on the same data.
_datasets: dict[str, Any] = {}


def _dataset(spec: StudySpec) -> Any:
    from sweep.data.base import load_dataset

    key = repr((spec.dataset.name, sorted(spec.dataset.options.items())))
    if key not in _datasets:
        _datasets[key] = load_dataset(spec.dataset.name, **spec.dataset.options)
    return _datasets[key]


def train_config(ctx: TrialContext) -> Any:
    """The `sweep.core.settings.TrainConfig` of a trial: the spec's training settings, then the trial's
    parameters (an int hyperparameter handed over as a float, as a storage may, is cut to an int)."""
    from sweep.core.settings import SEARCHABLE, TrainConfig

    params = {k: int(v) if SEARCHABLE.get(k) == "int" else v for k, v in ctx.params.items()}
    settings: dict[str, Any] = {**ctx.spec.training.model_dump(), **params}
    switches = ctx.spec.custom_variants.get(ctx.variant)  # None for the built-in variants
    return TrainConfig(variant=ctx.variant, switches=switches, seed=ctx.seed, device=ctx.device, **settings)


# One Optuna storage per worker process and database, for the intermediate values.
_optuna_storages: dict[str, Any] = {}


def intermediate_reporter(ctx: TrialContext) -> Callable[[int, float], None]:
    """A function that stores an epoch's validation metric as the Optuna trial's intermediate value at
    step = epoch (Optuna's public storage API), as `Trial.report` would; optuna-dashboard draws these as
    the trial's learning curve. Raises OdysseyError when the database cannot be reached."""
    from storage.engine import with_retry
    from sweep.study import open_storage

    storage = _optuna_storages.get(ctx.url)
    if storage is None:
        storage = _optuna_storages.setdefault(ctx.url, open_storage(ctx.url))
    study_id = with_retry(lambda: storage.get_study_id_from_name(ctx.study), ctx.url)
    trial_id = with_retry(
        lambda: storage.get_trial_id_from_study_id_trial_number(study_id, ctx.trial_number), ctx.url
    )

    def report(epoch: int, value: float) -> None:
        with_retry(lambda: storage.set_trial_intermediate_value(trial_id, int(epoch), float(value)), ctx.url,
                   what="report an intermediate value")  # fmt: skip

    return report


def name_metric(study: Any, metric: str) -> None:
    """Name the study's objective value after the spec's metric (optuna-dashboard shows it instead of
    "Objective 0"); Optuna marks `set_metric_names` experimental, which is no news to a user."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def train_objective(ctx: TrialContext) -> Outcome:
    """Train the trial's network, recording every epoch; returns the best validation metric."""
    from storage import results
    from sweep.training import train

    dataset = _dataset(ctx.spec)
    metric = ctx.spec.metric
    report_to_optuna = intermediate_reporter(ctx)

    def on_epoch(report: Any) -> None:
        results.record_epoch(ctx.url, ctx.study, ctx.slot, report.epoch, report.train_loss,
                             report.valid_metric, report.test_metric, report.seconds,
                             trial_number=ctx.trial_number)
        # The study's own metric (a secondary metric of the dataset when the spec names one).
        value = report.valid_metric if metric == dataset.metric else report.metrics.get(f"valid_{metric}")
        report_to_optuna(report.epoch, math.nan if value is None else value)
        ctx.check_stop()

    def on_progress(_done: int, _total: int) -> None:
        ctx.check_stop()  # a stop request interrupts within one update, not one epoch

    run = train(train_config(ctx), dataset, on_epoch=on_epoch, on_progress=on_progress)
    if metric == dataset.metric:
        best = run.best_valid
    else:  # a secondary metric of the dataset: its best finite value over the epochs
        values = [v for e in run.history if math.isfinite(v := e.metrics.get(f"valid_{metric}", math.nan))]
        pick = max if ctx.spec.direction == "maximize" else min
        best = pick(values, default=math.nan)
    value = best if math.isfinite(best) else None
    result = {
        "best_valid": run.best_valid, "best_test": run.best_test, "final_valid": run.final_valid,
        "final_test": run.final_test, "best_epoch": run.best_epoch, "epochs": run.epochs,
        "seconds": run.seconds, "n_params": run.n_params,
    }
    return Outcome("diverged" if run.status == "diverged" else "complete", value, result)


def resolve_objective(name: str | None = None) -> Objective:
    """The objective named `name` (else $ODYSSEY_OBJECTIVE, else `train`): `train`, `noop`,
    `sleep:SECONDS` or `module:function`."""
    name = name or os.environ.get(ENV_VAR) or "train"
    if name == "train":
        return train_objective
    if name == "noop":
        return noop_objective
    if name.startswith("sleep:"):
        try:
            seconds = float(name.split(":", 1)[1])
        except ValueError:
            raise OdysseyError(f"objective {name!r}: expected sleep:SECONDS") from None
        return make_sleep_objective(seconds)
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise OdysseyError(f"objective {name!r} cannot be loaded: {exc}") from None
    raise OdysseyError(f"unknown objective {name!r} (use train, noop, sleep:SECONDS or module:function)")
