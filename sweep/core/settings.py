"""The training settings: one pydantic model with every setting's default, range, choices and help text.

`TrainingSettings` holds what every trial of a study shares (a spec's `[training]` table, composed by
`sweep.spec.StudySpec.training`); `TrainConfig` adds what one run sets (variant, the hyperparameters a space
may search, seed, device) and is what `sweep.training.train` consumes. `odyssey train`'s options are
generated from `TrainConfig`'s fields (`settings()`), and the study spec checks every fixed value and range
end of its search space with `setting_problem`, so one rule set serves the command, the spec and training.

The optimizer and init-scheme registries live here too (their names are choices of the model). Torch-free.
Every invalid value raises `ConfigError` with one line naming the setting ("momentum must be in [0, 1), got
1.5").
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import ErrorDetails

from sweep.core.errors import ConfigError, OdysseyError
from sweep.core.text import did_you_mean
from sweep.core.variants import VARIANTS, resolve

# Optimizer name -> what it does (sweep.training.make_optimizer builds it; docs/training.md).
OPTIMIZERS: dict[str, str] = {
    "sgd": "SGD with Nesterov momentum, step lr * (1 - momentum)",
    "adam": "Adam, step lr, beta1 = momentum",
}
# Init scheme name -> the initial weights it draws (sweep.nn.common.init_matrix; biases start at 0 except
# the forget-gate bias).
INIT_SCHEMES: dict[str, str] = {
    "normal": "N(0, init_scale), the paper's",
    "uniform": "U(-1/sqrt(N), 1/sqrt(N)), torch's",
    "xavier": "Xavier-uniform per gate block",
}

if TYPE_CHECKING:
    OptimizerName = str
    InitScheme = str
else:  # the registries' names as the fields' choices (pydantic checks them; click lists them)
    OptimizerName = Literal[tuple(OPTIMIZERS)]
    InitScheme = Literal[tuple(INIT_SCHEMES)]

# pydantic error types that mean "the value breaks the setting's rule" (not "it is of the wrong type")
_RULE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "literal_error"}
)


def _setting(default: Any, description: str, *, flag: str | None = None, searchable: bool = False,
             cli: bool = True, **constraints: Any) -> Any:
    """A field with its help text and how the rest of the code presents it: `flag`, the `odyssey train`
    option when it is not `--name-with-dashes`; `searchable`, a hyperparameter a spec's space may search;
    `cli=False`, no option at all."""
    extra: dict[str, Any] = {"searchable": searchable, "cli": cli}
    if flag is not None:
        extra["flag"] = flag
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class TrainingSettings(BaseModel):
    """The settings every trial of a study shares: a study spec's `[training]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_epochs: int = _setting(150, "Maximum epochs.", flag="--epochs", ge=1)
    patience: int = _setting(15, "Stop after this many epochs without a better validation metric.", ge=1)
    batch_size: int = _setting(1, "Sequences (or streams) per batch.", ge=1)
    optimizer: OptimizerName = _setting("sgd", "; ".join(f"{k}: {v}" for k, v in OPTIMIZERS.items()) + ".")
    clip: float | None = _setting(None, "Clip the gradient norm to this value (default: no clipping).",
                                  searchable=True, gt=0)
    num_layers: int = _setting(1, "Recurrent layers.", flag="--layers", searchable=True, ge=1)
    init: InitScheme = _setting("normal", "; ".join(f"{k}: {v}" for k, v in INIT_SCHEMES.items()) + ".")
    init_scale: float = _setting(0.1, "Std of the normal init.", searchable=True, gt=0)
    bptt: int | None = _setting(None, "Truncated-BPTT window (default: the dataset's).", ge=1)
    embedding_size: int | None = _setting(
        None, "Embedding size for token data (default: the hidden size).", ge=1
    )
    eval_batch_size: int | None = _setting(None, "Evaluation batch size (default: the dataset's).", ge=1)


class TrainConfig(TrainingSettings):
    """One training run: the shared settings, the variant, the hyperparameters, seed and device.

    Checked when built and on every assignment: an invalid value raises `ConfigError` naming the setting;
    the variant is looked up in the registry (a custom one with its `switches`). The device is checked where
    torch can see it (`sweep.training.resolve_device`).
    """

    model_config = ConfigDict(frozen=False, validate_assignment=True)

    variant: str = _setting("V", f"Cell variant: {', '.join(VARIANTS)}.")
    learning_rate: float = _setting(1e-3, "Learning rate (SGD steps by lr * (1 - momentum)).", flag="--lr",
                                    searchable=True, gt=0)
    hidden_size: int = _setting(100, "Cells per layer.", flag="--hidden", searchable=True, ge=1)
    momentum: float = _setting(0.9, "SGD momentum / Adam beta1.", searchable=True, ge=0, lt=1)
    input_noise: float = _setting(0.0, "Input noise std.", flag="--noise", searchable=True, ge=0)
    forget_bias: float = _setting(1.0, "Initial forget-gate bias.", searchable=True)
    seed: int = _setting(0, "Seed of the initial weights, the input noise and the shuffling.")
    device: str = _setting("cpu", "cpu, cuda or cuda:N.")
    # a custom LSTM variant's switches (sweep.core.variants.LSTMSpec); None: `variant` is built in
    switches: dict[str, Any] | None = _setting(None, "Switches of a custom LSTM variant.", cli=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_first_problem(exc)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_first_problem(exc)) from None

    @model_validator(mode="after")
    def _known_variant(self) -> TrainConfig:
        self.cell()
        return self

    def cell(self) -> Any:
        """The registry entry (`sweep.core.variants.Variant`) of `variant`, a custom one built from
        `switches`; OdysseyError if it is unknown."""
        return resolve(self.variant, self.switches)


@dataclass(frozen=True)
class Setting:
    """How one field of `TrainConfig` is presented: its value type (int, float or str; None aside), default,
    help text, choices, `odyssey train` flag (None: not an option) and whether a search space may vary it."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    flag: str | None
    searchable: bool


def settings() -> Iterator[Setting]:
    """Every field of `TrainConfig`, the run's own first (variant, hyperparameters, seed, device), then the
    shared ones in `[training]` order."""
    own = [n for n in TrainConfig.model_fields if n not in TrainingSettings.model_fields]
    for name in [*own, *TrainingSettings.model_fields]:
        field = TrainConfig.model_fields[name]
        extra = field.json_schema_extra
        assert isinstance(extra, dict)
        kind = _value_type(field.annotation)
        choices = tuple(get_args(kind)) if get_origin(kind) is Literal else None
        flag = None if not extra["cli"] else str(extra.get("flag") or "--" + name.replace("_", "-"))
        yield Setting(name, str if choices else kind, field.default, field.description or "", choices, flag,
                      bool(extra["searchable"]))


def _value_type(annotation: Any) -> Any:
    """The type of a field's values without None (`int` for `int | None`)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


SEARCHABLE: dict[str, str] = {s.name: s.type.__name__ for s in settings() if s.searchable}
"""Hyperparameters a study's search space may vary, with their type ("float" or "int")."""


def rule(name: str) -> str | None:
    """The rule of setting `name` in words ("must be in [0, 1)"), or None for one without a rule."""
    field = TrainConfig.model_fields[name]
    kind = _value_type(field.annotation)
    if get_origin(kind) is Literal:
        return f"must be one of {', '.join(get_args(kind))}"
    bound = {key: getattr(m, key) for m in field.metadata for key in ("ge", "gt", "lt") if hasattr(m, key)}
    if "ge" in bound and "lt" in bound:
        return f"must be in [{bound['ge']}, {bound['lt']})"
    if bound.get("gt") == 0:
        return "must be a positive number"
    if "ge" in bound:
        return f"must be >= {bound['ge']}"
    return "must be finite" if kind is float else None


def _problem(name: str, err: ErrorDetails) -> str:
    """A pydantic error of setting `name` as the words after the name: "must be >= 1, got 0"."""
    value = err["input"]
    got = f"got {value!r}" if isinstance(value, str) or value is None else f"got {value}"
    if err["type"] == "extra_forbidden":
        return "is not a training setting" + did_you_mean(name, TrainConfig.model_fields)
    text = rule(name) if err["type"] in _RULE_ERRORS else None
    if text is None:
        kind = _value_type(TrainConfig.model_fields[name].annotation)
        kinds = {int: "must be a whole number", float: "must be a number", str: "must be a string"}
        text = kinds.get(kind, "has the wrong type")
    return f"{text}, {got}"


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, OdysseyError):  # a check that names its own problem (the variant)
        return str(original)
    if not err["loc"]:
        return str(err["msg"])
    name = str(err["loc"][0])
    return f"{name} {_problem(name, err)}"


def setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for the setting `name` ("must be >= 1, got 0"), or None.

    The study spec applies it to every fixed value and range end of its space (the rules are intervals, so
    a range whose two ends pass holds no failing point); `TrainConfig` applies the same rules when built.
    """
    if name not in TrainConfig.model_fields:
        return _problem(name, {"type": "extra_forbidden", "loc": (name,), "msg": "", "input": value})
    try:
        _adapter(name).validate_python(value)
    except ValidationError as exc:
        return _problem(name, exc.errors(include_url=False)[0])
    return None


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    # The field's type and constraints alone (the model's own validation would also check the variant).
    field = TrainConfig.model_fields[name]
    kind: Any = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return TypeAdapter(kind, config=ConfigDict(allow_inf_nan=False))


def describe_error(err: ErrorDetails) -> str:
    """A pydantic error at a setting (the last part of its location names it) as "must be >= 1, got 0"."""
    return _problem(str(err["loc"][-1]), err)
