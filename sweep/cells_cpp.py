"""Builds and loads the C++ kernels of the recurrent cells (`sweep/csrc/lstm_family.cpp`), once per machine.

The source ships with the package and is compiled on first use with `torch.utils.cpp_extension.load`
(needs a C++ compiler and ninja) into `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`);
later processes load the built module in well under a second. The module name carries a hash of the
source, the torch version, the Python ABI and the platform, so any of them changing gets a fresh build.

`ODYSSEY_CELLS_BACKEND` picks the LSTM-family kernel (`sweep.cells_fused`):

* `auto` (default): the C++ kernels on CPU tensors when they build, else TorchScript;
* `cpp`: the C++ kernels on CPU tensors, and an error if they cannot be built;
* `script`: the TorchScript loops; `python`: the same loops run eagerly (slowest, for debugging).

CUDA tensors always take the TorchScript path. `gru_cpp` and `pseudo_cpp` are drop-in C++ versions of
the GRU and PLSTM kernels (`sweep.cells_gru_fused.gru_fused`, `sweep.cells_pseudo_fused.pseudo_fused`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

from storage.errors import OdysseyError

log = logging.getLogger(__name__)

ENV_VAR = "ODYSSEY_CELLS_BACKEND"
BACKENDS = ("auto", "cpp", "script", "python")
SOURCE = Path(__file__).with_name("csrc") / "lstm_family.cpp"

_cache: dict[str, ModuleType | str] = {}  # "module" -> the loaded module, or "error" -> why it failed
_cache_lock = threading.Lock()


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


def load(required: bool = False) -> ModuleType | None:
    """The compiled module (built on first use), or None when it cannot be built.

    With `required`, a failed build raises OdysseyError instead of returning None.
    """
    if not _cache:
        with _cache_lock:
            if not _cache:
                _cache.update(_try_build())
    module = _cache.get("module")
    if module is None and required:
        raise OdysseyError(f"{ENV_VAR}=cpp but the C++ LSTM kernels could not be built: {_cache['error']}")
    return module  # type: ignore[return-value]


def _try_build() -> dict[str, ModuleType | str]:
    try:
        return {"module": _build()}
    except Exception as exc:  # no compiler, no ninja, a failed build: the TorchScript path remains
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.info("C++ LSTM kernels unavailable (%s); using the TorchScript kernels", reason)
        return {"error": reason}


def _module_name() -> str:
    # the built module is specific to the source, torch's ABI, the Python ABI and the platform
    stamp = f"{torch.__version__} {sys.implementation.cache_tag} {platform.machine()}".encode()
    digest = hashlib.sha256(SOURCE.read_bytes() + stamp).hexdigest()[:12]
    return f"odyssey_lstm_family_{digest}"


def build_root() -> Path:
    """Where the kernels are built: $TORCH_EXTENSIONS_DIR, else torch's per-user cache directory."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    name = _module_name()
    build_dir = build_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    built = build_dir / f"{name}.so"
    _ensure_ninja_on_path()
    if not cpp_extension.is_ninja_available() and built.exists():
        return _import_built(name, built)  # a machine without ninja can still use an earlier build
    with _exclusive(build_dir / "odyssey.lock"):
        # torch's own lock file is left behind when a build is killed, and later builds would wait on it
        # forever; every builder holds our flock first, so a leftover one here is always stale
        (build_dir / "lock").unlink(missing_ok=True)
        if not built.exists():
            print("compiling the LSTM kernels (once per machine)...", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O3"],
            build_directory=str(build_dir),
            verbose=False,
        )


def _ensure_ninja_on_path() -> None:
    """torch looks for `ninja` on PATH; the pip wheel's binary sits in the venv's bin, which may not be."""
    if shutil.which("ninja"):
        return
    with contextlib.suppress(ImportError):
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _import_built(name: str, path: Path) -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on `path`: released by the kernel even if this process dies mid-build."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
