"""Pseudo LSTM, in its best form of r2rt.com's "Written Memories" post ("pseudo LSTM + diff 2").

The state s is squashed (phi = tanh) everywhere except in its own additive update, and the output gate is
computed first and applied to what every other part reads:

    o = sigma(W_o phi(s) + U_o x + b_o);      r = o * phi(s)
    i = sigma(W_i r + U_i x + b_i);  f = sigma(W_f r + U_f x + b_f);  s~ = phi(W r + U x + b)
    s' = f * s + i * s~;             output = phi(s')

The forget bias initialises b_f. State per layer: (s,).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sweep.cells_common import init_matrix, last_valid, zero_padding
from sweep.cells_pseudo_fused import pseudo_fused


class PseudoLSTMLayer(nn.Module):
    """One pseudo-LSTM layer; a hand-written kernel unless `reference` is set (plain autograd loop)."""

    def __init__(
        self, input_size: int, hidden_size: int, forget_bias: float, init: str, init_scale: float
    ) -> None:
        super().__init__()
        n = hidden_size
        self.input_size, self.hidden_size, self.reference = input_size, hidden_size, False
        self.weight_ih = nn.Parameter(torch.empty(4 * n, input_size))  # U for blocks i, f, z (s~), o
        self.bias = nn.Parameter(torch.zeros(4 * n))
        self.weight_hh = nn.Parameter(torch.empty(3 * n, n))  # W_i, W_f, W applied to o * phi(s)
        self.weight_ho = nn.Parameter(torch.empty(n, n))  # W_o applied to phi(s)
        init_matrix(self.weight_ih, 4, init, init_scale, n)
        init_matrix(self.weight_hh, 3, init, init_scale, n)
        init_matrix(self.weight_ho, 1, init, init_scale, n)
        with torch.no_grad():
            self.bias[n : 2 * n] = forget_bias

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def forward(
        self, x: Tensor, lengths: Tensor | None, mask: Tensor | None, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run (B, T, M) -> outputs (B, T, N) zero at padding, and the state at each last valid step."""
        if not self.reference:
            proj = torch.nn.functional.linear(x.transpose(0, 1), self.weight_ih, self.bias)
            ys_t, ss_t = (
                t.transpose(0, 1) for t in pseudo_fused(proj, self.weight_hh, self.weight_ho, state[0])
            )
            return zero_padding(ys_t, mask), (last_valid(ss_t, lengths),)
        n = self.hidden_size
        s = state[0]
        proj = torch.nn.functional.linear(x, self.weight_ih, self.bias)
        ys, ss = [], []
        for t in range(x.size(1)):
            x_ifz, x_o = proj[:, t].split([3 * n, n], 1)
            squashed = torch.tanh(s)
            o = torch.sigmoid(x_o + squashed @ self.weight_ho.t())
            i, f, z = (x_ifz + (o * squashed) @ self.weight_hh.t()).split(n, 1)
            s = torch.sigmoid(f) * s + torch.sigmoid(i) * torch.tanh(z)
            ss.append(s)
            ys.append(torch.tanh(s))
        ys_t, ss_t = torch.stack(ys, 1), torch.stack(ss, 1)
        return zero_padding(ys_t, mask), (last_valid(ss_t, lengths),)
