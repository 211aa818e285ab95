"""The `fedehr` command line (typer + rich). Sub-commands live in one module each and import lazily."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fedehr.errors import FedEHRError

app = typer.Typer(
    name="fedehr",
    help="Federated synthetic ICU time-series generation: load, prepare, train, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


def _register() -> None:
    from fedehr.cli import data, evaluate, prepare, quickstart, train

    app.add_typer(data.app, name="data", help="Download and inspect ICU datasets.")
    app.command("prepare")(prepare.prepare)
    app.command("quickstart")(quickstart.quickstart)
    app.command("evaluate")(evaluate.evaluate)
    app.command("train")(train.train)
    app.command("sample")(train.sample)
    app.command("site")(train.site)


_register()


def main() -> None:
    """Entry point: run the app, turning fedehr's own errors into one clear red line and exit code 2."""
    try:
        app(standalone_mode=False)
    except FedEHRError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
