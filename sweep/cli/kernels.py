"""`odyssey kernels`: build the C++ cell kernels now and say which kernel each family of cells will use."""

from __future__ import annotations

import click

# What the kernel names of `sweep.nn.base.KERNELS` stand for, per family where it matters.
_KERNEL_NAMES = {
    "cpp": "C++ kernel",
    "compiled": "torch.compile'd step",
    "reference": "reference PyTorch step",
}


def family_kernels(device: str) -> dict[str, str]:
    """Family -> the kernel its layers run on `device` ("cpu" or "cuda"), as the layers choose it
    (`sweep.nn.base.kernel_for`, with $ODYSSEY_CELLS_BACKEND)."""
    from sweep.core.variants import GREFF_VARIANTS
    from sweep.nn.base import kernel_for

    on_gpu = device != "cpu"

    def name(family: str, torch_kernel: str) -> str:
        kernel = kernel_for(family, device)
        if kernel == "torch":
            return f"cuDNN ({torch_kernel})" if on_gpu else f"{torch_kernel}'s fused kernel"
        return _KERNEL_NAMES.get(kernel, kernel)

    lstm = ", ".join(v for v in GREFF_VARIANTS if v != "NP")
    return {
        f"LSTM family ({lstm})": name("lstm", "torch.nn.LSTM"),
        "GRU": name("gru", "torch.nn.GRU"),
        "PLSTM": name("plstm", "torch.nn.LSTM"),
        "NP": name("np", "torch.nn.LSTM"),
    }


@click.command()
@click.option("--require", is_flag=True, help="Exit 1 unless the C++ kernels load (for image builds, CI).")
def kernels(require: bool) -> None:
    """Build the C++ cell kernels if needed and show which kernel each family of cells uses."""
    import torch

    from sweep.nn import kernels as k

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
    if require:
        k.load(required=True)  # raises the one-line error when they did not load
