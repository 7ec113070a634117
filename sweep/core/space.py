"""The search-space parameter: a range on a scale (or a fixed value) and the transforms of its scale.

One definition for both users: the study spec (`sweep.spec`: `[space.NAME]` tables, the designs draw
points with `Param.from_unit`) and the analysis (`analysis.space`: fANOVA, marginals and heatmaps work on
the *sampled* scale, `Param.to_sampled`). A scale says on which axis the values are uniform:

- ``linear``: x itself;
- ``log``: log10(x) (x > 0), e.g. the learning rate;
- ``log1m``: log10(1 - x) (x < 1), e.g. the momentum, so that 0.9, 0.99, 0.999 are evenly spaced.

Torch-free; numpy for the array transforms (the designs and the analysis both map whole columns).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sweep.core.errors import ConfigError

SCALES: tuple[str, ...] = ("linear", "log", "log1m")


class SpecFieldError(ConfigError):
    """A validation problem with one named sub-field (so the message can say `space.x.low must ...`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


def to_sampled(scale: str, values: Any) -> np.ndarray:
    """Real values (array-like, any shape) on the sampled axis of `scale`: x, log10(x) or log10(1 - x).
    Values outside the scale's domain give -inf or NaN (no warning): callers check finiteness."""
    x = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "log":
            return np.log10(x)
        if scale == "log1m":
            return np.log10(1.0 - x)
    return x


def to_real(scale: str, values: Any) -> np.ndarray:
    """The inverse of `to_sampled`: points of the sampled axis (array-like) as real values."""
    x = np.asarray(values, dtype=float)
    if scale == "log":
        return 10.0**x
    if scale == "log1m":
        return 1.0 - 10.0**x
    return x


class Param(BaseModel):
    """One search-space entry: a range `[low, high]` on a scale, or a fixed `value`.

    Stored as `{type, scale, low, high, value}` in the normalised study spec (`name`, the entry's key in the
    space table, is filled in by its owner and never stored). Invalid combinations raise `SpecFieldError`
    naming the sub-field (pydantic wraps it; `sweep.spec` turns it into a one-line message).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float", "int"] = "float"
    scale: Literal["linear", "log", "log1m"] = "linear"
    low: float | None = None
    high: float | None = None
    value: float | None = None
    name: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _check_range(self) -> Param:
        if self.value is not None:
            if self.low is not None or self.high is not None:
                raise SpecFieldError("value", "cannot be combined with low/high")
            if self.type == "int" and self.value != int(self.value):
                raise SpecFieldError("value", "must be a whole number for an int parameter")
            return self
        if self.low is None:
            raise SpecFieldError("low", "is required (or give a fixed `value`)")
        if self.high is None:
            raise SpecFieldError("high", "is required (or give a fixed `value`)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SpecFieldError("low", "and high must be finite")
        if self.high <= self.low:
            raise SpecFieldError("high", f"must be > low ({self.low:g})")
        if self.scale == "log" and self.low <= 0:
            raise SpecFieldError("low", "must be > 0 for a log scale")
        if self.scale == "log1m":
            if self.type == "int":
                raise SpecFieldError("scale", "log1m is only for float parameters")
            if self.high >= 1:
                raise SpecFieldError("high", "must be < 1 for a log1m scale (log10(1 - x))")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise SpecFieldError("low", "and high must be whole numbers for an int parameter")
        return self

    @property
    def fixed(self) -> bool:
        return self.value is not None

    def to_sampled(self, values: Any) -> np.ndarray:
        """Real values on this parameter's sampled axis (see `to_sampled`)."""
        return to_sampled(self.scale, values)

    def to_real(self, values: Any) -> np.ndarray:
        """Points of the sampled axis as real values (see `to_real`)."""
        return to_real(self.scale, values)

    @property
    def bounds(self) -> tuple[float, float]:
        """`[low, high]` on the sampled axis, low first (log1m flips the order). A fixed parameter has none
        (ValueError)."""
        if self.low is None or self.high is None:
            raise ValueError(f"parameter {self.name or '?'} is fixed: it has no bounds")
        a, b = self.to_sampled([self.low, self.high])
        return (float(min(a, b)), float(max(a, b)))

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Points of [0, 1) mapped onto `[low, high]`, uniform on the sampled axis (an int parameter's
        values rounded to whole numbers)."""
        lo, hi = self.bounds
        assert self.low is not None and self.high is not None  # bounds refused a fixed parameter
        x = np.clip(self.to_real(lo + u * (hi - lo)), self.low, self.high)
        if self.type == "int":
            x = np.clip(np.rint(x), self.low, self.high)
        return x

    @property
    def axis_label(self) -> str:
        """How the sampled axis is labelled: `log10(lr)`, `log10(1 - momentum)`, or the name itself."""
        if self.scale == "log":
            return f"log10({self.name})"
        if self.scale == "log1m":
            return f"log10(1 - {self.name})"
        return self.name


def default_space() -> dict[str, Param]:
    """The search space of Greff et al. (Section 4: learning rate log-uniform in [1e-6, 1e-2], hidden size
    log-uniform in [20, 200], momentum 1 - log-uniform in [0.01, 1], input noise in [0, 1]) plus the
    forget-gate bias in [0, 5]: a spec's space when it names none, and the one its entries override."""
    return {
        "learning_rate": Param(name="learning_rate", type="float", scale="log", low=1e-6, high=1e-2),
        "hidden_size": Param(name="hidden_size", type="int", scale="log", low=20, high=200),
        "momentum": Param(name="momentum", type="float", scale="log1m", low=0.0, high=0.99),
        "input_noise": Param(name="input_noise", type="float", scale="linear", low=0.0, high=1.0),
        "forget_bias": Param(name="forget_bias", type="float", scale="linear", low=0.0, high=5.0),
    }
