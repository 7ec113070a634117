"""Pseudo LSTM, in its best form of r2rt.com's "Written Memories" post ("pseudo LSTM + diff 2").

The state s is squashed (phi = tanh) everywhere except in its own additive update, and the output gate is
computed first and applied to what every other part reads:

    o = sigma(W_o phi(s) + U_o x + b_o);      r = o * phi(s)
    i = sigma(W_i r + U_i x + b_i);  f = sigma(W_f r + U_f x + b_f);  s~ = phi(W r + U x + b)
    s' = f * s + i * s~;             output = phi(s')

The forget bias initialises b_f. State per layer: (s,). Kernels: the reference step below, run as is or
through torch.compile (the GPU path), and the C++ loops of `sweep/nn/csrc/lstm_family.cpp` on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep.nn import kernels
from sweep.nn.base import RecurrentLayer, State, Step
from sweep.nn.common import last_valid


class PseudoLSTMLayer(RecurrentLayer):
    """One pseudo-LSTM layer. State: (s,)."""

    implemented = ("reference", "compiled", "cpp")

    def make_parameters(self, forget_bias: float) -> None:
        n = self.hidden_size
        self.weight_ih = self.add_matrix("weight_ih", 4, self.input_size)  # U for blocks i, f, z (s~), o
        self.bias = self.add_bias("bias", 4, 1, forget_bias)
        self.weight_hh = self.add_matrix("weight_hh", 3, n)  # W_i, W_f, W applied to o * phi(s)
        self.weight_ho = self.add_matrix("weight_ho", 1, n)  # W_o applied to phi(s)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias)

    def step_params(self) -> tuple[Tensor | None, ...]:
        return (self.weight_hh, self.weight_ho)

    def make_step(self) -> Step:
        def step(proj: Tensor, state: State, weight_hh: Tensor, weight_ho: Tensor) -> tuple[Tensor, State]:
            s = state[0]
            n = s.size(1)
            x_ifz, x_o = proj.split([3 * n, n], 1)
            squashed = torch.tanh(s)
            o = torch.sigmoid(x_o + squashed @ weight_ho.t())
            i, f, z = (x_ifz + (o * squashed) @ weight_hh.t()).split(n, 1)
            s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(z)
            return torch.tanh(s), (s,)

        return step

    def run_cpp(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias)
        ys, ss = (t.transpose(0, 1) for t in pseudo_cpp(xp, self.weight_hh, self.weight_ho, state[0]))
        return ys, (last_valid(ss, lengths),)


class _PseudoFunction(torch.autograd.Function):
    """The C++ PLSTM loops: time-major xp (T, B, 4N), W_(i,f,z), W_o, s_0 -> (outputs, states)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w_r: Tensor, w_o: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        acts, reads, ss, ys, phi0 = kernels.load(required=True).plstm_forward(xp, w_r, w_o, s0)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(acts, reads, ss, ys, phi0, w_r, w_o, s0)
        return ys, ss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor | None, grad_s: Tensor | None) -> tuple[Tensor | None, ...]:
        return tuple(kernels.load(required=True).plstm_backward(*ctx.saved_tensors, grad_y, grad_s))


def pseudo_cpp(xp: Tensor, weight_hh: Tensor, weight_ho: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """The C++ PLSTM recurrence on CPU tensors: time-major xp (T, B, 4N) -> (outputs phi(s_t), states s_t)."""
    return _PseudoFunction.apply(xp, weight_hh, weight_ho, s0)
