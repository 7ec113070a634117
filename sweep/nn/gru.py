"""GRU (Cho et al. 2014) in torch.nn.GRU's convention: the reset gate multiplies the recurrent product.

    r = sigma(W_r x + U_r s + b_r);  u = sigma(W_u x + U_u s + b_u)
    n = tanh(W_n x + b_n + r * (U_n s + b_hn));  s' = (1 - u) * n + u * s

The update gate u plays the forget gate's part (a high b_u keeps the state), so it takes the forget bias.
Only b_hn is kept as a second bias: torch's other recurrent biases would duplicate b_r and b_u.

Kernels: the reference step below; the C++ loops of `sweep/nn/csrc/lstm_family.cpp` on the CPU (torch.nn.GRU's
CPU kernel has no fused backward); torch's fused GRU (cuDNN) on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep.nn import kernels
from sweep.nn.base import RecurrentLayer, State, Step
from sweep.nn.common import last_valid, run_torch_rnn


class GRULayer(RecurrentLayer):
    """One GRU layer. State: (s,)."""

    implemented = ("reference", "cpp", "torch")
    zero_bias: Tensor  # the registered buffer: declared, as register_buffer hides it from a type checker

    def make_parameters(self, forget_bias: float) -> None:
        n = self.hidden_size
        self.weight_ih = self.add_matrix("weight_ih", 3, self.input_size)  # blocks r, u, n (torch's order)
        self.weight_hh = self.add_matrix("weight_hh", 3, n)
        self.bias = self.add_bias("bias", 3, 1, forget_bias)
        self.bias_hn = self.add_bias("bias_hn", 1)
        self.register_buffer("zero_bias", torch.zeros(2 * n), persistent=False)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias)

    def step_params(self) -> tuple[Tensor | None, ...]:
        return (self.weight_hh, torch.cat([self.zero_bias, self.bias_hn]))

    def make_step(self) -> Step:
        def step(proj: Tensor, state: State, weight_hh: Tensor, rec_bias: Tensor) -> tuple[Tensor, State]:
            s = state[0]
            xr, xu, xn = proj.split(s.size(1), 1)
            hr, hu, hn = F.linear(s, weight_hh, rec_bias).split(s.size(1), 1)
            r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
            s = (1 - u) * torch.tanh(xn + r * hn) + u * s
            return s, (s,)

        return step

    def run_torch(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        params = [self.weight_ih, self.weight_hh, self.bias, torch.cat([self.zero_bias, self.bias_hn])]
        return run_torch_rnn("gru", self, x, lengths, state, params)

    def run_cpp(self, x: Tensor, lengths: Tensor | None, state: State) -> tuple[Tensor, State]:
        xp = F.linear(x.transpose(0, 1), self.weight_ih, self.bias)
        ys = _GRUFunction.apply(xp, self.weight_hh, self.bias_hn, state[0]).transpose(0, 1)
        return ys, (last_valid(ys, lengths),)


class _GRUFunction(torch.autograd.Function):
    """The C++ GRU loops: time-major xp (T, B, 3N) = W x + b, U, b_hn, s_0 -> states (T, B, N)."""

    @staticmethod
    def forward(ctx: Any, xp: Tensor, w: Tensor, b_hn: Tensor, h0: Tensor) -> Tensor:
        rec_n, acts, ys = kernels.load(required=True).gru_forward(xp, w, b_hn, h0)
        ctx.save_for_backward(rec_n, acts, ys, w, h0)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor | None) -> tuple[Tensor | None, ...]:
        rec_n, acts, ys, w, h0 = ctx.saved_tensors
        return tuple(kernels.load(required=True).gru_backward(rec_n, acts, ys, w, h0, grad_y))


def gru_cpp(xp: Tensor, weight_hh: Tensor, bias_hn: Tensor, h0: Tensor) -> Tensor:
    """The C++ GRU recurrence on CPU tensors: time-major xp (T, B, 3N) -> states (T, B, N)."""
    return _GRUFunction.apply(xp, weight_hh, bias_hn, h0)
