"""The LSTM family of Greff et al.: vanilla LSTM (V) and its eight variants, as one parameterised layer.

Gate blocks are stacked in torch.nn.LSTM's order (i, f, z, o), leaving out the ones a variant removes, so
NP's weights are laid out exactly as torch's and NP runs through torch's fused kernel (FGR alone uses
(i, f, o, z), so that the gates it feeds back to the next step are one contiguous slice). The other variants
run through the hand-written kernel of `sweep.cells_fused`; `reference=True` selects a plain autograd loop
that spells the equations out and is what the fast paths are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sweep.cells_common import init_matrix, init_vector, last_valid, run_torch_rnn, zero_padding
from sweep.cells_fused import Layout, lstm_fused


@dataclass(frozen=True)
class LSTMSpec:
    """Which parts of the vanilla LSTM a variant keeps."""

    input_gate: bool = True
    forget: str = "gate"  # "gate" | "coupled" (f = 1 - i, CIFG) | "none" (f = 1)
    output_gate: bool = True
    input_activation: bool = True  # g = tanh, else identity
    output_activation: bool = True  # h = tanh, else identity
    peepholes: bool = True
    gate_recurrence: bool = False  # FGR: gates see the previous step's gate activations

    @property
    def gates(self) -> tuple[str, ...]:
        """Names of the stacked pre-activation blocks, in torch's order (FGR: i, f, o, z)."""
        if self.gate_recurrence:
            return ("i", "f", "o", "z")
        names = []
        if self.input_gate:
            names.append("i")
        if self.forget == "gate":
            names.append("f")
        names.append("z")
        if self.output_gate:
            names.append("o")
        return tuple(names)

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """Gates with a peephole (every real gate when peepholes are on)."""
        if not self.peepholes:
            return ()
        return tuple(g for g in self.gates if g != "z")

    @property
    def is_torch_lstm(self) -> bool:
        """True when the variant is exactly torch.nn.LSTM's cell (NP)."""
        return self == LSTMSpec(peepholes=False)


LSTM_SPECS: dict[str, LSTMSpec] = {
    "V": LSTMSpec(),
    "NIG": LSTMSpec(input_gate=False),
    "NFG": LSTMSpec(forget="none"),
    "NOG": LSTMSpec(output_gate=False),
    "NIAF": LSTMSpec(input_activation=False),
    "NOAF": LSTMSpec(output_activation=False),
    "NP": LSTMSpec(peepholes=False),
    "CIFG": LSTMSpec(forget="coupled"),
    "FGR": LSTMSpec(gate_recurrence=True),
}


class LSTMLayer(nn.Module):
    """One layer of an LSTM-family variant. State per layer: (h, c), plus FGR's previous gates (i, f, o)."""

    def __init__(
        self,
        spec: LSTMSpec,
        input_size: int,
        hidden_size: int,
        forget_bias: float,
        init: str,
        init_scale: float,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.reference = False
        n, g = hidden_size, len(spec.gates)
        self.weight_ih = nn.Parameter(torch.empty(g * n, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g * n, n))
        self.bias = nn.Parameter(torch.zeros(g * n))
        init_matrix(self.weight_ih, g, init, init_scale, n)
        init_matrix(self.weight_hh, g, init, init_scale, n)
        self.peephole: nn.Parameter | None = None
        if spec.peephole_gates:
            self.peephole = nn.Parameter(torch.empty(len(spec.peephole_gates), n))
            init_vector(self.peephole, init, init_scale, n)
        self.gate_weight: nn.Parameter | None = None
        if spec.gate_recurrence:
            # rows: pre-activations of (i, f, o); columns: previous step's (i, f, o) activations
            self.gate_weight = nn.Parameter(torch.empty(3 * n, 3 * n))
            init_matrix(self.gate_weight, 3, init, init_scale, n)
        with torch.no_grad():
            if spec.forget == "gate":
                self.bias[spec.gates.index("f") * n : (spec.gates.index("f") + 1) * n] = forget_bias
            elif spec.forget == "coupled":
                # f = 1 - sigma(b_i) = sigma(-b_i): a forget bias b means an input-gate bias of -b
                self.bias[spec.gates.index("i") * n : (spec.gates.index("i") + 1) * n] = -forget_bias
        if spec.is_torch_lstm:
            # torch's kernel wants a second (recurrent) bias; it would be redundant, so it is a constant zero
            self.register_buffer("zero_bias", torch.zeros(g * n), persistent=False)

    @property
    def layout(self) -> Layout:
        """Block offsets and switches for the fused kernel."""
        spec, n = self.spec, self.hidden_size
        off = {name: k * n for k, name in enumerate(spec.gates)}
        forget = {"gate": 0, "coupled": 1, "none": 2}[spec.forget]
        return Layout(
            n, off.get("i", -1), off.get("f", -1), off["z"], off.get("o", -1), forget,
            spec.input_activation, spec.output_activation, spec.peepholes, spec.gate_recurrence,
        )  # fmt: skip

    @property
    def state_sizes(self) -> tuple[int, ...]:
        n = self.hidden_size
        return (n, n, 3 * n) if self.spec.gate_recurrence else (n, n)

    def forward(
        self, x: Tensor, lengths: Tensor | None, mask: Tensor | None, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run (B, T, M) -> outputs (B, T, N) zero at padding, and the state at each last valid step."""
        if self.spec.is_torch_lstm and not self.reference:
            params = [self.weight_ih, self.weight_hh, self.bias, self.zero_bias]
            ys, final = run_torch_rnn("lstm", self, x, lengths, state, params)
            return zero_padding(ys, mask), final  # packing zeroes padding already, but not empty rows
        if self.reference:
            ys, states = self._reference_loop(x, state)
        else:
            # the kernel works time-major so that each step's slice is contiguous
            proj = torch.nn.functional.linear(x.transpose(0, 1), self.weight_ih, self.bias)
            out = lstm_fused(proj, self.weight_hh, self.gate_weight, self.peephole, state, self.layout)
            keep = 3 if self.spec.gate_recurrence else 2
            ys, *rest = (s.transpose(0, 1) for s in out[:keep])
            states = (ys, *rest)
        final = tuple(last_valid(s, lengths) for s in states)
        return zero_padding(ys, mask), final

    def _reference_loop(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Plain autograd loop over time steps, written as the equations read (see docs/variants.md)."""
        spec, n = self.spec, self.hidden_size
        h, c = state[0], state[1]
        prev_gates = state[2] if spec.gate_recurrence else None
        peep = dict(zip(spec.peephole_gates, self.peephole, strict=True)) if self.peephole is not None else {}
        proj = torch.nn.functional.linear(x, self.weight_ih, self.bias)
        ys, cs, gs = [], [], []
        for t in range(x.size(1)):
            pre = dict(zip(spec.gates, (proj[:, t] + h @ self.weight_hh.t()).split(n, 1), strict=True))
            if prev_gates is not None:
                rec_i, rec_f, rec_o = (prev_gates @ self.gate_weight.t()).split(n, 1)
                pre["i"], pre["f"], pre["o"] = pre["i"] + rec_i, pre["f"] + rec_f, pre["o"] + rec_o
            z = torch.tanh(pre["z"]) if spec.input_activation else pre["z"]
            one = torch.ones_like(z)
            i = torch.sigmoid(pre["i"] + peep.get("i", 0) * c) if spec.input_gate else one
            if spec.forget == "gate":
                f = torch.sigmoid(pre["f"] + peep.get("f", 0) * c)
            elif spec.forget == "coupled":
                f = 1 - i
            else:
                f = one
            c = z * i + c * f
            o = torch.sigmoid(pre["o"] + peep.get("o", 0) * c) if spec.output_gate else one
            h = (torch.tanh(c) if spec.output_activation else c) * o
            if prev_gates is not None:
                prev_gates = torch.cat([i, f, o], 1)
                gs.append(prev_gates)
            ys.append(h)
            cs.append(c)
        ys_t = torch.stack(ys, 1)
        states = (ys_t, torch.stack(cs, 1))
        if gs:
            states = (*states, torch.stack(gs, 1))
        return ys_t, states
