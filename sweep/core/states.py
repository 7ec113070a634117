"""The states of a designed trial's results row (`odyssey_trials.state`), defined once.

The stored strings are part of the results schema (a CHECK constraint allows exactly these, and users' SQL
names them), so the values never change. Iterating `ResultState` gives the display order, the order of a
trial's life: every table of counts per state (`odyssey study status`, `odyssey study list`, the report's
"Trials by state") has its columns in this order.

Named `ResultState`, not `TrialState`, so as not to be mistaken for `optuna.trial.TrialState`: a designed
slot's results row has one of these states while the Optuna trials that run it have Optuna's own. How they
map (what `sweep.worker` and `sweep.study` write):

==========  ==============================================================================================
waiting     Optuna WAITING: enqueued by `odyssey study create`, or re-queued as a WAITING copy after its
            running attempt was lost (that attempt becomes FAIL in Optuna, not final).
running     Optuna RUNNING: claimed by a worker, which keeps its heartbeat.
complete    Optuna COMPLETE, with the objective's value.
failed      Optuna FAIL marked final (the objective raised, or the slot was lost too many times): the
            slot's outcome, never re-run.
diverged    Optuna COMPLETE with a finite value and the user attr ``odyssey_diverged``, or FAIL marked final
            when the run left no finite value. The results row also sets its ``diverged`` flag.
==========  ==============================================================================================

Optuna's PRUNED is never used: a sweep trains every designed trial to its own stopping rule.
"""

from __future__ import annotations

from enum import StrEnum


class ResultState(StrEnum):
    """The state of a results row; a `str`, so it compares, hashes and stores as its value."""

    WAITING = "waiting"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    DIVERGED = "diverged"


#: Not ended yet: the slot will still train (or is training).
PENDING_STATES: tuple[ResultState, ...] = (ResultState.WAITING, ResultState.RUNNING)
#: The trial has ended: its outcome is recorded, and it runs again only if re-queued.
ENDED_STATES: tuple[ResultState, ...] = (ResultState.COMPLETE, ResultState.FAILED, ResultState.DIVERGED)
#: The trial trained to its end and has a score for the analysis (a diverged one's score is capped by the
#: diverged rule of `analysis.space`); a failed one has none.
SCORED_STATES: tuple[ResultState, ...] = (ResultState.COMPLETE, ResultState.DIVERGED)

__all__ = ["ENDED_STATES", "PENDING_STATES", "SCORED_STATES", "ResultState"]
