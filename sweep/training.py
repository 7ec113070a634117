"""Training one configuration on one dataset: SGD with Nesterov momentum or Adam, early stopping on the
validation metric, divergence detection, and a report after every epoch.

The settings are a `TrainConfig` (sweep.core.settings: one pydantic model holding every setting's default,
range and help text, checked when built). Choices (see docs/training.md): for SGD the step size is
`learning_rate * (1 - momentum)`, as in Greff et al., so that the learning rate means about the same whatever
the momentum; Adam uses `learning_rate` as is (and `momentum` as its beta1). The loss of a batch is its
mean per-step loss (per frame, token or step).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from sweep.core.errors import ConfigError
from sweep.core.settings import TrainConfig
from sweep.core.states import ResultState
from sweep.data.base import Batch, Dataset
from sweep.nn import kernels
from sweep.nn.cells import State, detach_state
from sweep.nn.models import SequenceModel

EXPLOSION_FACTOR = 1e3  # a batch loss this many times the first batch's means the run diverged


@dataclass
class EpochReport:
    """Metrics after one epoch. Epoch 0 (only for a run that diverged in its first epoch) is the
    untrained model."""

    epoch: int
    train_loss: float
    valid_metric: float
    test_metric: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # every metric, prefixed valid_/test_


@dataclass
class TrainResult:
    """Outcome of a run; `best_*` are at the epoch with the best validation metric."""

    status: str  # ResultState.COMPLETE | ResultState.DIVERGED
    best_epoch: int
    epochs: int
    seconds: float
    n_params: int
    best_valid: float
    best_test: float
    final_valid: float
    final_test: float
    history: list[EpochReport]


class Diverged(Exception):
    """Raised inside the epoch loop when the loss or gradient stops being usable."""


def resolve_device(name: str) -> torch.device:
    """The torch device for `cpu`, `cuda` or `cuda:N`; OdysseyError if it is malformed or absent."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"invalid device {name!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"unsupported device {name!r}; expected cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine")
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


def build_model(config: TrainConfig, dataset: Dataset) -> SequenceModel:
    """The model for `config` on `dataset`, initialised from `config.seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SequenceModel(
            config.cell(),
            dataset.input_size,
            config.hidden_size,
            dataset.output_size,
            vocab_size=dataset.vocab_size,
            embedding_size=config.embedding_size,
            num_layers=config.num_layers,
            forget_bias=config.forget_bias,
            init=config.init,
            init_scale=config.init_scale,
            input_noise=config.input_noise,
            noise_seed=config.seed + 1,
        )


def make_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by `config.optimizer` (sweep.core.settings.OPTIMIZERS): SGD with Nesterov
    momentum (step scaled by 1 - momentum) or Adam (beta1 = momentum)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, betas=(config.momentum, 0.999))
    return torch.optim.SGD(
        params,
        lr=config.learning_rate * (1.0 - config.momentum),
        momentum=config.momentum,
        nesterov=config.momentum > 0,
    )


def _run(
    model: SequenceModel, chunk: Batch, state: State | None, device: torch.device
) -> tuple[torch.Tensor, State]:
    chunk = chunk.to(device)
    # A stream row that ended in an earlier chunk has length 0 here; the cells need >= 1 step, and the loss
    # masks that row by its true length anyway.
    return model(chunk.inputs, chunk.lengths.clamp(min=1), state)


@torch.no_grad()
def evaluate(model: SequenceModel, dataset: Dataset, split: str, config: TrainConfig) -> dict[str, float]:
    """Every metric of `dataset` on `split` (state carried across chunks; padding masked)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Chunking only bounds memory here: with the state carried, any window gives the same numbers.
    window = max(config.bptt or dataset.default_bptt or 0, 256) if dataset.default_bptt else None
    for batch in dataset.batches(split, config.eval_batch_size or dataset.eval_batch_size):
        state = None
        for chunk in batch.chunks(window):
            outputs, state = _run(model, chunk, state, device)
            state = detach_state(state)
            loss, n = dataset.loss(outputs, chunk.to(device))
            total += float(loss)
            count += n
    model.train(was_training)
    return dataset.summarize(total / count)


class _Run:
    """The moving parts of one training run: model, optimizer, shuffling and the divergence reference."""

    def __init__(self, config: TrainConfig, dataset: Dataset, on_progress: Callable[[int, int], None] | None):
        self.config, self.dataset, self.on_progress = config, dataset, on_progress
        self.device = resolve_device(config.device)
        self.model = build_model(config, dataset).to(self.device)
        self.initial = copy.deepcopy(self.model.state_dict())
        self.params = list(self.model.parameters())  # walked once, not on every step
        self.optimizer = make_optimizer(config, self.params)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.bptt = config.bptt or dataset.default_bptt
        self.first_loss: float | None = None

    def epoch(self) -> float:
        """Train one epoch; returns the mean of its updates' losses. Raises Diverged as soon as a loss or
        gradient is unusable."""
        self.model.train()
        losses: list[float] = []
        steps, total = 0, self.dataset.train.n_targets
        for batch in self.dataset.batches("train", self.config.batch_size, self.shuffle):
            state = None
            for chunk in batch.chunks(self.bptt):
                state, value = self.update(chunk, state)
                losses.append(value)
                steps += chunk.n_steps
                if self.on_progress is not None:
                    self.on_progress(steps, total)
        return sum(losses) / len(losses)

    def update(self, chunk: Batch, state: State | None) -> tuple[State, float]:
        """One optimisation step on a chunk; returns the detached state and the chunk's mean loss."""
        outputs, state = _run(self.model, chunk, state, self.device)
        total, n = self.dataset.loss(outputs, chunk.to(self.device))
        loss = total / n
        value = loss.item()
        if self.first_loss is None:
            self.first_loss = value
        if (
            not math.isfinite(value)
            or value > self.dataset.loss_ceiling
            or value > EXPLOSION_FACTOR * self.first_loss
        ):
            raise Diverged
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.params if p.grad is not None]
        if self.config.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if not math.isfinite(float(norm)):
            raise Diverged
        self.optimizer.step()
        return detach_state(state), value

    def report(self, epoch: int, train_loss: float, t0: float, check: bool = True) -> EpochReport:
        """Evaluate valid and test now; with `check`, raises Diverged if any metric is not finite."""
        valid = evaluate(self.model, self.dataset, "valid", self.config)
        test = evaluate(self.model, self.dataset, "test", self.config)
        metrics = {f"valid_{k}": v for k, v in valid.items()} | {f"test_{k}": v for k, v in test.items()}
        if check and not all(math.isfinite(v) for v in metrics.values()):
            raise Diverged
        metric = self.dataset.metric
        return EpochReport(epoch, train_loss, valid[metric], test[metric], time.perf_counter() - t0, metrics)


def train(
    config: TrainConfig,
    dataset: Dataset,
    on_epoch: Callable[[EpochReport], None] | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `config` on `dataset` until early stopping, `max_epochs` or divergence.

    `on_epoch` receives every EpochReport and may raise to stop the run (the exception propagates).
    `on_progress(steps_done, steps_total)` is called after every update, counting training steps
    (frames/tokens) of the current epoch. The same seed gives the same numbers on the CPU.
    """
    kernels.load()  # a first use builds the C++ kernels: before the clock starts, as build is not training
    started = time.perf_counter()
    run = _Run(config, dataset, on_progress)
    history: list[EpochReport] = []
    best: EpochReport | None = None
    stale, status = 0, ResultState.COMPLETE
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        try:
            entry = run.report(epoch, run.epoch(), t0)
        except Diverged:
            status = ResultState.DIVERGED
            if not history:
                # Nothing finite to report yet: report the untrained model as epoch 0 (whose metrics are
                # finite unless the initialisation itself is broken, e.g. an enormous init_scale); its
                # train loss is that of the first batch, seen before any update.
                run.model.load_state_dict(run.initial)
                first = run.first_loss if run.first_loss is not None else math.nan
                entry = run.report(0, first, t0, check=False)
                history.append(best := entry)
                if on_epoch is not None:
                    on_epoch(entry)
            break
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        if best is None or entry.valid_metric < best.valid_metric:
            best, stale = entry, 0
        else:
            stale += 1
            if stale >= config.patience:
                break

    assert best is not None  # epoch 1 either completed or diverged, and both set it
    last = history[-1]
    return TrainResult(
        status=status,
        best_epoch=best.epoch,
        epochs=last.epoch,
        seconds=time.perf_counter() - started,
        n_params=run.model.n_params,
        best_valid=best.valid_metric,
        best_test=best.test_metric,
        final_valid=last.valid_metric,
        final_test=last.test_metric,
        history=history,
    )
