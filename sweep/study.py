"""Study management: create a study from a spec (enqueueing its whole design), list, status, delete.

One Optuna study per spec holds every variant. The variant is an Optuna categorical parameter named
`variant` (so the dashboard and samplers see it) and is repeated in the user attr `odyssey_variant`;
each designed trial carries its slot number in the user attr `odyssey_slot`, the key of its results row.
Slot `k = v * trials_per_variant + i` is point `i` of the design trained with variant `v`; every variant
trains on the same points with the same seeds (a paired design).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from storage import results
from storage.engine import optuna_storage, with_retry
from storage.failpoints import failpoint
from storage.locks import named_lock
from sweep.core.errors import OdysseyError, StorageError
from sweep.core.states import PENDING_STATES, SCORED_STATES, ResultState
from sweep.core.text import plural
from sweep.recorder import TrialRecorder
from sweep.spec import StudySpec, design_points, parse_spec

log = logging.getLogger(f"odyssey.{__name__}")

VARIANT_PARAM = "variant"
SLOT_ATTR = "odyssey_slot"
VARIANT_ATTR = "odyssey_variant"
SEED_ATTR = "odyssey_seed"
POINT_ATTR = "odyssey_point"
ENQUEUE_CHUNK = 100
SPEC_ATTR = "odyssey_spec"  # study user attr; set last, so its presence means the design is complete
# Trial system attrs. FINAL: this FAIL is the slot's outcome (the objective raised, no finite value, or
# lost too many times), never re-queued. VOID: a copy withdrawn because its slot already had a live trial.
FINAL_ATTR = "odyssey_final"
VOID_ATTR = "odyssey_void"
LIVE_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)


@dataclass
class CreateResult:
    """What `create_study` did."""

    name: str
    created: bool
    enqueued: int
    total: int
    message: str


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The Optuna distributions of a study's parameters: `variant` plus every searched hyperparameter.

    Values are the real ones (momentum itself); a log1m range appears to Optuna as a linear one.
    """
    dists: dict[str, BaseDistribution] = {VARIANT_PARAM: CategoricalDistribution(list(spec.variants))}
    for name in spec.searched:
        p = spec.space[name]
        assert p.low is not None and p.high is not None
        if p.type == "int":
            dists[name] = IntDistribution(int(p.low), int(p.high), log=p.scale == "log")
        else:
            dists[name] = FloatDistribution(p.low, p.high, log=p.scale == "log")
    return dists


def trial_seed(spec: StudySpec, point: int) -> int:
    """The training seed of design point `point` (shared by every variant: paired comparisons)."""
    return (spec.seed * 1_000_003 + point) % (2**31 - 1)


def designed_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Every designed trial: slot, variant, point, seed and parameters (all, fixed ones included).

    For tpe, parameters are chosen when a worker runs the trial, so only fixed ones are known here.
    """
    n = spec.trials_per_variant
    points = design_points(spec) if spec.design != "tpe" else [dict(spec.fixed) for _ in range(n)]
    return [
        {"slot": v * n + i, "variant": variant, "point": i, "seed": trial_seed(spec, i), "params": point}
        for v, variant in enumerate(spec.variants)
        for i, point in enumerate(points)
    ]


def _waiting_trial(spec: StudySpec, row: dict[str, Any], dists: dict[str, BaseDistribution]) -> Any:
    # Like Study.enqueue_trial, but with the parameters set on the waiting trial itself (as Optuna's
    # retry callback does): a worker reads them with the trial instead of writing each one back.
    params = {VARIANT_PARAM: row["variant"]}
    if spec.design != "tpe":
        params.update({k: v for k, v in row["params"].items() if k in dists})
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=params,
        distributions={k: dists[k] for k in params},
        user_attrs={SLOT_ATTR: row["slot"], VARIANT_ATTR: row["variant"], SEED_ATTR: row["seed"],
                    POINT_ATTR: row["point"]},
    )


def open_storage(url: str, **kwargs: Any) -> Any:
    """The Optuna storage on `url` (one-line OdysseyError when the database cannot be used)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return optuna_storage(url, **kwargs)


def load_optuna_study(url: str, name: str, storage: Any | None = None, sampler: Any = None) -> optuna.Study:
    """Load study `name`; a study that does not exist raises a one-line OdysseyError."""
    storage = storage if storage is not None else open_storage(url)

    def load() -> optuna.Study:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    try:
        return with_retry(load, url, what=f"load study {name!r}")
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        known = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise StorageError(f"no study named {name!r} in this storage (studies: {known or 'none'})") from None


def stored_spec(study: optuna.Study) -> StudySpec | None:
    """The spec a study was created from (None for a study odyssey did not finish creating)."""
    data = study.user_attrs.get(SPEC_ATTR)
    return parse_spec(data, f"stored with study {study.study_name!r}", stored=True) if data else None


def _spec_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}")
    return diffs


def name_metric(study: Any, metric: str) -> None:
    """Name the study's objective value after the spec's metric (optuna-dashboard shows it instead of
    "Objective 0"); Optuna marks `set_metric_names` experimental, which is no news to a user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def check_dataset(spec: StudySpec) -> None:
    """Load the spec's dataset once so a bad path or corrupt file fails at create, not in every worker.
    (The metric was checked against the dataset registry when the spec was parsed.)"""
    from sweep.data.base import load_dataset

    load_dataset(spec.dataset.name, **spec.dataset.options)


def _enqueue(url: str, study: optuna.Study, spec: StudySpec, rows: list[dict[str, Any]],
             dists: dict[str, BaseDistribution], progress: Callable[[int, int], None] | None) -> None:
    done = 0
    for start in range(0, len(rows), ENQUEUE_CHUNK):
        chunk = rows[start:start + ENQUEUE_CHUNK]
        attempts = 0

        def add(chunk: list[dict[str, Any]] = chunk) -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # a failed attempt may have added part of the chunk: add only the rest
                have = {t.user_attrs.get(SLOT_ATTR) for t in study.get_trials(deepcopy=False)}
                chunk = [r for r in chunk if r["slot"] not in have]
            study.add_trials([_waiting_trial(spec, row, dists) for row in chunk])

        with_retry(add, url, what="enqueue the design")
        failpoint("create.mid-enqueue")
        done += len(chunk)
        if progress is not None:
            progress(done, len(rows))


def study_lock(url: str, name: str) -> Any:
    """The lock that serialises creating, re-queueing in and repairing study `name` across processes."""
    return named_lock(url, f"study:{name}")


def create_study(url: str, spec: StudySpec, check_data: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> CreateResult:
    """Create the Optuna study for `spec` and enqueue its whole design; idempotent for the same spec.

    A study of the same name created from a different spec raises OdysseyError; one whose creation was
    interrupted is completed (only the missing trials are added). Creations of one name are serialised
    (`study_lock`): of two at once, one creates and the other finds the study made ("nothing added").
    """
    failpoint("create.start")
    if check_data:
        check_dataset(spec)  # before the lock: loading data may take a while
    storage = open_storage(url)
    with study_lock(url, spec.name):
        return _create_locked(url, storage, spec, progress)


def _create_locked(url: str, storage: Any, spec: StudySpec,
                   progress: Callable[[int, int], None] | None) -> CreateResult:
    normalised = spec.normalised()
    rows = designed_trials(spec)
    existing: optuna.Study | None
    try:
        existing = with_retry(lambda: optuna.load_study(study_name=spec.name, storage=storage), url,
                              what=f"load study {spec.name!r}")
    except KeyError:
        existing = None
    if existing is not None:
        old = existing.user_attrs.get(SPEC_ATTR)
        if old is not None and old != normalised:
            diffs = ", ".join(_spec_differences(old, normalised)[:5])
            raise StorageError(
                f"study {spec.name!r} already exists with a different spec (differs in: {diffs}); "
                f"delete it with `odyssey study delete {spec.name} --yes` or rename the new spec"
            )
        if old is None and any(SLOT_ATTR not in t.user_attrs for t in existing.get_trials(deepcopy=False)):
            raise StorageError(f"an Optuna study named {spec.name!r} exists and was not made by odyssey")
        if old is not None:
            return CreateResult(spec.name, False, 0, len(rows),
                                f"study {spec.name!r} already exists with this spec; nothing added")
    study = existing or with_retry(
        lambda: optuna.create_study(
            study_name=spec.name, storage=storage, direction=spec.direction, load_if_exists=True
        ),
        url,
        what="create the study",
    )
    failpoint("create.after-study")
    present = {t.user_attrs.get(SLOT_ATTR) for t in study.get_trials(deepcopy=False)}
    # Point-major order: workers take trials by number, so every variant advances through the same
    # points together and a half-finished study is still a paired comparison.
    order = {v: i for i, v in enumerate(spec.variants)}
    missing = sorted(
        (r for r in rows if r["slot"] not in present), key=lambda r: (r["point"], order[r["variant"]])
    )
    dists = distributions(spec)
    results.register_study(url, spec.name, normalised)
    results.record_designed_trials(url, spec.name, rows)
    if missing:
        _enqueue(url, study, spec, missing, dists, progress)
    with_retry(lambda: name_metric(study, spec.metric), url, what="name the metric")
    failpoint("create.before-spec")
    with_retry(lambda: study.set_user_attr(SPEC_ATTR, normalised), url, what="store the spec")
    verb = "created" if existing is None else "completed the interrupted creation of"
    return CreateResult(
        spec.name, True, len(missing), len(rows),
        f"{verb} study {spec.name!r}: {plural(len(missing), 'trial')} enqueued "
        f"({plural(len(spec.variants), 'variant')} x {spec.trials_per_variant}, design {spec.design})",
    )


def delete_study(url: str, name: str) -> None:
    """Remove the Optuna study `name` and its results rows (either may be left from an interrupted delete)."""
    storage = open_storage(url)
    try:
        study = load_optuna_study(url, name, storage)
    except OdysseyError:
        # No Optuna study: finish a delete that stopped between the two halves, else report the name.
        if results.delete_study_results(url, name):
            return
        raise
    with_retry(lambda: optuna.delete_study(study_name=study.study_name, storage=storage), url,
               what=f"delete study {name!r}")
    results.delete_study_results(url, name)


# ------------------------------------------------------------------------------ re-queue and repair


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the trials this one re-runs, oldest first (Optuna's retry callback convention)."""
    return list(trial.system_attrs.get("retry_history", []))


def _copy_template(trial: FrozenTrial) -> FrozenTrial:
    # As Optuna's RetryHeartbeatStaleTrialCallback builds it (same params, user attrs, retry history), but
    # without our markers: a copy is neither final nor void.
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in (FINAL_ATTR, VOID_ATTR)}
    system_attrs.setdefault("failed_trial", trial.number)
    system_attrs["retry_history"] = [*retry_history(trial), trial.number]
    return optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=trial.user_attrs, system_attrs=system_attrs,
    )


def _copy_of(trials: Iterable[FrozenTrial], number: int) -> FrozenTrial | None:
    # Any re-run of `number` (a copy, or a copy of a copy) that was not withdrawn.
    return next((t for t in trials if number in retry_history(t) and VOID_ATTR not in t.system_attrs), None)


def withdraw(storage: Any, trial_id: int, why: str) -> bool:
    """Withdraw a WAITING duplicate: claim it, mark it void, fail it. False if someone else claimed it
    first (that worker finds the duplicate when it checks its slot, and withdraws it)."""
    storage.record_heartbeat(trial_id)  # a claimer killed right after the claim leaves a lost trial
    try:
        if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return False
    except UpdateFinishedTrialError:
        return False
    _void(storage, trial_id, why)
    return True


def _void(storage: Any, trial_id: int, why: str) -> None:
    """Fail a trial this process holds RUNNING as a withdrawn duplicate (VOID_ATTR = `why`): never re-run,
    never its slot's outcome."""
    storage.set_trial_system_attr(trial_id, VOID_ATTR, why)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def requeue_trial(url: str, storage: Any, study_id: int, name: str, trial_id: int, *,
                  still_lost: Callable[[], bool] | None = None, final: str | None = None,
                  point: str = "stale") -> int | None:
    """Re-queue RUNNING trial `trial_id`: its WAITING copy first, then the original FAIL, then the results
    row passed to the copy. Returns the copy's number, None when there was nothing to do.

    Runs under the study lock, and the whole step is retried on an outage: it re-reads the trial and
    reuses a copy that already exists, so a crash or a restart at any point neither loses the slot (the
    copy exists before the original leaves RUNNING) nor adds a second copy. `still_lost` is asked again
    under the lock (a stopped worker may have come back). With `final` (a reason) the trial is failed for
    good instead: no copy. If the original finished meanwhile (a zombie's late COMPLETE won), the copy is
    withdrawn.
    """

    def step() -> int | None:
        with study_lock(url, name):
            trial = storage.get_trial(trial_id)
            if trial.state != TrialState.RUNNING or (still_lost is not None and not still_lost()):
                return None
            slot = trial.user_attrs.get(SLOT_ATTR)
            recorder = (None if slot is None
                        else TrialRecorder(url, storage, name, int(slot), trial.number, trial_id))
            reason = final or trial.system_attrs.get(FINAL_ATTR) or trial.system_attrs.get(VOID_ATTR)
            if reason:
                storage.set_trial_system_attr(trial_id, FINAL_ATTR, str(reason))
                if recorder is not None and final:  # (a FINAL or VOID mark's row was written with it)
                    recorder.failed_for_good(final)
                _fail(storage, trial_id)
                return None
            copy = _copy_of(storage.get_all_trials(study_id, deepcopy=False), trial.number)
            if copy is None:
                copy = storage.get_trial(storage.create_new_trial(study_id, _copy_template(trial)))
                failpoint(f"{point}.after-copy")
            if not _fail(storage, trial_id):
                withdraw(storage, copy._trial_id, f"trial {trial.number} finished after all")
                return None
            failpoint(f"{point}.after-fail")
            if recorder is not None:
                recorder.requeued(copy.number)
            return copy.number

    return with_retry(step, url, what="re-queue a trial")


def _fail(storage: Any, trial_id: int) -> bool:
    """Move a RUNNING trial to FAIL; False if it had COMPLETEd instead (FAIL already is fine)."""
    try:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return storage.get_trial(trial_id).state != TrialState.COMPLETE
    return True


def settle_claim(url: str, storage: Any, study_id: int, name: str, trial: FrozenTrial) -> bool:
    """After claiming a re-queued copy: make sure it is its slot's only live trial. A lost ancestor still
    RUNNING (its re-queue stopped half-way) is failed now; if the slot has a COMPLETE trial (a zombie's
    late result won) or another live attempt, the claimed copy is withdrawn (False)."""
    history = retry_history(trial)
    if not history:
        return True  # a designed trial, enqueued once by the (serialised) creation
    slot = trial.user_attrs.get(SLOT_ATTR)
    for other in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,
                                                                        TrialState.COMPLETE)):
        if other.number == trial.number or other.user_attrs.get(SLOT_ATTR) != slot:
            continue
        if other.state == TrialState.RUNNING and other.number in history and _fail(storage, other._trial_id):
            TrialRecorder(url, storage, name, slot, other.number, other._trial_id).requeued(trial.number)
            continue
        _void(storage, trial._trial_id, f"slot {slot} has trial {other.number}")
        log.warning("trial %d duplicated trial %d of slot %s: withdrawn", trial.number, other.number, slot)
        return False
    return True


@dataclass
class RepairResult:
    """What `repair_study` found: slots re-queued (lost) and duplicate trials withdrawn."""

    requeued: list[int] = field(default_factory=list)
    withdrawn: list[int] = field(default_factory=list)


def slot_trials(trials: Iterable[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """Trials grouped by their designed slot, each group in number order."""
    by_slot: dict[int, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if SLOT_ATTR in t.user_attrs:
            by_slot.setdefault(int(t.user_attrs[SLOT_ATTR]), []).append(t)
    return by_slot


def _slot_rows(frame: Any) -> dict[int, dict[str, Any]]:
    """Results rows by slot: state and trial_number (None when the slot never started)."""
    import pandas as pd

    return {int(slot): {"state": state, "trial_number": None if pd.isna(number) else int(number)}
            for slot, state, number in zip(frame["slot"], frame["state"], frame["trial_number"], strict=True)}


def _finished_for_good(trials: list[FrozenTrial], row: dict[str, Any] | None) -> bool:
    if any(FINAL_ATTR in t.system_attrs for t in trials):
        return True
    # Before the FINAL marker, only the results row said a FAIL was the outcome (objective raised).
    return bool(row and trials and row["state"] in (ResultState.FAILED, ResultState.DIVERGED)
                and row["trial_number"] == trials[-1].number)


def repair_study(url: str, name: str, storage: Any | None = None) -> RepairResult:
    """Re-queue every designed slot that has no waiting, running or complete trial and was not failed for
    good (a copy of its last trial, or its designed trial if it has none), and withdraw WAITING duplicates
    of a slot that already has a live trial. Serialised with creation and re-queueing (`study_lock`)."""
    storage = storage if storage is not None else open_storage(url)
    outcome = RepairResult()

    def step() -> None:
        outcome.requeued.clear()
        outcome.withdrawn.clear()
        with study_lock(url, name):
            study = load_optuna_study(url, name, storage)
            spec = stored_spec(study)
            if spec is None:
                raise StorageError(f"study {name!r} is not fully created (run `odyssey study create` again)")
            study_id = storage.get_study_id_from_name(name)
            by_slot = slot_trials(storage.get_all_trials(study_id, deepcopy=False))
            rows = _slot_rows(results.load_study(url, name, with_epochs=False).trials)
            dists = distributions(spec)
            for design in designed_trials(spec):
                slot = design["slot"]
                trials = by_slot.get(slot, [])
                live = [t for t in trials if t.state in LIVE_STATES]
                if live:
                    # A waiting trial beside a COMPLETE one, or a second waiting one, would train the
                    # slot again. (A RUNNING trial with a waiting copy is a re-queue under way: left.)
                    done = [t for t in live if t.state == TrialState.COMPLETE]
                    waiting = [t for t in live if t.state == TrialState.WAITING]
                    if not any(t.state == TrialState.RUNNING for t in live):
                        keep = done[0] if done else waiting[0]
                        for extra in waiting:
                            if extra is not keep and withdraw(storage, extra._trial_id,
                                                              f"slot {slot} has trial {keep.number}"):
                                outcome.withdrawn.append(extra.number)
                    continue
                if _finished_for_good(trials, rows.get(slot)):
                    continue
                template = _copy_template(trials[-1]) if trials else _waiting_trial(spec, design, dists)
                copy = storage.get_trial(storage.create_new_trial(study_id, template))
                failpoint("repair.after-copy")
                if trials:
                    last = trials[-1]
                    TrialRecorder(url, storage, name, slot, last.number, last._trial_id).requeued(copy.number)
                outcome.requeued.append(slot)
                log.warning("slot %d of %r had no live trial: re-queued as trial %d", slot, name, copy.number)

    with_retry(step, url, what=f"repair study {name!r}")
    return outcome


@dataclass
class VariantStatus:
    variant: str
    counts: dict[str, int]


@dataclass
class StudyStatus:
    """Per-variant trial counts, throughput (finished trials per hour) and the estimated time left."""

    name: str
    design: str
    variants: list[VariantStatus]
    throughput_per_hour: float | None
    eta_seconds: float | None
    lost: int = 0   # designed slots with no waiting, running or complete trial, not failed for good
    extra: int = 0  # live trials beyond one per designed slot (the slot would train twice)

    @property
    def totals(self) -> dict[str, int]:
        return {s: sum(v.counts[s] for v in self.variants) for s in results.STATE_COLUMNS}


def study_status(url: str, name: str) -> StudyStatus:
    """Count each variant's slots by state from the results rows (one per designed slot, tallied by
    `results.count_states`), the slots that Optuna has lost or holds more than once, and estimate the time
    left."""
    import pandas as pd

    data = results.load_study(url, name, with_epochs=False)
    try:
        by_slot = slot_trials(load_optuna_study(url, name).get_trials(deepcopy=False))
    except OdysseyError:  # results rows without an Optuna study (imported, or a half-done delete)
        by_slot = {}
    rows = _slot_rows(data.trials)
    lost = extra = 0
    for slot in set(rows) | set(by_slot):
        attempts = by_slot.get(slot, [])
        live = sum(t.state in LIVE_STATES for t in attempts)
        extra += max(0, live - 1) if slot in rows else live
        lost += bool(by_slot) and slot in rows and live == 0 and not _finished_for_good(attempts, rows[slot])
    spec = data.spec or {}
    trials = data.trials
    variants = list(spec.get("variants") or sorted(trials["variant"].unique()))
    table = results.count_states(trials, "variant")
    counts = [VariantStatus(str(variant), {str(s): int(n) for s, n in row.items()})
              for variant, row in table.reindex(variants, fill_value=0).iterrows()]
    throughput = eta = None
    # The pace of trials that trained: failed trials often fail in a second, which says nothing of how
    # long the waiting ones will take.
    done = trials[trials["state"].isin(SCORED_STATES)]
    if len(done) and "finished_at" in trials and "started_at" in trials:
        start = pd.to_datetime(trials["started_at"]).min()
        end = pd.to_datetime(done["finished_at"]).max()
        span = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else 0
        if span > 0:
            throughput = len(done) / span * 3600
            left = int(table[list(PENDING_STATES)].sum().sum())
            eta = left / throughput * 3600
    return StudyStatus(name, str(spec.get("design", "?")), counts, throughput, eta, lost, extra)
