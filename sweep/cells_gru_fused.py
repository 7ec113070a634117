"""Fast GRU kernel for the CPU: TorchScript loops and a hand-written BPTT backward.

torch.nn.GRU's CPU kernel has no fused backward: autograd replays ~15 small ops per step, which makes it
10-20x slower than torch.nn.LSTM at small shapes (see docs/bench-cells.md). This kernel follows
`sweep.cells_fused`: the caller does the input projection; per step one addmm and a few in-place ops; all
gradient factors that do not depend on the incoming gradient are computed for all steps at once.
Time-major tensors; blocks (r, u, n) in torch's order and convention (reset applied after the product).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep.cells_common import dsigmoid as _dsigmoid
from sweep.cells_common import script


@script
def _forward_loop(xp: Tensor, w_t: Tensor, b_h: Tensor, h: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Returns the recurrent products U s + b_h (T, B, 3N), activations (r, u, n) and states s_t."""
    steps, batch = xp.size(0), xp.size(1)
    rec = xp.new_empty(steps, batch, 3 * n)
    acts = xp.new_empty(steps, batch, 3 * n)
    ys = xp.new_empty(steps, batch, n)
    x_ru = xp.narrow(2, 0, 2 * n).unbind(0)
    x_n = xp.narrow(2, 2 * n, n).unbind(0)
    rec_l = rec.unbind(0)
    rec_ru = rec.narrow(2, 0, 2 * n).unbind(0)
    rec_n = rec.narrow(2, 2 * n, n).unbind(0)
    a_ru = acts.narrow(2, 0, 2 * n).unbind(0)
    a_r = acts.narrow(2, 0, n).unbind(0)
    a_u = acts.narrow(2, n, n).unbind(0)
    a_n = acts.narrow(2, 2 * n, n).unbind(0)
    y_l = ys.unbind(0)
    for t in range(steps):
        torch.addmm(b_h, h, w_t, out=rec_l[t])
        ru = a_ru[t]
        torch.add(x_ru[t], rec_ru[t], out=ru)
        ru.sigmoid_()
        cand = a_n[t]
        torch.addcmul(x_n[t], a_r[t], rec_n[t], out=cand)
        cand.tanh_()
        y = y_l[t]
        torch.addcmul(cand, a_u[t], h - cand, out=y)
        h = y
    return rec, acts, ys


@script
def _backward_loop(
    d_rec: Tensor, d_xn: Tensor, grad_y: Tensor, p_u: Tensor, p_n: Tensor, p_r: Tensor, r: Tensor,
    u: Tensor, w: Tensor, n: int,
) -> Tensor:  # fmt: skip
    """Fills d_rec (T, B, 3N: gradients to U s + b_h) and d_xn (T, B, N); returns the gradient to s_0."""
    d_rec_l = d_rec.unbind(0)
    d_r = d_rec.narrow(2, 0, n).unbind(0)
    d_u = d_rec.narrow(2, n, n).unbind(0)
    d_n = d_rec.narrow(2, 2 * n, n).unbind(0)
    d_xn_l = d_xn.unbind(0)
    gy_l = grad_y.unbind(0)
    pu_l = p_u.unbind(0)
    pn_l = p_n.unbind(0)
    pr_l = p_r.unbind(0)
    r_l = r.unbind(0)
    u_l = u.unbind(0)
    dh = torch.zeros_like(gy_l[0])
    for t in range(grad_y.size(0) - 1, -1, -1):
        dy = gy_l[t] + dh
        torch.mul(dy, pu_l[t], out=d_u[t])
        dxn = d_xn_l[t]
        torch.mul(dy, pn_l[t], out=dxn)
        torch.mul(dxn, pr_l[t], out=d_r[t])
        torch.mul(dxn, r_l[t], out=d_n[t])
        dh = torch.addmm(dy * u_l[t], d_rec_l[t], w)
    return dh


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, w, b_hn, h0):  # type: ignore[override]
        n = h0.size(1)
        b_h = torch.cat([b_hn.new_zeros(2 * n), b_hn])
        rec, acts, ys = _forward_loop(xp.contiguous(), w.t().contiguous(), b_h, h0, n)
        ctx.save_for_backward(rec, acts, ys, w, h0)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        rec, acts, ys, w, h0 = ctx.saved_tensors
        n = h0.size(1)
        r, u, cand = acts.split(n, 2)
        h_prev = torch.cat([h0.unsqueeze(0), ys[:-1]], 0)
        p_u = (h_prev - cand) * _dsigmoid(u)  # dy -> d(pre-activation of u)
        p_n = (1 - u) * (1 - cand * cand)  # dy -> d(pre-activation of n)
        p_r = rec.narrow(2, 2 * n, n) * _dsigmoid(r)  # d(pre n) -> d(pre r)
        d_rec = torch.empty_like(rec)
        d_xn = torch.empty_like(cand)
        dh0 = _backward_loop(d_rec, d_xn, grad_y.contiguous(), p_u, p_n, p_r, r, u, w, n)
        d_xp = torch.cat([d_rec[:, :, : 2 * n], d_xn], 2)
        dw = d_rec.view(-1, 3 * n).t() @ h_prev.reshape(-1, n)
        db_hn = d_rec[:, :, 2 * n :].sum((0, 1))
        return d_xp, dw, db_hn, dh0


def gru_fused(xp: Tensor, weight_hh: Tensor, bias_hn: Tensor, h0: Tensor) -> Tensor:
    """Run time-major projected inputs xp (T, B, 3N); returns the time-major states (= outputs)."""
    from sweep import cells_cpp

    if cells_cpp.backend_for(xp) == "cpp":
        return cells_cpp.gru_cpp(xp, weight_hh, bias_hn, h0)
    return _GRUFunction.apply(xp, weight_hh, bias_hn, h0)
