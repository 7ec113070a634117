"""Fast kernel for the LSTM family: a torch.autograd.Function with a hand-written BPTT backward.

Why: autograd over a per-step Python loop records ~15 tiny ops per step and replays them one by one. Here

* the input projections of all steps are one matrix product (done by the caller, outside this Function);
* the forward loop (TorchScript) does one addmm per step and updates the gates in place;
* every derivative factor that does not depend on the incoming gradient (sigma', tanh', the chain through
  the peepholes) is computed for all steps at once, so the backward loop is ~6 ops and one matmul per step;
* the weight gradients are single matrix products over all steps after the loop.

On CPU tensors the loops run as compiled C++ (`sweep/csrc/lstm_family.cpp`, built on first use by
`sweep.cells_cpp`): one BLAS product per step and all gate arithmetic in one pass over raw pointers. The
TorchScript loops below are the fallback (no compiler, CUDA tensors, ODYSSEY_CELLS_BACKEND=script).

Gate blocks arrive in the layer's order: (i, f, z, o) without the removed ones, or (i, f, o, z) for FGR so
that the gates fed back to the next step are one contiguous slice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sweep import cells_cpp
from sweep.cells_common import dsigmoid as _dsigmoid
from sweep.cells_common import dtanh as _dtanh
from sweep.cells_common import script as _script


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


def _block(x: Tensor, off: int, n: int) -> Tensor:
    return x.narrow(-1, off, n)


def _forward_loop(
    xp: Tensor,
    w_t: Tensor,
    gw_t: Tensor,
    peep: Tensor,
    h: Tensor,
    c: Tensor,
    g: Tensor,
    n: int,
    off_i: int,
    off_f: int,
    off_z: int,
    off_o: int,
    forget: int,
    input_act: bool,
    output_act: bool,
    peepholes: bool,
    fgr: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run all steps of time-major xp (T, B, G*N); returns activations, cells c_t, outputs y_t, tanh(c_t).

    Every per-step view is cut before the loop (one unbind each), so the loop itself only runs the
    arithmetic, writing in place into the preallocated (T, B, .) buffers.
    """
    steps, batch = xp.size(0), xp.size(1)
    has_i = off_i >= 0
    has_f = forget == 0
    has_o = off_o >= 0
    both_if = has_i and has_f
    # peephole rows are stacked in the order i, f, o over the gates that exist
    k = 0
    p_i = peep
    p_f = peep
    p_o = peep
    if peepholes:
        if has_i:
            p_i = peep[k]
            k += 1
        if has_f:
            p_f = peep[k]
            k += 1
        if has_o:
            p_o = peep[k]
    p_if = peep.narrow(0, 0, 2) if both_if and peepholes else peep
    p_one = p_i if has_i else p_f
    first = off_i if has_i else off_f
    acts = torch.empty_like(xp)
    cs = xp.new_empty(steps, batch, n)
    ys = xp.new_empty(steps, batch, n)
    hcs = xp.new_empty(steps, batch, n) if output_act else cs
    x_l = xp.unbind(0)
    a_l = acts.unbind(0)
    c_l = cs.unbind(0)
    y_l = ys.unbind(0)
    hc_l = hcs.unbind(0)
    if both_if:
        gate_l = acts.narrow(2, first, 2 * n).view(steps, batch, 2, n).unbind(0)
    else:
        gate_l = acts.narrow(2, max(first, 0), n).unbind(0)
    z_l = acts.narrow(2, off_z, n).unbind(0)
    i_l = acts.narrow(2, off_i, n).unbind(0) if has_i else z_l
    f_l = acts.narrow(2, off_f, n).unbind(0) if has_f else z_l
    o_l = acts.narrow(2, off_o, n).unbind(0) if has_o else z_l
    g_l = acts.narrow(2, 0, 3 * n).unbind(0) if fgr else z_l
    cu_l = cs.unsqueeze(2).unbind(0)
    cu = c.unsqueeze(1)
    for t in range(steps):
        a = a_l[t]
        torch.addmm(x_l[t], h, w_t, out=a)
        if fgr:
            g_l[t].addmm_(g, gw_t)
        if both_if:
            blk = gate_l[t]
            if peepholes:
                blk.addcmul_(p_if, cu)
            blk.sigmoid_()
        elif has_i or has_f:
            blk = gate_l[t]
            if peepholes:
                blk.addcmul_(p_one, c)
            blk.sigmoid_()
        z = z_l[t]
        if input_act:
            z.tanh_()
        c_new = c_l[t]
        if both_if:
            torch.addcmul(z * i_l[t], f_l[t], c, out=c_new)
        elif has_f:  # NIG: i = 1
            torch.addcmul(z, f_l[t], c, out=c_new)
        elif forget == 2:  # NFG: f = 1
            torch.addcmul(c, z, i_l[t], out=c_new)
        else:  # CIFG: z*i + c*(1-i) = c + i*(z-c)
            torch.addcmul(c, i_l[t], z - c, out=c_new)
        hc = hc_l[t]
        if output_act:
            torch.tanh(c_new, out=hc)
        y = y_l[t]
        if has_o:
            o = o_l[t]
            if peepholes:
                o.addcmul_(p_o, c_new)
            o.sigmoid_()
            torch.mul(hc, o, out=y)
        else:
            y.copy_(hc)
        h = y
        c = c_new
        cu = cu_l[t]
        if fgr:
            g = g_l[t]
    return acts, cs, ys, hcs


def _backward_loop(
    d_act: Tensor,
    grad_y: Tensor,
    grad_c: Tensor,
    has_grad_c: bool,
    q: Tensor,
    r_o: Tensor,
    m: Tensor,
    k_fac: Tensor,
    w: Tensor,
    n: int,
    off_o: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """BPTT for the variants without gate recurrence; fills d_act (T, B, G*N), returns (dh0, dc0).

    Per step: dy = grad_y + dh; dc += dy * q; da_o = dy * r_o; da_(i,f,z) = dc * m; dc_prev = dc * k_fac.
    """
    steps, batch = grad_y.size(0), grad_y.size(1)
    blocks = width // n
    da_l = d_act.unbind(0)
    dabc_l = d_act.narrow(2, 0, width).view(steps, batch, blocks, n).unbind(0)
    do_l = d_act.narrow(2, off_o, n).unbind(0) if off_o >= 0 else da_l
    gy_l = grad_y.unbind(0)
    gc_l = grad_c.unbind(0) if has_grad_c else gy_l
    q_l = q.unbind(0)
    r_l = r_o.unbind(0) if off_o >= 0 else gy_l
    m_l = m.unbind(0)
    k_l = k_fac.unbind(0)
    dh = torch.zeros_like(gy_l[0])
    dc = torch.zeros_like(dh)
    for t in range(steps - 1, -1, -1):
        dy = gy_l[t] + dh
        if has_grad_c:
            dc = dc + gc_l[t]
        dc = torch.addcmul(dc, dy, q_l[t])
        if off_o >= 0:
            torch.mul(dy, r_l[t], out=do_l[t])
        torch.mul(dc.unsqueeze(1), m_l[t], out=dabc_l[t])
        dh = torch.mm(da_l[t], w)
        dc = dc * k_l[t]
    return dh, dc


def _backward_loop_fgr(
    d_act: Tensor,
    grad_y: Tensor,
    grad_c: Tensor,
    has_grad_c: bool,
    grad_g: Tensor,
    has_grad_g: bool,
    hc: Tensor,
    q: Tensor,
    zc: Tensor,
    dsig: Tensor,
    dz: Tensor,
    f: Tensor,
    peep: Tensor,
    w: Tensor,
    gw: Tensor,
    n: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """BPTT for FGR (layout i, f, o, z; peepholes on); fills d_act, returns (dh0, dc0, dg0)."""
    steps, batch = grad_y.size(0), grad_y.size(1)
    p_i, p_f, p_o = peep[0], peep[1], peep[2]
    da_l = d_act.unbind(0)
    dg_l = d_act.narrow(2, 0, 3 * n).unbind(0)
    dif_l = d_act.narrow(2, 0, 2 * n).view(steps, batch, 2, n).unbind(0)
    di_l = d_act.narrow(2, 0, n).unbind(0)
    df_l = d_act.narrow(2, n, n).unbind(0)
    do_l = d_act.narrow(2, 2 * n, n).unbind(0)
    dz_out_l = d_act.narrow(2, 3 * n, n).unbind(0)
    gy_l = grad_y.unbind(0)
    gc_l = grad_c.unbind(0) if has_grad_c else gy_l
    gg_l = grad_g.unbind(0) if has_grad_g else gy_l
    hc_l = hc.unbind(0)
    q_l = q.unbind(0)
    zc_l = zc.unbind(0)
    sif_l = dsig.narrow(2, 0, 2 * n).view(steps, batch, 2, n).unbind(0)
    so_l = dsig.narrow(2, 2 * n, n).unbind(0)
    dz_l = dz.unbind(0)
    f_l = f.unbind(0)
    dh = torch.zeros_like(gy_l[0])
    dc = torch.zeros_like(dh)
    dg = dh.new_zeros(batch, 3 * n)
    for t in range(steps - 1, -1, -1):
        if has_grad_g:
            dg = dg + gg_l[t]
        dy = gy_l[t] + dh
        da_o = do_l[t]
        torch.mul(torch.addcmul(dg.narrow(1, 2 * n, n), dy, hc_l[t]), so_l[t], out=da_o)
        if has_grad_c:
            dc = dc + gc_l[t]
        dc = torch.addcmul(dc, dy, q_l[t])
        dc.addcmul_(da_o, p_o)
        torch.mul(
            torch.addcmul(dg.narrow(1, 0, 2 * n).view(batch, 2, n), dc.unsqueeze(1), zc_l[t]),
            sif_l[t],
            out=dif_l[t],
        )
        torch.mul(dc, dz_l[t], out=dz_out_l[t])
        dh = torch.mm(da_l[t], w)
        dg = torch.mm(dg_l[t], gw)
        dc = dc * f_l[t]
        dc.addcmul_(di_l[t], p_i)
        dc.addcmul_(df_l[t], p_f)
    return dh, dc, dg


# backend -> (forward loop, backward loop, FGR backward loop); "python" runs them eagerly
_LOOPS = {"python": (_forward_loop, _backward_loop, _backward_loop_fgr)}
_LOOPS["script"] = tuple(_script(fn) for fn in _LOOPS["python"])


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, w, gw, peep, h0, c0, g0, lay: Layout):  # type: ignore[override]
        empty = xp.new_empty(0)
        ctx.backend = cells_cpp.backend_for(xp)
        if ctx.backend == "cpp":
            acts, cs, ys, hcs = cells_cpp.load().lstm_forward(xp, w, gw, peep, h0, c0, g0, *lay)
        else:
            acts, cs, ys, hcs = _LOOPS[ctx.backend][0](
                xp.contiguous(),
                w.t().contiguous(),  # a transposed copy: row-major products are faster per step
                gw.t().contiguous() if lay.fgr else empty,
                peep if lay.peepholes else empty,
                h0, c0, g0 if lay.fgr else empty, *lay,
            )  # fmt: skip
        ctx.lay = lay
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(acts, cs, ys, hcs, w, gw, peep, h0, c0, g0)
        gates = acts[:, :, : 3 * lay.n].contiguous() if lay.fgr else empty
        return ys, cs, gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_c, grad_g):  # type: ignore[override]
        acts, cs, ys, hcs, w, gw, peep, h0, c0, g0 = ctx.saved_tensors
        lay: Layout = ctx.lay
        if ctx.backend == "cpp":
            grads = cells_cpp.load().lstm_backward(
                acts, cs, ys, hcs, w, gw, peep, h0, c0, g0, grad_y, grad_c, grad_g, *lay
            )
            return (*grads, None)  # d_act, dw, dgw, dp, dh0, dc0, dg0 (None where absent), lay
        backward_loop, backward_loop_fgr = _LOOPS[ctx.backend][1:]
        n = lay.n
        if grad_y is None:
            grad_y = torch.zeros_like(ys)
        empty = ys.new_empty(0)
        c_prev = torch.cat([c0.unsqueeze(0), cs[:-1]], 0)
        hc = hcs if lay.output_act else cs
        d_act = torch.empty_like(acts)
        blk = {name: _block(acts, off, n) for name, off in zip("ifzo", lay[1:5], strict=True) if off >= 0}
        if lay.fgr:
            zc = torch.stack([blk["z"], c_prev], 2)
            dz = blk["i"] * (_dtanh(blk["z"]) if lay.input_act else 1)
            q = blk["o"] * (_dtanh(hc) if lay.output_act else 1)
            dh0, dc0, dg0 = backward_loop_fgr(
                d_act, grad_y, grad_c if grad_c is not None else empty, grad_c is not None,
                grad_g if grad_g is not None else empty, grad_g is not None,
                hc, q, zc, _dsigmoid(acts), dz, blk["f"], peep, w, gw, n,
            )  # fmt: skip
        else:
            q, r_o, m, k_fac = _factors(lay, blk, hc, c_prev, peep)
            dh0, dc0 = backward_loop(
                d_act, grad_y, grad_c if grad_c is not None else empty, grad_c is not None,
                q, r_o, m, k_fac, w, n, lay.off_o, m.size(2) * n,
            )  # fmt: skip
            dg0 = None
        flat = d_act.reshape(-1, d_act.size(2))
        h_prev = torch.cat([h0.unsqueeze(0), ys[:-1]], 0).reshape(-1, n)
        dw = flat.t() @ h_prev
        dgw = dp = None
        if lay.fgr:
            g_prev = torch.cat([g0.unsqueeze(0), acts[:-1, :, : 3 * n]], 0).reshape(-1, 3 * n)
            dgw = flat[:, : 3 * n].t() @ g_prev
        if lay.peepholes:
            rows = []
            if lay.off_i >= 0:
                rows.append((_block(d_act, lay.off_i, n) * c_prev).sum((0, 1)))
            if lay.forget == 0:
                rows.append((_block(d_act, lay.off_f, n) * c_prev).sum((0, 1)))
            if lay.off_o >= 0:
                rows.append((_block(d_act, lay.off_o, n) * cs).sum((0, 1)))
            dp = torch.stack(rows)
        return d_act, dw, dgw, dp, dh0, dc0, dg0, None


def _factors(
    lay: Layout, blk: dict[str, Tensor], hc: Tensor, c_prev: Tensor, peep: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradient factors for all steps at once.

    q: dy -> dc, r_o: dy -> da_o, m: dc -> da_(i,f,z), k: dc -> dc_prev.
    """
    empty = hc.new_empty(0)
    peeps = {}
    if lay.peepholes:
        names = [g for g, on in (("i", "i" in blk), ("f", "f" in blk), ("o", "o" in blk)) if on]
        peeps = dict(zip(names, peep, strict=True))
    i = blk.get("i")
    o = blk.get("o")
    z = blk["z"]
    q = _dtanh(hc) if lay.output_act else torch.ones_like(hc)
    r_o = empty
    if o is not None:
        r_o = hc * _dsigmoid(o)
        q = q * o
        if "o" in peeps:
            q = q + r_o * peeps["o"]
    parts, k_fac = [], None
    if i is not None:
        m_i = (z - c_prev if lay.forget == 1 else z) * _dsigmoid(i)
        parts.append(m_i)
    if lay.forget == 0:
        f = blk["f"]
        m_f = c_prev * _dsigmoid(f)
        parts.append(m_f)
        k_fac = f
    elif lay.forget == 1:
        k_fac = 1 - i
    else:
        k_fac = torch.ones_like(z)
    m_z = _dtanh(z) if lay.input_act else torch.ones_like(z)
    parts.append(m_z * i if i is not None else m_z)
    if "i" in peeps:
        k_fac = k_fac + m_i * peeps["i"]
    if "f" in peeps:
        k_fac = k_fac + m_f * peeps["f"]
    return q, r_o, torch.stack(parts, 2), k_fac


def lstm_fused(
    xp: Tensor, weight_hh: Tensor, gate_weight: Tensor | None, peephole: Tensor | None,
    state: tuple[Tensor, ...], lay: Layout,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Run time-major projected inputs xp (T, B, G*N) through the recurrence.

    Returns time-major outputs y, cells c and (FGR only, else empty) gate activations (i, f, o).
    """
    empty = xp.new_empty(0)
    g0 = state[2] if lay.fgr else empty
    return _LSTMFunction.apply(
        xp,
        weight_hh,
        gate_weight if gate_weight is not None else empty,
        peephole if peephole is not None else empty,
        state[0],
        state[1],
        g0,
        lay,
    )
