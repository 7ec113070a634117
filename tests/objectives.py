"""Objectives for tests that spawn workers (importable as `tests.objectives:NAME`)."""

from __future__ import annotations

from sweep.objective import Outcome, TrialContext, TrialInterrupted, train_objective


def slow_train_objective_for_tests(ctx: TrialContext) -> Outcome:
    """The real training objective, after a 1 s pause, so an interruption lands mid-trial."""
    if ctx.stop.wait(1.0):
        raise TrialInterrupted()
    return train_objective(ctx)


def crash_once_objective_for_tests(ctx: TrialContext) -> Outcome:
    """The first worker process to run a trial dies at once (as on a segfault); the others sleep 0.5 s."""
    import os
    from pathlib import Path

    from sweep.objective import make_sleep_objective

    marker = Path(os.environ["ODYSSEY_TEST_CRASH_MARKER"])
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return make_sleep_objective(0.5)(ctx)
    os._exit(3)


def report_after_pause_objective_for_tests(ctx: TrialContext) -> Outcome:
    """After 1.5 s, one epoch recorded (its row, then its intermediate value to Optuna, as training does),
    then the noop result."""
    from sweep.objective import noop_objective

    if ctx.stop.wait(1.5):
        raise TrialInterrupted()
    ctx.record_epoch(1, valid_metric=0.5)
    return noop_objective(ctx)


def curve(params: dict[str, float | int], epoch: int) -> float:
    """The validation metric of `curve_objective_for_tests` after `epoch` epochs: falls as 1/epoch."""
    return (1.0 + float(params["learning_rate"]) * 10) / epoch


def curve_objective_for_tests(ctx: TrialContext) -> Outcome:
    """A custom objective as a user would write one (no storage import): three epochs recorded through the
    context, the last one's metric as the value."""
    for epoch in (1, 2, 3):
        ctx.check_stop()
        valid = curve(ctx.params, epoch)
        ctx.record_epoch(epoch, train_loss=2 * valid, valid_metric=valid, test_metric=valid + 0.1,
                         seconds=0.25)
    best = curve(ctx.params, 3)
    return Outcome("complete", best, {"best_valid": best, "best_test": best + 0.1, "best_epoch": 3,
                                      "epochs": 3, "seconds": 0.75})


def float_objective_for_tests(ctx: TrialContext) -> Outcome:
    """Returns a bare number (as an Optuna objective would), not an Outcome."""
    return 0.5  # type: ignore[return-value]


def done_state_objective_for_tests(ctx: TrialContext) -> Outcome:
    """Returns an Outcome with a state that is not a scored one."""
    return Outcome("done", 0.5, {})  # type: ignore[arg-type]


def failed_state_objective_for_tests(ctx: TrialContext) -> Outcome:
    """Returns an Outcome that says `failed` with a value (a failed trial raises instead)."""
    return Outcome("failed", 1.0, {})  # type: ignore[arg-type]


def text_result_objective_for_tests(ctx: TrialContext) -> Outcome:
    """Returns an Outcome whose result has text where a number goes."""
    return Outcome("complete", 0.5, {"best_valid": "n/a"})
