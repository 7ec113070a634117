"""`odyssey kernels`: build the C++ cell kernels now and say which kernel each family of cells will use."""

from __future__ import annotations

import os

import click

from storage.errors import OdysseyError

# What the names of `sweep.cells_cpp.backend_for` stand for.
_BACKEND_NAMES = {"cpp": "C++ kernel", "script": "TorchScript loop", "python": "eager PyTorch loop"}


def family_kernels(device: str) -> dict[str, str]:
    """Family -> the kernel its layers run on `device` ("cpu" or "cuda"), as the layers choose it."""
    import torch

    from sweep import cells_cpp
    from sweep.cells import GREFF_VARIANTS

    probe = torch.zeros(1, device=device)
    backend = cells_cpp.backend_for(probe)
    hand_written = _BACKEND_NAMES.get(backend, backend)
    lstm = ", ".join(v for v in GREFF_VARIANTS if v != "NP")
    on_gpu = device != "cpu"
    return {
        f"LSTM family ({lstm})": hand_written,
        "GRU": "cuDNN (torch.nn.GRU)" if on_gpu else hand_written,
        "PLSTM": hand_written,
        "NP": "cuDNN (torch.nn.LSTM)" if on_gpu else "torch.nn.LSTM's fused kernel",
    }


def prepare_kernels(objective: str | None = None) -> None:
    """Load the C++ kernels, compiling them first if this machine has no build (announced on stderr with
    its elapsed time); `odyssey run`, `worker` and `train` call this before they start anything, so that no
    trial's time includes the build. The test objectives (`noop`, `sleep:SECONDS`) train nothing: skipped."""
    from sweep import kernels
    from sweep.objective import ENV_VAR

    name = objective or os.environ.get(ENV_VAR) or "train"
    if name != "noop" and not name.startswith("sleep:"):
        kernels.load()


@click.command()
@click.option("--require", is_flag=True, help="Exit 1 unless the C++ kernels load (for image builds, CI).")
def kernels(require: bool) -> None:
    """Build the C++ cell kernels if needed and show which kernel each family of cells uses."""
    import torch

    from sweep import kernels as k

    state = k.status()
    if state.available:
        how = f"compiled now in {state.built_seconds:.1f} s" if state.built_seconds is not None else "loaded"
        by = f", built by {state.compiler}" if state.compiler else ""
        click.echo(f"C++ kernels: {how} ({state.path}{by})")
    else:
        click.echo(f"C++ kernels: unavailable ({state.reason})")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = {device: family_kernels(device) for device in devices}
    width = max(len(name) for name in table["cpu"])
    click.echo(f"{'family':<{width}}  " + "  ".join(f"{d:<30}" for d in devices).rstrip())
    for name in table["cpu"]:
        click.echo(f"{name:<{width}}  " + "  ".join(f"{table[d][name]:<30}" for d in devices).rstrip())
    if not torch.cuda.is_available():
        click.echo("cuda: not available (torch sees no GPU)")
    if require and not state.available:
        raise OdysseyError(f"the C++ kernels could not be loaded: {state.reason}")
