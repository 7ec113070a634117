"""Helpers shared by the recurrent layer implementations: initialisation and padding rules."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sweep.core.errors import ConfigError
from sweep.core.settings import INIT_SCHEMES, setting_problem


def check_init(init: str, init_scale: float) -> None:
    """Raise OdysseyError for an unknown init scheme or a non-positive normal scale."""
    if init not in INIT_SCHEMES:
        raise ConfigError(f"unknown init scheme {init!r}; expected one of {', '.join(INIT_SCHEMES)}")
    problem = setting_problem("init_scale", init_scale)
    if problem is not None:
        raise ConfigError(f"init_scale {problem}")


@torch.no_grad()
def init_matrix(weight: Tensor, blocks: int, init: str, scale: float, hidden_size: int) -> None:
    """Initialise a stacked (blocks * N, K) weight; xavier treats each gate's (N, K) block separately."""
    if init == "normal":
        weight.normal_(0.0, scale)
    elif init == "uniform":
        bound = 1.0 / math.sqrt(hidden_size)
        weight.uniform_(-bound, bound)
    else:
        for block in weight.chunk(blocks, 0):
            nn.init.xavier_uniform_(block)


@torch.no_grad()
def init_vector(weight: Tensor, init: str, scale: float, hidden_size: int) -> None:
    """Initialise peephole-like weight vectors (xavier has no fan for a vector: it uses torch's uniform)."""
    if init == "normal":
        weight.normal_(0.0, scale)
    else:
        bound = 1.0 / math.sqrt(hidden_size)
        weight.uniform_(-bound, bound)


def last_valid(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """From a (B, T, K) sequence, each row's entry at its last valid step (lengths - 1)."""
    if lengths is None:
        return seq[:, -1]
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, seq.size(2))
    return seq.gather(1, index).squeeze(1)


def zero_padding(seq: Tensor, mask: Tensor | None) -> Tensor:
    """Zero a (B, T, K) sequence at padded steps; `where` so that non-finite padding cannot leak."""
    if mask is None:
        return seq
    return torch.where(mask.unsqueeze(2), seq, torch.zeros((), dtype=seq.dtype, device=seq.device))


def run_torch_rnn(
    kind: str,
    layer: nn.Module,
    x: Tensor,
    lengths: Tensor | None,
    state: tuple[Tensor, ...],
    params: list[Tensor],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer through torch's fused LSTM/GRU kernel, packing the batch only when lengths differ."""
    if x.is_cuda:
        # cuDNN warns on every call that our weights are separate tensors (it copies them into its own
        # buffer, which costs little next to the sequence); keeping them separate keeps the parameter
        # layout identical on every device
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
            return _run_torch_rnn(kind, layer, x, lengths, state, params)
    return _run_torch_rnn(kind, layer, x, lengths, state, params)


def _run_torch_rnn(
    kind: str,
    layer: nn.Module,
    x: Tensor,
    lengths: Tensor | None,
    state: tuple[Tensor, ...],
    params: list[Tensor],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    rnn: Callable = torch.lstm if kind == "lstm" else torch.gru  # one call shape: (x, hx, params, ...)
    hx = tuple(s.unsqueeze(0).contiguous() for s in state)
    hx_arg = hx if kind == "lstm" else hx[0]
    if lengths is None:
        out = rnn(x, hx_arg, params, True, 1, 0.0, layer.training, False, True)
        return out[0], tuple(s[0] for s in out[1:])
    return _run_segments(rnn, kind, layer, x, lengths, hx, params)


def _run_segments(
    rnn: Callable,
    kind: str,
    layer: nn.Module,
    x: Tensor,
    lengths: Tensor,
    hx: tuple[Tensor, ...],
    params: list[Tensor],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    # Torch's packed-sequence path runs step by step on the CPU (7x slower than the fused kernel for a
    # JSB batch of 4). Instead: sort the rows by length and run the fused kernel once per time segment
    # between distinct lengths, dropping the rows that have ended, so padding never reaches a state.
    batch, steps = x.size(0), x.size(1)
    order = torch.argsort(lengths.detach().cpu(), descending=True, stable=True)
    ordered = lengths.detach().cpu()[order].tolist()
    index = order.to(x.device)
    xs = x.index_select(0, index)
    state = tuple(s.index_select(1, index) for s in hx)
    active = sum(1 for n in ordered if n > 0)
    ends = [tuple(s[:, active:] for s in state)]  # empty rows keep their initial state
    chunks, start = [], 0
    for stop in sorted({n for n in ordered if n > 0}):
        part = [s[:, :active].contiguous() for s in state]
        out = rnn(xs[:active, start:stop], tuple(part) if kind == "lstm" else part[0], params, True, 1, 0.0,
                  layer.training, False, True)
        state = tuple(out[1:])
        still = sum(1 for n in ordered if n > stop)
        ends.append(tuple(s[:, still:active] for s in state))
        chunks.append(F.pad(out[0], (0, 0, 0, 0, 0, batch - active)))
        active, start = still, stop
    if start < steps:
        chunks.append(x.new_zeros(batch, steps - start, chunks[0].size(2) if chunks else hx[0].size(2)))
    ys = torch.cat(chunks, 1)
    finals = tuple(torch.cat([e[i] for e in reversed(ends)], 1) for i in range(len(hx)))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch)
    inverse = inverse.to(x.device)
    return ys.index_select(0, inverse), tuple(f[0].index_select(0, inverse) for f in finals)
