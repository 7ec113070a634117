"""Training one configuration on one dataset: SGD with Nesterov momentum or Adam, early stopping on the
validation metric, divergence detection, and a report after every epoch.

Choices (see docs/training.md): for SGD the step size is `learning_rate * (1 - momentum)`, as in Greff et
al., so that the learning rate means about the same whatever the momentum; Adam uses `learning_rate` as is
(and `momentum` as its beta1). The loss of a batch is its mean per-step loss (per frame, token or step).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from sweep.core.errors import ConfigError
from sweep.core.variants import Variant, resolve
from sweep.data.base import Batch, Dataset
from sweep.nn import kernels
from sweep.nn.cells import State, detach_state
from sweep.nn.common import INIT_SCHEMES
from sweep.nn.models import SequenceModel

OPTIMIZERS = ("sgd", "adam")
EXPLOSION_FACTOR = 1e3  # a batch loss this many times the first batch's means the run diverged


@dataclass
class TrainConfig:
    """Hyperparameters and run settings of one training run."""

    variant: str
    hidden_size: int
    learning_rate: float
    momentum: float = 0.9
    forget_bias: float = 1.0
    input_noise: float = 0.0
    num_layers: int = 1
    optimizer: str = "sgd"  # "sgd" (Nesterov) | "adam"
    batch_size: int = 1
    max_epochs: int = 150
    patience: int = 15
    clip: float | None = None  # max gradient norm; None: no clipping
    seed: int = 0
    device: str = "cpu"
    init: str = "normal"
    init_scale: float = 0.1
    bptt: int | None = None  # truncated-BPTT window; None: the dataset's default (full BPTT for sequences)
    embedding_size: int | None = None  # token data; None: hidden_size
    eval_batch_size: int | None = None  # None: the dataset's default
    switches: dict[str, Any] | None = None  # a custom LSTM variant's switches (None: `variant` is built in)

    def cell(self) -> Variant:
        """The registry entry of `variant` (a custom one from `switches`); OdysseyError if it is unknown."""
        return resolve(self.variant, self.switches)

    def validate(self) -> None:
        """Raise OdysseyError naming the first invalid setting: the variant through the registry (a custom
        one with its `switches`), every other setting by the rules of `setting_problem`."""
        self.cell()
        for item in fields(self):
            problem = setting_problem(item.name, getattr(self, item.name))
            if problem is not None:
                raise ConfigError(f"{item.name} {problem}")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _at_least_one(v: Any) -> str | None:
    return None if v >= 1 else f"must be >= 1, got {v}"


def _positive(v: Any) -> str | None:
    return None if 0 < v < math.inf else f"must be a positive number, got {v}"


def _optional(rule: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else rule(v)


# The training rules, one per TrainConfig setting that has one: `TrainConfig.validate` (odyssey train, every
# trial) and the study spec's check at `study create` (every fixed value and range end) both apply these.
_RULES: dict[str, Callable[[Any], str | None]] = {
    "init": _one_of(INIT_SCHEMES),
    "optimizer": _one_of(OPTIMIZERS),
    "hidden_size": _at_least_one,
    "learning_rate": _positive,
    "momentum": lambda v: None if 0 <= v < 1 else f"must be in [0, 1), got {v}",
    "forget_bias": lambda v: None if math.isfinite(v) else f"must be finite, got {v}",
    "input_noise": lambda v: None if 0 <= v < math.inf else f"must be >= 0, got {v}",
    "num_layers": _at_least_one,
    "batch_size": _at_least_one,
    "max_epochs": _at_least_one,
    "patience": _at_least_one,
    "clip": _optional(_positive),
    "init_scale": _positive,
    "bptt": _optional(_at_least_one),
    "embedding_size": _optional(_at_least_one),
    "eval_batch_size": _optional(_at_least_one),
}


def setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the TrainConfig setting ``name`` ("must be >= 1, got 0"), or None.

    The one rule set for training settings: `TrainConfig.validate` and `sweep.spec` (each fixed value and
    range end of a study spec) both call it. A setting without a rule (seed, device) is always accepted here.
    """
    rule = _RULES.get(name)
    return None if rule is None else rule(value)


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

    status: str  # "complete" | "diverged"
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
    """SGD with Nesterov momentum (step scaled by 1 - momentum) or Adam (beta1 = momentum)."""
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
    config.validate()
    kernels.load()  # a first use builds the C++ kernels: before the clock starts, as build is not training
    started = time.perf_counter()
    run = _Run(config, dataset, on_progress)
    history: list[EpochReport] = []
    best: EpochReport | None = None
    stale, status = 0, "complete"
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        try:
            entry = run.report(epoch, run.epoch(), t0)
        except Diverged:
            status = "diverged"
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
