"""Study specs: a TOML file naming the dataset, variants, search space, design and training budget.

`load_spec(path)` parses the file with tomllib and validates it with pydantic; every problem becomes one
`OdysseyError` line naming the file and the field (an unknown key with the nearest known one). The pieces
come from their registries, all torch-free: the search-space `Param` and its scales (`sweep.core.space`),
the `[training]` settings (`sweep.core.settings.TrainingSettings`, the model `odyssey train`'s options are
made from), the variants (`sweep.core.variants`) and the datasets with their metrics (`sweep.data.registry`).
Every fixed value and range end of the space also goes through the training rules
(`sweep.core.settings.setting_problem`), so a spec that could not train is refused before any trial is queued.
`StudySpec.model_dump(mode="json")` is the normalised form stored with the study (what `analysis` reads).
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sweep.core.errors import ConfigError, OdysseyError
from sweep.core.settings import SEARCHABLE, TrainingSettings, describe_error, setting_problem
from sweep.core.space import Param, SpecFieldError, default_space
from sweep.core.text import did_you_mean
from sweep.core.variants import GREFF_VARIANTS, VARIANTS, custom_variant
from sweep.data.registry import DATASETS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Model):
    """A registered dataset's name (sweep.data.registry) and the options `sweep.data.base.load_dataset`
    takes (e.g. `path`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        return name

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StudySpec(_Model):
    """A whole study: validated, normalised, and stored with the Optuna study."""

    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetSpec
    # user-named LSTM variants: name -> switches (sweep.core.variants.LSTMSpec; docs/variants.md)
    custom_variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # None (left out): Greff's nine and the custom variants
    variants: tuple[str, ...] = Field(default=None, validate_default=True)
    space: dict[str, Param] = Field(default_factory=default_space)
    trials_per_variant: int = Field(ge=1, le=100_000)
    design: Literal["random", "sobol", "tpe"] = "random"
    seed: int = 0
    training: TrainingSettings = TrainingSettings()
    metric: str = ""
    direction: Literal["minimize", "maximize"] = "minimize"

    @field_validator("custom_variants", mode="before")
    @classmethod
    def _custom_variants(cls, value: Any) -> Any:
        # Each one is checked against the switch rules and stored with every switch spelled out.
        if not isinstance(value, dict):
            raise ValueError("must be a table of variant names to switch tables")
        checked = {}
        for name, switches in value.items():
            if not isinstance(switches, dict):
                raise ValueError(f"{name} must be a table of switches")
            try:
                checked[name] = custom_variant(name, switches).lstm.switches()  # type: ignore[union-attr]
            except OdysseyError as exc:
                raise ValueError(str(exc)) from None
        return checked

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, value: Any, info: ValidationInfo) -> Any:
        custom = tuple(info.data.get("custom_variants") or ())
        known = (*VARIANTS, *custom)
        if value is None or value == "greff":
            return (*GREFF_VARIANTS, *custom)
        if value == "all":
            return known
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError('must be a list of variant names, "greff" or "all"')
        if not value:
            raise ValueError('must name at least one variant (leave it out for "greff", the default, '
                             'or use "all")')
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown variant {unknown[0]!r} (known: {', '.join(known)})")
        if len(set(value)) != len(value):
            raise ValueError("lists a variant twice")
        unused = [v for v in custom if v not in value]
        if unused:
            raise ValueError(f"does not list the custom variant {unused[0]!r} (list it or remove it)")
        return tuple(value)

    @field_validator("space", mode="before")
    @classmethod
    def _merge_defaults(cls, value: Any) -> Any:
        # A spec only names what it changes; the rest of the paper's space stays.
        if not isinstance(value, dict):
            return value
        unknown = [k for k in value if k not in SEARCHABLE]
        if unknown:
            raise ValueError(f"unknown hyperparameter {unknown[0]!r}{did_you_mean(unknown[0], SEARCHABLE)} "
                             f"(known: {', '.join(SEARCHABLE)})")
        merged: dict[str, Any] = {k: p.model_dump() for k, p in default_space().items()}
        for key, entry in value.items():
            if isinstance(entry, dict):
                if "name" in entry:  # the table's key names the parameter
                    raise SpecFieldError(f"space.{key}.name", "is not a known field")
                # Fields not given keep the default's (e.g. momentum's log1m scale); a value fixes it.
                base = merged.get(key, {"type": SEARCHABLE[key]})
                base = {"type": base["type"]} if "value" in entry else {**base, "value": None}
                entry = {**base, **entry}
            merged[key] = entry
        return {k: {**entry, "name": k} if isinstance(entry, dict) else entry for k, entry in merged.items()}

    @model_validator(mode="after")
    def _normalise(self, info: ValidationInfo) -> StudySpec:
        for key, param in self.space.items():
            if param.type != SEARCHABLE[key]:
                raise SpecFieldError(f"space.{key}.type", f"must be {SEARCHABLE[key]!r}")
        # A stored spec was checked when the study was created (and the rules may since have grown).
        fresh = not (info.context or {}).get("stored")
        if fresh:
            self._check_space_rules()
        dataset = DATASETS[self.dataset.name]
        if not self.metric:
            object.__setattr__(self, "metric", dataset.metric)
        if fresh and self.metric not in dataset.metrics:
            known = ", ".join(sorted(dataset.metrics))
            raise SpecFieldError("metric", f"{self.metric!r} is not one of the {dataset.name} dataset's "
                                           f"({known})")
        if fresh and self.direction == "maximize":
            # Every registered metric is a loss (sweep.data.registry): maximising it would make Optuna, the
            # samplers and the report rank the worst trials best while early stopping still minimises.
            raise SpecFieldError("direction", f"'maximize' contradicts the metric {self.metric!r}: every "
                                              f"metric of the {dataset.name} dataset is lower-is-better")
        if dataset.path_required and "path" not in self.dataset.options:
            raise SpecFieldError("dataset.path", f"is required for the {self.dataset.name!r} dataset")
        return self

    def _check_space_rules(self) -> None:
        """Every fixed value and range end of the space through the training rules (`[training]` itself is
        a `TrainingSettings`, checked by its own fields).

        The rules are intervals, so a range whose two ends pass has no failing point inside (the designs
        only map into [low, high])."""
        for key, param in self.space.items():
            for end in ("value", "low", "high"):
                value = getattr(param, end)
                if value is None:
                    continue
                problem = setting_problem(key, int(value) if param.type == "int" else value)
                if problem is not None:
                    raise SpecFieldError(f"space.{key}.{end}", problem)

    @property
    def searched(self) -> list[str]:
        """Names of the searched (not fixed) parameters, in a stable order."""
        return sorted(k for k, p in self.space.items() if not p.fixed)

    @property
    def fixed(self) -> dict[str, float]:
        return {k: p.value for k, p in self.space.items() if p.value is not None}

    def normalised(self) -> dict[str, Any]:
        """The JSON-able dict stored with the study."""
        return self.model_dump(mode="json")


def _known_fields(parent: tuple[Any, ...]) -> list[str]:
    """The field names a spec allows at ``parent`` (a pydantic error location without its last part)."""
    model: type[BaseModel] = StudySpec
    parts = list(parent)
    while parts:
        part = parts.pop(0)
        if model is StudySpec and part == "space":
            model = Param
            parts = parts[1:]  # skip the hyperparameter's name
            if not parts:
                return [name for name in Param.model_fields if name != "name"]
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # An unknown key first: a misspelt required key also reports the real one as missing.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = ".".join(str(p) for p in err["loc"])
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, SpecFieldError):
        # The root model's own checks name full paths; a Param's name a sub-field of its location.
        field = original.field if original.field.count(".") or not loc else f"{loc}.{original.field}"
        return f"spec {source}: {field} {original.message}"
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        if tuple(err["loc"][:-1]) == ("training",) and key in SEARCHABLE:
            # a hyperparameter put among the shared settings: say where it goes
            return (f"spec {source}: {loc} is a hyperparameter: set it in [space.{key}] "
                    f"(value = ... to fix it, or low/high to search it)")
        hint = did_you_mean(key, _known_fields(tuple(err["loc"][:-1])))
        return f"spec {source}: {loc} is not a known field{hint}"
    if err["type"] == "missing":
        return f"spec {source}: {loc} is required"
    if len(err["loc"]) == 2 and err["loc"][0] == "training":
        return f"spec {source}: {loc} {describe_error(err)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    return f"spec {source}: {loc}: {msg}" if loc else f"spec {source}: {msg}"


def parse_spec(data: dict[str, Any], source: str = "<dict>", stored: bool = False) -> StudySpec:
    """Validate a spec given as a dict; `stored=True` for the normalised form kept with a study."""
    try:
        return StudySpec.model_validate(data, context={"stored": stored})
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a TOML study spec; problems raise a one-line `OdysseyError`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"spec {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec {path}: cannot read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"spec {path}: invalid TOML: {exc}") from None
    return parse_spec(data, str(path))


def design_points(spec: StudySpec) -> list[dict[str, float | int]]:
    """The paired design: `trials_per_variant` points of the searched space (random or scrambled Sobol),
    each with the fixed values added; every variant trains on the same points."""
    names = spec.searched
    n = spec.trials_per_variant
    if spec.design == "sobol" and names:
        from scipy.stats import qmc

        with warnings.catch_warnings():
            # Sobol is balanced only for powers of two; any n still covers the space better than random.
            warnings.simplefilter("ignore", UserWarning)
            unit = qmc.Sobol(d=len(names), scramble=True, seed=spec.seed).random(n)
    else:
        unit = np.random.default_rng(spec.seed).random((n, len(names)))
    columns = {name: spec.space[name].from_unit(unit[:, j]) for j, name in enumerate(names)}
    points: list[dict[str, float | int]] = []
    for i in range(n):
        point: dict[str, float | int] = {}
        for name in names:
            v = columns[name][i]
            point[name] = int(v) if spec.space[name].type == "int" else float(v)
        for name, value in spec.fixed.items():
            point[name] = int(value) if spec.space[name].type == "int" else float(value)
        points.append(point)
    return points
