"""Write and read the results database: one row per designed trial, its hyperparameters and epochs.

Every write runs in its own transaction and is idempotent, so `with_retry` may repeat it after a dropped
connection or a database restart without harm. Reads return pandas frames with the columns documented in
docs/architecture.md and docs/results-schema.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from storage import schema_version
from storage.engine import get_engine, sqlite_file, translated, with_retry, write_transaction
from storage.schema import (
    ERROR_MAX_CHARS,
    create_schema,
    epochs,
    schema_exists,
    studies,
    trials,
    utcnow,
)
from storage.schema import params as param_table
from storage.urls import is_sqlite, mask_url, resolve_url, scrub, secrets_of
from sweep.core.errors import ConfigError, StorageError
from sweep.core.states import ENDED_STATES, ResultState

log = logging.getLogger(f"odyssey.{__name__}")
T = TypeVar("T")

#: seconds a read keeps retrying a transient failure (writes use the longer `retry_budget`)
READ_RETRY_SECONDS = 3.0

RESULT_FIELDS = (
    "best_valid", "best_test", "final_valid", "final_test", "best_epoch", "epochs", "seconds", "n_params",
)
_INT_RESULTS = {"best_epoch", "epochs", "n_params"}
TRIAL_HEAD = ["study", "slot", "trial_number", "variant", "dataset", "state", "diverged"]
TRIAL_TAIL = [*RESULT_FIELDS, "host", "device", "seed", "started_at", "finished_at", "attempts", "error"]
EPOCH_COLUMNS = [
    "study", "slot", "trial_number", "variant", "epoch",
    "train_loss", "valid_metric", "test_metric", "seconds",
]
#: the state columns of every count per state (`count_states`): ResultState's display order
STATE_COLUMNS = [state.value for state in ResultState]
STUDY_COLUMNS = ["study", "dataset", "created_at", "trials", *STATE_COLUMNS]
_INT_COLUMNS = ("slot", "trial_number", "best_epoch", "epochs", "n_params", "seed", "attempts", "epoch")


@dataclasses.dataclass
class StudyData:
    """A study as the analysis reads it: its spec, one row per designed trial, one row per epoch."""

    spec: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    name: str = ""
    param_names: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------- helpers


def _finite(value: Any) -> float | None:
    """A float, or None for missing and non-finite values (stored as NULL on every backend)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    return number if math.isfinite(number) else None


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if number != value and not isinstance(value, str):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return number


def _slot(value: Any) -> int:
    slot = _int_or_none(value, "slot")
    if slot is None or isinstance(value, bool):
        raise ValueError(f"slot must be an integer, got {value!r}")
    return slot


def _upsert(conn: sa.Connection, table: sa.Table) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _write(url: str | None, what: str, fn: Callable[[sa.Connection, str], T]) -> T:
    """Run ``fn(conn, resolved_url)`` in one transaction, creating the schema first; retried on outages."""
    resolved = resolve_url(url)
    engine = get_engine(resolved)

    def attempt() -> T:
        create_schema(engine)
        with write_transaction(engine) as conn:
            return fn(conn, resolved)

    return with_retry(attempt, resolved, what=what)


def _read(
    url: str | None, what: str, fn: Callable[[sa.Connection, str], T], missing: Callable[[str], T]
) -> T:
    """Run ``fn`` read-only-ish (no schema creation); ``missing(url)`` answers when there is no schema."""
    resolved = resolve_url(url)
    file = sqlite_file(resolved) if is_sqlite(resolved) else None
    if file is not None and not file.exists():
        return missing(resolved)  # never create an empty database file just to read it
    engine = get_engine(resolved)

    def attempt() -> T:
        with engine.connect() as conn:
            if not schema_exists(conn):
                return missing(resolved)
            schema_version.check(conn, mask_url(resolved))  # never read tables of another revision
            return fn(conn, resolved)

    return with_retry(attempt, resolved, what=what, retry_seconds=READ_RETRY_SECONDS)


def _not_found(study: str, url: str) -> StorageError:
    return StorageError(f"study {study!r} not found in {mask_url(url)}")


def _require_study(conn: sa.Connection, study: str, url: str) -> sa.Row:
    row = conn.execute(sa.select(studies).where(studies.c.name == study)).first()
    if row is None:
        raise _not_found(study, url)
    return row


def _trial_key(study: str, slot: int) -> sa.ColumnElement[bool]:
    return sa.and_(trials.c.study == study, trials.c.slot == slot)


def _no_slot(study: str, slot: int) -> StorageError:
    return StorageError(f"study {study!r} has no designed trial in slot {slot}")


def _normalise_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise TypeError(f"a study spec must be a mapping, got {type(spec).__name__}")
    try:
        return json.loads(json.dumps(dict(spec), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"study spec is not plain JSON: {exc}") from None


def _dataset_of(spec: Mapping[str, Any]) -> str | None:
    dataset = spec.get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dataset.get("name")
    return str(dataset) if dataset is not None else None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ConfigError(f"a study name must be a non-empty string of at most 255 characters, got {name!r}")
    return name


def _param_rows(study: str, slot: int, values: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if values is None:
        return []
    if not isinstance(values, Mapping):
        raise TypeError(f"params of slot {slot} must be a mapping of name -> number")
    rows = []
    for name, value in values.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise ValueError(f"invalid hyperparameter name {name!r} in slot {slot}")
        if isinstance(value, bool):
            value = float(value)
        rows.append({"study": study, "slot": slot, "name": name, "value": _finite(value)})
    return rows


# --------------------------------------------------------------------------------------------- writes


def register_study(
    url: str | None, name: str, spec: Mapping[str, Any], *, dataset: str | None = None, replace: bool = False
) -> None:
    """Record a study and its normalised spec; a repeat with the same spec does nothing.

    ``dataset`` defaults to ``spec["dataset"]`` (or ``spec["dataset"]["name"]``). Registering an existing
    study with a different spec raises OdysseyError unless ``replace`` is true.
    """
    name = _check_name(name)
    spec = _normalise_spec(spec)
    dataset = dataset if dataset is not None else _dataset_of(spec)

    def write(conn: sa.Connection, resolved: str) -> None:
        stmt = _upsert(conn, studies).values(name=name, dataset=dataset, spec=spec, created_at=utcnow())
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        stored = conn.execute(
            sa.select(studies.c.spec, studies.c.dataset).where(studies.c.name == name)
        ).one()
        if stored.spec == spec and stored.dataset == dataset:
            return
        if not replace:
            raise StorageError(
                f"study {name!r} already exists in {mask_url(resolved)} with a different spec; "
                "delete it or choose another name"
            )
        conn.execute(sa.update(studies).where(studies.c.name == name).values(spec=spec, dataset=dataset))

    _write(url, "register a study", write)


def record_designed_trials(url: str | None, study: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Record designed trials (each: ``slot``, ``variant``, ``params`` dict, ``seed``, optional ``dataset``)
    in state ``waiting``. Slots already recorded are left as they are. Returns the number of rows given.
    """
    trial_rows: list[dict[str, Any]] = []
    param_rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    now = utcnow()
    for row in rows:
        if not isinstance(row, Mapping):
            raise TypeError(f"a designed trial must be a mapping, got {type(row).__name__}")
        slot = _slot(row.get("slot"))
        if slot in seen:
            raise ValueError(f"slot {slot} appears twice among the designed trials of {study!r}")
        seen.add(slot)
        variant = row.get("variant")
        if not isinstance(variant, str) or not variant:
            raise ValueError(f"designed trial in slot {slot} has no variant")
        trial_rows.append({
            "study": study, "slot": slot, "variant": variant, "dataset": row.get("dataset"),
            "seed": _int_or_none(row.get("seed"), f"seed of slot {slot}"), "state": ResultState.WAITING,
            "attempts": 0, "diverged": False, "created_at": now,
        })
        param_rows.extend(_param_rows(study, slot, row.get("params")))

    def write(conn: sa.Connection, resolved: str) -> int:
        found = _require_study(conn, study, resolved)
        for item in trial_rows:
            item["dataset"] = item["dataset"] or found.dataset
        if trial_rows:
            conn.execute(_upsert(conn, trials).on_conflict_do_nothing(index_elements=["study", "slot"]),
                         trial_rows)
        if param_rows:
            conn.execute(
                _upsert(conn, param_table).on_conflict_do_nothing(index_elements=["study", "slot", "name"]),
                param_rows,
            )
        return len(trial_rows)

    return _write(url, "record designed trials", write)


def record_trial_started(
    url: str | None,
    study: str,
    slot: int,
    trial_number: int,
    host: str | None,
    device: str | None,
    *,
    variant: str | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    dataset: str | None = None,
) -> None:
    """Mark a slot running as Optuna trial ``trial_number``: clears its old epochs and results.

    ``attempts`` counts distinct trial numbers, so repeating the call is harmless. A slot that was never
    designed is created when ``variant`` is given, else OdysseyError.
    """
    slot = _slot(slot)
    number = _int_or_none(trial_number, "trial_number")

    def write(conn: sa.Connection, resolved: str) -> None:
        found = _require_study(conn, study, resolved)
        exists = conn.execute(sa.select(trials.c.slot).where(_trial_key(study, slot))).first()
        if exists is None:
            if variant is None:
                raise _no_slot(study, slot)
            conn.execute(sa.insert(trials).values(
                study=study, slot=slot, variant=variant, dataset=dataset or found.dataset,
                seed=_int_or_none(seed, "seed"), state=ResultState.WAITING, attempts=0, diverged=False,
                created_at=utcnow(),
            ))
            rows = _param_rows(study, slot, params)
            if rows:
                conn.execute(sa.insert(param_table), rows)
        new_attempt = sa.or_(trials.c.trial_number.is_(None), trials.c.trial_number != number)
        conn.execute(
            sa.update(trials).where(_trial_key(study, slot)).values(
                attempts=sa.case((new_attempt, trials.c.attempts + 1), else_=trials.c.attempts),
                trial_number=number, state=ResultState.RUNNING, diverged=False, host=host, device=device,
                started_at=utcnow(), finished_at=None, error=None,
                **dict.fromkeys(RESULT_FIELDS),
            )
        )
        conn.execute(sa.delete(epochs).where(epochs.c.study == study, epochs.c.slot == slot))

    _write(url, "record a trial start", write)


# Optuna's own tables, read (never written) to check a writer still holds its trial RUNNING.
_optuna_studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
_optuna_trials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"), sa.column("number"),
                          sa.column("state"), sa.column("datetime_start", sa.DateTime))
_optuna_heartbeats = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
_optuna_seen: set[str] = set()  # URLs whose Optuna tables are known to exist


def lost_trials(url: str | None, study: str, grace_seconds: float) -> list[int]:
    """The ids of the study's RUNNING Optuna trials whose worker is lost: a heartbeat older than
    ``grace_seconds`` (by the database's clock, as Optuna writes it), or no heartbeat at all and a start
    older than ``grace_seconds`` (Optuna's start time is the claiming host's local clock).

    Optuna's own check (``fail_stale_trials``) skips trials without a heartbeat for ever.
    """
    import datetime as dt

    stmt = (
        sa.select(_optuna_trials.c.trial_id, _optuna_trials.c.datetime_start, _optuna_heartbeats.c.heartbeat)
        .select_from(
            _optuna_trials.join(_optuna_studies, _optuna_studies.c.study_id == _optuna_trials.c.study_id)
            .outerjoin(_optuna_heartbeats, _optuna_heartbeats.c.trial_id == _optuna_trials.c.trial_id))
        .where(_optuna_studies.c.study_name == study,
               sa.cast(_optuna_trials.c.state, sa.String) == "RUNNING")
    )
    grace = dt.timedelta(seconds=grace_seconds)

    def read() -> list[int]:
        with get_engine(resolve_url(url)).connect() as conn:
            now_db = conn.execute(sa.select(sa.func.now())).scalar_one()
            rows = conn.execute(stmt).all()
        if isinstance(now_db, str):  # SQLite's CURRENT_TIMESTAMP
            now_db = dt.datetime.fromisoformat(now_db)
        now_db = now_db.replace(tzinfo=None)
        now_local = dt.datetime.now()
        return [r.trial_id for r in rows
                if (r.heartbeat is not None and now_db - r.heartbeat > grace)
                or (r.heartbeat is None and r.datetime_start is not None
                    and now_local - r.datetime_start > grace)]

    return with_retry(read, url, what="look for lost trials")


def optuna_trial_state(conn: sa.Connection, study: str, number: int, *, lock: bool = False) -> str | None:
    """The Optuna state name (RUNNING, COMPLETE, FAIL, WAITING...) of trial ``number`` of ``study``; None
    when there is no such Optuna trial (results tables used without Optuna). With ``lock`` the trial row is
    share-locked on PostgreSQL until the transaction ends, so no state change can slip in between."""
    url = conn.engine.url.render_as_string(hide_password=False)
    if url not in _optuna_seen:
        if not sa.inspect(conn).has_table("trials"):
            return None
        _optuna_seen.add(url)
    stmt = (sa.select(_optuna_trials.c.state)
            .select_from(_optuna_trials.join(_optuna_studies,
                                             _optuna_studies.c.study_id == _optuna_trials.c.study_id))
            .where(_optuna_studies.c.study_name == study, _optuna_trials.c.number == number))
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(read=True, of=_optuna_trials)
    state = conn.execute(stmt).scalar()
    return None if state is None else str(getattr(state, "name", state)).upper()


def _current_attempt_matches(conn: sa.Connection, study: str, slot: int, number: int | None) -> bool:
    """Whether a write from attempt ``number`` may change the slot: the row names that attempt and Optuna
    (when the study is Optuna's) still has it RUNNING; anything else is a zombie's late write."""
    row = conn.execute(sa.select(trials.c.trial_number).where(_trial_key(study, slot))).first()
    if row is None:
        raise _no_slot(study, slot)
    if number is None:
        return True
    if row.trial_number != number:
        log.warning("ignoring a write from trial %s to slot %s of %r: slot now belongs to trial %s",
                    number, slot, study, row.trial_number)
        return False
    state = optuna_trial_state(conn, study, number, lock=True)
    if state not in (None, "RUNNING"):
        log.warning("ignoring a write from trial %s to slot %s of %r: Optuna has the trial %s",
                    number, slot, study, state)
        return False
    return True


def record_epoch(
    url: str | None,
    study: str,
    slot: int,
    epoch: int,
    train_loss: float | None,
    valid_metric: float | None,
    test_metric: float | None,
    seconds: float | None,
    *,
    trial_number: int | None = None,
) -> bool:
    """Record (or overwrite) one epoch of a slot; non-finite numbers are stored as NULL.

    With ``trial_number``, a write from an attempt that no longer owns the slot (a zombie worker) is ignored
    and False is returned.
    """
    slot = _slot(slot)
    epoch_no = _int_or_none(epoch, "epoch")
    values = {
        "train_loss": _finite(train_loss), "valid_metric": _finite(valid_metric),
        "test_metric": _finite(test_metric), "seconds": _finite(seconds),
    }

    def write(conn: sa.Connection, resolved: str) -> bool:
        if not _current_attempt_matches(conn, study, slot, _int_or_none(trial_number, "trial_number")):
            return False
        stmt = _upsert(conn, epochs).values(study=study, slot=slot, epoch=epoch_no, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["study", "slot", "epoch"], set_=values))
        # Live progress for `odyssey query`: a running trial's epoch count so far.
        conn.execute(sa.update(trials).where(_trial_key(study, slot), trials.c.state == ResultState.RUNNING)
                     .values(epochs=epoch_no))
        return True

    return _write(url, "record an epoch", write)


def _result_value(result: Any, key: str) -> Any:
    if isinstance(result, Mapping):
        return result.get(key)
    return getattr(result, key, None)


def record_trial_finished(
    url: str | None,
    study: str,
    slot: int,
    state: str,
    result: Mapping[str, Any] | Any,
    *,
    trial_number: int | None = None,
) -> bool:
    """Record a slot's outcome: ``state`` is one of `ENDED_STATES` (complete, failed or diverged, as a
    `ResultState` or its string); ``result`` a dict (or an object such as TrainResult) with any of
    best_valid, best_test, final_valid, final_test, best_epoch, epochs, seconds, n_params, error, diverged.
    Other keys are ignored; non-finite numbers become NULL.

    With ``trial_number``, a late write from an attempt that no longer owns the slot is ignored (False).
    """
    slot = _slot(slot)
    if state not in ENDED_STATES:
        allowed = ", ".join(ENDED_STATES)
        raise ValueError(f"a finished trial's state must be one of {allowed}, got {state!r}")
    state = ResultState(state)
    result = {} if result is None else result
    values: dict[str, Any] = {}
    for key in RESULT_FIELDS:
        raw = _result_value(result, key)
        values[key] = _int_or_none(raw, key) if key in _INT_RESULTS else _finite(raw)
    error = _result_value(result, "error")
    if error is not None:
        error = " ".join(str(error).split())[:ERROR_MAX_CHARS]
    values["diverged"] = state == ResultState.DIVERGED or bool(_result_value(result, "diverged"))

    def write(conn: sa.Connection, resolved: str) -> bool:
        if not _current_attempt_matches(conn, study, slot, _int_or_none(trial_number, "trial_number")):
            return False
        conn.execute(sa.update(trials).where(_trial_key(study, slot)).values(
            state=state, finished_at=utcnow(),
            error=scrub(error, secrets_of(resolved)) if error else None, **values,
        ))
        return True

    return _write(url, "record a trial result", write)


def record_trial_requeued(url: str | None, study: str, slot: int, trial_number: int | None = None,
                          new_trial_number: int | None = None) -> None:
    """Put a slot back to ``waiting`` (e.g. its worker died); its results are cleared, attempts kept.

    With ``trial_number`` (the attempt being re-queued) nothing happens if a newer attempt already owns
    the slot: the re-queued copy may have been claimed and started before this write. With
    ``new_trial_number`` (the waiting copy) the row passes to the copy at once and ``attempts`` grows, so a
    late write from the old attempt is refused from now on.
    """
    slot = _slot(slot)
    new = _int_or_none(new_trial_number, "new_trial_number")

    def write(conn: sa.Connection, resolved: str) -> None:
        _require_study(conn, study, resolved)
        row = conn.execute(sa.select(trials.c.trial_number).where(_trial_key(study, slot))).first()
        if row is None:
            raise _no_slot(study, slot)
        if new is not None and row.trial_number == new:
            return  # already done (a repeated call)
        if trial_number is not None and row.trial_number not in (None, trial_number):
            return  # a newer attempt owns the slot
        moved: dict[str, Any] = {}
        if new is not None:
            moved = {"trial_number": new, "attempts": trials.c.attempts + 1}
        done = conn.execute(sa.update(trials).where(_trial_key(study, slot)).values(
            state=ResultState.WAITING, diverged=False, started_at=None, finished_at=None, error=None,
            host=None, device=None, **dict.fromkeys(RESULT_FIELDS), **moved,
        ))
        if done.rowcount == 0:
            raise _no_slot(study, slot)

    _write(url, "requeue a trial", write)


def delete_study_results(url: str | None, study: str) -> bool:
    """Delete a study's results (not its Optuna study); returns whether there was anything to delete."""

    def write(conn: sa.Connection, resolved: str) -> bool:
        for table in (epochs, param_table, trials):
            conn.execute(sa.delete(table).where(table.c.study == study))
        return conn.execute(sa.delete(studies).where(studies.c.name == study)).rowcount > 0

    return _write(url, "delete study results", write)


# ---------------------------------------------------------------------------------------------- reads


def _space_order(spec: Mapping[str, Any], names: set[str]) -> list[str]:
    """Hyperparameter names in the order the spec's search space lists them (others sorted after)."""
    order: list[str] = []
    for value in spec.values():
        if isinstance(value, Mapping) and names & set(value):
            order = [key for key in value if key in names]
            break
    return order + sorted(names - set(order))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in _INT_COLUMNS:
        if column in frame:
            frame[column] = pd.array(frame[column].astype(object).where(frame[column].notna(), None),
                                     dtype="Int64")
    for column in ("started_at", "finished_at", "created_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    if "diverged" in frame:
        frame["diverged"] = frame["diverged"].astype(bool)
    return frame


def load_study(url: str | None, name: str, *, with_epochs: bool = True) -> StudyData:
    """Load a study's spec, trials (one row per designed trial, one column per hyperparameter) and epochs.

    ``with_epochs=False`` leaves the epoch frame empty: the largest table, not needed to count or rank trials.
    Raises OdysseyError("study 'x' not found in <url>") for an unknown study.
    """

    def missing(resolved: str) -> StudyData:
        raise _not_found(name, resolved)

    def read(conn: sa.Connection, resolved: str) -> StudyData:
        study_row = _require_study(conn, name, resolved)
        trial_rows = [dict(r) for r in conn.execute(
            sa.select(trials).where(trials.c.study == name).order_by(trials.c.slot)).mappings()]
        param_rows = conn.execute(
            sa.select(param_table.c.slot, param_table.c.name, param_table.c.value)
            .where(param_table.c.study == name)).all()
        epoch_rows: Sequence[sa.RowMapping] = []
        if with_epochs:
            epoch_rows = conn.execute(
                sa.select(epochs, trials.c.trial_number, trials.c.variant)
                .join(trials, sa.and_(trials.c.study == epochs.c.study, trials.c.slot == epochs.c.slot))
                .where(epochs.c.study == name).order_by(epochs.c.slot, epochs.c.epoch)).mappings().all()
        spec = dict(study_row.spec or {})
        names = _space_order(spec, {p.name for p in param_rows})
        columns = {n: (n if n not in TRIAL_HEAD + TRIAL_TAIL else f"param_{n}") for n in names}
        by_slot: dict[int, dict[str, float | None]] = {}
        for p in param_rows:
            by_slot.setdefault(p.slot, {})[columns[p.name]] = p.value
        for row in trial_rows:
            row.update({c: by_slot.get(row["slot"], {}).get(c) for c in columns.values()})
        order = TRIAL_HEAD + list(columns.values()) + TRIAL_TAIL
        trial_frame = pd.DataFrame(trial_rows, columns=order)
        for column in list(columns.values()) + list(RESULT_FIELDS):
            if column not in _INT_COLUMNS:
                trial_frame[column] = trial_frame[column].astype(float)
        epoch_frame = pd.DataFrame([dict(r) for r in epoch_rows], columns=EPOCH_COLUMNS)
        for column in ("train_loss", "valid_metric", "test_metric", "seconds"):
            epoch_frame[column] = epoch_frame[column].astype(float)
        return StudyData(spec=spec, trials=_typed(trial_frame), epochs=_typed(epoch_frame), name=name,
                         param_names=list(columns.values()))

    return _read(url, "load a study", read, missing)


def count_states(rows: pd.DataFrame, by: str | Sequence[str]) -> pd.DataFrame:
    """Trials per state: the one tally behind every count per state (`count_trials`, `list_studies`,
    `odyssey study status`, `odyssey run`'s progress, the report's "Trials by state").

    ``rows`` has a ``state`` column and the ``by`` column(s): one row per trial (a ``trials`` frame of
    `load_study`), or one row per group and state with the number of trials in an ``n`` column (a SQL
    GROUP BY). Returns one row per group present in ``rows`` (indexed by ``by``) and one int64 column per
    state in display order (`STATE_COLUMNS`), zero where a group has no trial in that state; states outside
    `ResultState` are not counted. Callers reindex to add groups without trials.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if rows.empty:
        index = pd.MultiIndex.from_tuples([], names=keys) if len(keys) > 1 else pd.Index([], name=keys[0])
        return pd.DataFrame(0, index=index, columns=STATE_COLUMNS, dtype="int64")
    n = rows["n"] if "n" in rows else pd.Series(1, index=rows.index)
    table = (
        rows.assign(n=n, state=rows["state"].astype(str))
        .pivot_table(index=keys, columns="state", values="n", aggfunc="sum", fill_value=0, observed=True)
        .reindex(columns=STATE_COLUMNS, fill_value=0)
        .astype("int64")
    )
    table.columns.name = None
    return table


def _count_keys(study: str | None, by_variant: bool) -> list[str]:
    """The index of `count_trials`' frame: one study is told by variant, or is one row of its own."""
    if study is not None and by_variant:
        return ["variant"]
    return ["study", "variant"] if by_variant else ["study"]


def _count_trials(conn: sa.Connection, study: str | None, by_variant: bool) -> pd.DataFrame:
    """`count_trials` on an open connection: one GROUP BY, tallied by `count_states`."""
    keys = [trials.c[name] for name in _count_keys(study, by_variant)]
    stmt = sa.select(*keys, trials.c.state, sa.func.count().label("n")).group_by(*keys, trials.c.state)
    if study is not None:
        stmt = stmt.where(trials.c.study == study)
    names = [key.name for key in keys]
    rows = pd.DataFrame([dict(r) for r in conn.execute(stmt).mappings()], columns=[*names, "state", "n"])
    return count_states(rows, names)


def count_trials(url: str | None, study: str | None = None, *, by_variant: bool = False) -> pd.DataFrame:
    """Trials per state in the results tables, counted by the database (see `count_states` for the frame).

    One row per study (index ``study``); with ``by_variant`` one per study and variant (index ``study``,
    ``variant``). Given ``study``, only its trials: indexed by ``variant`` with ``by_variant``, else one row
    for the study. A study without trials has no row; no results tables give an empty frame.
    """
    keys = _count_keys(study, by_variant)

    def missing(_resolved: str) -> pd.DataFrame:
        return count_states(pd.DataFrame(columns=[*keys, "state"]), keys)

    return _read(url, "count trials", lambda conn, _resolved: _count_trials(conn, study, by_variant), missing)


def list_studies(url: str | None) -> pd.DataFrame:
    """One row per study: name, dataset, created_at, and its trial counts per state (`count_trials`)."""

    def missing(_resolved: str) -> pd.DataFrame:
        return pd.DataFrame(columns=STUDY_COLUMNS)

    def read(conn: sa.Connection, _resolved: str) -> pd.DataFrame:
        stmt = (sa.select(studies.c.name.label("study"), studies.c.dataset, studies.c.created_at)
                .order_by(studies.c.created_at, studies.c.name))
        frame = pd.DataFrame([dict(r) for r in conn.execute(stmt).mappings()],
                             columns=["study", "dataset", "created_at"])
        counts = _count_trials(conn, None, by_variant=False).reindex(frame["study"], fill_value=0)
        frame["trials"] = counts.sum(axis=1).to_numpy(dtype="int64")
        for column in STATE_COLUMNS:
            frame[column] = counts[column].to_numpy(dtype="int64")
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame[STUDY_COLUMNS]

    return _read(url, "list studies", read, missing)


def trials_dataframe(url: str | None, study: str, state: str | None = None) -> pd.DataFrame:
    """The trials of ``study`` as a DataFrame (optionally only those in ``state``), for notebooks."""
    frame = load_study(url, study, with_epochs=False).trials
    if state is not None:
        frame = frame[frame["state"] == state].reset_index(drop=True)
    return frame


__all__ = [
    "STATE_COLUMNS", "StudyData", "count_states", "count_trials", "register_study", "record_designed_trials",
    "record_trial_started", "record_epoch", "record_trial_finished", "record_trial_requeued",
    "delete_study_results", "load_study", "list_studies", "trials_dataframe", "translated", "lost_trials",
    "optuna_trial_state",
]
