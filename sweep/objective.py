"""Trial objectives: what a worker runs for one trial.

The real objective (`train`) maps the trial to a `TrainConfig`, trains on the spec's dataset, records
each epoch through the context (`TrialContext.record_epoch`: a row of the epochs table, and the study's
metric as the Optuna trial's intermediate value, so optuna-dashboard draws learning curves) and returns
the result. Tests and benchmarks swap in `noop` or `sleep:SECONDS` through `$ODYSSEY_OBJECTIVE`, or their
own `module:function`: any function that takes a `TrialContext` and returns an `Outcome`.

Divergence rule: a run whose loss stops being finite is stopped by training and reported with status
`diverged`. Its objective value is the best *finite* validation metric it reached before diverging (the
model early stopping would have kept); Optuna records the trial as COMPLETE with that value and user attr
`odyssey_diverged = true`, and its results row gets state `diverged`. A run that never produced a finite
validation metric has no value: Optuna records it as FAIL and its results row says `diverged`.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sweep.core.errors import ConfigError
from sweep.core.states import ResultState
from sweep.spec import StudySpec

log = logging.getLogger(f"odyssey.{__name__}")

if TYPE_CHECKING:  # the recorder pulls in the storage layer: only a worker's contexts carry one
    from sweep.recorder import TrialRecorder

ENV_VAR = "ODYSSEY_OBJECTIVE"


class TrialInterrupted(Exception):
    """Raised inside a trial when the worker is asked to stop; the trial is re-queued."""


class TrialDiscarded(Exception):
    """Raised inside a trial whose attempt no longer owns its slot (`TrialContext.record_epoch` returned
    False: judged lost and re-queued while it ran); the worker discards it, the copy runs the slot."""


@dataclass
class TrialContext:
    """Everything an objective needs about one trial, and where it records the trial's epochs.

    A worker's context carries the attempt's `recorder`; a context made by hand (to derive a trial's
    TrainConfig, say) has none and cannot record epochs.
    """

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
    recorder: TrialRecorder | None = None

    def check_stop(self) -> None:
        """Raise TrialInterrupted if the worker was asked to stop."""
        if self.stop.is_set():
            raise TrialInterrupted()

    def record_epoch(self, epoch: int, *, train_loss: float | None = None, valid_metric: float | None = None,
                     test_metric: float | None = None, seconds: float | None = None,
                     value: float | None = None) -> bool:
        """Record epoch `epoch` (1, 2, ...) of this trial: its row in the epochs table (training loss,
        validation and test metric, seconds; non-finite numbers stored as NULL) and Optuna's intermediate
        value at step `epoch` (`value`, the study's metric, else `valid_metric`), as training does.

        Returns False when the write was refused because this attempt no longer owns its slot (it was
        judged lost and re-queued: its result will be discarded, and the objective may stop at once by
        raising TrialDiscarded; nothing was recorded then). Raises RuntimeError on a context that
        has no recorder (one not made by a worker), OdysseyError when the database stays unreachable."""
        if self.recorder is None:
            raise RuntimeError("this TrialContext has no recorder (only a worker's trials record epochs)")
        return self.recorder.epoch(epoch, train_loss=train_loss, valid_metric=valid_metric,
                                   test_metric=test_metric, seconds=seconds, value=value)


#: The states a trial's objective may end in (`sweep.core.states.SCORED_STATES`, or their strings): a
#: trial that fails raises instead.
ScoredState = Literal[ResultState.COMPLETE, ResultState.DIVERGED, "complete", "diverged"]


@dataclass
class Outcome:
    """A finished trial: its state, the value Optuna gets (None: nothing finite) and the result fields
    (those of `storage.results.record_trial_finished`). The worker records any other return value, or an
    Outcome with another state, as a failed trial (ConfigError naming the objective)."""

    state: ScoredState
    value: float | None
    result: dict[str, Any]


Objective = Callable[[TrialContext], Outcome]


def noop_objective(ctx: TrialContext) -> Outcome:
    """Return at once with a value computed from the parameters (for tests and benchmarks)."""
    ctx.check_stop()
    value = _toy_value(ctx.params)
    return Outcome(ResultState.COMPLETE, value, _toy_result(value, 0.0))


def make_sleep_objective(seconds: float) -> Objective:
    """An objective that waits `seconds` (stopping early if asked) then behaves like `noop`."""

    def sleep_objective(ctx: TrialContext) -> Outcome:
        if ctx.stop.wait(seconds):
            raise TrialInterrupted()
        value = _toy_value(ctx.params)
        return Outcome(ResultState.COMPLETE, value, _toy_result(value, seconds))

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


def train_objective(ctx: TrialContext) -> Outcome:
    """Train the trial's network, recording every epoch; returns the best validation metric."""
    from sweep.training import train

    dataset = _dataset(ctx.spec)
    metric = ctx.spec.metric

    def on_epoch(report: Any) -> None:
        # The study's own metric (a secondary metric of the dataset when the spec names one).
        value = report.valid_metric if metric == dataset.metric else report.metrics.get(f"valid_{metric}")
        if not ctx.record_epoch(report.epoch, train_loss=report.train_loss, valid_metric=report.valid_metric,
                                test_metric=report.test_metric, seconds=report.seconds,
                                value=math.nan if value is None else value):
            raise TrialDiscarded()  # another attempt runs this slot now: stop training for nothing
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
    state: ScoredState = ResultState.DIVERGED if run.status == ResultState.DIVERGED else ResultState.COMPLETE
    return Outcome(state, value, result)  # training ends complete or diverged


def objective_name(name: str | None = None) -> str:
    """The objective a worker runs: `name`, else $ODYSSEY_OBJECTIVE, else `train`."""
    return name or os.environ.get(ENV_VAR) or "train"


def prepare_kernels(objective: str | None = None) -> None:
    """Load the C++ kernels, compiling them first if this machine has no build (announced on stderr with
    its elapsed time); `odyssey run`, `worker` and `train` call this before they start anything, so that no
    trial's time includes the build. The test objectives (`noop`, `sleep:SECONDS`) train nothing: skipped.
    Loaded kernels are logged (INFO) in the words of `odyssey kernels`, so that a
    worker's log shows which kernels its trials run on."""
    from sweep.nn import kernels

    name = objective_name(objective)
    if name != "noop" and not name.startswith("sleep:") and kernels.load() is not None:
        log.info("C++ kernels: loaded (%s)", kernels.status().path)


def resolve_objective(name: str | None = None) -> Objective:
    """The objective named `name` (else $ODYSSEY_OBJECTIVE, else `train`): `train`, `noop`,
    `sleep:SECONDS` or `module:function`."""
    name = objective_name(name)
    if name == "train":
        return train_objective
    if name == "noop":
        return noop_objective
    if name.startswith("sleep:"):
        try:
            seconds = float(name.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"objective {name!r}: expected sleep:SECONDS") from None
        return make_sleep_objective(seconds)
    if ":" in name:
        module, attr = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"objective {name!r} cannot be loaded: {exc}") from None
    raise ConfigError(f"unknown objective {name!r} (use train, noop, sleep:SECONDS or module:function)")
