"""A synthetic study with known structure, for tests, benchmarks and trying the report without a sweep.

The score depends strongly on log10(learning rate) (a parabola with its best near 1e-3, lower for larger
networks: the learning rate x hidden size interaction), weakly on log10(hidden size), hardly on momentum;
each variant adds a fixed offset (``OFFSETS``). Validation and test scores carry independent noise, so
ranking trials by one or the other picks different best trials. Trials with a
learning rate near the top of the range diverge half of the time. The design is paired, as the sweep's
random design is: every variant is trained on the same hyperparameter points.

The result is a `storage.results.StudyData`, the shape `load_study` returns (the same trial and epoch
columns), so whatever analyses a stored study analyses a synthetic one. Variants are those of the registry
(`sweep.core.variants`), which also gives their parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from storage.results import EPOCH_COLUMNS, TRIAL_HEAD, TRIAL_TAIL, StudyData
from sweep.core.space import Param, default_space
from sweep.core.states import SCORED_STATES, ResultState
from sweep.core.variants import resolve

#: Each variant's score offset (lower is better): the known answer the analysis should find.
OFFSETS = {"V": 0.0, "NFG": 1.5, "NOAF": 1.0, "CIFG": 0.02, "NP": 0.0, "NIG": 0.3, "NOG": 0.5, "NIAF": 0.4,
           "FGR": 0.05, "GRU": 0.1, "PLSTM": 0.2}  # fmt: skip


def default_spec(name: str, variants: Sequence[str], trials_per_variant: int) -> dict:
    """A stored-spec dict like the sweep writes (momentum on log1m, forget bias held fixed)."""
    return {
        "name": name,
        "dataset": {"name": "synthetic"},
        "variants": list(variants),
        # the paper's space, the forget-gate bias held at 1 (as the synthetic scores ignore it)
        "space": {**{key: param.model_dump() for key, param in default_space().items()},
                  "forget_bias": Param(type="float", value=1.0).model_dump()},
        "trials_per_variant": trials_per_variant,
        "design": "random",
        "seed": 0,
        "training": {"max_epochs": 20, "patience": 5, "optimizer": "sgd"},
        "metric": "nll",
        "direction": "minimize",
    }


def n_params(variant: str, hidden: np.ndarray, inputs: int = 88) -> np.ndarray:
    """Parameter count of one recurrent layer of ``variant`` (`Variant.num_parameters`, for ``inputs``
    inputs and each hidden size) plus a linear read-out of ``inputs`` outputs. An unknown variant raises
    OdysseyError."""
    layer = resolve(variant).num_parameters
    cell = np.array([layer(inputs, int(h)) for h in np.asarray(hidden).ravel()], dtype=np.int64)
    return cell.reshape(np.shape(hidden)) + hidden * inputs + inputs


def synthetic_study(
    variants: Sequence[str] = ("V", "NFG", "CIFG"),
    trials_per_variant: int = 60,
    seed: int = 0,
    max_epochs: int = 20,
    unfinished: float = 0.0,
    name: str = "synthetic",
) -> StudyData:
    """Generate a study; ``unfinished`` is the fraction of trials still running or waiting."""
    rng = np.random.default_rng(seed)
    n = trials_per_variant
    u_lr = rng.uniform(-6, -2, n)
    u_h = rng.uniform(np.log10(20), np.log10(200), n)
    u_m = rng.uniform(-2, 0, n)
    noise = rng.uniform(0, 1, n)
    hidden = np.rint(10**u_h).astype(int)
    rows, epoch_frames = [], []
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    for v_index, variant in enumerate(variants):
        score = (
            3.0 + 0.8 * (u_lr + 3.0 + 0.6 * (u_h - 1.8)) ** 2 - 0.6 * (u_h - 1.3) + 0.05 * u_m + 0.1 * noise
            + OFFSETS.get(variant, 0.0) + rng.normal(0, 0.1, n)
        )  # fmt: skip
        valid = score - 0.05 + rng.normal(0, 0.05, n)
        test = score + rng.normal(0, 0.05, n)
        diverged = (u_lr > -2.4) & (rng.random(n) < 0.5)
        epochs = rng.integers(5, max_epochs + 1, n)
        seconds = epochs * (0.5 + hidden / 50.0) * rng.uniform(0.9, 1.1, n)
        state = np.where(diverged, ResultState.DIVERGED.value, ResultState.COMPLETE.value).astype(object)
        if unfinished:
            pending = rng.random(n) < unfinished
            state[pending] = np.where(rng.random(pending.sum()) < 0.5, ResultState.RUNNING.value,
                                      ResultState.WAITING.value)
        done = np.isin(state, [s.value for s in SCORED_STATES])
        unscored = diverged | ~done
        best, best_valid = np.where(unscored, np.nan, test), np.where(unscored, np.nan, valid)
        params = n_params(variant, hidden)
        for i in range(n):
            number = v_index * n + i
            began = start + pd.Timedelta(seconds=float(number * 7))
            rows.append(
                {
                    "study": name, "slot": number, "trial_number": number, "variant": variant,
                    "dataset": "synthetic",
                    "state": state[i], "diverged": bool(diverged[i] and done[i]),
                    "learning_rate": 10 ** u_lr[i], "hidden_size": int(hidden[i]),
                    "momentum": 1 - 10 ** u_m[i], "input_noise": noise[i], "forget_bias": 1.0,
                    "best_valid": best_valid[i], "best_test": best[i], "final_valid": best_valid[i] + 0.01,
                    "final_test": best[i] + 0.02, "best_epoch": int(epochs[i]) - 1 if done[i] else None,
                    "epochs": int(epochs[i]) if done[i] else None, "seconds": seconds[i] if done[i] else None,
                    "n_params": int(params[i]), "host": "synthetic", "device": "cpu", "seed": int(seed + i),
                    "started_at": began if state[i] != ResultState.WAITING else pd.NaT,
                    "finished_at": began + pd.Timedelta(seconds=float(seconds[i])) if done[i] else pd.NaT,
                    "attempts": int(state[i] != ResultState.WAITING), "error": None,
                }
            )  # fmt: skip
        # Validation curves: decay towards the trial's score; diverged ones blow up at the end.
        ran = np.flatnonzero(state != ResultState.WAITING.value)
        counts = epochs[ran]
        trial = np.repeat(ran, counts)
        epoch = np.concatenate([np.arange(1, c + 1) for c in counts]) if len(ran) else np.array([], int)
        valid = score[trial] + 3.0 * np.exp(-epoch / 3.0) + rng.normal(0, 0.02, epoch.size)
        blown = diverged[trial] & (epoch == counts.repeat(counts) if len(ran) else False)
        valid = np.where(blown, np.inf, valid)
        epoch_frames.append(
            pd.DataFrame(
                {
                    "study": name, "slot": v_index * n + trial, "trial_number": v_index * n + trial,
                    "variant": variant, "epoch": epoch,
                    "train_loss": valid - 0.1, "valid_metric": valid, "test_metric": valid + 0.02,
                    "seconds": seconds[trial] / np.maximum(epochs[trial], 1),
                }
            )  # fmt: skip
        )
    spec = default_spec(name, variants, trials_per_variant)
    hyper = list(spec["space"])
    # The column order of `load_study`'s frames.
    trials = pd.DataFrame(rows, columns=[*TRIAL_HEAD, *hyper, *TRIAL_TAIL])
    epochs_frame = pd.concat(epoch_frames, ignore_index=True) if epoch_frames else pd.DataFrame()
    epochs_frame = epochs_frame.reindex(columns=EPOCH_COLUMNS)
    return StudyData(spec, trials, epochs_frame, name=name, param_names=hyper)
