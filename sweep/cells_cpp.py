"""Builds and loads the C++ kernels of the recurrent cells (`sweep/csrc/lstm_family.cpp`), once per machine.

The source ships with the package and is compiled on first use with `torch.utils.cpp_extension.load`
(needs a C++ compiler and ninja) into `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`);
later processes load the built module in well under a second. The module name carries a hash of the
source, the torch version, the Python ABI and the platform, so any of them changing gets a fresh build.

Which layer runs on these kernels is decided by `sweep.cells_base.KERNELS` (and `ODYSSEY_CELLS_BACKEND`);
the autograd Functions that call them sit next to each family's equations (`sweep.cells_lstm`,
`sweep.cells_gru`, `sweep.cells_pseudo`).
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

from storage.errors import OdysseyError

log = logging.getLogger(__name__)

ENV_VAR = "ODYSSEY_CELLS_BACKEND"
SOURCE = Path(__file__).with_name("csrc") / "lstm_family.cpp"

_cache: dict[str, ModuleType | str] = {}  # "module" -> the loaded module, or "error" -> why it failed
_cache_lock = threading.Lock()


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
    except Exception as exc:  # no compiler, no ninja, a failed build: the fallback kernels remain
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.info("C++ LSTM kernels unavailable (%s); using the fallback kernels (sweep.cells_base)", reason)
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
