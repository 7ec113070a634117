"""GRU (Cho et al. 2014) in torch.nn.GRU's convention: the reset gate multiplies the recurrent product.

    r = sigma(W_r x + U_r s + b_r);  u = sigma(W_u x + U_u s + b_u)
    n = tanh(W_n x + b_n + r * (U_n s + b_hn));  s' = (1 - u) * n + u * s

The update gate u plays the forget gate's part (a high b_u keeps the state), so it takes the forget bias.
Only b_hn is kept as a second bias: torch's other recurrent biases would duplicate b_r and b_u.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sweep.cells_common import init_matrix, last_valid, run_torch_rnn, zero_padding
from sweep.cells_gru_fused import gru_fused


class GRULayer(nn.Module):
    """One GRU layer (fast kernel, or the plain autograd loop when `reference` is set). State: (s,)."""

    def __init__(
        self, input_size: int, hidden_size: int, forget_bias: float, init: str, init_scale: float
    ) -> None:
        super().__init__()
        n = hidden_size
        self.input_size, self.hidden_size, self.reference = input_size, hidden_size, False
        # None: torch's fused kernel (cuDNN) on GPUs, the hand-written one on CPUs, where torch.nn.GRU
        # has no fused backward; True/False force one
        self.torch_kernel: bool | None = None
        self.weight_ih = nn.Parameter(torch.empty(3 * n, input_size))  # blocks r, u, n (torch's order)
        self.weight_hh = nn.Parameter(torch.empty(3 * n, n))
        self.bias = nn.Parameter(torch.zeros(3 * n))
        self.bias_hn = nn.Parameter(torch.zeros(n))
        init_matrix(self.weight_ih, 3, init, init_scale, n)
        init_matrix(self.weight_hh, 3, init, init_scale, n)
        with torch.no_grad():
            self.bias[n : 2 * n] = forget_bias
        self.register_buffer("zero_bias", torch.zeros(2 * n), persistent=False)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def forward(
        self, x: Tensor, lengths: Tensor | None, mask: Tensor | None, state: tuple[Tensor, ...]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run (B, T, M) -> outputs (B, T, N) zero at padding, and the state at each last valid step."""
        torch_kernel = self.torch_kernel if self.torch_kernel is not None else x.device.type != "cpu"
        if not self.reference and not torch_kernel:
            proj = torch.nn.functional.linear(x.transpose(0, 1), self.weight_ih, self.bias)
            ys_t = gru_fused(proj, self.weight_hh, self.bias_hn, state[0]).transpose(0, 1)
            return zero_padding(ys_t, mask), (last_valid(ys_t, lengths),)
        if not self.reference:
            params = [self.weight_ih, self.weight_hh, self.bias, torch.cat([self.zero_bias, self.bias_hn])]
            ys, final = run_torch_rnn("gru", self, x, lengths, state, params)
            return zero_padding(ys, mask), final  # packing zeroes padding already, but not empty rows
        n = self.hidden_size
        s = state[0]
        proj = torch.nn.functional.linear(x, self.weight_ih, self.bias)
        rec_bias = torch.cat([self.zero_bias, self.bias_hn])
        ys = []
        for t in range(x.size(1)):
            xr, xu, xn = proj[:, t].split(n, 1)
            hr, hu, hn = torch.nn.functional.linear(s, self.weight_hh, rec_bias).split(n, 1)
            r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
            s = (1 - u) * torch.tanh(xn + r * hn) + u * s
            ys.append(s)
        ys_t = torch.stack(ys, 1)
        return zero_padding(ys_t, mask), (last_valid(ys_t, lengths),)
