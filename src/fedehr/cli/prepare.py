"""`fedehr prepare`: load a source, assign sites, split per site, write a cohort directory."""

from __future__ import annotations

from pathlib import Path

import typer


def prepare(
    source: str = typer.Option(..., "--source", "-s", help="physionet2012 | eicu | yaib | mimic3 | meds | "
                               "long | simulated"),
    out: Path = typer.Option(..., "--out", "-o", help="cohort directory to write (must not exist)"),
    path: Path = typer.Option(None, "--path", "-p", help="dataset folder, archive or file"),
    site_by: str = typer.Option(None, "--site-by", help="column that defines sites (source-specific)"),
    hours: float = typer.Option(48.0, help="length of the time window after ICU admission"),
    bin_hours: float = typer.Option(1.0, help="width of one time bin"),
    min_site_size: int = typer.Option(0, help="merge sites smaller than this into one 'other' site"),
    test_fraction: float = typer.Option(0.2, help="held-out share per site, stratified by mortality"),
    seed: int = typer.Option(0, help="seed of the split (and of the simulator)"),
    n_stays: int = typer.Option(3000, help="simulated only: number of stays"),
    n_sites: int = typer.Option(4, help="simulated only: number of hospitals"),
    heterogeneity: float = typer.Option(0.5, help="simulated only: 0 = identical hospitals, 1 = very different"),
    option: list[str] = typer.Option([], "--option", help="loader option KEY=VALUE, repeatable (e.g. "
                                     "patient=.../patient.csv.gz for yaib sites)"),
    overwrite: bool = typer.Option(False, help="replace --out if it exists"),
) -> None:
    """Prepare a cohort directory with per-site, label-stratified, seeded train/test splits."""
    from fedehr.cli.render import console, parse_options, print_summary
    from fedehr.data.partition import group_small_sites
    from fedehr.data.sources import load_source
    from fedehr.data.store import make_splits, save_cohort
    from fedehr.data.summary import summarise

    opts: dict[str, object] = parse_options(option)
    if source == "simulated":
        opts |= {"n_stays": n_stays, "n_sites": n_sites, "heterogeneity": heterogeneity, "seed": seed}
    cohort = load_source(source, path, hours=hours, bin_hours=bin_hours, site_by=site_by, **opts)
    if min_site_size > 0:
        cohort = cohort.with_sites(group_small_sites(cohort.sites, min_site_size), cohort.schema.site_by)
    splits = make_splits(cohort, test_fraction=test_fraction, seed=seed)
    save_cohort(cohort, out, splits=splits, overwrite=overwrite,
                extra_manifest={"split": {"test_fraction": test_fraction, "seed": seed,
                                          "stratified_by": ["site", "mortality"]},
                                "min_site_size": min_site_size})
    print_summary(summarise(cohort), features=False)
    console.print(f"cohort written to [bold]{out}[/] ({int((splits == 'train').sum())} train, "
                  f"{int((splits == 'test').sum())} test)")
