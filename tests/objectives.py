"""Objectives for tests that spawn workers (importable as `tests.objectives:NAME`)."""

from __future__ import annotations

from sweep.objective import Outcome, TrialContext, TrialInterrupted, train_objective


def slow_train_objective_for_tests(ctx: TrialContext) -> Outcome:
    """The real training objective, after a 1 s pause, so an interruption lands mid-trial."""
    if ctx.stop.wait(1.0):
        raise TrialInterrupted()
    return train_objective(ctx)
