"""Builds and loads the C++ kernels of the recurrent cells (`sweep/nn/csrc/lstm_family.cpp`), once a machine.

**Where.** `$TORCH_EXTENSIONS_DIR` (default: torch's per-user cache, `~/.cache/torch_extensions`) holds one
folder per build, `odyssey_lstm_family_<binary>_<compiler>/`, with the finished library and `build.json`.
`<binary>` hashes what changes the binary: the source, the torch version (which names its CPU/CUDA build) and
the Python ABI and platform (the extension suffix); `<compiler>` hashes the compiler's resolved path and its
`--version`. Nothing depends on the checkout's or the venv's path, so every checkout and venv of one source on
one torch shares one build. A process that finds no compiler (the Docker runtime image) loads any build
with its `<binary>`.

**How.** The compiler runs in a child process of its own session (torch.utils.cpp_extension, ninja) in a
temporary folder next to the cache; the finished folder is renamed into place, so a half-written build is
never loaded. Concurrent builders wait on one flock, and the second one loads what the first built. Ctrl-C
(KeyboardInterrupt) or SIGTERM during a build kill the compiler's process group, then propagate, within
seconds. The build prints what it does and its elapsed time on stderr.

**Without a compiler** (or with a failed build) `load()` returns None and logs one warning per process tree:
the process that saw the failure puts the reason in `$ODYSSEY_KERNELS_UNAVAILABLE`, and the worker processes
it starts skip the build attempt and the warning. The cells then take their pure-PyTorch kernels.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Literal, overload

from sweep.core.errors import OdysseyError

log = logging.getLogger(f"odyssey.{__name__}")

SOURCE = Path(__file__).with_name("csrc") / "lstm_family.cpp"
PREFIX = "odyssey_lstm_family"
# set by a process whose build failed, read by the processes it starts: no second attempt, no second warning
UNAVAILABLE_ENV = "ODYSSEY_KERNELS_UNAVAILABLE"
PROGRESS_EVERY = 30.0  # seconds between "still compiling" lines
STOP_GRACE = 5.0  # seconds the compiler gets to exit after SIGTERM before SIGKILL


@dataclass(frozen=True)
class KernelStatus:
    """What `load()` found: the library in use, or why there is none.

    `path`: the loaded library; `built_seconds`: wall seconds this process spent compiling it (None when it
    was already built); `compiler`: the `--version` line of the compiler that built it; `reason`: one line
    saying why the kernels are unavailable (None when they are loaded).
    """

    available: bool
    path: Path | None = None
    built_seconds: float | None = None
    compiler: str | None = None
    reason: str | None = None


class KernelsUnavailable(Exception):
    """The kernels cannot be loaded or built here; the message is one line and says why."""


_status: KernelStatus | None = None
_module: ModuleType | None = None
_lock = threading.Lock()


@overload
def load(required: Literal[True]) -> ModuleType: ...


@overload
def load(required: bool = False) -> ModuleType | None: ...


def load(required: bool = False) -> ModuleType | None:
    """The compiled kernels module, built on the first call of any process on this machine; None when it
    cannot be built (one warning per process). With `required`, raises OdysseyError instead of None."""
    global _status, _module
    if _status is None:
        with _lock:
            if _status is None:
                _module, _status = _load_or_build()
    if _module is None and required:
        raise OdysseyError(f"the C++ kernels could not be loaded: {_status.reason}")
    return _module


def status() -> KernelStatus:
    """The outcome of `load()` (calling it first if this process has not yet)."""
    load()
    assert _status is not None
    return _status


def build_root() -> Path:
    """Where the kernels are built: $TORCH_EXTENSIONS_DIR, else torch's per-user cache directory."""
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def binary_key() -> str:
    """The hash of what changes the binary apart from the compiler: source, torch, Python ABI, platform."""
    import torch

    stamp = f"{torch.__version__} {sysconfig.get_config_var('EXT_SUFFIX')} {platform.machine()}"
    return hashlib.sha256(SOURCE.read_bytes() + stamp.encode()).hexdigest()[:12]


def compiler() -> tuple[str, str] | None:
    """(resolved path, first line of `--version`) of the C++ compiler torch would use ($CXX, else c++),
    or None when there is none."""
    name = os.environ.get("CXX") or "c++"
    found = shutil.which(name)
    return _describe_compiler(os.path.realpath(found)) if found else None


@lru_cache(maxsize=8)
def _describe_compiler(path: str) -> tuple[str, str] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return (path, lines[0].strip()) if out.returncode == 0 and lines else None


def _module_name(cc: tuple[str, str]) -> str:
    cc_hash = hashlib.sha256("\n".join(cc).encode()).hexdigest()[:8]
    return f"{PREFIX}_{binary_key()}_{cc_hash}"


def _library(folder: Path) -> Path:
    return folder / f"{folder.name}.so"


def _load_or_build() -> tuple[ModuleType | None, KernelStatus]:
    try:
        return _find_or_build()
    except KernelsUnavailable as exc:
        reason = str(exc)
        if os.environ.get(UNAVAILABLE_ENV):
            log.info("C++ kernels unavailable (%s)", reason)  # the parent process has warned already
        else:
            log.warning("C++ kernels unavailable (%s); the recurrent cells other than NP use the slower "
                        "pure-PyTorch path", reason)
            os.environ[UNAVAILABLE_ENV] = reason
        return None, KernelStatus(False, reason=reason)


def _find_or_build() -> tuple[ModuleType, KernelStatus]:
    root = build_root()
    cc = compiler()
    folder = root / _module_name(cc) if cc is not None else None
    if folder is not None and _library(folder).exists():
        return _loaded(_library(folder), None)
    cannot_build = _cannot_build(cc)
    if cannot_build is not None:
        # a machine that cannot build uses a build made elsewhere for the same binary (the Docker image,
        # which has no compiler, loads the one its builder stage made)
        builds = sorted(root.glob(f"{PREFIX}_{binary_key()}_*/{PREFIX}_*.so"), key=os.path.getmtime)
        if builds:
            return _loaded(builds[-1], None)
        raise KernelsUnavailable(cannot_build)
    assert folder is not None and cc is not None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root / f"{folder.name}.lock"):
            if _library(folder).exists():  # another process built it while this one waited
                return _loaded(_library(folder), None)
            seconds = _build(folder, cc)
    except OSError as exc:
        raise KernelsUnavailable(f"cannot write the build folder: {exc}") from None
    return _loaded(_library(folder), seconds)


def _cannot_build(cc: tuple[str, str] | None) -> str | None:
    """Why this process cannot build the kernels, or None when it can."""
    if cc is None:
        name = os.environ.get("CXX") or "c++"
        problem = "does not run" if shutil.which(name) else "is not on PATH"
        return f"no C++ compiler: {name} {problem}; install g++ or set CXX"
    if os.environ.get(UNAVAILABLE_ENV):  # the process that started this one tried and failed
        return os.environ[UNAVAILABLE_ENV]
    _ensure_ninja_on_path()
    if not shutil.which("ninja"):
        return "ninja is not installed (pip install ninja)"
    return None


def _loaded(path: Path, seconds: float | None) -> tuple[ModuleType, KernelStatus]:
    import importlib.util

    import torch  # noqa: F401  # the library links against torch's, which must be loaded first

    try:
        spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
        if spec is None or spec.loader is None:
            raise ImportError(f"not a Python extension: {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise KernelsUnavailable(f"cannot load {path}: {' '.join(str(exc).split())[:200]}") from None
    info = path.with_name("build.json")
    built_by = None
    with contextlib.suppress(OSError, ValueError):
        built_by = json.loads(info.read_text()).get("compiler")
    return module, KernelStatus(True, path=path, built_seconds=seconds, compiler=built_by)


def _say(message: str) -> None:
    # Printed, not logged: a first build stalls for minutes in whatever process uses a cell first - a
    # worker child, `odyssey train`, a notebook, `python -c` - where logging is often unconfigured or set
    # to WARNING (`odyssey run`), and the user must still see why nothing happens (tests/test_kernels.py).
    print(message, file=sys.stderr, flush=True)


def _build(folder: Path, cc: tuple[str, str]) -> float:
    """Compile into a temporary folder next to `folder`, then rename it into place; returns the seconds."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _say(f"compiling the C++ cell kernels into {folder} (once per machine and torch version, 1-3 min; "
             f"{cc[1]})...")
        out = work / folder.name
        out.mkdir()
        _compile(folder.name, work / "build", out, started)
        (out / "build.json").write_text(json.dumps({
            "compiler": cc[1], "compiler_path": cc[0], "source_sha256": hashlib.sha256(
                SOURCE.read_bytes()).hexdigest(), "torch": _torch_version(), "python": sys.version.split()[0],
            "seconds": round(time.monotonic() - started, 1)}, indent=1))
        if folder.exists():  # a leftover without a library (a crash between mkdir and rename elsewhere)
            shutil.rmtree(folder)
        os.rename(out, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    _say(f"compiled the C++ cell kernels in {seconds:.1f} s")
    return seconds


def _torch_version() -> str:
    import torch

    return torch.__version__


# Runs in the child: torch's JIT build (ninja, then the compiler) of one source into one folder. It dies
# with its parent, and SIGTERM reaches ninja, which passes it on to the compiler jobs' process groups.
_CHILD = """
import ctypes, json, os, signal, sys
args = json.loads(sys.argv[1])
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.killpg(0, signal.SIGTERM)
signal.signal(signal.SIGTERM, stop)
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != args["parent"]:
    sys.exit("the parent process is gone")
from torch.utils import cpp_extension
cpp_extension.load(name=args["name"], sources=[args["source"]], extra_cflags=["-O3"],
                   build_directory=args["build"], verbose=True)
"""


def _compile(name: str, build: Path, out: Path, started: float) -> None:
    build.mkdir()
    args = {"name": name, "source": str(SOURCE), "build": str(build), "parent": os.getpid()}
    log_path = build.parent / "build.log"
    with open(log_path, "wb") as log_file, _sigterm_interrupts():
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stdin=subprocess.DEVNULL,
                                 stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(child, started)
        finally:
            if child.returncode is None:
                _stop_group(child)
    if child.returncode != 0:
        raise KernelsUnavailable(f"the build failed: {_failure(log_path)}")
    os.replace(build / f"{name}.so", _library(out))


def _wait(child: subprocess.Popen, started: float) -> None:
    next_note = started + PROGRESS_EVERY
    while True:
        try:
            child.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= next_note:
                _say(f"  still compiling ({time.monotonic() - started:.0f} s)")
                next_note += PROGRESS_EVERY


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM the build's process group (ninja forwards it to its compiler jobs), then SIGKILL the rest."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _failure(log_path: Path) -> str:
    """One line from the build log (its compiler errors, else its last line before torch's traceback),
    and where a copy of the whole log is kept."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "no build log"
    lines = [line.strip() for line in text.split("Traceback (most recent call last)")[0].splitlines()]
    lines = [line for line in lines if line and not line.startswith(("[", "FAILED:", "ninja:"))]
    # The compiler's own diagnostics ("x.cpp:12:3: error: ...", "g++: error: ...") before any line that merely
    # mentions an error (a command line with -Werror); each kept to its tail, where the message is, so that
    # a long checkout path in front cannot push the message out of the line.
    picked = ([line for line in lines if "error:" in line.lower()][:2]
              or [line for line in lines if "error" in line.lower()][:2] or lines[-1:] or ["no output"])
    picked = [line if len(line) <= 200 else "..." + line[-200:] for line in picked]
    kept = log_path.parents[1] / f"{log_path.parent.name.split('.')[1]}.failed.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(log_path, kept)
    return f"{' '.join(' '.join(picked).split())} (log: {kept})"


class BuildInterrupted(SystemExit):
    """SIGTERM arrived during a build: the compiler is stopped and the process exits 128 + 15."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While building, a SIGTERM that would kill this process anyway (default disposition) first stops the
    compiler. A process with its own SIGTERM handler (a worker) keeps it."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        _say("stopping the kernel build (SIGTERM)")
        raise BuildInterrupted(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _ensure_ninja_on_path() -> None:
    """torch looks for `ninja` on PATH; the pip wheel's binary sits in the venv's bin, which may not be."""
    if shutil.which("ninja"):
        return
    with contextlib.suppress(ImportError):
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on `path` (released by the kernel even if this process dies mid-build), polled so that
    a waiting process says why it waits and still stops at once on Ctrl-C."""
    with open(path, "a") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    _say(f"waiting for another process to finish compiling the C++ cell kernels ({path})")
                    waited = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
