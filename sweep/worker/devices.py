"""Which devices a host's workers train on, and how many CPU threads each gets."""

from __future__ import annotations

import os
import re

from sweep.core.errors import ConfigError
from sweep.objective import objective_name

_CUDA = re.compile(r"cuda(:\d+)?")  # the names torch.device takes for a GPU


def resolve_devices(devices: str, objective: str | None = None) -> list[str]:
    """`auto` (every CUDA device, else cpu), `cpu`, or a comma-separated list such as `cuda:0,cuda:1`.

    For the real objective each device is checked against this host's GPUs now (OdysseyError naming it),
    rather than failing every trial a worker takes; the test objectives accept `cpu`, `cuda` and
    `cuda:N` names.
    """
    devices = devices.strip()
    trains = objective_name(objective) == "train"
    if devices == "auto":
        if trains:
            import torch

            if torch.cuda.is_available():
                return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    out = [d.strip() for d in devices.split(",") if d.strip()]
    if not out:
        raise ConfigError("no device given (use auto, cpu, cuda:N or a comma-separated list)")
    if trains:
        from sweep.training import resolve_device

        for device in out:
            resolve_device(device)
    else:
        for device in out:
            if device != "cpu" and not _CUDA.fullmatch(device):
                raise ConfigError(
                    f"unknown device {device!r} (use auto, cpu, cuda:N or a comma-separated list)")
    return out


def cpu_threads(slots: list[str], threads: int | None = None) -> int:
    """Torch threads per CPU worker: `threads` if given, else this host's cores shared among the CPU
    slots (at least one)."""
    cpu_slots = sum(1 for d in slots if d == "cpu")
    return threads or max(1, (os.cpu_count() or 1) // max(1, cpu_slots))


def set_threads(threads: int | None, objective: str | None = None) -> None:
    """Limit this process to `threads` CPU threads (OpenMP, and torch for the real objective); None
    leaves the defaults."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if objective_name(objective) == "train":
            import torch

            torch.set_num_threads(threads)
