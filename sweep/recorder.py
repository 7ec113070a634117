"""One trial's record: every write of a trial's results row and epochs, and its Optuna intermediate values.

A `TrialRecorder` is bound to one attempt of one slot (Optuna trial `trial_number` of study `study`).
The worker makes one when it runs a trial and hands it to the objective inside `TrialContext`, so an
objective records its epochs with `ctx.record_epoch(...)` without knowing the storage; the re-queue and
repair paths of `sweep.study` use one for the attempt they re-queue. The results writes are those of
`storage.results` (see docs/results-schema.md); the intermediate values go through the worker's own
Optuna storage (`BaseStorage.set_trial_intermediate_value`), as `optuna.Trial.report` would store them,
so optuna-dashboard draws each trial's learning curve.

Writes tied to the attempt (`epoch`, `finished`) are refused (False) once the slot belongs to another
attempt or Optuna no longer holds this one RUNNING (a zombie worker's late write; the training objective
then stops with `TrialDiscarded`); an intermediate value for a trial that Optuna finished meanwhile raises
optuna's UpdateFinishedTrialError. The worker takes either as "this attempt was re-queued while it ran".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage import results
from storage.engine import with_retry
from sweep.core.states import ResultState


@dataclass(frozen=True)
class TrialRecorder:
    """Records one attempt (Optuna trial `trial_number`, id `trial_id`) of slot `slot` of study `study`.

    `storage` is the caller's Optuna storage on `url` (the worker's: no second connection pool). Every
    method retries a database outage within the retry budget, then raises StorageError.
    """

    url: str
    storage: Any
    study: str
    slot: int
    trial_number: int
    trial_id: int

    def started(self, host: str | None, device: str | None, *, variant: str, params: Mapping[str, Any],
                seed: int, dataset: str | None, sampled: bool = False) -> None:
        """The attempt starts on `host`/`device` with these real hyperparameters: the slot's row becomes
        `running` under this trial number (its old epochs and results cleared). With `sampled` (a tpe
        trial, whose parameters were chosen just now) the parameters are added to the row first."""
        if sampled:  # the slot was designed without them: add them (values already there stay)
            results.record_designed_trials(self.url, self.study, [
                {"slot": self.slot, "variant": variant, "seed": seed, "params": dict(params)}])
        results.record_trial_started(self.url, self.study, self.slot, self.trial_number, host, device,
                                     variant=variant, params=params, seed=seed, dataset=dataset)

    def epoch(self, epoch: int, *, train_loss: float | None = None, valid_metric: float | None = None,
              test_metric: float | None = None, seconds: float | None = None,
              value: float | None = None) -> bool:
        """Record epoch `epoch` (1, 2, ...; 0 is the untrained model) of this attempt: a row of the epochs
        table (non-finite numbers stored as NULL), then Optuna's intermediate value at step `epoch`:
        `value`, the study's metric, else `valid_metric` (NaN when neither is given). Returns False when
        the results write was refused (the slot belongs to another attempt): then no intermediate value is
        reported either."""
        kept = results.record_epoch(self.url, self.study, self.slot, epoch, train_loss, valid_metric,
                                    test_metric, seconds, trial_number=self.trial_number)
        if not kept:
            return False
        reported = value if value is not None else valid_metric
        step, number = int(epoch), math.nan if reported is None else float(reported)
        with_retry(lambda: self.storage.set_trial_intermediate_value(self.trial_id, step, number), self.url,
                   what="report an intermediate value")
        return True

    def finished(self, state: str, result: Mapping[str, Any]) -> bool:
        """Record the attempt's outcome (`state`: complete, failed or diverged; `result`: the fields of
        `storage.results.record_trial_finished`). False when the slot is no longer this attempt's."""
        return results.record_trial_finished(self.url, self.study, self.slot, state, result,
                                             trial_number=self.trial_number)

    def failed_for_good(self, reason: str) -> None:
        """Record the slot as failed with error `reason` (lost too many times). Not tied to the attempt:
        the caller holds the study lock with this trial RUNNING, and the row may not name the attempt yet
        (a designed trial claimed, then lost before its start was recorded)."""
        results.record_trial_finished(self.url, self.study, self.slot, ResultState.FAILED, {"error": reason})

    def requeued(self, new_trial_number: int) -> None:
        """The attempt was re-queued as WAITING trial `new_trial_number`: the row goes back to `waiting`
        and passes to that trial (a newer attempt that already owns the row is left alone)."""
        results.record_trial_requeued(self.url, self.study, self.slot, trial_number=self.trial_number,
                                      new_trial_number=new_trial_number)
