"""`fedehr data download | inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fedehr.cli.download import download

app = typer.Typer(no_args_is_help=True)
app.command("download")(download)


@app.command("inspect")
def inspect(
    source: str = typer.Option(..., "--source", "-s", help="physionet2012 | eicu | yaib | mimic3 | meds | "
                               "long | simulated | cohort (a directory written by `fedehr prepare`)"),
    path: Path = typer.Option(None, "--path", "-p", help="dataset folder, archive or file"),
    site_by: str = typer.Option(None, "--site-by", help="column that defines sites (source-specific)"),
    hours: float = typer.Option(48.0, help="length of the time window after ICU admission"),
    bin_hours: float = typer.Option(1.0, help="width of one time bin"),
    option: list[str] = typer.Option([], "--option", help="loader option KEY=VALUE, repeatable"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Stays, sites with sizes and label prevalence, per-feature missingness, out-of-range drops."""
    from fedehr.cli.render import parse_options, print_summary
    from fedehr.data.sources import read_any
    from fedehr.data.summary import summarise

    opts = {} if source == "cohort" else {"hours": hours, "bin_hours": bin_hours, "site_by": site_by,
                                          **parse_options(option)}
    cohort = read_any(path, source=source, **opts)  # type: ignore[arg-type]
    s = summarise(cohort)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        print_summary(s)
