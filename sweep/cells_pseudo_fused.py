"""Fast kernel for the pseudo LSTM: TorchScript loops and a hand-written BPTT backward.

Same approach as `sweep.cells_fused`: input projections are one product done by the caller; each step
runs two small matmuls (W_o on phi(s), then W_(i,f,z) on o * phi(s)) and a few in-place ops; every
derivative factor that does not depend on the incoming gradient is computed for all steps at once.
Tensors are time-major (T, B, .); blocks of the projected input are (i, f, z, o).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep.cells_common import dsigmoid as _dsigmoid
from sweep.cells_common import script


@script
def _forward_loop(
    xp: Tensor, w_r_t: Tensor, w_o_t: Tensor, s: Tensor, n: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns activations (T, B, 4N) as (i, f, z, o), reads r = o * phi(s), states s_t, outputs phi(s_t),
    and phi(s_0)."""
    steps, batch = xp.size(0), xp.size(1)
    acts = xp.new_empty(steps, batch, 4 * n)
    reads = xp.new_empty(steps, batch, n)
    ss = xp.new_empty(steps, batch, n)
    ys = xp.new_empty(steps, batch, n)
    x_ifz = xp.narrow(2, 0, 3 * n).unbind(0)
    x_o = xp.narrow(2, 3 * n, n).unbind(0)
    a_ifz = acts.narrow(2, 0, 3 * n).unbind(0)
    a_if = acts.narrow(2, 0, 2 * n).unbind(0)
    a_i = acts.narrow(2, 0, n).unbind(0)
    a_f = acts.narrow(2, n, n).unbind(0)
    a_z = acts.narrow(2, 2 * n, n).unbind(0)
    a_o = acts.narrow(2, 3 * n, n).unbind(0)
    r_l = reads.unbind(0)
    s_l = ss.unbind(0)
    y_l = ys.unbind(0)
    phi0 = torch.tanh(s)
    phi = phi0
    for t in range(steps):
        o = a_o[t]
        torch.addmm(x_o[t], phi, w_o_t, out=o)
        o.sigmoid_()
        r = r_l[t]
        torch.mul(o, phi, out=r)
        torch.addmm(x_ifz[t], r, w_r_t, out=a_ifz[t])
        a_if[t].sigmoid_()
        z = a_z[t]
        z.tanh_()
        s_new = s_l[t]
        torch.addcmul(a_f[t] * s, a_i[t], z, out=s_new)
        phi = y_l[t]
        torch.tanh(s_new, out=phi)
        s = s_new
    return acts, reads, ss, ys, phi0


@script
def _backward_loop(
    d_act: Tensor,
    grad_y: Tensor,
    grad_s: Tensor,
    has_grad_s: bool,
    dy_ds: Tensor,
    m: Tensor,
    f: Tensor,
    p_o: Tensor,
    o: Tensor,
    w_r: Tensor,
    w_o: Tensor,
    n: int,
) -> tuple[Tensor, Tensor]:
    """Fills d_act (T, B, 4N); returns the gradients to s_0 through the cell and through phi(s_0)."""
    steps, batch = grad_y.size(0), grad_y.size(1)
    d_ifz = d_act.narrow(2, 0, 3 * n).unbind(0)
    d_ifz3 = d_act.narrow(2, 0, 3 * n).view(steps, batch, 3, n).unbind(0)
    d_o = d_act.narrow(2, 3 * n, n).unbind(0)
    gy_l = grad_y.unbind(0)
    gs_l = grad_s.unbind(0) if has_grad_s else gy_l
    dyds_l = dy_ds.unbind(0)
    m_l = m.unbind(0)
    f_l = f.unbind(0)
    po_l = p_o.unbind(0)
    o_l = o.unbind(0)
    d_phi = torch.zeros_like(gy_l[0])  # gradient to phi(s_t) from step t + 1
    ds = torch.zeros_like(d_phi)
    for t in range(steps - 1, -1, -1):
        if has_grad_s:
            ds = ds + gs_l[t]
        ds = torch.addcmul(ds, gy_l[t] + d_phi, dyds_l[t])
        torch.mul(ds.unsqueeze(1), m_l[t], out=d_ifz3[t])
        d_read = torch.mm(d_ifz[t], w_r)
        da_o = d_o[t]
        torch.mul(d_read, po_l[t], out=da_o)
        d_phi = torch.addmm(d_read * o_l[t], da_o, w_o)
        ds = ds * f_l[t]
    return ds, d_phi


class _PseudoFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, w_r, w_o, s0):  # type: ignore[override]
        n = s0.size(1)
        acts, reads, ss, ys, phi0 = _forward_loop(
            xp.contiguous(), w_r.t().contiguous(), w_o.t().contiguous(), s0, n
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(acts, reads, ss, ys, phi0, w_r, w_o, s0)
        return ys, ss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_s):  # type: ignore[override]
        acts, reads, ss, ys, phi0, w_r, w_o, s0 = ctx.saved_tensors
        n = s0.size(1)
        if grad_y is None:
            grad_y = torch.zeros_like(ys)
        i, f, z, o = acts.split(n, 2)
        s_prev = torch.cat([s0.unsqueeze(0), ss[:-1]], 0)
        phi_prev = torch.cat([phi0.unsqueeze(0), ys[:-1]], 0)
        m = torch.stack([z * _dsigmoid(i), s_prev * _dsigmoid(f), i * (1 - z * z)], 2)
        d_act = torch.empty_like(acts)
        ds0, d_phi0 = _backward_loop(
            d_act, grad_y, grad_s if grad_s is not None else ys.new_empty(0), grad_s is not None,
            1 - ys * ys, m, f, phi_prev * _dsigmoid(o), o, w_r, w_o, n,
        )  # fmt: skip
        ds0 = torch.addcmul(ds0, d_phi0, 1 - phi0 * phi0)
        flat = d_act.view(-1, 4 * n)
        dw_r = flat[:, : 3 * n].t() @ reads.reshape(-1, n)
        dw_o = flat[:, 3 * n :].t() @ phi_prev.reshape(-1, n)
        return d_act, dw_r, dw_o, ds0


def pseudo_fused(xp: Tensor, weight_hh: Tensor, weight_ho: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """Run time-major projected inputs xp (T, B, 4N); returns time-major outputs phi(s_t) and states s_t."""
    from sweep import cells_cpp

    if cells_cpp.backend_for(xp) == "cpp":
        return cells_cpp.pseudo_cpp(xp, weight_hh, weight_ho, s0)
    return _PseudoFunction.apply(xp, weight_hh, weight_ho, s0)
