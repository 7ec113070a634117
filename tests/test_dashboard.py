"""optuna-dashboard's view of a sweep: learning curves (Optuna intermediate values) and the metric's name,
read back through Optuna's public API."""

from __future__ import annotations

import math

import optuna

from storage import results
from sweep.spec import parse_spec
from sweep.study import create_study
from sweep.worker import Worker, WorkerConfig


def test_every_epoch_reaches_optuna_as_an_intermediate_value_under_the_metrics_name(sqlite_url: str) -> None:
    import torch

    torch.set_num_threads(1)
    spec = {
        "name": "dash", "variants": ["V", "NFG"], "design": "random", "trials_per_variant": 2, "seed": 5,
        "dataset": {"name": "synthetic", "n_train": 16, "n_valid": 8, "n_test": 8},
        "training": {"max_epochs": 3, "patience": 3, "batch_size": 8, "optimizer": "adam"},
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-1}, "hidden_size": {"low": 2, "high": 6}},
    }  # fmt: skip
    parsed = parse_spec(spec)
    create_study(sqlite_url, parsed, check_data=False)
    ran = Worker(WorkerConfig(url=sqlite_url, study="dash", objective="train", heartbeat_interval=1,
                              grace_period=5, poll_interval=0.1)).run()  # fmt: skip
    assert ran == 4
    study = optuna.load_study(study_name="dash", storage=sqlite_url)
    assert study.metric_names == [parsed.metric]
    epochs = results.load_study(sqlite_url, "dash").epochs
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        rows = epochs[epochs["trial_number"] == trial.number].sort_values("epoch")
        assert len(rows) >= 1
        stored = dict(zip(rows["epoch"].astype(int), rows["valid_metric"].astype(float), strict=True))
        assert set(trial.intermediate_values) == set(stored)
        for epoch, value in stored.items():
            assert math.isclose(trial.intermediate_values[epoch], value, rel_tol=1e-9), (trial.number, epoch)
        # The trial's value is its best epoch's validation metric, the lowest point of its curve.
        assert math.isclose(trial.value, min(stored.values()), rel_tol=1e-9)
