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
    """After 1.5 s, one epoch's intermediate value to Optuna (as training does), then the noop result."""
    from sweep.objective import intermediate_reporter, noop_objective

    if ctx.stop.wait(1.5):
        raise TrialInterrupted()
    intermediate_reporter(ctx)(1, 0.5)
    return noop_objective(ctx)
