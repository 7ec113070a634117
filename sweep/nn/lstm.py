"""The LSTM family of Greff et al.: vanilla LSTM (V), its eight variants and any legal switch combination.

One parameterised layer, `LSTMLayer`, configured by an `LSTMSpec` (sweep.core.variants). Gate blocks are
stacked in torch.nn.LSTM's order (i, f, z, o), leaving out the ones a variant removes, so NP's weights are
laid out exactly as torch's and NP runs through torch's fused kernel (with gate recurrence the order is
(i, f, o, z), so that the gates fed back to the next step are one contiguous slice).

The equations are written once, in `lstm_step` (docs/variants.md); the reference and the compiled (CUDA)
kernels run that step, the C++ kernel (`sweep/nn/csrc/lstm_family.cpp`) is their compiled CPU twin with its
own BPTT backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep.core.variants import LSTMSpec
from sweep.nn import kernels
from sweep.nn.base import RecurrentLayer, State, Step
from sweep.nn.common import last_valid, run_torch_rnn


def lstm_step(
    spec: LSTMSpec, pre: Tensor, gate_rec: Tensor | None, c: Tensor, peep: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One step's cell arithmetic: pre (B, G*N) = W x + R y_prev + b in the blocks of `spec.gates`,
    gate_rec (B, 3N) the gate recurrence's G (i, f, o)_prev (or None), c (B, N) the previous cell,
    peep (P, N) the peephole rows in the order i, f, o (or None). Returns (y, c, gates (B, 3N) or None).

    A removed gate is 1 and is not multiplied in at all, so NIG with NFG updates c + g(z_bar).
    """
    n = c.size(1)
    pre_of = dict(zip(spec.gates, pre.split(n, 1), strict=True))
    if gate_rec is not None:
        for name, rec in zip(("i", "f", "o"), gate_rec.split(n, 1), strict=True):
            pre_of[name] = pre_of[name] + rec
    peep_of = dict(zip(spec.peephole_gates, peep.unbind(0), strict=True)) if peep is not None else {}

    def gate(name: str, cell: Tensor) -> Tensor:
        bar = pre_of[name] + peep_of[name] * cell if name in peep_of else pre_of[name]
        return torch.sigmoid(bar)

    z = torch.tanh(pre_of["z"]) if spec.input_activation else pre_of["z"]
    i = gate("i", c) if spec.input_gate else None
    if spec.forget_gate == "gate":
        f = gate("f", c)
    elif spec.forget_gate == "coupled":
        assert i is not None
        f = 1 - i
    else:
        f = None
    c_new = (z * i if i is not None else z) + (c * f if f is not None else c)
    o = gate("o", c_new) if spec.output_gate else None  # the output gate peeks at the new cell
    hc = torch.tanh(c_new) if spec.output_activation else c_new
    y = hc * o if o is not None else hc
    gates = torch.cat([i, f, o], 1) if spec.gate_recurrence else None  # type: ignore[list-item]
    return y, c_new, gates


class LSTMLayer(RecurrentLayer):
    """One layer of an LSTM-family variant. State per layer: (h, c), plus the previous gates (i, f, o)
    with gate recurrence."""

    zero_bias: Tensor  # the registered buffer: declared, as register_buffer hides it from a type checker

    @property
    def spec(self) -> LSTMSpec:
        """The variant's switches."""
        assert self.definition.lstm is not None
        return self.definition.lstm

    def make_parameters(self, forget_bias: float) -> None:
        spec, input_size, hidden_size = self.spec, self.input_size, self.hidden_size
        g = len(spec.gates)
        self.weight_ih = self.add_matrix("weight_ih", g, input_size)
        self.weight_hh = self.add_matrix("weight_hh", g, hidden_size)
        if spec.forget_gate == "gate":
            self.bias = self.add_bias("bias", g, spec.gates.index("f"), forget_bias)
        elif spec.forget_gate == "coupled":
            # f = 1 - sigma(b_i) = sigma(-b_i): a forget bias b means an input-gate bias of -b
            self.bias = self.add_bias("bias", g, spec.gates.index("i"), -forget_bias)
        else:
            self.bias = self.add_bias("bias", g)
        self.peephole = self.add_vector("peephole", len(spec.peephole_gates)) if spec.peephole_gates else None
        # rows: pre-activations of (i, f, o); columns: previous step's (i, f, o) activations
        self.gate_weight = (
            self.add_matrix("gate_weight", 3, 3 * hidden_size) if spec.gate_recurrence else None
        )
        if spec.is_torch_lstm:
            # torch's kernel wants a second (recurrent) bias; it would be redundant, so it is a constant zero
            self.register_buffer("zero_bias", torch.zeros(g * hidden_size), persistent=False)

    @property
    def implemented(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("reference", "compiled", "cpp", *(("torch",) if self.spec.is_torch_lstm else ()))

    @property
    def family(self) -> str:
        return "np" if self.spec.is_torch_lstm else "lstm"

    @property
    def state_sizes(self) -> tuple[int, ...]:
        n = self.hidden_size
        return (n, n, 3 * n) if self.spec.gate_recurrence else (n, n)

    def switches(self) -> str:
        return self.spec.describe()

    # ------------------------------------------------------------------ reference and compiled kernels

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias)

    def step_params(self) -> tuple[Tensor | None, ...]:
        return (self.weight_hh, self.gate_weight, self.peephole)

    def step_key(self) -> object:
        return (type(self), self.spec)

    def make_step(self) -> Step:
        spec = self.spec

        def step(
            proj: Tensor, state: State, weight_hh: Tensor, gate_weight: Tensor | None, peep: Tensor | None
        ) -> tuple[Tensor, State]:
            h, c = state[0], state[1]
            pre = torch.addmm(proj, h, weight_hh.t())
            gate_rec = state[2] @ gate_weight.t() if gate_weight is not None else None
            y, c, gates = lstm_step(spec, pre, gate_rec, c, peep)
            return y, ((y, c, gates) if gates is not None else (y, c))

        return step

    # ------------------------------------------------------------------ torch's fused kernel (NP)

    def run_torch(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        params = [self.weight_ih, self.weight_hh, self.bias, self.zero_bias]
        return run_torch_rnn("lstm", self, x, lengths, state, params)

    # ------------------------------------------------------------------ the C++ kernel

    @property
    def layout(self) -> Layout:
        """Block offsets and switches for the C++ kernel."""
        spec, n = self.spec, self.hidden_size
        off = {name: k * n for k, name in enumerate(spec.gates)}
        forget = {"gate": 0, "coupled": 1, "none": 2}[spec.forget_gate]
        return Layout(
            n, off.get("i", -1), off.get("f", -1), off["z"], off.get("o", -1), forget,
            spec.input_activation, spec.output_activation, bool(spec.peephole_gates), spec.gate_recurrence,
        )  # fmt: skip

    def run_cpp(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        # the kernel works time-major so that each step's slice is contiguous
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias)
        empty = xp.new_empty(0)
        lay = self.layout
        out = _LSTMFunction.apply(
            xp, self.weight_hh,
            self.gate_weight if self.gate_weight is not None else empty,
            self.peephole if self.peephole is not None else empty,
            state[0], state[1], state[2] if lay.fgr else empty, lay,
        )  # fmt: skip
        keep = 3 if lay.fgr else 2
        ys, *rest = (s.transpose(0, 1) for s in out[:keep])
        return ys, tuple(last_valid(s, lengths) for s in (ys, *rest))


class Layout(NamedTuple):
    """Where each block sits in the stacked pre-activations (-1: absent) and what the variant keeps."""

    n: int
    off_i: int
    off_f: int
    off_z: int
    off_o: int
    forget: int  # 0: own gate, 1: coupled f = 1 - i, 2: none (f = 1)
    input_act: bool
    output_act: bool
    peepholes: bool
    fgr: bool


class _LSTMFunction(torch.autograd.Function):
    """The C++ forward and BPTT loops: time-major xp (T, B, G*N) -> outputs y, cells c, gates (or empty)."""

    @staticmethod
    def forward(
        ctx: Any, xp: Tensor, w: Tensor, gw: Tensor, peep: Tensor,
        h0: Tensor, c0: Tensor, g0: Tensor, lay: Layout,
    ) -> tuple[Tensor, Tensor, Tensor]:
        acts, cs, ys, hcs = kernels.load(required=True).lstm_forward(xp, w, gw, peep, h0, c0, g0, *lay)
        ctx.lay = lay
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(acts, cs, ys, hcs, w, gw, peep, h0, c0, g0)
        gates = acts[:, :, : 3 * lay.n].contiguous() if lay.fgr else xp.new_empty(0)
        return ys, cs, gates

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_y: Tensor | None, grad_c: Tensor | None, grad_g: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        grads = kernels.load(required=True).lstm_backward(
            *ctx.saved_tensors, grad_y, grad_c, grad_g, *ctx.lay
        )
        return (*grads, None)  # d_act, dw, dgw, dp, dh0, dc0, dg0 (None where absent), lay
