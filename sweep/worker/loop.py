"""The claim-and-run loop: a worker pulls waiting trials from the storage and runs them until the study
is done.

Exactly-once: a trial is claimed by Optuna's atomic WAITING -> RUNNING transition
(`RDBStorage.set_trial_state_values`, a row lock on PostgreSQL, a write transaction on SQLite), so two
workers never run the same trial; trials are only created by the (serialised) study creation and by
re-queueing under the study lock, one copy per lost trial.

Crashes: a trial's heartbeat is written before it is claimed and then every `heartbeat_interval` seconds
(`sweep.worker.heartbeat`). Any worker that finds a RUNNING trial whose heartbeat (or, without one, its
start) is older than `grace_period` re-queues it: a WAITING copy with the same parameters and user attrs
first, then the original FAIL, then the results row passed to the copy (`sweep.study.requeue_trial`).
After `max_retries` losses the slot is recorded as failed. Workers run the repair pass (`repair_study`)
when they start and before they exit, so a slot left with no live trial is re-queued.

Stopping: the worker's `stop` event (set by the signal handlers of `sweep.worker.supervision`) stops the
running trial within one training step; the trial is re-queued and the loop returns.
"""

from __future__ import annotations

import logging
import math
import numbers
import random
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from storage import results
from storage.engine import with_retry
from storage.failpoints import failpoint
from storage.urls import resolve_url
from sweep.core.errors import ConfigError, OdysseyError, StorageError
from sweep.core.states import SCORED_STATES, ResultState
from sweep.objective import (
    Objective,
    Outcome,
    TrialContext,
    TrialDiscarded,
    TrialInterrupted,
    objective_name,
    resolve_objective,
)
from sweep.recorder import TrialRecorder
from sweep.spec import StudySpec
from sweep.study import (
    FINAL_ATTR,
    SEED_ATTR,
    SLOT_ATTR,
    SPEC_ATTR,
    VARIANT_ATTR,
    VARIANT_PARAM,
    load_optuna_study,
    open_storage,
    repair_study,
    requeue_trial,
    retry_history,
    settle_claim,
    stored_spec,
    study_lock,
)
from sweep.worker.config import WorkerConfig
from sweep.worker.heartbeat import Heartbeat
from sweep.worker.sampling import PerVariantTPESampler, trial_params

log = logging.getLogger(f"odyssey.{__name__}")

DIVERGED_ATTR = "odyssey_diverged"
INTERRUPTS_ATTR = "odyssey_interrupts"  # clean stops of this slot so far (user attr, copied on re-queue)
# Claim among this many waiting trials in random order, so many workers rarely contend for one row.
CLAIM_WINDOW = 32
# Consecutive failed trials after which a worker gives up (e.g. the data file is unreadable).
MAX_CONSECUTIVE_FAILURES = 3


class _StopWorker(Exception):
    """The worker was asked to stop."""


@dataclass
class _Target:
    study: optuna.Study
    study_id: int
    spec: StudySpec


def _still_lost(url: str, study_name: str, grace: float, trial_id: int) -> bool:
    return trial_id in results.lost_trials(url, study_name, grace)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _checked(returned: object, objective: str) -> Outcome:
    """`returned` if it is an Outcome the worker can record, else ConfigError naming `objective` and what
    it returned (the trial is then recorded failed, as if the objective had raised it)."""
    if not isinstance(returned, Outcome):
        shown = repr(returned).splitlines()[0] if repr(returned) else type(returned).__name__
        raise ConfigError(
            f"objective {objective} returned {shown[:80]}, not an Outcome(state, value, result)")
    problem = None
    if returned.state not in SCORED_STATES:
        allowed = " or ".join(repr(str(s)) for s in SCORED_STATES)
        problem = f"state {returned.state!r}, not {allowed} (a failed trial raises instead)"
    elif returned.value is not None and not isinstance(returned.value, numbers.Real):
        problem = f"value {returned.value!r:.80}, not a number or None"
    elif not isinstance(returned.result, Mapping):
        problem = f"result of type {type(returned.result).__name__}, not a dict"
    if problem:
        raise ConfigError(f"objective {objective} returned an Outcome with {problem}")
    return returned


class Worker:
    """One worker: claims waiting trials, runs the objective, records results, until nothing is left."""

    def __init__(self, config: WorkerConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.url = resolve_url(config.url)
        self.stop = stop or threading.Event()
        self.objective: Objective = resolve_objective(config.objective)
        self.objective_name = objective_name(config.objective)
        self.storage = open_storage(self.url, heartbeat_interval=config.heartbeat_interval,
                                    grace_period=config.grace_period)
        self.trials_run = 0
        self._targets: dict[str, _Target] = {}
        self._last_stale_check: dict[str, float] = {}
        self._last_repair: dict[str, float] = {}
        self._waiting: dict[int, list[int]] = {}  # study id -> waiting trial ids, in number order
        self._failures = 0
        self._prefix = f"[{config.label}] " if config.label else ""

    # ------------------------------------------------------------------------------------ studies

    def _target(self, name: str) -> _Target:
        if name not in self._targets:
            # A creation under way holds the study lock: wait for it, then read the finished study.
            with study_lock(self.url, name):
                study = load_optuna_study(self.url, name, self.storage)
            spec = stored_spec(study)
            if spec is None:
                raise StorageError(f"study {name!r} was not created by `odyssey study create` (no spec)")
            if spec.design == "tpe":
                study.sampler = PerVariantTPESampler()
            study_id = with_retry(lambda: self.storage.get_study_id_from_name(name), self.url)
            self._targets[name] = _Target(study, study_id, spec)
            self._repair(self._targets[name])
        return self._targets[name]

    def _repair(self, target: _Target) -> bool:
        """The repair pass (lost slots re-queued, duplicates withdrawn); True if it changed anything."""
        name = target.study.study_name
        self._last_repair[name] = time.monotonic()
        try:
            done = repair_study(self.url, name, self.storage)
        except (OdysseyError, KeyError):
            if self._study_id(name) is None:  # deleted meanwhile (a --forever worker outlives studies)
                self._forget(name)
                return False
            raise
        if done.requeued or done.withdrawn:
            log.warning("%srepaired study %r: re-queued slots %s, withdrew duplicate trials %s", self._prefix,
                        target.study.study_name, done.requeued, done.withdrawn)
            self._waiting.pop(target.study_id, None)
            return True
        return False

    def _targets_now(self) -> list[_Target]:
        if self.config.study:
            names = [self.config.study]
        else:
            summaries = with_retry(
                lambda: optuna.get_all_study_summaries(self.storage, include_best_trial=False), self.url,
                what="list studies")
            names = [s.study_name for s in summaries if SPEC_ATTR in s.user_attrs]
            for gone in set(self._targets) - set(names):
                self._forget(gone)
        for name in names:
            # A --forever worker outlives studies: one deleted and created again under the same name
            # has a new id, and the cached one would point at rows that no longer exist.
            cached = self._targets.get(name)
            if cached is not None and cached.study_id != self._study_id(name):
                self._forget(name)
        if self.config.study:
            return [self._target(self.config.study)]
        targets = []
        for name in names:
            try:
                targets.append(self._target(name))
            except OdysseyError:
                if self._study_id(name) is not None:
                    raise
                # Deleted since it was listed: nothing to do there.
        return targets

    def _study_id(self, name: str) -> int | None:
        try:
            return with_retry(lambda: self.storage.get_study_id_from_name(name), self.url)
        except KeyError:
            return None

    def _forget(self, name: str) -> None:
        target = self._targets.pop(name, None)
        if target is not None:
            self._waiting.pop(target.study_id, None)

    def _repair_due(self, target: _Target) -> bool:
        # Before exiting, always; an idle --forever worker repairs once per grace period, not every poll.
        last = self._last_repair.get(target.study.study_name, -math.inf)
        return not self.config.forever or time.monotonic() - last >= self.config.grace_period

    # ----------------------------------------------------------------------------------- claiming

    def _counts(self, target: _Target) -> dict[str, int]:
        """How many of the study's trials wait and run (Optuna's public storage API)."""

        def read() -> dict[str, int]:
            trials = self.storage.get_all_trials(
                target.study_id, deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
            counts = {"WAITING": 0, "RUNNING": 0}
            for trial in trials:
                counts[trial.state.name] += 1
            return counts

        return with_retry(read, self.url, what="count trials")

    def _candidates(self, target: _Target) -> list[int]:
        """The ids of the first waiting trials by number (as Optuna's own enqueued-trial pop orders them).

        Listing loads every waiting trial, so the list is kept between claims and read afresh only when
        it is used up or a claim on it was lost to another worker (then it is stale).
        """
        cached = self._waiting.get(target.study_id)
        if not cached:

            def read() -> list[int]:
                waiting = self.storage.get_all_trials(
                    target.study_id, deepcopy=False, states=(TrialState.WAITING,))
                return [t._trial_id for t in sorted(waiting, key=lambda t: t.number)]

            cached = self._waiting[target.study_id] = with_retry(read, self.url, what="list waiting trials")
        return cached[:CLAIM_WINDOW]

    def _claim(self, target: _Target) -> FrozenTrial | None:
        """Atomically move one waiting trial to RUNNING; None when none is waiting."""
        while True:
            ids = self._candidates(target)
            if not ids:
                return None
            # A random pick among the first few spreads concurrent workers over different rows.
            trial_id = random.choice(ids)
            self._waiting[target.study_id].remove(trial_id)

            def claim(tid: int = trial_id) -> bool:
                # The heartbeat first: a worker killed right after its claim (or a claim that committed
                # before the connection dropped and then read as lost) leaves a RUNNING trial whose
                # heartbeat ages, so the lost-trial check re-queues it.
                self.storage.record_heartbeat(tid)
                failpoint("claim.before")
                return self.storage.set_trial_state_values(tid, TrialState.RUNNING)

            try:
                won = with_retry(claim, self.url, what="claim a trial")
            except UpdateFinishedTrialError:
                won = False
            if not won:
                # Another worker took it: the kept list is stale; trying its other ids would queue on
                # the row locks every other worker is after too.
                self._waiting.pop(target.study_id, None)
                continue
            failpoint("claim.after")
            with_retry(partial(self.storage.record_heartbeat, trial_id), self.url, what="record a heartbeat")
            frozen = with_retry(partial(self.storage.get_trial, trial_id), self.url)
            study_name = target.study.study_name
            settle = partial(settle_claim, self.url, self.storage, target.study_id, study_name, frozen)
            if not with_retry(settle, self.url, what="check the claimed trial's slot"):
                continue
            return frozen

    def _check_stale(self, target: _Target, force: bool = False) -> None:
        """Re-queue the study's RUNNING trials whose worker is lost (`results.lost_trials`)."""
        now = time.monotonic()
        name = target.study.study_name
        if not force and now - self._last_stale_check.get(name, -math.inf) < self.config.heartbeat_interval:
            return
        self._last_stale_check[name] = now
        grace = self.config.grace_period
        for trial_id in results.lost_trials(self.url, name, grace):
            trial = with_retry(partial(self.storage.get_trial, trial_id), self.url)
            slot = trial.user_attrs.get(SLOT_ATTR)
            # Only lost workers count against max_retries; clean stops are counted in INTERRUPTS_ATTR.
            losses = len(retry_history(trial)) + 1 - int(trial.user_attrs.get(INTERRUPTS_ATTR, 0))
            final = None
            if losses > self.config.max_retries:
                final = f"worker lost {losses} times (no heartbeat)"
                log.error("%strial %d (slot %s) lost its worker %d times; recorded as failed", self._prefix,
                          trial.number, slot, losses)
            copy = requeue_trial(
                self.url, self.storage, target.study_id, name, trial_id, final=final,
                still_lost=partial(_still_lost, self.url, name, grace, trial_id))
            if copy is not None:
                log.warning("%strial %d (slot %s, %s) lost its worker (no heartbeat); re-queued as trial %d",
                            self._prefix, trial.number, slot, trial.user_attrs.get(VARIANT_ATTR), copy)
                self._waiting.pop(target.study_id, None)

    # ------------------------------------------------------------------------------------ running

    def run(self) -> int:
        """Run trials until every study is done (or forever); returns the number of trials run."""
        log.info("%sworker on %s (%s) started", self._prefix, self.config.device, self.config.host)
        try:
            while not self.stop.is_set():
                ran, pending = False, False
                for target in self._targets_now():
                    self._check_stale(target)
                    frozen = self._claim(target)
                    if frozen is not None:
                        self._run_trial(target, frozen)
                        ran = True
                        break
                    counts = self._counts(target)
                    if counts.get("RUNNING", 0) or counts.get("WAITING", 0):
                        pending = True
                if ran:
                    continue
                if not pending and any(self._repair(t) for t in self._targets_now() if self._repair_due(t)):
                    continue  # a slot had been lost: it waits again
                if not pending and not self.config.forever:
                    log.info("%snothing left to run; %d trials run by this worker", self._prefix,
                             self.trials_run)
                    break
                # Others are still running trials: wait, and check whether one of them was lost.
                if self.stop.wait(self.config.poll_interval):
                    break
                for target in self._targets_now():
                    self._check_stale(target, force=True)
        except _StopWorker:
            pass
        if self.stop.is_set():
            log.info("%sstopped; %d trials run by this worker", self._prefix, self.trials_run)
        elif self.trials_run and self._failures == self.trials_run:
            # Every trial raised (a broken dataset, objective or device): a clean exit would hide it.
            raise OdysseyError(f"all {self.trials_run} trials this worker ran failed (each error is in "
                               "the log above and in the `error` column of odyssey_trials)")
        return self.trials_run

    def _run_trial(self, target: _Target, frozen: FrozenTrial) -> None:
        study, spec = target.study, target.spec
        name = study.study_name
        slot = int(frozen.user_attrs[SLOT_ATTR])
        variant = str(frozen.user_attrs.get(VARIANT_ATTR) or frozen.params.get(VARIANT_PARAM))
        seed = int(frozen.user_attrs.get(SEED_ATTR, spec.seed))
        with Heartbeat(self.storage, frozen._trial_id, self.config.heartbeat_interval):
            params = trial_params(self.url, study, spec, frozen)
            recorder = TrialRecorder(self.url, self.storage, name, slot, frozen.number, frozen._trial_id)
            recorder.started(self.config.host, self.config.device, variant=variant, params=params, seed=seed,
                             dataset=spec.dataset.name, sampled=spec.design == "tpe")
            failpoint("start.after")
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
            log.info("%sstart  trial %d slot %d %s %s on %s", self._prefix, frozen.number, slot, variant,
                     shown, self.config.device)
            ctx = TrialContext(self.url, name, spec, slot, frozen.number, variant, params, seed,
                               self.config.device, self.stop, recorder)
            started = time.monotonic()
            try:
                outcome = _checked(self.objective(ctx), self.objective_name)
            except (TrialInterrupted, KeyboardInterrupt):
                self._requeue(study, frozen, slot)
                raise _StopWorker() from None
            except (UpdateFinishedTrialError, TrialDiscarded):
                # An epoch or intermediate value refused: this attempt no longer holds its slot.
                self._discard(frozen, slot)
                return
            except Exception as exc:
                self._fail(recorder, frozen, exc)
                return
            self._finish(recorder, frozen, outcome, time.monotonic() - started)

    def _tell(self, frozen: FrozenTrial, state: TrialState, value: float | None = None) -> None:
        # Straight to the storage: Study.tell would re-read the trial three times for checks and
        # sampler hooks that these trials do not need (the value is checked here).
        values = None if value is None else [value]
        try:
            with_retry(lambda: self.storage.set_trial_state_values(frozen._trial_id, state, values),
                       self.url, what="record the trial in Optuna")
        except UpdateFinishedTrialError as exc:
            # Already finished: an earlier attempt of this call committed before the connection dropped,
            # or another worker judged this trial lost (its retry will run it again).
            log.warning("%strial %d was already finished in Optuna (%s)", self._prefix, frozen.number,
                        str(exc).splitlines()[0][:120])

    def _finish(self, recorder: TrialRecorder, frozen: FrozenTrial, outcome: Outcome, seconds: float) -> None:
        slot = recorder.slot
        result = dict(outcome.result)
        result["diverged"] = outcome.state == ResultState.DIVERGED
        # Results first: a crash before the Optuna tell leaves a stale trial that is simply re-run. The
        # write is refused when this attempt no longer holds the trial (judged lost and re-queued).
        try:
            kept = recorder.finished(outcome.state, result)
        except ValueError as exc:  # a result field that is not a number: checked before anything is written
            self._fail(recorder, frozen, ConfigError(
                f"objective {self.objective_name} returned a result that cannot be stored: {exc}"))
            return
        if not kept:
            self._discard(frozen, slot)
            return
        failpoint("finish.before-tell")
        value = outcome.value
        if value is not None and math.isfinite(value):
            if outcome.state == ResultState.DIVERGED:
                with_retry(lambda: self.storage.set_trial_user_attr(frozen._trial_id, DIVERGED_ATTR, True),
                           self.url)
            self._tell(frozen, TrialState.COMPLETE, float(value))
        else:
            self._mark_final(frozen, "no finite value")
            self._tell(frozen, TrialState.FAIL)
        failpoint("finish.after-tell")
        self._failures = 0
        self.trials_run += 1
        spec = self._targets[recorder.study].spec
        log.info("%sfinish trial %d slot %d %s %s %s=%s in %.1fs", self._prefix, frozen.number, slot,
                 frozen.user_attrs.get(VARIANT_ATTR), outcome.state, spec.metric,
                 _fmt(value) if value is not None else "none", seconds)

    def _fail(self, recorder: TrialRecorder, frozen: FrozenTrial, exc: Exception) -> None:
        slot = recorder.slot
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, OdysseyError):
            message = f"{type(exc).__name__}: {message}"
            log.exception("%strial %d slot %d raised", self._prefix, frozen.number, slot)
        if not recorder.finished(ResultState.FAILED, {"error": message}):
            self._discard(frozen, slot)  # not this attempt's to record: the copy runs the slot again
            return
        self._mark_final(frozen, message)
        self._tell(frozen, TrialState.FAIL)
        self.trials_run += 1
        self._failures += 1
        log.error("%sfailed trial %d slot %d: %s", self._prefix, frozen.number, slot, message)
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            # From None: the trial's own error is in the log line above (with its traceback if unexpected).
            raise OdysseyError(
                f"{self._failures} trials in a row failed (last: {message}); worker stops") from None

    def _discard(self, frozen: FrozenTrial, slot: int) -> None:
        # Judged lost (no heartbeat for longer than the grace period, e.g. stopped) and re-queued while it
        # ran: the copy owns the slot now. Not a failure of this worker.
        log.warning("%strial %d slot %d was re-queued while it ran (no heartbeat for too long); "
                    "its result is discarded", self._prefix, frozen.number, slot)
        self._tell(frozen, TrialState.FAIL)

    def _mark_final(self, frozen: FrozenTrial, reason: str) -> None:
        # Before the FAIL tell: the repair pass must not re-queue a slot whose outcome this is.
        with suppress(UpdateFinishedTrialError):  # re-queued meanwhile: the copy decides
            with_retry(lambda: self.storage.set_trial_system_attr(frozen._trial_id, FINAL_ATTR, reason[:200]),
                       self.url, what="mark the trial's outcome")

    def _requeue(self, study: optuna.Study, frozen: FrozenTrial, slot: int) -> None:
        """Put an interrupted trial back: a waiting copy with the same parameters, the original failed."""
        # The copy inherits the user attrs: counting clean stops there keeps them off the lost-worker limit.
        interrupts = int(frozen.user_attrs.get(INTERRUPTS_ATTR, 0)) + 1
        try:
            with_retry(lambda: self.storage.set_trial_user_attr(frozen._trial_id, INTERRUPTS_ATTR,
                                                                interrupts),
                       self.url, what="count the interruption")
        except UpdateFinishedTrialError:
            return  # already judged lost and re-queued by another worker
        # (Re-read inside: a tpe trial has gained its sampled parameters since it was claimed.)
        copy = requeue_trial(self.url, self.storage, self._targets[study.study_name].study_id,
                             study.study_name, frozen._trial_id, point="requeue")
        log.info("%sinterrupted trial %d slot %d: re-queued as trial %s", self._prefix, frozen.number, slot,
                 copy)
