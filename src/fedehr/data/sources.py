"""Explicit registries of data sources (readers) and export formats (writers).

Each loader module ``fedehr.data.loaders.<name>`` provides::

    SITE_KEYS: tuple[str, ...]            # accepted --site-by values (first = default; "none" = one site)
    def detect(path: Path) -> bool        # cheap: does this path look like this source?
    def load(path: Path, *, hours: float = 48, bin_hours: float = 1, site_by: str | None = None,
             **options) -> Cohort

Each exporter module ``fedehr.data.exporters.<name>`` provides
``export(cohort: Cohort, out: Path, *, splits=None, overwrite=False) -> Path`` and writes atomically.
Modules are imported lazily so `fedehr --help` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from fedehr.data.cohort import Cohort
from fedehr.errors import InputError

LOADERS: dict[str, str] = {
    "physionet2012": "fedehr.data.loaders.physionet2012",
    "eicu": "fedehr.data.loaders.eicu",
    "yaib": "fedehr.data.loaders.yaib",
    "mimic3": "fedehr.data.loaders.mimic3",
    "meds": "fedehr.data.loaders.meds",
    "long": "fedehr.data.loaders.long",
    "simulated": "fedehr.data.simulated",
}

EXPORTERS: dict[str, str] = {
    "cohort": "fedehr.data.exporters.cohort",
    "physionet2012": "fedehr.data.exporters.physionet2012",
    "meds": "fedehr.data.exporters.meds",
    "long": "fedehr.data.exporters.long",
}


def _module(registry: dict[str, str], name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(registry[name])
    except KeyError:
        raise InputError(f"unknown {what}", field=what, value=name,
                         expected=" | ".join(sorted(registry))) from None


def loader(source: str) -> ModuleType:
    return _module(LOADERS, source, "source")


def exporter(fmt: str) -> ModuleType:
    return _module(EXPORTERS, fmt, "format")


def load_source(source: str, path: str | Path | None, *, hours: float = 48.0, bin_hours: float = 1.0,
                site_by: str | None = None, **options: object) -> Cohort:
    """Load any registered source into a :class:`Cohort`."""
    mod = loader(source)
    if source != "simulated":
        if path is None:
            raise InputError(f"source {source!r} needs --path", field="path")
        path = Path(path)
        if not path.exists():
            raise InputError("path does not exist", file=path, field="path")
    if site_by is not None and site_by not in mod.SITE_KEYS:
        raise InputError(f"cannot split {source!r} into sites by this key", field="site_by", value=site_by,
                         expected=" | ".join(mod.SITE_KEYS))
    cohort = mod.load(Path(path) if path is not None else None, hours=hours, bin_hours=bin_hours,
                      site_by=site_by, **options)
    if len(cohort) == 0:
        raise InputError("no ICU stays were found", file=path, field="stays",
                         expected="at least one stay with data in the time window")
    return cohort


def detect_source(path: str | Path) -> str:
    """Name of the source ``path`` looks like: 'cohort' for a fedehr cohort directory, else a loader."""
    from fedehr.data.store import is_cohort_dir

    path = Path(path)
    if is_cohort_dir(path):
        return "cohort"
    for name in ("physionet2012", "meds", "mimic3", "eicu", "yaib", "long"):
        try:
            if loader(name).detect(path):
                return name
        except ModuleNotFoundError:
            continue
    raise InputError("cannot tell what kind of data this is", file=path,
                     expected="a fedehr cohort directory or one of: " + ", ".join(sorted(LOADERS)))


def read_any(path: str | Path, *, source: str | None = None, split: str | None = None,
             **options: object) -> Cohort:
    """A cohort directory, or any supported source format (detected when ``source`` is None)."""
    from fedehr.data.store import load_cohort

    source = source or detect_source(path)
    if source == "cohort":
        return load_cohort(path, split=split)
    if split is not None:
        raise InputError("splits exist only in cohort directories", field="split", value=split,
                         expected="a directory written by `fedehr prepare`")
    return load_source(source, path, **options)  # type: ignore[arg-type]
