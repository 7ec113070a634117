"""Storage layer: URLs, engines and their errors, the results schema, and write/read round trips."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest
import sqlalchemy as sa

from storage import results
from storage.engine import check_connection, get_engine, optuna_storage, translate, with_retry
from storage.schema import create_schema, forget_created, metadata
from storage.urls import mask_url, resolve_url, scrub
from sweep.core.errors import OdysseyError

PASSWORD = "Tst-pw-9f3Kq"  # tests/conftest.py's PostgreSQL password

SPEC = {
    "name": "demo",
    "dataset": "jsb",
    "space": {"learning_rate": {"type": "float", "scale": "log", "low": 1e-6, "high": 1e-2},
              "hidden_size": {"type": "int", "low": 20, "high": 200}},
}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def _design(url: str, n: int = 3, study: str = "demo") -> None:
    results.register_study(url, study, SPEC)
    results.record_designed_trials(url, study, [
        {"slot": i, "variant": ["V", "NFG", "CIFG"][i % 3], "seed": 100 + i,
         "params": {"learning_rate": 10.0 ** -(i + 2), "hidden_size": 20 + i}}
        for i in range(n)
    ])


# ----------------------------------------------------------------------------------------------- URLs


def test_resolve_url_prefers_argument_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ODYSSEY_STORAGE", raising=False)
    assert resolve_url(None) == "sqlite:///odyssey.db"
    monkeypatch.setenv("ODYSSEY_STORAGE", "sqlite:///from-env.db")
    assert resolve_url(None) == "sqlite:///from-env.db"
    assert resolve_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


@pytest.mark.parametrize("raw", ["postgresql://u:p@h:5432/db", "postgres://u:p@h:5432/db",
                                 "postgresql+psycopg://u:p@h:5432/db", "postgresql+psycopg2://u:p@h:5432/db"])
def test_postgres_spellings_normalise_to_psycopg(raw: str) -> None:
    assert resolve_url(raw) == "postgresql+psycopg://u:p@h:5432/db"


@pytest.mark.parametrize("raw, fragment", [
    ("mysql://root:hunter2@db/x", "unsupported storage URL scheme 'mysql'"),
    ("not a url :: hunter2", "invalid storage URL"),
    ("postgresql://u:hunter2@host:5432", "names no database"),
    ("sqlite://u:hunter2@host/x.db", "invalid SQLite URL"),
    # user-info that no well-formed scheme introduces: make_url refuses it, the message must not echo it
    ("u:hunter2@host:5432/db", "invalid storage URL"),
    ("postgresql:/u:hunter2@127.0.0.1:1/x", "invalid storage URL"),
    ("postgresql:u:hunter2@127.0.0.1/x", "invalid storage URL"),
])
def test_bad_urls_raise_one_line_masked_errors(raw: str, fragment: str) -> None:
    with pytest.raises(OdysseyError) as info:
        resolve_url(raw)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    assert "hunter2" not in message or raw == "not a url :: hunter2"  # no URL structure, nothing to mask


def test_mask_url_hides_password_only() -> None:
    assert mask_url("postgresql+psycopg://odyssey:s3cret@db:5432/odyssey") == (
        "postgresql+psycopg://odyssey:***@db:5432/odyssey"
    )
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_scrub_removes_passwords_from_driver_text() -> None:
    text = "connection to 'host=db user=u password=s3cret dbname=x' failed; url postgres://u:s3cret@db/x"
    cleaned = scrub(text, ("s3cret",))
    assert "s3cret" not in cleaned and "password=***" in cleaned and "u:***@db" in cleaned


# -------------------------------------------------------------------------------------------- engines


def test_get_engine_is_cached_and_sqlite_uses_wal(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    assert get_engine(sqlite_url) is engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_sqlite_in_missing_directory_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(OdysseyError, match="does not exist"):
        get_engine(f"sqlite:///{tmp_path}/nowhere/x.db")


def test_closed_port_fails_fast_with_one_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://odyssey:{PASSWORD}@127.0.0.1:{port}/odyssey"
    started = time.monotonic()
    with pytest.raises(OdysseyError) as info:
        check_connection(url)
    message = str(info.value)
    assert message.startswith(f"cannot connect to postgresql+psycopg://odyssey:***@127.0.0.1:{port}/odyssey")
    assert "refused" in message.lower()
    assert PASSWORD not in message and "\n" not in message
    assert time.monotonic() - started < 15  # never reached: no long retry loop


def test_wrong_password_and_missing_database_are_one_line_errors(pg_server) -> None:
    wrong = pg_server.url.replace(PASSWORD, "not-the-Pw-123")
    with pytest.raises(OdysseyError) as info:
        check_connection(wrong)
    message = str(info.value)
    assert "password authentication failed" in message and "\n" not in message
    assert "not-the-Pw-123" not in message and PASSWORD not in message
    with pytest.raises(OdysseyError, match='database "missing_db" does not exist') as info:
        optuna_storage(pg_server.url_for("missing_db"))
    assert PASSWORD not in str(info.value)


def test_translate_never_leaks_a_password_from_driver_text() -> None:
    url = f"postgresql+psycopg://odyssey:{PASSWORD}@db:5432/odyssey"
    exc = sa.exc.OperationalError("connect", {}, Exception(f"could not connect: password={PASSWORD} host=db"))
    message = str(translate(exc, url))
    assert PASSWORD not in message and message.startswith("cannot connect to postgresql+psycopg://odyssey:***@db")


def test_retry_rides_out_transient_errors_and_stops_on_permanent_ones(sqlite_url: str) -> None:
    get_engine(sqlite_url).connect().close()  # reached once: outages are now worth waiting for
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            lost = Exception("server closed the connection unexpectedly")
            raise sa.exc.OperationalError("SELECT 1", {}, lost)
        return "ok"

    assert with_retry(flaky, sqlite_url, base_delay=0.01) == "ok" and len(calls) == 3

    def denied() -> None:
        calls.append(1)
        raise sa.exc.OperationalError("x", {}, Exception('password authentication failed for user "u"'))

    calls.clear()
    with pytest.raises(OdysseyError, match="password authentication failed"):
        with_retry(denied, sqlite_url, base_delay=0.01)
    assert len(calls) == 1


def test_a_locked_sqlite_file_is_waited_for_even_before_the_first_connection(tmp_path) -> None:
    """Two processes opening a fresh SQLite file together: one may see 'database is locked' while the
    other switches it to WAL; that is no wrong URL to fail fast on (it failed `study create`)."""
    url = f"sqlite:///{tmp_path / 'never-reached.db'}"
    calls = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sa.exc.OperationalError("PRAGMA journal_mode = WAL", {}, Exception("database is locked"))
        return "ok"

    assert with_retry(locked_twice, url, base_delay=0.01) == "ok" and len(calls) == 3

    def unreachable() -> None:  # any other outage of a never-reached database still fails at once
        calls.append(1)
        raise sa.exc.OperationalError("x", {}, Exception("server closed the connection unexpectedly"))

    calls.clear()
    with pytest.raises(OdysseyError):
        with_retry(unreachable, url, base_delay=0.01)
    assert len(calls) == 1


@pytest.mark.postgres
def test_writes_ride_out_a_database_restart(pg_server, pg_url: str) -> None:
    _design(pg_url, n=1)
    results.record_trial_started(pg_url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_epoch(pg_url, "demo", 0, 1, 1.5, 2.0, 2.1, 0.1)
    pg_server.restart()  # every pooled connection is now dead
    results.record_epoch(pg_url, "demo", 0, 2, 1.4, 1.9, 2.0, 0.1)

    pg_server.stop()
    errors: list[BaseException] = []

    def write_while_down() -> None:
        try:
            results.record_epoch(pg_url, "demo", 0, 3, 1.3, 1.8, 1.9, 0.1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=write_while_down)
    writer.start()
    time.sleep(1.0)  # the writer is now retrying against a stopped server
    pg_server.start()
    writer.join(timeout=30)
    assert not writer.is_alive() and not errors
    assert list(results.load_study(pg_url, "demo").epochs["epoch"]) == [1, 2, 3]


@pytest.mark.postgres
def test_optuna_storage_survives_a_restart(pg_server, pg_url: str) -> None:
    import optuna

    storage = optuna_storage(pg_url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    pg_server.restart()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


# --------------------------------------------------------------------------------------------- schema


def _open_optuna_storage(url: str) -> str:
    import optuna

    storage = optuna_storage(url)
    optuna.create_study(study_name=f"s{id(storage)}", storage=storage)
    return "ok"


def test_workers_opening_a_fresh_postgresql_database_together_all_succeed(pg_url: str) -> None:
    """`docker compose up` on a new volume: every worker opens Optuna's storage at the same moment."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as pool:
        outcomes = list(pool.map(_open_optuna_storage, [pg_url] * 4))
    assert outcomes == ["ok"] * 4


def test_create_schema_is_idempotent_and_safe_when_racing(url: str) -> None:
    engines = [sa.create_engine(url, poolclass=sa.pool.NullPool) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def create(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            create_schema(engine)
            create_schema(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    names = set(sa.inspect(engines[0]).get_table_names())
    assert {t.name for t in metadata.sorted_tables} <= names
    for engine in engines:
        forget_created(engine)
        engine.dispose()


# ------------------------------------------------------------------------------------ writes and reads


def test_round_trip(url: str) -> None:
    _design(url)
    results.record_trial_started(url, "demo", 0, trial_number=7, host="node1", device="cpu")
    for epoch in (1, 2):
        results.record_epoch(url, "demo", 0, epoch, 2.0 / epoch, 3.0 / epoch, 3.1 / epoch, 0.5)
    results.record_trial_finished(url, "demo", 0, "complete", {
        "best_valid": 1.5, "best_test": 1.55, "final_valid": 1.5, "final_test": 1.55, "best_epoch": 2,
        "epochs": 2, "seconds": 1.0, "n_params": 1234, "history": ["ignored"],
    })
    results.record_trial_started(url, "demo", 1, trial_number=8, host="node2", device="cuda:0")
    results.record_epoch(url, "demo", 1, 1, float("nan"), float("inf"), None, 0.2)
    results.record_trial_finished(url, "demo", 1, "diverged", {"error": "loss is nan", "epochs": 1})

    data = results.load_study(url, "demo")
    assert data.spec == SPEC and data.param_names == ["learning_rate", "hidden_size"]
    trials = data.trials
    assert list(trials.columns[:9]) == ["study", "slot", "trial_number", "variant", "dataset", "state",
                                        "diverged", "learning_rate", "hidden_size"]
    assert list(trials["state"]) == ["complete", "diverged", "waiting"]
    assert list(trials["diverged"]) == [False, True, False]
    assert list(trials["dataset"]) == ["jsb"] * 3
    first = trials.iloc[0]
    assert (first["trial_number"], first["variant"], first["host"]) == (7, "V", "node1")
    assert first["n_params"] == 1234
    assert first["learning_rate"] == pytest.approx(1e-2) and first["hidden_size"] == 20
    assert first["best_test"] == pytest.approx(1.55) and first["seed"] == 100
    assert first["finished_at"] >= first["started_at"]
    assert str(trials["started_at"].dt.tz) == "UTC"
    assert trials.iloc[1]["error"] == "loss is nan" and math.isnan(trials.iloc[1]["best_valid"])
    epochs = data.epochs
    assert list(epochs.columns) == ["study", "slot", "trial_number", "variant", "epoch", "train_loss",
                                    "valid_metric", "test_metric", "seconds"]
    assert list(zip(epochs["slot"], epochs["epoch"], strict=True)) == [(0, 1), (0, 2), (1, 1)]
    assert epochs.iloc[1]["valid_metric"] == pytest.approx(1.5)
    assert epochs.iloc[2][["train_loss", "valid_metric", "test_metric"]].isna().all()  # non-finite -> NULL

    listed = results.list_studies(url)
    assert listed.to_dict("records")[0] | {"created_at": None} == {
        "study": "demo", "dataset": "jsb", "created_at": None, "trials": 3, "waiting": 1, "running": 0,
        "complete": 1, "failed": 0, "diverged": 1,
    }
    assert list(results.trials_dataframe(url, "demo", state="complete")["slot"]) == [0]


def test_rerun_overwrites_the_slot_instead_of_duplicating(url: str) -> None:
    _design(url, n=1)
    results.record_trial_started(url, "demo", 0, trial_number=3, host="a", device="cpu")
    for epoch in (1, 2, 3):
        results.record_epoch(url, "demo", 0, epoch, 1.0, 1.0, 1.0, 0.1, trial_number=3)
    # the worker died; the slot is requeued and re-run as a new Optuna trial
    results.record_trial_requeued(url, "demo", 0)
    assert results.load_study(url, "demo").trials.iloc[0]["state"] == "waiting"
    results.record_trial_started(url, "demo", 0, trial_number=9, host="b", device="cpu")
    results.record_trial_started(url, "demo", 0, trial_number=9, host="b", device="cpu")  # a retried call
    results.record_epoch(url, "demo", 0, 1, 0.5, 0.6, 0.7, 0.1, trial_number=9)
    # a zombie of the first attempt writes late: ignored
    assert results.record_epoch(url, "demo", 0, 4, 9.0, 9.0, 9.0, 0.1, trial_number=3) is False
    assert results.record_trial_finished(url, "demo", 0, "failed", {}, trial_number=3) is False
    assert results.record_trial_finished(url, "demo", 0, "complete", {"best_valid": 0.6}, trial_number=9)

    data = results.load_study(url, "demo")
    assert len(data.trials) == 1
    row = data.trials.iloc[0]
    assert (row["trial_number"], row["attempts"], row["host"], row["state"]) == (9, 2, "b", "complete")
    assert list(data.epochs["epoch"]) == [1] and data.epochs.iloc[0]["train_loss"] == 0.5


def test_writes_are_idempotent(url: str) -> None:
    _design(url)
    _design(url)  # same study, same designed trials: nothing changes, nothing duplicates
    results.record_trial_started(url, "demo", 2, trial_number=1, host="h", device="cpu")
    results.record_epoch(url, "demo", 2, 1, 1.0, 2.0, 3.0, 0.1)
    results.record_epoch(url, "demo", 2, 1, 1.0, 2.0, 3.0, 0.1)
    results.record_trial_finished(url, "demo", 2, "complete", {"best_valid": 2.0})
    results.record_trial_finished(url, "demo", 2, "complete", {"best_valid": 2.0})
    data = results.load_study(url, "demo")
    assert len(data.trials) == 3 and len(data.epochs) == 1
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM odyssey_params").scalar() == 6


def test_bad_writes_raise_clear_errors(url: str) -> None:
    with pytest.raises(OdysseyError, match="study 'nope' not found"):
        results.record_designed_trials(url, "nope", [{"slot": 0, "variant": "V"}])
    _design(url, n=1)
    with pytest.raises(OdysseyError, match="different spec"):
        results.register_study(url, "demo", {**SPEC, "dataset": "ptb"})
    with pytest.raises(OdysseyError, match="no designed trial in slot 5"):
        results.record_trial_started(url, "demo", 5, trial_number=1, host="h", device="cpu")
    # A caller's bug, not a user's mistake: a built-in error (and a traceback), never an OdysseyError.
    with pytest.raises(ValueError, match="state must be one of") as info:
        results.record_trial_finished(url, "demo", 0, "exploded", {})
    assert not isinstance(info.value, OdysseyError)
    with pytest.raises(ValueError, match="slot 0 appears twice") as info:
        results.record_designed_trials(url, "demo", [{"slot": 0, "variant": "V"}] * 2)
    assert not isinstance(info.value, OdysseyError)
    results.register_study(url, "demo", {**SPEC, "dataset": "ptb"}, replace=True)
    assert results.load_study(url, "demo").spec["dataset"] == "ptb"


def test_undesigned_slot_is_created_when_described(url: str) -> None:
    results.register_study(url, "free", SPEC)
    results.record_trial_started(url, "free", 4, trial_number=0, host="h", device="cpu", variant="GRU",
                                 params={"learning_rate": 0.01}, seed=3)
    trials = results.load_study(url, "free").trials
    assert (trials.iloc[0]["variant"], trials.iloc[0]["learning_rate"], trials.iloc[0]["state"]) == (
        "GRU", 0.01, "running")


def test_unknown_study_and_delete(url: str) -> None:
    with pytest.raises(OdysseyError) as info:
        results.load_study(url, "ghost")
    assert str(info.value) == f"study 'ghost' not found in {mask_url(resolve_url(url))}"
    assert PASSWORD not in str(info.value)
    _design(url)
    _design(url, study="other")
    results.record_trial_started(url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_epoch(url, "demo", 0, 1, 1.0, 1.0, 1.0, 0.1)
    assert results.delete_study_results(url, "demo") is True
    assert results.delete_study_results(url, "demo") is False
    assert list(results.list_studies(url)["study"]) == ["other"]
    assert len(results.load_study(url, "other").trials) == 3


def test_reading_a_missing_sqlite_file_creates_nothing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    assert results.list_studies(url).empty
    with pytest.raises(OdysseyError, match="not found"):
        results.load_study(url, "x")
    assert not (tmp_path / "none.db").exists()



def test_concurrent_sqlite_writers_neither_lose_rows_nor_stall(sqlite_url: str, caplog) -> None:
    _design(sqlite_url, n=4)
    for slot in range(4):
        results.record_trial_started(sqlite_url, "demo", slot, trial_number=slot, host="h", device="cpu")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(slot: int) -> None:
        barrier.wait()
        try:
            for epoch in range(1, 16):
                results.record_epoch(sqlite_url, "demo", slot, epoch, 1.0, 1.0, 1.0, 0.0, trial_number=slot)
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level("WARNING", logger="odyssey.storage"):
        threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert len(results.load_study(sqlite_url, "demo").epochs) == 60
    # write transactions take the lock up front, so SQLite's busy wait serialises them: no retries needed
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_stored_error_text_never_holds_the_password(pg_url: str) -> None:
    _design(pg_url, n=1)
    results.record_trial_started(pg_url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_trial_finished(pg_url, "demo", 0, "failed",
                                  {"error": f"boom\nconnecting with password={PASSWORD} to {pg_url}"})
    error = results.load_study(pg_url, "demo").trials.iloc[0]["error"]
    assert PASSWORD not in error and "\n" not in error and error.startswith("boom connecting")


def test_password_from_pgpassword_works_and_is_scrubbed(pg_server, monkeypatch) -> None:
    # Compose files keep the password out of the URL and hand it to libpq as $PGPASSWORD.
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    bare = pg_server.url.replace(f":{PASSWORD}@", "@")
    check_connection(bare)
    exc = sa.exc.OperationalError("connect", {}, Exception(f"auth with {PASSWORD} failed"))
    assert PASSWORD not in str(translate(exc, bare))


def _claim_all(url: str, study_name: str, barrier, rounds: int) -> list[int]:
    import optuna
    from optuna.trial import TrialState

    storage = optuna_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    won = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[:rounds]:
        barrier.wait()
        try:
            if storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                won.append(trial.number)
        except Exception:  # another process won and finished the state change first
            pass
    return won


@pytest.mark.parametrize("url", ["sqlite", "postgresql"], indirect=True)
def test_a_waiting_trial_is_claimed_by_exactly_one_process(url: str) -> None:
    """Workers claim trials by moving them WAITING -> RUNNING: two must never both win one trial."""
    import concurrent.futures
    import multiprocessing

    import optuna

    rounds, procs = 15, 3
    study = optuna.create_study(study_name="claims", storage=optuna_storage(url))
    for i in range(rounds):
        study.enqueue_trial({"x": float(i)})
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(procs)
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
        futures = [pool.submit(_claim_all, url, "claims", barrier, rounds) for _ in range(procs)]
        winners = [n for f in futures for n in f.result(timeout=120)]
    assert sorted(winners) == list(range(rounds))


def test_a_password_in_the_query_string_is_masked_too() -> None:
    url = "postgresql+psycopg://odyssey@db.example/odyssey?password=Qs-secret-7&sslmode=require"
    assert "Qs-secret-7" not in mask_url(url)
    assert "sslmode=require" in mask_url(url)
    exc = translate(RuntimeError(f"connection failed for {url}"), url)
    assert "Qs-secret-7" not in str(exc)


def test_load_study_without_epochs_skips_only_the_epoch_rows(sqlite_url: str) -> None:
    _design(sqlite_url, n=1)
    results.record_trial_started(sqlite_url, "demo", 0, trial_number=0, host="h", device="cpu")
    results.record_epoch(sqlite_url, "demo", 0, 1, 1.5, 2.0, 2.1, 0.1)
    full = results.load_study(sqlite_url, "demo")
    light = results.load_study(sqlite_url, "demo", with_epochs=False)
    assert len(full.epochs) == 1 and light.epochs.empty
    assert light.trials.equals(full.trials)


def test_a_late_requeue_of_an_old_attempt_leaves_the_new_attempt_alone(sqlite_url: str) -> None:
    _design(sqlite_url, n=1)
    results.record_trial_started(sqlite_url, "demo", 0, trial_number=4, host="a", device="cpu")
    results.record_trial_started(sqlite_url, "demo", 0, trial_number=5, host="b", device="cpu")
    results.record_trial_requeued(sqlite_url, "demo", 0, trial_number=4)  # arrives after attempt 5 began
    row = results.load_study(sqlite_url, "demo").trials.iloc[0]
    assert (row["state"], row["host"]) == ("running", "b")
    results.record_trial_requeued(sqlite_url, "demo", 0, trial_number=5)
    assert results.load_study(sqlite_url, "demo").trials.iloc[0]["state"] == "waiting"
