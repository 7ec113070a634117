"""Put trials into the space they were sampled in, and score them under the diverged rule.

fANOVA, marginals and heatmaps work on the *sampled* scale: a log-uniform learning rate is analysed as
``log10(lr)``, a ``log1m`` momentum as ``log10(1 - momentum)`` (the spec's own ``sweep.core.space.Param``
and its scale transforms, so the analysis reads a space exactly as the designs drew it). Parameters the spec
holds fixed carry no information and are dropped (and listed in ``Space.fixed`` so the report can say so).

The diverged rule: a diverged run has no meaningful score (often NaN or inf). Leaving it out would flatter
variants and learning rates that diverge often, so every finished trial whose score is missing, infinite or
worse than the worst finite score of the study's completed trials is *capped* at that worst score. The
number of capped trials is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import ValidationError

from sweep.core.errors import ConfigError
from sweep.core.space import SCALES, Param
from sweep.core.space import to_sampled as on_sampled_axis
from sweep.core.states import PENDING_STATES, SCORED_STATES, ResultState


@dataclass(frozen=True)
class Space:
    """The varied parameters of a study (in spec order; `sweep.core.space.Param`, the spec's own, with its
    scale transforms) and the fixed ones with their values."""

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
        if not all(np.isfinite(on_sampled_axis(scale, [low, high]))):
            raise ConfigError(
                f"study spec: bounds of {name!r} [{low}, {high}] are invalid for scale {scale!r}"
            )
        try:
            params[name] = Param(name=name, type=entry.get("type", "float"), scale=scale, low=low, high=high)
        except ValidationError as exc:
            raise ConfigError(f"study spec: space entry {name!r}: {_reason(exc)}") from None
    return Space(params, fixed)


def _reason(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    original = (err.get("ctx") or {}).get("error")
    return str(original) if original is not None else f"{'.'.join(map(str, err['loc']))}: {err['msg']}"


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
