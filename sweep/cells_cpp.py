"""Picks the kernel of the recurrent cells and wraps the C++ ones (`sweep/csrc/lstm_family.cpp`) for autograd.

`sweep.kernels` builds the C++ source once per machine and loads it (`load`, re-exported here).

`ODYSSEY_CELLS_BACKEND` picks the LSTM-family kernel (`sweep.cells_fused`):

* `auto` (default): the C++ kernels on CPU tensors when they build, else TorchScript;
* `cpp`: the C++ kernels on CPU tensors, and an error if they cannot be built;
* `script`: the TorchScript loops; `python`: the same loops run eagerly (slowest, for debugging).

CUDA tensors always take the TorchScript path. `gru_cpp` and `pseudo_cpp` are drop-in C++ versions of
the GRU and PLSTM kernels (`sweep.cells_gru_fused.gru_fused`, `sweep.cells_pseudo_fused.pseudo_fused`).
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from storage.errors import OdysseyError
from sweep.kernels import load

ENV_VAR = "ODYSSEY_CELLS_BACKEND"
BACKENDS = ("auto", "cpp", "script", "python")


def requested_backend() -> str:
    """The backend named by $ODYSSEY_CELLS_BACKEND (`auto` when unset); OdysseyError for an unknown one."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise OdysseyError(f"{ENV_VAR}={value!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return value


def backend_for(t: torch.Tensor) -> str:
    """`cpp`, `script` or `python`: the kernel that runs an LSTM-family layer on tensors like `t`."""
    wanted = requested_backend()
    if wanted in ("script", "python"):
        return wanted
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return "script"
    if wanted == "cpp":
        load(required=True)
        return "cpp"
    return "cpp" if load() is not None else "script"


class _GRUFunction(torch.autograd.Function):
    """The GRU recurrence of `sweep.cells_gru_fused` (same inputs and outputs) on the C++ kernels."""

    @staticmethod
    def forward(ctx, xp, w, b_hn, h0):  # type: ignore[override]
        rec_n, acts, ys = load(required=True).gru_forward(xp, w, b_hn, h0)
        ctx.save_for_backward(rec_n, acts, ys, w, h0)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        rec_n, acts, ys, w, h0 = ctx.saved_tensors
        return tuple(load(required=True).gru_backward(rec_n, acts, ys, w, h0, grad_y))


def gru_cpp(
    xp: torch.Tensor, weight_hh: torch.Tensor, bias_hn: torch.Tensor, h0: torch.Tensor
) -> torch.Tensor:
    """Drop-in for `sweep.cells_gru_fused.gru_fused` on CPU tensors: time-major xp (T, B, 3N) -> states."""
    return _GRUFunction.apply(xp, weight_hh, bias_hn, h0)


class _PseudoFunction(torch.autograd.Function):
    """The PLSTM recurrence of `sweep.cells_pseudo_fused` (same inputs and outputs) on the C++ kernels."""

    @staticmethod
    def forward(ctx, xp, w_r, w_o, s0):  # type: ignore[override]
        acts, reads, ss, ys, phi0 = load(required=True).plstm_forward(xp, w_r, w_o, s0)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(acts, reads, ss, ys, phi0, w_r, w_o, s0)
        return ys, ss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_s):  # type: ignore[override]
        return tuple(load(required=True).plstm_backward(*ctx.saved_tensors, grad_y, grad_s))


def pseudo_cpp(
    xp: torch.Tensor, weight_hh: torch.Tensor, weight_ho: torch.Tensor, s0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for `sweep.cells_pseudo_fused.pseudo_fused` on CPU tensors: xp (T, B, 4N) -> (ys, states)."""
    return _PseudoFunction.apply(xp, weight_hh, weight_ho, s0)
