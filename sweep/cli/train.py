"""`odyssey train`: train one configuration on one dataset and print its metrics epoch by epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sweep.core.errors import ConfigError
from sweep.core.variants import VARIANTS

if TYPE_CHECKING:
    from sweep.training import EpochReport

# Datasets without a bundled copy: what --data must point at.
_DATA_NEEDED = {"ptb": "a directory holding ptb.train/valid/test.txt", "char": "a UTF-8 text file"}


@click.command()
@click.option(
    "--dataset", "dataset_name", default="jsb", show_default=True, help="jsb, ptb, char or synthetic."
)
@click.option("--data", "data_path", default=None, help="Data path: ptb directory, char text file, jsb JSON.")
@click.option(
    "--variant", default="V", show_default=True, help=f"Cell variant: {', '.join(VARIANTS)}."
)
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    default=1e-3,
    show_default=True,
    help="Learning rate (SGD steps by lr * (1 - momentum)).",
)
@click.option("--hidden", "hidden_size", type=int, default=100, show_default=True, help="Cells per layer.")
@click.option("--layers", "num_layers", type=int, default=1, show_default=True, help="Recurrent layers.")
@click.option("--forget-bias", type=float, default=1.0, show_default=True, help="Initial forget-gate bias.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum / Adam beta1.")
@click.option("--noise", "input_noise", type=float, default=0.0, show_default=True, help="Input noise std.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--epochs", "max_epochs", type=int, default=150, show_default=True, help="Maximum epochs.")
@click.option("--patience", type=int, default=15, show_default=True, help="Epochs without improvement.")
@click.option(
    "--batch-size", type=int, default=1, show_default=True, help="Sequences (or streams) per batch."
)
@click.option("--clip", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--bptt", type=int, default=None, help="Truncated-BPTT window (default: the dataset's).")
@click.option(
    "--init", type=click.Choice(["normal", "uniform", "xavier"]), default="normal", show_default=True
)
@click.option("--init-scale", type=float, default=0.1, show_default=True, help="Std of the normal init.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch (default: torch's)."
)
def train(dataset_name: str, data_path: str | None, threads: int | None, **settings: object) -> None:
    """Train one network and report the validation and test metric after every epoch."""
    import torch

    from sweep.data.base import load_dataset
    from sweep.objective import prepare_kernels
    from sweep.training import TrainConfig, resolve_device
    from sweep.training import train as run_training

    if threads is not None:
        # Small recurrent nets are often fastest on one thread, and spinning threads slow a shared machine.
        torch.set_num_threads(threads)

    config = TrainConfig(**settings)  # type: ignore[arg-type]  # click has checked the types
    config.validate()
    resolve_device(config.device)  # fail before loading data
    if data_path is not None and dataset_name == "synthetic":
        raise ConfigError("synthetic: takes no --data")
    if data_path is None and dataset_name in _DATA_NEEDED:
        raise ConfigError(f"{dataset_name}: --data is required ({_DATA_NEEDED[dataset_name]})")
    dataset = load_dataset(dataset_name, path=data_path)
    prepare_kernels()
    console = Console()
    console.print(f"{dataset.describe()}; {config.variant}, {config.hidden_size} cells, {config.optimizer}")
    unit = "frames" if dataset.vocab_size is None else "tokens"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        epochs = progress.add_task("epochs", total=config.max_epochs)
        steps = progress.add_task(f"epoch 1 ({unit})", total=dataset.train.n_targets)

        def on_progress(done: int, total: int) -> None:
            progress.update(steps, completed=done, total=total)

        def on_epoch(report: EpochReport) -> None:
            metrics = "  ".join(f"{k} {v:.4g}" for k, v in report.metrics.items())
            head = f"epoch {report.epoch:>3}  train_loss {report.train_loss:.4g}"
            progress.console.print(f"{head}  {metrics}  ({report.seconds:.1f} s)")
            progress.update(epochs, completed=report.epoch)
            progress.update(steps, completed=0, description=f"epoch {report.epoch + 1} ({unit})")

        result = run_training(config, dataset, on_epoch, on_progress=on_progress)

    table = Table(title=f"{config.variant} on {dataset.name}", show_header=False)
    for name, value in (
        ("status", result.status),
        ("best epoch", str(result.best_epoch)),
        (f"best valid {dataset.metric}", f"{result.best_valid:.4f}"),
        (f"best test {dataset.metric}", f"{result.best_test:.4f}"),
        (f"final valid {dataset.metric}", f"{result.final_valid:.4f}"),
        (f"final test {dataset.metric}", f"{result.final_test:.4f}"),
        ("epochs", str(result.epochs)),
        ("parameters", f"{result.n_params:,}"),
        ("seconds", f"{result.seconds:.1f}"),
    ):
        table.add_row(name, value)
    console.print(table)
