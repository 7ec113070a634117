"""The `odyssey` command line: a click group whose subcommands are imported only when used.

Importing torch takes a second or more, so `odyssey query` or `odyssey study list` must not pay for it;
each subcommand lives in its own module and is loaded on demand.
"""

from __future__ import annotations

import importlib
import sys

import click

from sweep.core.errors import OdysseyError

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "train": "sweep.cli.train:train",
    "study": "sweep.cli.study:study",
    "worker": "sweep.cli.worker:worker",
    "query": "sweep.cli.query:query",
    "export": "sweep.cli.query:export",
    "report": "sweep.cli.report:report",
    "run": "sweep.cli.run:run",
    "db": "sweep.cli.db:db",
    "kernels": "sweep.cli.kernels:kernels",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lstm-odyssey")
def cli() -> None:
    """Sweep LSTM variants' hyperparameters and analyse them with fANOVA (after Greff et al.)."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn user errors into one line on stderr and a non-zero exit."""
    try:
        # Without standalone mode click returns a command's ctx.exit(n) status instead of exiting.
        code = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OdysseyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
