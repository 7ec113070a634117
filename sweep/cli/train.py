"""`odyssey train`: train one configuration on one dataset and print its metrics epoch by epoch.

Its options are generated from the training-settings model (`sweep.core.settings.TrainConfig`) and the
dataset registry (`sweep.data.registry`): a setting added there is an option here, with its help and default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sweep.core.errors import ConfigError
from sweep.core.settings import TrainConfig, setting_problem, settings
from sweep.data.registry import DATASETS

if TYPE_CHECKING:
    from sweep.training import EpochReport

_CLICK_TYPES: dict[type, Any] = {int: int, float: float, str: str}


def setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per training setting of `TrainConfig` (sweep.core.settings.settings()): its flag, value
    type (a choice lists the registry's names), default and help text all come from the model. The values
    reach the command as keywords named after the settings."""
    for setting in reversed(list(settings())):
        if setting.flag is None:
            continue
        kind = click.Choice(setting.choices) if setting.choices else _CLICK_TYPES[setting.type]
        show = setting.default is not None
        command = click.option(setting.flag, setting.name, type=kind, default=setting.default,
                               show_default=show, help=setting.help)(command)
    return command


def _data_help() -> str:
    needs = "; ".join(f"{d.name}: {d.path}" for d in DATASETS.values() if d.path is not None)
    return f"The dataset's data path ({needs})."


@click.command()
@click.option(
    "--dataset", "dataset_name", default="jsb", show_default=True, help=f"Dataset: {', '.join(DATASETS)}."
)
@click.option("--data", "data_path", default=None, help=_data_help())
@setting_options
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch (default: torch's)."
)
def train(dataset_name: str, data_path: str | None, threads: int | None, **values: Any) -> None:
    """Train one network and report the validation and test metric after every epoch."""
    import torch

    from sweep.data.base import load_dataset
    from sweep.objective import prepare_kernels
    from sweep.training import resolve_device
    from sweep.training import train as run_training

    if threads is not None:
        # Small recurrent nets are often fastest on one thread, and spinning threads slow a shared machine.
        torch.set_num_threads(threads)

    for setting in settings():  # the same rules as TrainConfig's, in the words of the option typed
        problem = None if setting.flag is None else setting_problem(setting.name, values[setting.name])
        if problem is not None:
            raise ConfigError(f"{setting.flag} {problem}")
    config = TrainConfig(**values)  # checks what is left: the variant (click has converted the types)
    resolve_device(config.device)  # fail before loading data
    entry = DATASETS.get(dataset_name)
    if entry is not None and data_path is not None and entry.path is None:
        raise ConfigError(f"{dataset_name}: takes no --data")
    if entry is not None and data_path is None and entry.path_required:
        raise ConfigError(f"{dataset_name}: --data is required ({entry.path})")
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
