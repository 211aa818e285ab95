"""`fedehr data download`: fetch an open PhysioNet dataset, resumable and SHA-256 verified."""

from __future__ import annotations

from pathlib import Path

import typer


def download(
    dataset: str = typer.Argument(..., help="physionet2012 | eicu-demo | mimic3-demo", show_default=False),
    dest: Path = typer.Option(None, "--dest", "-d", help="folder to download into", show_default="data/<dataset>"),
    base_url: str = typer.Option(None, "--base-url", help="PhysioNet files root",
                                 show_default="$FEDEHR_PHYSIONET_BASE_URL or https://physionet.org/files/"),
    files: list[str] = typer.Option(None, "--files", "-f", help="file patterns from the project's SHA256SUMS.txt "
                                    "(repeat or comma-separate; 'all' = every file)",
                                    show_default="the dataset's default files"),
    list_only: bool = typer.Option(False, "--list", help="print the published files with their SHA-256 and exit"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar (on stderr)"),
) -> None:
    """Download an open PhysioNet ICU dataset: physionet2012 | eicu-demo | mimic3-demo.

    Files are fetched over HTTPS into <file>.part (resumed on the next run if interrupted), verified against the
    project's SHA256SUMS.txt, then renamed. Credentialed datasets (mimic3, eicu, mimic4) explain how to get them.
    """
    from rich.console import Console

    from fedehr.data.download import dataset_spec, download, list_files, resolve_base_url

    console = Console()
    spec = dataset_spec(dataset)
    patterns = [p.strip() for arg in files or [] for p in arg.split(",") if p.strip()] or None
    if list_only:
        from fedehr.data.download import CHECKSUM_FILE, select_files

        sums = list_files(dataset, base_url=base_url)
        default = set(select_files(sums, list(spec.default_files)))
        err = Console(stderr=True)
        err.print(f"{spec.title}: {resolve_base_url(base_url)}{spec.path}{CHECKSUM_FILE}", highlight=False)
        for rel, digest in sums.items():  # stdout is itself a valid checksum list (`sha256sum -c`)
            typer.echo(f"{digest}  {rel}")
        err.print("downloaded by default: " + ", ".join(r for r in sums if r in default), highlight=False)
        return
    dest = dest if dest is not None else Path("data") / dataset
    paths = download(dataset, dest, base_url=base_url, files=patterns, progress=progress)
    size = sum(p.stat().st_size for p in paths)
    console.print(f"{len(paths)} file(s), {size / 1e6:.1f} MB, SHA-256 verified, in [bold]{dest}[/] "
                  f"({spec.title}, licence {spec.licence})")
    console.print(f"next: fedehr prepare --source {spec.source} --path {dest} --out <cohort dir>", highlight=False)
