"""Recurrent layers for every variant of the study: Greff et al.'s nine LSTMs, GRU and the pseudo LSTM.

`make_recurrent` builds a stack of layers of one variant; equations in docs/variants.md and in the
modules `sweep.nn.lstm` (V and its eight variants), `sweep.nn.gru`, `sweep.nn.pseudo`.

A state is a tuple of tensors shaped (num_layers, B, K), opaque to callers: (h, c) for the LSTM family,
(h, c, gates) for FGR (whose gates see the previous step's gates), (s,) for GRU and the pseudo LSTM.

Variant names, switches and parameter counts come from the registry `sweep.core.variants` (custom LSTM
variants too); every layer derives from `sweep.nn.base.RecurrentLayer`, which picks its kernel from one
registry keyed by family and device (`KERNELS`). `Recurrent.set_kernel()` forces one (`reference`: the
plain autograd step that spells the equations out). Speed and conventions: docs/bench-cells.md.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from sweep.core.errors import ConfigError
from sweep.core.variants import GREFF_VARIANTS, VARIANTS, Variant, resolve
from sweep.nn.base import KERNEL_NAMES, RecurrentLayer, State
from sweep.nn.common import check_init, zero_padding
from sweep.nn.gru import GRULayer
from sweep.nn.lstm import LSTMLayer
from sweep.nn.pseudo import PseudoLSTMLayer

__all__ = ["GREFF_VARIANTS", "VARIANTS", "Recurrent", "State", "detach_state", "make_recurrent"]

LAYERS: dict[str, type[RecurrentLayer]] = {"lstm": LSTMLayer, "gru": GRULayer, "plstm": PseudoLSTMLayer}


class Recurrent(nn.Module):
    """A stack of `num_layers` recurrent layers of one variant, batch first, padding-aware."""

    def __init__(
        self,
        variant: str | Variant,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        forget_bias: float = 0.0,
        init: str = "normal",
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        definition = resolve(variant)
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(forget_bias, (int, float)) and math.isfinite(forget_bias)):
            raise ConfigError(f"forget_bias must be a finite number, got {forget_bias!r}")
        check_init(init, init_scale)
        self.definition = definition  # the registry's entry: family, title, switches
        self.variant, self.input_size, self.hidden_size, self.num_layers = (
            definition.name,
            input_size,
            hidden_size,
            num_layers,
        )
        layer = LAYERS[definition.family]
        self.layers = nn.ModuleList(
            layer(definition, hidden_size if k else input_size, hidden_size, forget_bias, init, init_scale)
            for k in range(num_layers)
        )

    @property
    def stack(self) -> list[RecurrentLayer]:
        """The layers, bottom first, as `RecurrentLayer`s (`nn.ModuleList` yields plain modules)."""
        return [cast(RecurrentLayer, layer) for layer in self.layers]

    def extra_repr(self) -> str:
        return f"variant={self.variant}, num_layers={self.num_layers}"

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Width of each tensor of a layer's state."""
        return self.stack[0].state_sizes

    def num_parameters(self) -> int:
        """Number of trainable scalars (variants differ: removed gates and peepholes have no parameters)."""
        return sum(p.numel() for p in self.parameters())

    def set_kernel(self, kernel: str | None) -> Recurrent:
        """Force every layer onto `kernel` (one of `sweep.nn.base.KERNEL_NAMES` that the family implements:
        `reference`, `cpp`, `compiled`, `torch`), or back to the registry's choice with None."""
        if kernel is not None:
            implemented = ", ".join(self.stack[0].implemented)
            if kernel not in self.stack[0].implemented:
                known = ", ".join(KERNEL_NAMES)
                raise ConfigError(
                    f"{self.variant} has no kernel {kernel!r}; it has {implemented} (of {known})"
                )
        for layer in self.stack:
            layer.kernel = kernel
        return self

    def set_reference(self, reference: bool = True) -> Recurrent:
        """Switch every layer to the plain autograd step (slow; the specification) or back (False)."""
        return self.set_kernel("reference" if reference else None)

    def kernel_for(self, x: Tensor) -> str:
        """The kernel the layers run on tensors like `x` (`reference`, `cpp`, `compiled` or `torch`)."""
        return self.stack[0].kernel_for(x)

    def initial_state(self, batch_size: int, like: Tensor) -> State:
        """A zero state for `batch_size` sequences, with `like`'s dtype and device."""
        return tuple(like.new_zeros(self.num_layers, batch_size, k) for k in self.state_sizes)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: State | None = None
    ) -> tuple[Tensor, State]:
        """Run x (B, T, M) -> outputs (B, T, N), zero at padded steps, and the state at each last valid step.

        `lengths` (B,) gives each sequence's valid steps (None: all T; a row of length 0 keeps its state);
        `state` continues a previous chunk (truncated BPTT; detach it first with `detach_state` to cut the
        gradient), None starts from zeros.
        """
        if x.dim() != 3 or x.size(2) != self.input_size:
            raise ValueError(
                f"expected input of shape (batch, time, {self.input_size}), got {tuple(x.shape)}"
            )
        batch, steps = x.size(0), x.size(1)
        if steps == 0:
            raise ValueError("cannot run a recurrent layer over zero time steps")
        lengths, mask, empty = _check_lengths(lengths, batch, steps, x.device)
        state = self.initial_state(batch, x) if state is None else self._check_state(state, batch)
        out = zero_padding(x, mask)  # garbage in the padding must not reach anything
        finals = []
        for k, layer in enumerate(self.layers):
            out, final = layer(out, lengths, mask, tuple(s[k] for s in state))
            finals.append(final)
        final_state = tuple(torch.stack(parts) for parts in zip(*finals, strict=True))
        if empty is not None:
            final_state = tuple(torch.where(empty, s0, s1) for s0, s1 in zip(state, final_state, strict=True))
        return out, final_state

    def _check_state(self, state: State, batch: int) -> State:
        shapes = [(self.num_layers, batch, k) for k in self.state_sizes]
        if len(state) != len(shapes) or any(
            tuple(s.shape) != sh for s, sh in zip(state, shapes, strict=False)
        ):
            got = [tuple(s.shape) for s in state]
            raise ValueError(f"{self.variant} state must have shapes {shapes}, got {got}")
        return state


def _check_lengths(
    lengths: Tensor | None, batch: int, steps: int, device: torch.device
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Validate lengths; return (lengths >= 1, mask, empty rows) on x's device; Nones for what is not needed.

    Rows with no valid step (a stream that ended in an earlier chunk) run one padded step, which the mask
    zeroes; `empty` (1, B, 1) marks them so that they keep the state they came with.
    """
    if lengths is None:
        return None, None, None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.size(0) != batch or lengths.is_floating_point():
        raise ValueError(
            f"lengths must be {batch} integers, got shape {tuple(lengths.shape)} {lengths.dtype}"
        )
    lengths = lengths.to(device=device, dtype=torch.long)
    low, high = int(lengths.min()), int(lengths.max())
    if low < 0 or high > steps:
        raise ValueError(f"sequence lengths must lie in [0, {steps}], got {low}..{high}")
    if low == steps:
        return None, None, None
    mask = torch.arange(steps, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    empty = None
    if low == 0:
        empty = (lengths == 0).view(1, -1, 1)
        lengths = lengths.clamp(min=1)
    return lengths, mask, empty


def make_recurrent(
    variant: str | Variant,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    forget_bias: float = 0.0,
    init: str = "normal",
    init_scale: float = 0.1,
) -> Recurrent:
    """Build a `Recurrent` stack of `variant`: a name of VARIANTS, or a `Variant` (e.g. a custom one from
    `sweep.core.variants.custom_variant`); unknown names raise OdysseyError."""
    return Recurrent(variant, input_size, hidden_size, num_layers, forget_bias, init, init_scale)


def detach_state(state: State) -> State:
    """Cut the gradient path between truncated-BPTT chunks."""
    return tuple(s.detach() for s in state)
