"""The recurrent cells follow the equations of docs/variants.md, in both the fast and the reference paths."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from sweep.core.errors import OdysseyError
from sweep.core.variants import REGISTRY, LSTMSpec, Variant, custom_variant, legal_lstm_specs
from sweep.nn import base as cells_base
from sweep.nn import kernels
from sweep.nn.base import KERNELS, CompiledStep, can_run, kernel_for
from sweep.nn.cells import GREFF_VARIANTS, VARIANTS, detach_state, make_recurrent
from sweep.nn.gru import gru_cpp
from sweep.nn.models import SequenceModel
from sweep.nn.pseudo import pseudo_cpp
from sweep.spec import parse_spec
from sweep.training import TrainConfig

torch.set_num_threads(1)
DT = torch.float64
M, N = 3, 4  # input and hidden sizes used by most tests


def build(variant: str, reference: bool = False, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw.setdefault("forget_bias", 0.5)
    kw.setdefault("init_scale", 0.5)  # larger than the paper's 0.1 so that every term matters numerically
    return make_recurrent(variant, kw.pop("input_size", M), N, **kw).to(DT).set_reference(reference)


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def rand_state(model, batch: int, seed: int = 2) -> tuple[torch.Tensor, ...]:
    return tuple(
        randn(model.num_layers, batch, k, seed=seed + j) * 0.5 for j, k in enumerate(model.state_sizes)
    )


def run_and_grad(model, x, lengths=None, state=None):
    """Outputs, final state and the gradients (x, state, params) of a loss touching all of them."""
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state) if state is not None else None
    y, final = model(x, lengths, state)
    weights = randn(*y.shape, seed=7)
    loss = (y * weights).sum() + sum((s * s).sum() for s in final)
    inputs = [x, *(state or ()), *model.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    return y, final, grads


def assert_close(a, b, tol=1e-10):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_close(u, v, tol)
        return
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def layer_params(model) -> dict[str, torch.Tensor]:
    return dict(model.layers[0].named_parameters())


def gate_rows(model, gate: str) -> slice:
    layer = model.layers[0]
    k = layer.spec.gates.index(gate)
    return slice(k * N, (k + 1) * N)


def copy_gates(dst, src) -> None:
    """Copy every gate block (by name) and peephole that both LSTM-family models have from src to dst."""
    d, s = dst.layers[0], src.layers[0]
    with torch.no_grad():
        for gate in d.spec.gates:
            if gate in s.spec.gates:
                for name in ("weight_ih", "weight_hh", "bias"):
                    getattr(d, name)[gate_rows(dst, gate)] = getattr(s, name)[gate_rows(src, gate)]
        for k, gate in enumerate(d.spec.peephole_gates):
            if gate in s.spec.peephole_gates:
                d.peephole[k] = s.peephole[s.spec.peephole_gates.index(gate)]


# --------------------------------------------------------------------------- API and parameters


def test_variant_lists() -> None:
    assert GREFF_VARIANTS == ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
    assert (*GREFF_VARIANTS, "GRU", "PLSTM") == VARIANTS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "LSTMX"}, "unknown variant 'LSTMX'"),
        ({"init": "orthogonal"}, "unknown init scheme 'orthogonal'"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"forget_bias": math.nan}, "forget_bias"),
    ],
)
def test_bad_configuration_raises_one_line_error(kwargs, message) -> None:
    args = {"variant": "V", "input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(OdysseyError, match=message) as info:
        make_recurrent(**args)
    assert "\n" not in str(info.value)


def test_bad_inputs_raise() -> None:
    # Tensors of the wrong shape are the calling code's bug: built-in ValueErrors, not OdysseyErrors.
    model = build("V")
    x = randn(2, 5, M)
    with pytest.raises(ValueError, match="lengths") as info:
        model(x, torch.tensor([5, -1]))
    assert not isinstance(info.value, OdysseyError)
    with pytest.raises(ValueError, match="lengths"):
        model(x, torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths"):
        model(x, torch.tensor([5.0, 2.0]))
    assert torch.equal(model(x, [5, 2])[0], model(x, torch.tensor([5, 2]))[0])  # a plain list works too
    with pytest.raises(ValueError, match="input of shape") as info:
        model(randn(2, 5, M + 1))
    assert not isinstance(info.value, OdysseyError)
    with pytest.raises(ValueError, match="state") as info:
        model(x, None, (torch.zeros(1, 3, N, dtype=DT),) * 2)
    assert not isinstance(info.value, OdysseyError)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_leave_out_unused_parameters(variant: str) -> None:
    per_gate = N * (M + N + 1)  # W, R and b of one gate block
    expected = {
        "V": 4 * per_gate + 3 * N,
        "NIG": 3 * per_gate + 2 * N,
        "NFG": 3 * per_gate + 2 * N,
        "NOG": 3 * per_gate + 2 * N,
        "NIAF": 4 * per_gate + 3 * N,
        "NOAF": 4 * per_gate + 3 * N,
        "NP": 4 * per_gate,
        "CIFG": 3 * per_gate + 2 * N,
        "FGR": 4 * per_gate + 3 * N + 9 * N * N,
        "GRU": 3 * per_gate + N,  # plus b_hn, which sits inside the reset product
        "PLSTM": 4 * per_gate,
    }[variant]
    model = build(variant)
    assert model.num_parameters() == expected == REGISTRY[variant].num_parameters(M, N)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_forget_bias_initialisation(variant: str) -> None:
    model = build(variant, forget_bias=2.5, num_layers=2)
    for layer in model.layers:
        bias = layer.bias.detach()
        if variant == "GRU":
            hot = slice(N, 2 * N)  # update gate (torch order r, u, n)
        elif variant == "PLSTM":
            hot = slice(N, 2 * N)  # blocks i, f, s~, o
        elif variant == "NFG":
            assert torch.all(bias == 0)
            continue
        elif variant == "CIFG":
            hot = gate_rows(model, "i")
        else:
            hot = gate_rows(model, "f")
        expect = torch.zeros_like(bias)
        expect[hot] = -2.5 if variant == "CIFG" else 2.5
        assert torch.equal(bias, expect)


@pytest.mark.parametrize("init", ["normal", "uniform", "xavier"])
def test_init_schemes(init: str) -> None:
    torch.manual_seed(0)
    model = make_recurrent("V", 50, 100, init=init, init_scale=0.1)
    w = model.layers[0].weight_hh.detach()
    if init == "normal":
        assert abs(w.std().item() - 0.1) < 0.005 and abs(w.mean().item()) < 0.005
    elif init == "uniform":
        assert w.abs().max() <= 0.1 and w.abs().max() > 0.099
    else:
        bound = math.sqrt(6 / (100 + 100))  # one gate block is 100 x 100
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound


def test_determinism() -> None:
    x = randn(2, 5, M)
    for variant in VARIANTS:
        a, b = build(variant, seed=3), build(variant, seed=3)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
        ya, yb = a(x)[0], b(x)[0]
        assert torch.equal(ya, yb) and torch.equal(ya, a(x)[0])
        other = build(variant, seed=4).parameters()
        assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), other, strict=True))


# --------------------------------------------------------------------------- the equations


def test_np_equals_torch_lstm_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    ref = torch.nn.LSTM(M, N, batch_first=True).to(DT)
    x, h0, c0 = randn(3, 6, M), randn(1, 3, N, seed=2), randn(1, 3, N, seed=3)
    for reference in (False, True):
        model = build("NP", reference)
        layer = model.layers[0]
        with torch.no_grad():
            layer.weight_ih.copy_(ref.weight_ih_l0)
            layer.weight_hh.copy_(ref.weight_hh_l0)
            layer.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
        y, (h, c) = model(x, None, (h0, c0))
        y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
        assert_close((y, h, c), (y_ref, h_ref, c_ref))
        g = torch.autograd.grad(y.pow(2).sum() + c.sum(), [layer.weight_ih, layer.weight_hh, layer.bias])
        g_ref = torch.autograd.grad(
            y_ref.pow(2).sum() + c_ref.sum(), [ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0]
        )
        assert_close(g, g_ref)


@pytest.mark.parametrize("reference", [False, True])
def test_v_with_zero_peepholes_equals_np(reference: bool) -> None:
    v, np_ = build("V", reference), build("NP", reference, seed=5)
    copy_gates(np_, v)
    with torch.no_grad():
        v.layers[0].peephole.zero_()
    x, state = randn(2, 5, M), rand_state(v, 2)
    assert_close(run_and_grad(v, x, None, state)[:2], run_and_grad(np_, x, None, state)[:2])
    # the gradients of the shared weights agree too
    gv, gn = run_and_grad(v, x, None, state)[2], run_and_grad(np_, x, None, state)[2]
    assert_close(gv[:6], gn[:6])  # x, h0, c0, weight_ih, weight_hh, bias


@pytest.mark.parametrize("variant", ["NIG", "NFG", "NOG"])
@pytest.mark.parametrize("reference", [False, True])
def test_removed_gate_equals_saturated_gate(variant: str, reference: bool) -> None:
    """Removing a gate is V with that gate's pre-activation forced to +infinity (sigma = 1 exactly)."""
    gate = {"NIG": "i", "NFG": "f", "NOG": "o"}[variant]
    v, cut = build("V", reference), build(variant, reference, seed=5)
    copy_gates(cut, v)
    with torch.no_grad():
        v.layers[0].bias[gate_rows(v, gate)] = 1e4
    x, state = randn(2, 5, M), rand_state(v, 2)
    yv, sv, gv = run_and_grad(v, x, None, state)
    yc, sc, gc = run_and_grad(cut, x, None, state)
    assert_close((yv, sv), (yc, sc))
    assert_close(gv[:3], gc[:3])  # gradients to x and the initial state
    names_v = [n for n, _ in v.layers[0].named_parameters()]
    for name, grad in zip([n for n, _ in cut.layers[0].named_parameters()], gc[3:], strict=True):
        full = gv[3 + names_v.index(name)]
        if name == "peephole":
            keep = [v.layers[0].spec.peephole_gates.index(g) for g in cut.layers[0].spec.peephole_gates]
            assert_close(full[keep], grad)
        else:
            rows = torch.cat([torch.arange(N * 4)[gate_rows(v, g)] for g in cut.layers[0].spec.gates])
            assert_close(full[rows], grad)


def oracle(params: dict, x, h, c, g=torch.tanh, act_h=torch.tanh):
    """docs/variants.md's vanilla LSTM written out with pluggable g and h; blocks in order i, f, z, o."""
    w, r, b, p = params["weight_ih"], params["weight_hh"], params["bias"], params["peephole"]
    ys = []
    for t in range(x.size(1)):
        pre = (x[:, t] @ w.t() + h @ r.t() + b).split(N, 1)
        z = g(pre[2])
        i = torch.sigmoid(pre[0] + p[0] * c)
        f = torch.sigmoid(pre[1] + p[1] * c)
        c = z * i + c * f
        o = torch.sigmoid(pre[3] + p[2] * c)
        h = act_h(c) * o
        ys.append(h)
    return torch.stack(ys, 1), c


@pytest.mark.parametrize(
    ("variant", "acts"),
    [
        ("V", (torch.tanh, torch.tanh)),
        ("NIAF", (lambda u: u, torch.tanh)),
        ("NOAF", (torch.tanh, lambda u: u)),
    ],
)
@pytest.mark.parametrize("reference", [False, True])
def test_activations_follow_the_equations(variant: str, acts, reference: bool) -> None:
    model = build(variant, reference)
    x, (h0, c0) = randn(2, 6, M), rand_state(model, 2)
    y, (h, c) = model(x, None, (h0, c0))
    y_ref, c_ref = oracle(layer_params(model), x, h0[0], c0[0], *acts)
    assert_close((y, c[0]), (y_ref, c_ref))


@pytest.mark.parametrize("reference", [False, True])
def test_cifg_forget_gate_is_one_minus_input_gate(reference: bool) -> None:
    """f = 1 - i = sigma(-i_bar): CIFG equals V whose forget block is the negated input block."""
    cifg, v = build("CIFG", reference), build("V", reference, seed=5)
    copy_gates(v, cifg)
    with torch.no_grad():
        lv, lc = v.layers[0], cifg.layers[0]
        for name in ("weight_ih", "weight_hh", "bias"):
            getattr(lv, name)[gate_rows(v, "f")] = -getattr(lc, name)[gate_rows(cifg, "i")]
        lv.peephole[1] = -lc.peephole[0]
    x, state = randn(2, 6, M), rand_state(v, 2)
    assert_close(run_and_grad(cifg, x, None, state)[:2], run_and_grad(v, x, None, state)[:2])


@pytest.mark.parametrize("reference", [False, True])
def test_fgr_with_zero_gate_recurrence_equals_v(reference: bool) -> None:
    fgr, v = build("FGR", reference), build("V", reference, seed=5)
    copy_gates(v, fgr)
    with torch.no_grad():
        fgr.layers[0].gate_weight.zero_()
    x, (h0, c0, g0) = randn(2, 6, M), rand_state(fgr, 2)
    yf, sf = fgr(x, None, (h0, c0, g0))
    yv, sv = v(x, None, (h0, c0))
    assert_close((yf, sf[:2]), (yv, sv))
    # the fed-back gates are the previous step's (i, f, o): with them non-zero, FGR differs from V
    with torch.no_grad():
        fgr.layers[0].gate_weight.normal_(0, 0.5)
    assert (fgr(x, None, (h0, c0, g0))[0] - yv).abs().max() > 1e-3


def test_fgr_feeds_back_post_sigmoid_gates() -> None:
    fgr = build("FGR")
    x, state = randn(2, 4, M), rand_state(fgr, 2)
    _, (h, c, gates) = fgr(x, None, state)
    assert gates.shape == (1, 2, 3 * N) and bool(((gates > 0) & (gates < 1)).all())


@pytest.mark.parametrize("kernel", [None, "torch", "reference"])
def test_gru_equals_torch_gru(kernel: str | None) -> None:
    torch.manual_seed(0)
    ref = torch.nn.GRU(M, N, batch_first=True).to(DT)
    model = build("GRU").set_kernel(kernel)
    layer = model.layers[0]
    with torch.no_grad():
        layer.weight_ih.copy_(ref.weight_ih_l0)
        layer.weight_hh.copy_(ref.weight_hh_l0)
        layer.bias.copy_(ref.bias_ih_l0)
        layer.bias[: 2 * N] += ref.bias_hh_l0[: 2 * N]
        layer.bias_hn.copy_(ref.bias_hh_l0[2 * N :])
    x, h0 = randn(3, 5, M), randn(1, 3, N, seed=4)
    y, (h,) = model(x, None, (h0,))
    y_ref, h_ref = ref(x, h0)
    assert_close((y, h), (y_ref, h_ref))
    g = torch.autograd.grad(y.pow(2).sum(), [layer.weight_hh, layer.bias_hn])
    g_ref = torch.autograd.grad(y_ref.pow(2).sum(), [ref.weight_hh_l0, ref.bias_hh_l0])
    assert_close(g, (g_ref[0], g_ref[1][2 * N :]))
    # padded batches through the same kernel
    lengths = torch.tensor([5, 2, 3])
    y_pad, (h_pad,) = model(x, lengths, (h0,))
    for b, length in enumerate(lengths.tolist()):
        y_one, h_one = ref(x[b : b + 1, :length], h0[:, b : b + 1])
        assert_close((y_pad[b : b + 1, :length], h_pad[:, b : b + 1]), (y_one, h_one))


@pytest.mark.parametrize("reference", [False, True])
def test_pseudo_lstm_equations(reference: bool) -> None:
    model = build("PLSTM", reference)
    p = layer_params(model)
    x, (s0,) = randn(2, 5, M), rand_state(model, 2)
    y, (s,) = model(x, None, (s0,))
    state, ys = s0[0], []
    for t in range(x.size(1)):
        u = x[:, t] @ p["weight_ih"].t() + p["bias"]
        o = torch.sigmoid(torch.tanh(state) @ p["weight_ho"].t() + u[:, 3 * N :])
        read = o * torch.tanh(state)
        pre = read @ p["weight_hh"].t() + u[:, : 3 * N]
        i, f, cand = torch.sigmoid(pre[:, :N]), torch.sigmoid(pre[:, N : 2 * N]), torch.tanh(pre[:, 2 * N :])
        state = f * state + i * cand
        ys.append(torch.tanh(state))
    assert_close((y, s[0]), (torch.stack(ys, 1), state))


# ----------------------------------------------------------------------- fast path vs reference, gradients


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_path_equals_reference(variant: str) -> None:
    fast, ref = build(variant, num_layers=2), build(variant, True, num_layers=2)
    x, lengths, state = randn(3, 6, M), torch.tensor([6, 2, 4]), rand_state(fast, 3)
    expected = run_and_grad(ref, x, lengths, state)
    for _ in range(2):  # a second call on the same kernel gives the same answer
        assert_close(run_and_grad(fast, x, lengths, state), expected)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reference", [False, True])
def test_gradcheck(variant: str, reference: bool) -> None:
    model = build(variant, reference, input_size=2, forget_bias=0.3)
    names = [n for n, _ in model.named_parameters()]
    x, lengths = randn(2, 3, 2), torch.tensor([3, 2])
    state = rand_state(model, 2)
    n_state = len(state)

    def fn(x, *rest):
        st, params = rest[:n_state], dict(zip(names, rest[n_state:], strict=True))
        y, final = functional_call(model, params, (x, lengths, st))
        return (y, *final)

    inputs = (x, *state, *(p.detach() for p in model.parameters()))
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- padding, chunks, layers


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_batch_equals_sequences_one_by_one(variant: str) -> None:
    model = build(variant)
    lengths = torch.tensor([5, 2, 4])
    x = randn(3, 5, M)
    x[1, 2:] = math.nan  # garbage in the padding must not leak anywhere
    x[2, 4:] = 1e6
    state = rand_state(model, 3)
    y, final, grads = run_and_grad(model, x, lengths, state)
    assert torch.isfinite(y).all() and torch.all(y[1, 2:] == 0) and torch.all(y[2, 4:] == 0)
    assert all(torch.isfinite(g).all() for g in grads)
    param_grads = [torch.zeros_like(p) for p in model.parameters()]
    for b, length in enumerate(lengths.tolist()):
        one = tuple(s[:, b : b + 1] for s in state)
        yb, fb, gb = run_and_grad(model, x[b : b + 1, :length], None, one)
        weights = randn(*y.shape, seed=7)[b : b + 1, :length]
        assert_close(y[b : b + 1, :length], yb)
        assert_close(tuple(f[:, b : b + 1] for f in final), fb)
        # the per-sequence loss uses the same output weights as the batched one
        yb2, fb2 = model(x[b : b + 1, :length], None, one)
        loss = (yb2 * weights).sum() + sum((s * s).sum() for s in fb2)
        for acc, g in zip(param_grads, torch.autograd.grad(loss, list(model.parameters())), strict=True):
            acc += g
    assert_close(list(grads[1 + len(state) :]), param_grads)


@pytest.mark.parametrize("variant", ["V", "NP", "GRU", "FGR", "PLSTM"])
def test_empty_rows_keep_their_state(variant: str) -> None:
    """A row with no valid step (its stream ended in an earlier chunk) outputs zeros and keeps its state."""
    model = build(variant, num_layers=2)
    x, state = randn(3, 4, M), rand_state(model, 3)
    state = tuple(s.requires_grad_(True) for s in state)
    y, final = model(x, torch.tensor([4, 0, 2]), state)
    assert torch.all(y[1] == 0)
    assert_close(tuple(f[:, 1] for f in final), tuple(s[:, 1] for s in state))
    y_rest, final_rest = model(x[[0, 2]], torch.tensor([4, 2]), tuple(s[:, [0, 2]] for s in state))
    assert_close((y[[0, 2]], tuple(f[:, [0, 2]] for f in final)), (y_rest, final_rest))
    grads = torch.autograd.grad(sum(f.sum() for f in final), state)
    assert all(torch.all(g[:, 1] == 1) for g in grads)  # the kept state passes its gradient straight back


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_carries_across_chunks(variant: str) -> None:
    model = build(variant, num_layers=2)
    x, state = randn(2, 7, M), rand_state(model, 2)
    y_all, s_all = model(x, None, state)
    y1, s1 = model(x[:, :3], None, state)
    y2, s2 = model(x[:, 3:], None, s1)
    assert_close((torch.cat([y1, y2], 1), s2), (y_all, s_all))
    # detaching cuts the gradient to the first chunk but keeps the values
    y3, _ = model(x[:, 3:], None, detach_state(s1))
    assert_close(y3, y2)
    assert all(not s.requires_grad for s in detach_state(s1))


@pytest.mark.parametrize("variant", ["V", "NP", "GRU", "PLSTM", "FGR"])
def test_two_layers_stack_two_single_layers(variant: str) -> None:
    deep = build(variant, num_layers=2)
    first, second = build(variant), build(variant, input_size=N)
    with torch.no_grad():
        for dst, src in ((first, deep.layers[0]), (second, deep.layers[1])):
            for p, q in zip(dst.layers[0].parameters(), src.parameters(), strict=True):
                p.copy_(q)
    x, lengths = randn(3, 5, M), torch.tensor([5, 3, 1])
    y, final = deep(x, lengths)
    y1, f1 = first(x, lengths)
    y2, f2 = second(y1, lengths)
    assert y.shape == (3, 5, N) and all(s.shape[0] == 2 for s in final)
    assert_close((y, final), (y2, tuple(torch.cat([a, b]) for a, b in zip(f1, f2, strict=True))))


def test_float32_default_and_train_step_reduces_loss() -> None:
    """A real use: the float32 model learns to copy a delayed input on a tiny task."""
    torch.manual_seed(0)
    model = make_recurrent("V", 2, 8, forget_bias=1.0)
    head = torch.nn.Linear(8, 2)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    x = torch.randn(16, 6, 2)
    target = torch.roll(x, 1, dims=1)
    losses = []
    for _ in range(40):
        y, _ = model(x)
        loss = torch.nn.functional.mse_loss(head(y)[:, 1:], target[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert y.dtype == torch.float32
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ kernels: registry, C++, compiled

# the paper's variants that run on the C++ kernel (all but NP, which is torch's own cell)
LSTM_KERNEL_VARIANTS = tuple(v for v in GREFF_VARIANTS if not REGISTRY[v].lstm.is_torch_lstm)


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """Names of the C++ kernel functions called during the test (the real kernels still run)."""
    real = kernels.load(required=True)  # the first test to ask compiles the kernels (once per machine)
    calls: list[str] = []

    class Spy:
        def __getattr__(self, name: str):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(kernels, "load", lambda required=False: Spy())
    return calls


def build_wide(variant: str, dtype: torch.dtype, reference: bool = False) -> torch.nn.Module:
    """Hidden size 37: wider than one AVX-512 register of floats, and not a multiple of one."""
    torch.manual_seed(0)
    model = make_recurrent(variant, 5, 37, num_layers=2, forget_bias=0.5, init_scale=0.3)
    return model.to(dtype).set_reference(reference)


def wide_inputs(model, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 5, generator=gen).to(dtype)
    state = tuple((torch.randn(2, 3, k, generator=gen) * 0.5).to(dtype) for k in model.state_sizes)
    return x, torch.tensor([7, 3, 5]), state


@pytest.mark.parametrize("variant", LSTM_KERNEL_VARIANTS)
def test_cpp_kernel_equals_reference_in_float32(variant: str, kernel_calls, monkeypatch) -> None:
    """float32 (the fast exp/tanh approximations), hidden 37, padding and a carried state."""
    monkeypatch.setenv(cells_base.ENV_VAR, "cpp")
    fast = build_wide(variant, torch.float32)
    x, lengths, state = wide_inputs(fast, torch.float32)
    got = run_and_grad(fast, x, lengths, state)
    assert kernel_calls.count("lstm_forward") == 2 and kernel_calls.count("lstm_backward") == 2
    expected = run_and_grad(build_wide(variant, torch.float32, reference=True), x, lengths, state)
    assert_close(got, expected, tol=2e-5)


@pytest.mark.parametrize("variant", LSTM_KERNEL_VARIANTS)
def test_cpp_kernel_gradcheck(variant: str, kernel_calls, monkeypatch) -> None:
    monkeypatch.setenv(cells_base.ENV_VAR, "cpp")
    test_gradcheck(variant, reference=False)
    assert "lstm_backward" in kernel_calls


def test_unknown_backend_raises(monkeypatch) -> None:
    monkeypatch.setenv(cells_base.ENV_VAR, "fortran")
    with pytest.raises(OdysseyError, match="ODYSSEY_CELLS_BACKEND='fortran'") as info:
        build("V")(randn(1, 2, M))
    assert "\n" not in str(info.value)


def test_unknown_kernel_raises() -> None:
    with pytest.raises(OdysseyError, match="GRU has no kernel 'compiled'") as info:
        build("GRU").set_kernel("compiled")
    assert "\n" not in str(info.value)


def test_kernel_registry_routing(monkeypatch, kernel_calls) -> None:
    """One registry keyed by family and device; the C++ kernels take CPU float32/float64 only."""
    monkeypatch.delenv(cells_base.ENV_VAR, raising=False)
    meta = torch.device("meta")  # stands in for a GPU
    assert kernel_for("lstm", "cpu") == "cpp" and kernel_for("lstm", "cpu", DT) == "cpp"
    assert kernel_for("lstm", "cpu", torch.bfloat16) == "reference"
    assert kernel_for("lstm", meta) == "compiled" and kernel_for("plstm", meta) == "compiled"
    assert kernel_for("np", "cpu") == "torch" and kernel_for("np", meta) == "torch"
    assert kernel_for("gru", "cpu") == "cpp" and kernel_for("gru", meta) == "torch"
    assert {family for family, _ in KERNELS} == {"lstm", "np", "gru", "plstm"}
    assert build("NP").kernel_for(randn(1, 2, M)) == "torch"
    assert build("V").kernel_for(randn(1, 2, M)) == "cpp"
    monkeypatch.setenv(cells_base.ENV_VAR, " Reference ")
    assert build("NP").kernel_for(randn(1, 2, M)) == "reference"
    monkeypatch.setenv(cells_base.ENV_VAR, "compiled")  # GRU has no compiled kernel: it keeps its own
    assert build("GRU").kernel_for(randn(1, 2, M)) == "cpp" and kernel_for("lstm", "cpu") == "compiled"


def test_print_names_the_variant_and_its_switches() -> None:
    text = str(build("NIG", num_layers=2))
    assert "variant=NIG, num_layers=2" in text
    assert "LSTMLayer(NIG (no input gate), 3 -> 4, input_gate=False, forget_gate=gate" in text
    assert "gate_recurrence=False" in text
    assert "GRULayer(GRU (gated recurrent unit" in str(build("GRU"))


@pytest.mark.parametrize("variant", ["V", "CIFG", "FGR"])
def test_cpp_kernel_without_direct_blas(variant: str, kernel_calls, monkeypatch) -> None:
    """On a torch build that exports no BLAS the kernels multiply through at::addmm_: same answers."""
    monkeypatch.setenv(cells_base.ENV_VAR, "cpp")
    module = kernels.load()
    assert module.has_blas()  # this torch build exports sgemm_/dgemm_, so the default path is direct BLAS
    fast = build_wide(variant, torch.float64)
    x, lengths, state = wide_inputs(fast, torch.float64)
    direct = run_and_grad(fast, x, lengths, state)
    module.use_blas(False)
    try:
        fallback = run_and_grad(fast, x, lengths, state)
    finally:
        module.use_blas(True)
    assert_close(fallback, direct, tol=1e-12)


def gru_inputs(dtype: torch.dtype, steps: int = 7, batch: int = 3, n: int = 37) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    xp = torch.randn(steps, batch, 3 * n, generator=gen)
    w = torch.randn(3 * n, n, generator=gen) * 0.3
    b_hn, h0 = torch.randn(n, generator=gen), torch.randn(batch, n, generator=gen)
    return tuple(t.to(dtype).requires_grad_(True) for t in (xp, w, b_hn, h0))


def test_cpp_gru_kernel_gradcheck_and_torch_gru(kernel_calls) -> None:
    assert torch.autograd.gradcheck(gru_cpp, gru_inputs(DT, 3, 2, N), eps=1e-6, atol=1e-6)
    torch.manual_seed(0)
    ref = torch.nn.GRU(M, N).to(DT)  # time-major, like the kernel
    x, h0 = randn(5, 2, M), randn(1, 2, N, seed=4)
    xp = torch.nn.functional.linear(x, ref.weight_ih_l0, ref.bias_ih_l0)
    xp = xp + torch.cat([ref.bias_hh_l0[: 2 * N], torch.zeros(N, dtype=DT)])
    y = gru_cpp(xp, ref.weight_hh_l0, ref.bias_hh_l0[2 * N :], h0[0])
    assert_close(y, ref(x, h0)[0])


def test_cpp_pseudo_kernel_gradcheck(kernel_calls) -> None:
    gen = torch.Generator().manual_seed(0)
    xp = torch.randn(3, 2, 4 * N, generator=gen)
    w_r, w_o = torch.randn(3 * N, N, generator=gen) * 0.3, torch.randn(N, N, generator=gen) * 0.3
    s0 = torch.randn(2, N, generator=gen)
    inputs = tuple(t.to(DT).requires_grad_(True) for t in (xp, w_r, w_o, s0))
    assert torch.autograd.gradcheck(pseudo_cpp, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("variant", "kernel"), [("GRU", "gru_forward"), ("PLSTM", "plstm_forward")])
def test_gru_and_plstm_layers_run_on_the_cpp_kernel(variant: str, kernel: str, kernel_calls) -> None:
    torch.manual_seed(0)
    layer = make_recurrent(variant, 5, 8)
    y, _ = layer(torch.randn(2, 6, 5), torch.tensor([6, 3]))
    y.sum().backward()
    assert kernel in kernel_calls


# ------------------------------------------------------ property test: every switch combination x kernel

LEGAL_SPECS = list(legal_lstm_specs())


def spec_name(spec: LSTMSpec) -> str:
    off = [k for k, v in spec.switches().items() if v is False and k != "gate_recurrence"]
    fgr = "-FGR" if spec.gate_recurrence else ""
    return f"f={spec.forget_gate}" + "".join(f"-no_{k}" for k in off) + fgr


def kernels_to_check(model) -> list[str]:
    """Every kernel of the layer that runs on this machine, besides the reference it is checked against.
    `compiled` runs its graph capture (dynamo + AOTAutograd, backend aot_eager): inductor's code
    generation per combination would take minutes (test_compiled_path_with_inductor covers it)."""
    cpu = torch.device("cpu")
    return [k for k in model.layers[0].implemented if k != "reference" and can_run(k, cpu, DT)]


def check_against_reference(variant: Variant, kernel: str, monkeypatch) -> None:
    torch.manual_seed(0)
    model = make_recurrent(variant, 2, 3, forget_bias=0.5, init_scale=0.5).to(DT)
    if kernel == "compiled":
        aot = CompiledStep(model.layers[0].make_step(), backend="aot_eager")
        monkeypatch.setattr(type(model.layers[0]), "compiled_step", lambda self: aot)
    x, lengths = randn(3, 4, 2), torch.tensor([4, 1, 3])  # ragged
    state = tuple(randn(1, 3, k, seed=2 + j) * 0.5 for j, k in enumerate(model.state_sizes))
    got = run_and_grad(model.set_kernel(kernel), x, lengths, state)
    expected = run_and_grad(model.set_kernel("reference"), x, lengths, state)
    assert_close(got, expected)
    if kernel == "compiled":
        assert not aot.failed  # it really ran through dynamo, not the eager fallback


@pytest.mark.parametrize("spec", LEGAL_SPECS, ids=spec_name)
def test_every_switch_combination_on_every_kernel_equals_the_reference(spec: LSTMSpec, monkeypatch) -> None:
    """Outputs, final states and all gradients (inputs, initial state, parameters), ragged lengths,
    float64, against the reference step; parameter counts against the registry's formula."""
    variant = Variant("X", "lstm", "custom", spec)
    model = make_recurrent(variant, 2, 3)
    assert model.num_parameters() == variant.num_parameters(2, 3)
    kernels = kernels_to_check(model)
    assert "cpp" in kernels and "compiled" in kernels
    for kernel in kernels:
        check_against_reference(variant, kernel, monkeypatch)


@pytest.mark.parametrize("name", ["GRU", "PLSTM"])
def test_gru_and_plstm_kernels_equal_the_reference(name: str, monkeypatch) -> None:
    for kernel in kernels_to_check(make_recurrent(name, 2, 3)):
        check_against_reference(REGISTRY[name], kernel, monkeypatch)


def test_no_input_and_no_forget_gate_adds_the_block_input() -> None:
    """i = f = 1: c_t = c_(t-1) + g(z_bar), not c_(t-1) + g(z_bar)^2 (a bug of the TorchScript kernels)."""
    variant = custom_variant("NIG-NFG", {"input_gate": False, "forget_gate": "none"})
    model = make_recurrent(variant, M, N).to(DT)
    p = layer_params(model)
    x, (h0, c0) = randn(2, 3, M), rand_state(model, 2)
    h, c = h0[0], c0[0]
    for t in range(3):
        pre = x[:, t] @ p["weight_ih"].t() + h @ p["weight_hh"].t() + p["bias"]
        z, o_bar = pre.split(N, 1)  # the blocks are z, o
        c = c + torch.tanh(z)
        h = torch.tanh(c) * torch.sigmoid(o_bar + p["peephole"][0] * c)
    for kernel in kernels_to_check(model) + ["reference"]:
        if kernel != "compiled":
            _, (h_end, c_end) = model.set_kernel(kernel)(x, None, (h0, c0))
            assert_close((h_end[0], c_end[0]), (h, c))


def test_compiled_step_falls_back_to_eager(monkeypatch, caplog) -> None:
    """Where torch.compile cannot compile (no compiler for its backend), the step runs eagerly."""

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nfound")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(CompiledStep, "_warned", False)
    model = build("FGR")
    step = CompiledStep(model.layers[0].make_step())
    monkeypatch.setattr(type(model.layers[0]), "compiled_step", lambda self: step)
    x, lengths, state = randn(2, 4, M), torch.tensor([4, 2]), rand_state(model, 2)
    with caplog.at_level("WARNING", logger="odyssey.sweep.cells_base"):
        got = run_and_grad(model.set_kernel("compiled"), x, lengths, state)
        run_and_grad(model, x, lengths, state)
    assert step.failed and caplog.text.count("torch.compile is unavailable (no C++ compiler found)") == 1
    assert_close(got, run_and_grad(model.set_kernel("reference"), x, lengths, state))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_path_with_inductor() -> None:
    """The CUDA path's code on the CPU through torch.compile's default backend (inductor: C++ codegen),
    for FGR (every gate, peepholes, gate recurrence) with ragged lengths."""
    model = build("FGR").set_kernel("compiled")
    x, lengths, state = randn(3, 4, M), torch.tensor([4, 1, 3]), rand_state(model, 3)
    got = run_and_grad(model, x, lengths, state)
    step = model.layers[0].compiled_step()
    assert step.compiled is not None and not step.failed
    assert_close(got, run_and_grad(model.set_kernel("reference"), x, lengths, state))


# ------------------------------------------------------------------------ custom variants in a study spec


def spec_with(custom: dict, variants: object = None) -> dict:
    data = {"name": "s", "dataset": {"name": "synthetic"}, "trials_per_variant": 1, "custom_variants": custom}
    if variants is not None:
        data["variants"] = variants
    return data


def test_custom_variants_join_the_papers_nine_and_train() -> None:
    spec = parse_spec(spec_with({"NIG-NOG": {"input_gate": False, "output_gate": False}}))
    assert spec.variants == (*GREFF_VARIANTS, "NIG-NOG")
    switches = spec.custom_variants["NIG-NOG"]
    assert switches == LSTMSpec(input_gate=False, output_gate=False).switches()  # stored in full
    assert parse_spec(spec.normalised(), stored=True) == spec
    config = TrainConfig(variant="NIG-NOG", hidden_size=4, learning_rate=0.1, switches=switches)
    model = SequenceModel(config.cell(), M, N, 2)
    assert "NIG-NOG (custom LSTM variant)" in str(model) and "input_gate=False" in str(model)
    assert model.recurrent.layers[0].spec.gates == ("f", "z")


def test_a_trial_of_a_custom_variant_trains_it() -> None:
    """The worker's objective hands the spec's switches to training: the trial trains the custom cell."""
    from sweep.data.base import load_dataset
    from sweep.objective import TrialContext, train_config
    from sweep.training import train

    spec = parse_spec(spec_with({"CIFG-NP": {"forget_gate": "coupled", "peepholes": False}}))
    params = {"learning_rate": 1e-2, "hidden_size": 6, "momentum": 0.5, "forget_bias": 1.0}
    ctx = TrialContext("sqlite://", "s", spec, 9, 9, "CIFG-NP", params, 0, "cpu")
    config = train_config(ctx)
    config.max_epochs, config.batch_size = 1, 8
    result = train(config, load_dataset("synthetic", n_train=16, n_valid=8, n_test=8))
    definition = config.cell()
    assert definition.lstm == LSTMSpec(forget_gate="coupled", peepholes=False)
    dataset = load_dataset("synthetic", n_train=16, n_valid=8, n_test=8)
    head = 6 * dataset.output_size + dataset.output_size
    assert result.n_params == definition.num_parameters(dataset.input_size, 6) + head
    assert result.epochs == 1 and math.isfinite(result.best_valid)


@pytest.mark.parametrize(
    ("custom", "variants", "message"),
    [
        ({"X": {"input_gate": False, "forget_gate": "coupled"}}, None, "'X': forget_gate = 'coupled'"),
        ({"X": {"output_gate": False, "gate_recurrence": True}}, None, "gate_recurrence .* needs all three"),
        ({"X": {"peepholes": "yes"}}, None, "switch peepholes must be true or false"),
        ({"X": {"forget_gate": "half"}}, None, "forget_gate must be one of gate, coupled, none"),
        ({"X": {"cell_clip": 3}}, None, "unknown switch 'cell_clip'"),
        ({"NP": {"peepholes": False}}, None, "'NP' clashes with a built-in variant"),
        ({"9X": {}}, None, "must start with a letter"),
        ({"X": {}}, ["V"], "does not list the custom variant 'X'"),
        ({}, ["V", "Y"], "unknown variant 'Y'"),
    ],
)
def test_invalid_custom_variants_get_a_one_line_error(custom, variants, message) -> None:
    with pytest.raises(OdysseyError, match=message) as info:
        parse_spec(spec_with(custom, variants), "study.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("spec study.toml: ")


def test_study_create_rejects_an_invalid_combination(tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(
        'name = "s"\ntrials_per_variant = 1\nvariants = ["V", "NIG-CIFG"]\n[dataset]\nname = "synthetic"\n'
        '[custom_variants.NIG-CIFG]\ninput_gate = false\nforget_gate = "coupled"\n'
    )
    db = tmp_path / "o.db"
    result = subprocess.run(
        [sys.executable, "-m", "sweep.cli.main", "study", "create", str(spec), "--storage", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 1 and not db.exists()
    assert result.stderr.strip().splitlines() == [
        f"error: spec {spec}: custom_variants: custom variant 'NIG-CIFG': "
        "forget_gate = 'coupled' (f = 1 - i) needs the input gate"
    ]
