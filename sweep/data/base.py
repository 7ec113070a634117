"""Datasets behind one interface: splits of padded batches, a per-step loss and the dataset's metrics.

Two kinds of split exist. A *sequence* split (JSB Chorales, synthetic) holds independent variable-length
sequences; each batch starts from a zero state. A *stream* split (PTB, char) holds one long token stream
cut into `batch_size` contiguous rows; the whole split is one batch and training walks it in truncated-BPTT
chunks, carrying the state across chunks. Padding is marked by `lengths` and never reaches a loss or metric.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sweep.core.errors import ConfigError
from sweep.data.registry import DATASETS

LN2 = math.log(2.0)



def read_data_file(file: Path, name: str) -> bytes:
    """The bytes of a user's data file; an OdysseyError naming the dataset and the file if unreadable."""
    if not file.exists():
        raise ConfigError(f"{name}: {file} not found")
    if not file.is_file():
        raise ConfigError(f"{name}: {file} is not a file")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: {file}: cannot read ({exc.strerror or exc})") from None

@dataclass(frozen=True)
class Batch:
    """Padded inputs and targets of one batch; row b is valid for its first `lengths[b]` steps."""

    inputs: Tensor  # (B, T, M) float features, or (B, T) int64 token ids
    targets: Tensor  # (B, T, K) float, or (B, T) int64 token ids
    lengths: Tensor  # (B,) int64 on CPU; 0 is allowed (a stream row that ended in an earlier chunk)

    @property
    def n_steps(self) -> int:
        """Number of valid (scored) steps in the batch."""
        return int(self.lengths.sum())

    def mask(self) -> Tensor:
        """(B, T) bool, True at valid steps."""
        steps = torch.arange(self.inputs.shape[1], device=self.lengths.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)

    def to(self, device: torch.device | str) -> Batch:
        """The batch with inputs and targets on `device` (lengths stay on the CPU, as the cells expect)."""
        if self.inputs.device == torch.device(device):
            return self  # the common CPU case: no copy, and no dispatch on every training step
        return Batch(self.inputs.to(device), self.targets.to(device), self.lengths)

    def chunks(self, size: int | None) -> Iterator[Batch]:
        """Consecutive time windows of at most `size` steps (None: the whole batch), for truncated BPTT."""
        total = self.inputs.shape[1]
        if size is None or size >= total:
            yield self
            return
        for start in range(0, total, size):
            stop = min(start + size, total)
            lengths = (self.lengths - start).clamp(min=0, max=stop - start)
            if int(lengths.max()) == 0:
                return
            yield Batch(self.inputs[:, start:stop], self.targets[:, start:stop], lengths)


class Split(ABC):
    """One split (train, valid or test) of a dataset; `len()` counts its `unit`s (sequences or tokens)."""

    unit: str

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def n_targets(self) -> int:
        """Number of scored steps (frames, tokens) in the split."""

    @abstractmethod
    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Padded batches; `generator` given: shuffled with it (sequence splits only)."""


class SequenceSplit(Split):
    """Independent sequences, each an (inputs (T, M), targets (T, ...)) pair of equal length T >= 1."""

    unit = "sequences"

    def __init__(self, sequences: list[tuple[Tensor, Tensor]]):
        if not sequences:
            raise ConfigError("a split needs at least one sequence")
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def n_targets(self) -> int:
        return sum(len(x) for x, _ in self.sequences)

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        count = len(self.sequences)
        order = torch.randperm(count, generator=generator).tolist() if generator is not None else range(count)
        for start in range(0, len(order), batch_size):
            picked = [self.sequences[i] for i in order[start : start + batch_size]]
            lengths = torch.tensor([len(x) for x, _ in picked], dtype=torch.int64)
            inputs = torch.nn.utils.rnn.pad_sequence([x for x, _ in picked], batch_first=True)
            targets = torch.nn.utils.rnn.pad_sequence([y for _, y in picked], batch_first=True)
            yield Batch(inputs, targets, lengths)


class StreamSplit(Split):
    """A token stream; step t reads token t and predicts token t + 1."""

    unit = "tokens"

    def __init__(self, tokens: Tensor):
        if tokens.dim() != 1 or len(tokens) < 2:
            raise ConfigError("a stream split needs at least two tokens")
        self.tokens = tokens.to(torch.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_targets(self) -> int:
        return len(self.tokens) - 1

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        # Rows are contiguous stretches of the stream with sizes differing by at most one, so no token is
        # dropped; the stream's order is its meaning, so `generator` is ignored.
        n = self.n_targets
        rows = min(batch_size, n)
        base, extra = divmod(n, rows)
        lengths = torch.tensor([base + (r < extra) for r in range(rows)], dtype=torch.int64)
        width = base + (extra > 0)
        inputs = torch.zeros(rows, width, dtype=torch.int64)
        targets = torch.zeros(rows, width, dtype=torch.int64)
        start = 0
        for r, length in enumerate(lengths.tolist()):
            inputs[r, :length] = self.tokens[start : start + length]
            targets[r, :length] = self.tokens[start + 1 : start + length + 1]
            start += length
        yield Batch(inputs, targets, lengths)


class Dataset(ABC):
    """A dataset: three splits, the model's input/output sizes, the training loss and the metrics.

    `name` is its name in the dataset registry (sweep.data.registry), which names its metrics: `metric` is
    the primary one (lower is better), `metrics` every one, primary first (the keys of `summarize`).
    Token datasets set `vocab_size` (the model then starts with an embedding) and `default_bptt`.
    """

    name: str
    input_size: int
    output_size: int
    vocab_size: int | None = None
    default_bptt: int | None = None
    eval_batch_size: int = 64
    loss_ceiling: float = math.inf  # a per-step training loss above this means the run diverged

    def __init__(self, train: Split, valid: Split, test: Split):
        self.train, self.valid, self.test = train, valid, test

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every metric `summarize` reports, the primary one first (from the dataset registry)."""
        return DATASETS[self.name].metrics

    @property
    def metric(self) -> str:
        """The primary metric: what early stopping and a study's default objective watch."""
        return DATASETS[self.name].metric

    def split(self, name: str) -> Split:
        """The split called `name` (train, valid or test)."""
        if name not in ("train", "valid", "test"):
            raise ConfigError(f"{self.name}: unknown split {name!r} (train, valid, test)")
        return getattr(self, name)

    def batches(
        self, split: str, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Padded batches of a split (see `Split.batches`)."""
        return self.split(split).batches(batch_size, generator)

    @abstractmethod
    def step_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """(B, T) loss of each step from the model's raw outputs (B, T, output_size)."""

    def loss(self, outputs: Tensor, batch: Batch) -> tuple[Tensor, int]:
        """Sum of the per-step losses over the batch's valid steps, and the number of those steps."""
        losses = self.step_losses(outputs, batch.targets)
        n = batch.n_steps
        if n == losses.numel():  # no padding (every batch of one sequence): nothing to mask
            return losses.sum(), n
        mask = batch.mask().to(losses.device)
        return torch.where(mask, losses, torch.zeros_like(losses)).sum(), n

    @abstractmethod
    def summarize(self, mean_loss: float) -> dict[str, float]:
        """Every metric of the dataset from the mean per-step loss over a split."""

    def describe(self) -> str:
        """One line naming the dataset and its split sizes."""
        sizes = "/".join(f"{len(self.split(s))}" for s in ("train", "valid", "test"))
        return f"{self.name}: {sizes} train/valid/test {self.train.unit}, metric {self.metric}"


class BernoulliDataset(Dataset):
    """Multi-label frames (piano rolls): a sigmoid per output; loss = Bernoulli NLL summed over outputs."""

    def step_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").sum(-1)

    def summarize(self, mean_loss: float) -> dict[str, float]:
        return {"nll": mean_loss}


class TokenDataset(Dataset):
    """Next-token prediction over a vocabulary: softmax outputs; loss = cross-entropy in nats."""

    eval_batch_size = 10

    def __init__(self, train: Split, valid: Split, test: Split, vocab: list[str]):
        super().__init__(train, valid, test)
        self.vocab = vocab
        self.vocab_size = self.input_size = self.output_size = len(vocab)
        # A fresh model predicts about uniformly (ln V nats); 20x that is no longer learning.
        self.loss_ceiling = 20.0 * max(math.log(len(vocab)), 1.0)

    def step_losses(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none")

    def summarize(self, mean_loss: float) -> dict[str, float]:
        return {"perplexity": _exp(mean_loss), "nll": mean_loss}


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load the registered dataset `name` (sweep.data.registry: jsb, ptb, char, synthetic) with its options
    (e.g. `path`; None values are left out).

    Unknown names, unknown options and missing or malformed files raise `OdysseyError`.
    """
    import importlib
    import inspect

    options = {key: value for key, value in options.items() if value is not None}
    entry = DATASETS.get(name)
    if entry is None:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    module_name, attr = entry.loader.split(":")
    loader: Callable[..., Dataset] = getattr(importlib.import_module(module_name), attr)
    accepted = set(inspect.signature(loader).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {known}")
    return loader(**options)
