"""Put trials into the space they were sampled in, and score them under the diverged rule.

fANOVA, marginals and heatmaps work on the *sampled* scale: a log-uniform learning rate is analysed as
``log10(lr)``, a ``log1m`` momentum as ``log10(1 - momentum)``. Parameters the spec holds fixed carry no
information and are dropped (and listed in ``Space.fixed`` so the report can say so).

The diverged rule: a diverged run has no meaningful score (often NaN or inf). Leaving it out would flatter
variants and learning rates that diverge often, so every finished trial whose score is missing, infinite or
worse than the worst finite score of the study's completed trials is *capped* at that worst score. The
number of capped trials is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sweep.core.errors import ConfigError
from sweep.core.states import PENDING_STATES, SCORED_STATES, ResultState

SCALES = ("linear", "log", "log1m")


@dataclass(frozen=True)
class Param:
    """One varied hyperparameter: its type, scale and bounds (real values)."""

    name: str
    type: str
    scale: str
    low: float
    high: float

    def to_sampled(self, values: np.ndarray | pd.Series) -> np.ndarray:
        """Map real values onto the sampled scale (log10 for ``log``, log10(1 - x) for ``log1m``)."""
        x = np.asarray(values, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.scale == "log":
                return np.log10(x)
            if self.scale == "log1m":
                return np.log10(1.0 - x)
        return x

    def to_real(self, values: np.ndarray | pd.Series) -> np.ndarray:
        """Inverse of :meth:`to_sampled`."""
        x = np.asarray(values, dtype=float)
        if self.scale == "log":
            return 10.0**x
        if self.scale == "log1m":
            return 1.0 - 10.0**x
        return x

    @property
    def bounds(self) -> tuple[float, float]:
        """Bounds on the sampled scale, low first (log1m flips the order)."""
        a, b = self.to_sampled(np.array([self.low, self.high]))
        return (float(min(a, b)), float(max(a, b)))

    @property
    def axis_label(self) -> str:
        """How the sampled axis is labelled in figures."""
        if self.scale == "log":
            return f"log10({self.name})"
        if self.scale == "log1m":
            return f"log10(1 - {self.name})"
        return self.name


@dataclass(frozen=True)
class Space:
    """The varied parameters of a study (in spec order) and the fixed ones with their values."""

    params: dict[str, Param]
    fixed: dict[str, object] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.params)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {name: p.bounds for name, p in self.params.items()}


def space_from_spec(spec: Mapping) -> Space:
    """Read the ``space`` table of a stored study spec; a malformed entry raises ``OdysseyError``."""
    raw = spec.get("space")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("study spec has no 'space' table of hyperparameters")
    params: dict[str, Param] = {}
    fixed: dict[str, object] = {}
    for name, entry in raw.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"study spec: space entry {name!r} is not a table")
        if entry.get("value") is not None:
            fixed[name] = entry["value"]
            continue
        scale = entry.get("scale", "linear")
        if scale not in SCALES:
            raise ConfigError(f"study spec: {name!r} has unknown scale {scale!r} (expected one of {SCALES})")
        try:
            low, high = float(entry["low"]), float(entry["high"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"study spec: {name!r} needs numeric 'low' and 'high' or a fixed 'value'"
            ) from None
        if low == high:
            fixed[name] = low
            continue
        param = Param(name, str(entry.get("type", "float")), scale, low, high)
        if not all(math.isfinite(b) for b in param.bounds):
            raise ConfigError(
                f"study spec: bounds of {name!r} [{low}, {high}] are invalid for scale {scale!r}"
            )
        params[name] = param
    return Space(params, fixed)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ran to the end and have a score (`SCORED_STATES`: complete or diverged, or flagged
    diverged); running, waiting and failed ones are dropped."""
    if trials.empty:
        return trials
    mask = trials["state"].isin(SCORED_STATES)
    if "diverged" in trials:
        mask |= trials["diverged"].fillna(False).astype(bool) & ~trials["state"].isin(PENDING_STATES)
    return trials[mask]


def is_diverged(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial diverged (by its flag or its state)."""
    flag = trials["diverged"].fillna(False).astype(bool) if "diverged" in trials else False
    return (trials["state"] == ResultState.DIVERGED) | flag


def cap_diverged(
    trials: pd.DataFrame, target: str, direction: str = "minimize"
) -> tuple[pd.Series, pd.Series]:
    """Apply the diverged rule to the ``target`` column of finished trials.

    Returns ``(score, capped)``: the scores with missing/infinite values and diverged trials' scores worse
    than the worst finite score of completed trials replaced by that worst score, and a boolean mask of the
    trials that were changed.
    """
    if target not in trials:
        raise ConfigError(f"results have no column {target!r} to analyse")
    raw = pd.to_numeric(trials[target], errors="coerce").astype(float)
    finite = np.isfinite(raw)
    diverged = is_diverged(trials)
    reference = raw[finite & ~diverged]
    if reference.empty:
        reference = raw[finite]
    if reference.empty:
        raise ConfigError(f"no finished trial has a finite {target!r}; nothing to analyse")
    worst = reference.max() if direction == "minimize" else reference.min()
    beyond = raw > worst if direction == "minimize" else raw < worst
    capped = ~finite | (diverged & beyond)
    return raw.where(~capped, worst), capped


def to_sampled(trials: pd.DataFrame, space: Space) -> pd.DataFrame:
    """The varied hyperparameters of ``trials`` on their sampled scale (one column each, same index)."""
    missing = [name for name in space.params if name not in trials]
    if missing:
        raise ConfigError(
            f"results lack the hyperparameter column(s) {', '.join(missing)} named in the spec"
        )
    out = {}
    for name, param in space.params.items():
        raw = pd.to_numeric(trials[name], errors="coerce")
        if raw.isna().any():
            raise ConfigError(f"{int(raw.isna().sum())} finished trial(s) have no value for {name!r}")
        values = param.to_sampled(raw)
        if len(values) and not np.all(np.isfinite(values)):
            bad = float(raw[~np.isfinite(values)].iloc[0])
            raise ConfigError(
                f"hyperparameter {name!r} has value {bad!r}, impossible on scale {param.scale!r}"
            )
        out[name] = values
    return pd.DataFrame(out, index=trials.index)


def scored_trials(
    trials: pd.DataFrame, space: Space, target: str, direction: str = "minimize"
) -> pd.DataFrame:
    """Finished trials as analysis input: ``variant``, sampled parameters, ``score`` and ``capped``."""
    done = finished(trials)
    if done.empty:
        return pd.DataFrame(columns=["variant", *space.names, "score", "capped"])
    score, capped = cap_diverged(done, target, direction)
    frame = to_sampled(done, space)
    frame.insert(0, "variant", done["variant"].astype(str))
    frame["score"] = score
    frame["capped"] = capped
    return frame
