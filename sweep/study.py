"""Study management: create a study from a spec (enqueueing its whole design), list, status, delete.

One Optuna study per spec holds every variant. The variant is an Optuna categorical parameter named
`variant` (so the dashboard and samplers see it) and is repeated in the user attr `odyssey_variant`;
each designed trial carries its slot number in the user attr `odyssey_slot`, the key of its results row.
Slot `k = v * trials_per_variant + i` is point `i` of the design trained with variant `v`; every variant
trains on the same points with the same seeds (a paired design).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from storage import results
from storage.engine import optuna_storage, with_retry
from storage.errors import OdysseyError
from storage.schema import FINISHED_STATES, STATES
from sweep.cli_common import plural
from sweep.objective import name_metric
from sweep.spec import StudySpec, design_points, parse_spec

log = logging.getLogger("odyssey.study")

VARIANT_PARAM = "variant"
SLOT_ATTR = "odyssey_slot"
VARIANT_ATTR = "odyssey_variant"
SEED_ATTR = "odyssey_seed"
POINT_ATTR = "odyssey_point"
ENQUEUE_CHUNK = 100
SPEC_ATTR = "odyssey_spec"  # study user attr; set last, so its presence means the design is complete


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
        raise OdysseyError(f"no study named {name!r} in this storage (studies: {known or 'none'})") from None


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


def check_dataset(spec: StudySpec) -> None:
    """Load the spec's dataset once so a bad path or corrupt file fails at create, not in every worker."""
    from sweep.datasets import load_dataset

    dataset = load_dataset(spec.dataset.name, **spec.dataset.options)
    known = sorted(getattr(dataset, "metrics", (dataset.metric,)))
    if spec.metric not in known:
        raise OdysseyError(
            f"metric {spec.metric!r} is not one of the {spec.dataset.name} dataset's ({', '.join(known)})"
        )


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
        done += len(chunk)
        if progress is not None:
            progress(done, len(rows))


def create_study(url: str, spec: StudySpec, check_data: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> CreateResult:
    """Create the Optuna study for `spec` and enqueue its whole design; idempotent for the same spec.

    A study of the same name created from a different spec raises OdysseyError; one whose creation was
    interrupted is completed (only the missing trials are added).
    """
    storage = open_storage(url)
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
            raise OdysseyError(
                f"study {spec.name!r} already exists with a different spec (differs in: {diffs}); "
                f"delete it with `odyssey study delete {spec.name} --yes` or rename the new spec"
            )
        if old is None and any(SLOT_ATTR not in t.user_attrs for t in existing.get_trials(deepcopy=False)):
            raise OdysseyError(f"an Optuna study named {spec.name!r} exists and was not made by odyssey")
        if old is not None:
            return CreateResult(spec.name, False, 0, len(rows),
                                f"study {spec.name!r} already exists with this spec; nothing added")
    if check_data:
        check_dataset(spec)
    study = existing or with_retry(
        lambda: optuna.create_study(
            study_name=spec.name, storage=storage, direction=spec.direction, load_if_exists=True
        ),
        url,
        what="create the study",
    )
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

    @property
    def totals(self) -> dict[str, int]:
        return {s: sum(v.counts[s] for v in self.variants) for s in STATES}


def study_status(url: str, name: str) -> StudyStatus:
    """Count each variant's trials by state from the results rows and estimate the time left."""
    import pandas as pd

    data = results.load_study(url, name, with_epochs=False)
    spec = data.spec or {}
    trials = data.trials
    variants = list(spec.get("variants") or sorted(trials["variant"].unique()))
    rows = []
    for variant in variants:
        sub = trials[trials["variant"] == variant]
        counts = {s: int((sub["state"] == s).sum()) for s in STATES}
        rows.append(VariantStatus(variant, counts))
    throughput = eta = None
    # The pace of trials that trained: failed trials often fail in a second, which says nothing of how
    # long the waiting ones will take.
    done = trials[trials["state"].isin(FINISHED_STATES) & (trials["state"] != "failed")]
    if len(done) and "finished_at" in trials and "started_at" in trials:
        start = pd.to_datetime(trials["started_at"]).min()
        end = pd.to_datetime(done["finished_at"]).max()
        span = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else 0
        if span > 0:
            throughput = len(done) / span * 3600
            left = int(trials["state"].isin(["waiting", "running"]).sum())
            eta = left / throughput * 3600
    return StudyStatus(name, str(spec.get("design", "?")), rows, throughput, eta)
