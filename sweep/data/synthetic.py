"""A tiny generated task for fast tests: output the running sum of a short variable-length sequence."""

from __future__ import annotations

import torch
from torch import Tensor

from sweep.core.errors import ConfigError
from sweep.data.base import Dataset, SequenceSplit


class SumDataset(Dataset):
    """Inputs x_1..x_T uniform on [0, 1) with T in [min_length, max_length]; the target at step t is
    x_1 + ... + x_t. Metric `mse`: squared error averaged over steps."""

    name = "synthetic"
    input_size = output_size = 1
    loss_ceiling = 1e4

    def step_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).pow(2).sum(-1)

    def summarize(self, mean_loss: float) -> dict[str, float]:
        return {"mse": mean_loss}


def _sequences(count: int, min_length: int, max_length: int, generator: torch.Generator) -> SequenceSplit:
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=generator).tolist()
    sequences = []
    for length in lengths:
        x = torch.rand(length, 1, generator=generator)
        sequences.append((x, x.cumsum(0)))
    return SequenceSplit(sequences)


def load_synthetic(
    n_train: int = 256,
    n_valid: int = 64,
    n_test: int = 64,
    min_length: int = 2,
    max_length: int = 4,
    seed: int = 0,
) -> SumDataset:
    """The running-sum task; the same `seed` always gives the same sequences."""
    sizes = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "min_length": min_length}
    sizes |= {"max_length": max_length, "seed": seed}
    for key, value in sizes.items():
        if type(value) is not int:
            raise ConfigError(f"synthetic: {key} must be an integer, got {value!r}")
    if min(n_train, n_valid, n_test) < 1:
        raise ConfigError("synthetic: every split needs at least one sequence")
    if not 1 <= min_length <= max_length:
        raise ConfigError(f"synthetic: need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    generator = torch.Generator().manual_seed(seed)
    splits = [_sequences(n, min_length, max_length, generator) for n in (n_train, n_valid, n_test)]
    return SumDataset(*splits)
