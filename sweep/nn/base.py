"""The base of every recurrent layer, and the one registry that picks a layer's kernel by family and device.

`RecurrentLayer` plays the part `torch.nn.RNNBase` plays for torch's LSTM, GRU and RNN: it owns parameter
creation and initialisation, state sizes, `extra_repr` (so `print(model)` names the variant and its
switches) and the dispatch of `forward` to a kernel. Each family (`sweep.nn.lstm`, `sweep.nn.gru`,
`sweep.nn.pseudo`) adds its parameters, its step (the equations, written once) and its kernels.

Kernels (at most three implementations of a family's equations, plus torch's own where it fits):

* `reference`: the step as the equations read, one plain autograd step per time step (the specification);
* `cpp`: the C++ forward and BPTT loops of `sweep/nn/csrc/lstm_family.cpp` (CPU, float32/float64);
* `compiled`: the CUDA path; the same reference step run through `torch.compile` (eager where torch.compile
  is unavailable), the input projection of all steps in one product;
* `torch`: torch's fused kernel (cuDNN on a GPU, oneDNN on a CPU) for the variants that are torch's own:
  NP (torch.nn.LSTM's cell) and GRU.

`KERNELS[(family, device type)]` lists the kernels in order of preference; the first one that can run
is used. `$ODYSSEY_CELLS_BACKEND` (`auto`, `cpp`, `compiled`, `reference`) forces one on every layer
whose family implements it; `Recurrent.set_kernel` does the same for one model.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from sweep.core.errors import ConfigError
from sweep.core.variants import Variant
from sweep.nn import kernels
from sweep.nn.common import init_matrix, init_vector, last_valid, zero_padding

log = logging.getLogger(f"odyssey.{__name__}")

ENV_VAR = "ODYSSEY_CELLS_BACKEND"  # names the kernel every cell should use: one of BACKENDS
BACKENDS = ("auto", "cpp", "compiled", "reference")  # what $ODYSSEY_CELLS_BACKEND may say
KERNEL_NAMES = ("reference", "cpp", "compiled", "torch")

# (family, device type) -> kernels in order of preference; "np" is the LSTM family's torch.nn.LSTM cell.
# Device types other than cpu take the cuda entry (the compiled path runs wherever torch.compile does).
KERNELS: dict[tuple[str, str], tuple[str, ...]] = {
    ("lstm", "cpu"): ("cpp", "reference"),
    ("lstm", "cuda"): ("compiled",),
    ("np", "cpu"): ("torch",),
    ("np", "cuda"): ("torch",),
    ("gru", "cpu"): ("cpp", "torch"),
    ("gru", "cuda"): ("torch",),
    ("plstm", "cpu"): ("cpp", "reference"),
    ("plstm", "cuda"): ("compiled",),
}
CPP_DTYPES = (torch.float32, torch.float64)

State = tuple[Tensor, ...]
Step = Callable[..., tuple[Tensor, State]]


def requested_backend() -> str:
    """The backend named by $ODYSSEY_CELLS_BACKEND (`auto` when unset); OdysseyError for an unknown one."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ConfigError(f"{ENV_VAR}={value!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return value


def can_run(kernel: str, device: torch.device, dtype: torch.dtype, required: bool = False) -> bool:
    """Whether `kernel` can run on tensors of `device` and `dtype` here (`cpp`: it must build; with
    `required`, a failed build raises OdysseyError)."""
    if kernel != "cpp":
        return True
    if device.type != "cpu" or dtype not in CPP_DTYPES:
        return False
    return kernels.load(required=required) is not None


def kernel_for(
    family: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    implemented: Sequence[str] = KERNEL_NAMES,
    forced: str | None = None,
) -> str:
    """The kernel a layer of `family` runs on tensors of `device` and `dtype`.

    `forced` (a layer's `set_kernel`) or else $ODYSSEY_CELLS_BACKEND wins where the family implements it
    and it can run there (`cpp` forced on the CPU raises OdysseyError if the kernels cannot be built);
    otherwise the first runnable entry of KERNELS[(family, device type)].
    """
    device = torch.device(device)
    wanted = forced or requested_backend()
    required = wanted == "cpp" and device.type == "cpu"
    if wanted != "auto" and wanted in implemented and can_run(wanted, device, dtype, required):
        return wanted
    key = (family, "cpu" if device.type == "cpu" else "cuda")
    for kernel in KERNELS[key]:
        if can_run(kernel, device, dtype):
            return kernel
    return "reference"


class CompiledStep:
    """A step function through `torch.compile`, or the plain function where torch.compile is unavailable.

    torch.compile compiles on the first call; if that fails (no compiler for its backend, an unsupported
    platform), one warning is logged and the step runs eagerly from then on.
    """

    _warned = False
    _count = 0

    def __init__(self, fn: Step, backend: str = "inductor") -> None:
        # Dynamo keeps one cache per code object, with a limit of a few entries, and every layer's step is
        # the same closure code with a different variant: each compiled step gets its own copy of the code
        CompiledStep._count += 1
        code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{CompiledStep._count}")
        self.fn = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        self.backend = backend
        self.compiled: Step | None = None
        self.failed = not hasattr(torch, "compile")

    def __call__(self, *args: object) -> tuple[Tensor, State]:
        if not self.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, backend=self.backend)
                return self.compiled(*args)
            except Exception as exc:  # the backend's compiler is missing or failed: eager still works
                self.failed = True
                if not CompiledStep._warned:
                    CompiledStep._warned = True
                    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                    log.warning(
                        "torch.compile is unavailable (%s); the cells' compiled path runs eagerly", reason
                    )
        return self.fn(*args)


_compiled: dict[object, CompiledStep] = {}


class RecurrentLayer(nn.Module):
    """One layer of a variant: parameters, state sizes, and `forward` dispatched to a kernel.

    Subclasses set `implemented`, create their parameters in `make_parameters` with `add_matrix`,
    `add_vector` and `add_bias`, and give `state_sizes`, `project` (the input projection of all steps),
    `step_params`, `make_step` (the equations of one step) and a `run_<kernel>` method for each kernel besides
    `reference` and `compiled`, which the base runs from the step.
    """

    implemented: ClassVar[tuple[str, ...]] = ("reference", "compiled")

    def __init__(
        self, variant: Variant, input_size: int, hidden_size: int, forget_bias: float, init: str, scale: float
    ) -> None:
        super().__init__()
        self.definition = variant  # the registry entry: name, family, title, switches
        self.input_size, self.hidden_size = input_size, hidden_size
        self.init, self.init_scale = init, scale
        self.kernel: str | None = None  # forced kernel (set_kernel); None: KERNELS decides
        self.make_parameters(forget_bias)

    def make_parameters(self, forget_bias: float) -> None:
        """Create the family's parameters (with `add_matrix`, `add_vector`, `add_bias`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ parameters

    def add_matrix(self, name: str, blocks: int, columns: int) -> nn.Parameter:
        """A stacked (blocks * N, columns) weight, initialised by the layer's scheme."""
        weight = nn.Parameter(torch.empty(blocks * self.hidden_size, columns))
        init_matrix(weight, blocks, self.init, self.init_scale, self.hidden_size)
        self.register_parameter(name, weight)
        return weight

    def add_vector(self, name: str, rows: int) -> nn.Parameter:
        """`rows` peephole-like weight vectors of N, as one (rows, N) parameter."""
        weight = nn.Parameter(torch.empty(rows, self.hidden_size))
        init_vector(weight, self.init, self.init_scale, self.hidden_size)
        self.register_parameter(name, weight)
        return weight

    def add_bias(self, name: str, blocks: int, hot: int | None = None, value: float = 0.0) -> nn.Parameter:
        """A zero (blocks * N) bias whose block `hot` (if any) starts at `value` (the forget bias)."""
        n = self.hidden_size
        bias = nn.Parameter(torch.zeros(blocks * n))
        if hot is not None:
            with torch.no_grad():
                bias[hot * n : (hot + 1) * n] = value
        self.register_parameter(name, bias)
        return bias

    # ------------------------------------------------------------------ description

    @property
    def family(self) -> str:
        return self.definition.family

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Width of each tensor of this layer's state."""
        raise NotImplementedError

    def switches(self) -> str:
        """The variant's switches as one line ('' for families without switches)."""
        return ""

    def extra_repr(self) -> str:
        text = f"{self.definition.name} ({self.definition.title}), {self.input_size} -> {self.hidden_size}"
        if self.switches():
            text += f", {self.switches()}"
        return text + (f", kernel={self.kernel}" if self.kernel else "")

    # ------------------------------------------------------------------ dispatch

    def kernel_for(self, x: Tensor) -> str:
        """The kernel that runs this layer on tensors like `x`."""
        return kernel_for(self.family, x.device, x.dtype, self.implemented, self.kernel)

    def forward(
        self, x: Tensor, lengths: Tensor | None, mask: Tensor | None, state: State
    ) -> tuple[Tensor, State]:
        """Run (B, T, M) -> outputs (B, T, N) zero at padding, and the state at each last valid step."""
        kernel = self.kernel_for(x)
        if kernel == "reference":
            ys, final = self.run_steps(x, lengths, state, self.make_step())
        elif kernel == "compiled":
            ys, final = self.run_steps(x, lengths, state, self.compiled_step())
        else:
            ys, final = getattr(self, f"run_{kernel}")(x, lengths, state)
        return zero_padding(ys, mask), final

    # ------------------------------------------------------------------ the step-by-step kernels

    def project(self, x: Tensor) -> Tensor:
        """The input projection of all steps at once, (B, T, M) -> (B, T, K)."""
        raise NotImplementedError

    def step_params(self) -> tuple[Tensor | None, ...]:
        """The tensors the step reads besides its input and state."""
        raise NotImplementedError

    def make_step(self) -> Step:
        """The equations of one step: (projected input (B, K), state, *step_params) -> (output, state)."""
        raise NotImplementedError

    def step_key(self) -> object:
        """What the step's code depends on (one compiled step per key)."""
        return (type(self), self.definition.family)

    def compiled_step(self) -> CompiledStep:
        key = self.step_key()
        if key not in _compiled:
            _compiled[key] = CompiledStep(self.make_step())
        return _compiled[key]

    def run_steps(self, x: Tensor, lengths: Tensor | None, state: State, step: Step) -> tuple[Tensor, State]:
        """Run `step` over every time step; the final state is each row's state at its last valid step."""
        proj = self.project(x)
        params = self.step_params()
        outputs, states = [], []
        for t in range(x.size(1)):
            y, state = step(proj[:, t], state, *params)
            outputs.append(y)
            states.append(state)
        if lengths is None:
            final = states[-1]
        else:
            final = tuple(last_valid(torch.stack(parts, 1), lengths) for parts in zip(*states, strict=True))
        return torch.stack(outputs, 1), final
