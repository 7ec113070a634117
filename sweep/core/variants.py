"""The variant registry: every variant's name, family and switches, in one place and without torch.

The single source of variant names: `sweep.nn.cells` builds layers from it, the study spec checks names and
custom variants against it, `odyssey train`'s help, `bench/cells.py` and the tests take their lists from it,
and `Variant.num_parameters` gives parameter counts without building a model. Torch-free, so the spec and
the CLI can use it without importing torch.

An LSTM-family variant is a combination of switches (`LSTMSpec`); Greff et al.'s nine are named ones, and a
study spec may name its own (`custom_variants`). The equations each switch gives are in docs/variants.md.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sweep.core.errors import ConfigError, OdysseyError

FORGET_MODES = ("gate", "coupled", "none")  # own gate | f = 1 - i (CIFG) | f = 1 (NFG)
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]{0,39}$"


@dataclass(frozen=True)
class LSTMSpec:
    """The switches of an LSTM-family variant: which parts of the vanilla LSTM (V) it keeps.

    Every field defaults to V's choice. `check()` rejects the combinations that have no meaning.
    """

    input_gate: bool = True
    forget_gate: str = "gate"  # one of FORGET_MODES
    output_gate: bool = True
    input_activation: bool = True  # g = tanh, else identity
    output_activation: bool = True  # h = tanh, else identity
    peepholes: bool = True
    gate_recurrence: bool = False  # FGR: i, f, o also see the previous step's i, f, o (nine N x N matrices)

    def check(self) -> LSTMSpec:
        """Return self; raise OdysseyError (one line) for a combination that has no meaning."""
        if self.forget_gate not in FORGET_MODES:
            raise ConfigError(
                f"forget_gate must be one of {', '.join(FORGET_MODES)}, got {self.forget_gate!r}"
            )
        if self.forget_gate == "coupled" and not self.input_gate:
            raise ConfigError("forget_gate = 'coupled' (f = 1 - i) needs the input gate")
        if self.gate_recurrence and not (self.input_gate and self.forget_gate == "gate" and self.output_gate):
            raise ConfigError(
                "gate_recurrence feeds the previous step's input, forget and output gates back: it needs all "
                "three (input_gate, forget_gate = 'gate', output_gate)"
            )
        return self

    @classmethod
    def from_switches(cls, switches: Mapping[str, Any]) -> LSTMSpec:
        """A checked spec from a mapping of switch names to values (missing switches keep V's)."""
        known = {f.name: f for f in fields(cls)}
        for key, value in switches.items():
            if key not in known:
                raise ConfigError(f"unknown switch {key!r} (known: {', '.join(known)})")
            if key == "forget_gate":
                if not isinstance(value, str):
                    raise ConfigError(f"forget_gate must be one of {', '.join(FORGET_MODES)}, got {value!r}")
            elif not isinstance(value, bool):
                raise ConfigError(f"switch {key} must be true or false, got {value!r}")
        return cls(**switches).check()

    def switches(self) -> dict[str, Any]:
        """Every switch and its value (the form a study spec stores)."""
        return asdict(self)

    def describe(self) -> str:
        """The switches as one line, e.g. `input_gate=True, forget_gate=gate, ...`."""
        return ", ".join(f"{k}={v}" for k, v in self.switches().items())

    @property
    def gates(self) -> tuple[str, ...]:
        """Names of the stacked pre-activation blocks, in torch's order (with gate recurrence: i, f, o, z,
        so that the gates fed back to the next step are one contiguous slice)."""
        if self.gate_recurrence:
            return ("i", "f", "o", "z")
        names = []
        if self.input_gate:
            names.append("i")
        if self.forget_gate == "gate":
            names.append("f")
        names.append("z")
        if self.output_gate:
            names.append("o")
        return tuple(names)

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """Gates with a peephole (every real gate when peepholes are on), in the order i, f, o."""
        if not self.peepholes:
            return ()
        return tuple(g for g in ("i", "f", "o") if g in self.gates)

    @property
    def is_torch_lstm(self) -> bool:
        """True when the variant is exactly torch.nn.LSTM's cell (NP): torch's fused kernel runs it."""
        return self == LSTMSpec(peepholes=False)


@dataclass(frozen=True)
class Variant:
    """A named variant: its family (`lstm`, `gru` or `plstm`), a title, and an LSTM family's switches."""

    name: str
    family: str
    title: str
    lstm: LSTMSpec | None = None

    def num_parameters(self, input_size: int, hidden_size: int, num_layers: int = 1) -> int:
        """Trainable scalars of a `num_layers` stack (removed gates and peepholes have no parameters)."""
        total, m, n = 0, input_size, hidden_size
        for _ in range(num_layers):
            total += self._layer_parameters(m, n)
            m = n
        return total

    def _layer_parameters(self, m: int, n: int) -> int:
        per_block = n * (m + n + 1)  # W, R and b of one block
        if self.family == "gru":
            return 3 * per_block + n  # plus b_hn, inside the reset product
        if self.family == "plstm":
            return 4 * per_block
        assert self.lstm is not None
        spec = self.lstm
        extra = 9 * n * n if spec.gate_recurrence else 0
        return len(spec.gates) * per_block + len(spec.peephole_gates) * n + extra


def _lstm(name: str, title: str, **switches: Any) -> Variant:
    return Variant(name, "lstm", title, LSTMSpec(**switches).check())


REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        _lstm("V", "vanilla LSTM"),
        _lstm("NIG", "no input gate", input_gate=False),
        _lstm("NFG", "no forget gate", forget_gate="none"),
        _lstm("NOG", "no output gate", output_gate=False),
        _lstm("NIAF", "no input activation function", input_activation=False),
        _lstm("NOAF", "no output activation function", output_activation=False),
        _lstm("NP", "no peepholes", peepholes=False),
        _lstm("CIFG", "coupled input and forget gate", forget_gate="coupled"),
        _lstm("FGR", "full gate recurrence", gate_recurrence=True),
        Variant("GRU", "gru", "gated recurrent unit (Cho et al. 2014)"),
        Variant("PLSTM", "plstm", "pseudo LSTM (r2rt.com, diff 2)"),
    )
}
GREFF_VARIANTS: tuple[str, ...] = tuple(v.name for v in REGISTRY.values() if v.family == "lstm")
VARIANTS: tuple[str, ...] = tuple(REGISTRY)


def custom_variant(name: str, switches: Mapping[str, Any]) -> Variant:
    """A user-named LSTM variant from switches; OdysseyError (one line) for a bad name or combination."""
    if name in REGISTRY:
        raise ConfigError(f"custom variant {name!r} clashes with a built-in variant ({', '.join(VARIANTS)})")
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(
            f"custom variant name {name!r} must start with a letter and use letters, digits, _ + - (<= 40)"
        )
    try:
        spec = LSTMSpec.from_switches(switches)
    except OdysseyError as exc:
        raise ConfigError(f"custom variant {name!r}: {exc}") from None
    return Variant(name, "lstm", "custom LSTM variant", spec)


def resolve(variant: str | Variant, switches: Mapping[str, Any] | None = None) -> Variant:
    """The Variant for a registered name, or for a custom name with its `switches`."""
    if isinstance(variant, Variant):
        return variant
    if switches is not None:
        return custom_variant(variant, switches)
    if variant not in REGISTRY:
        raise ConfigError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return REGISTRY[variant]


def legal_lstm_specs() -> Iterator[LSTMSpec]:
    """Every legal combination of the LSTM switches (88 of them; Greff et al.'s nine among them)."""
    names = [f.name for f in fields(LSTMSpec)]
    choices: list[tuple[Any, ...]] = [
        FORGET_MODES if name == "forget_gate" else (True, False) for name in names
    ]
    for values in itertools.product(*choices):
        spec = LSTMSpec(**dict(zip(names, values, strict=True)))
        try:
            yield spec.check()
        except OdysseyError:
            continue
