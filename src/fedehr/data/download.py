"""Download open PhysioNet datasets: resumable HTTPS transfers verified against the project's SHA256SUMS.txt.

PhysioNet publishes ``<base>/<project>/<version>/SHA256SUMS.txt`` (lines ``<sha256> <relative path>``) for every
project version. That list says which files exist and what their bytes must hash to, so it drives both the file
selection and the verification. Each file is written to ``<file>.part`` (resumed with an HTTP Range request when a
partial copy exists), verified, and only then renamed to its final name, so a final name always holds good bytes.
Only the standard library talks to the network; rich draws the progress bar.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from fedehr import __version__
from fedehr.errors import FedEHRError, InputError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://physionet.org/files/"
BASE_URL_ENV = "FEDEHR_PHYSIONET_BASE_URL"
CHECKSUM_FILE = "SHA256SUMS.txt"
USER_AGENT = f"fedehr/{__version__} (+https://physionet.org; Python urllib)"
_MAX_CHECKSUM_BYTES = 16 << 20  # a checksum list is a few KB; refuse anything absurd


@dataclass(frozen=True)
class Dataset:
    """One open PhysioNet project version fedehr can fetch."""

    name: str                          # what users type: `fedehr data download <name>`
    project: str                       # PhysioNet slug, e.g. "challenge-2012"
    version: str                       # e.g. "1.0.0"
    title: str
    licence: str
    source: str                        # the fedehr loader that reads the files (`fedehr prepare --source`)
    default_files: tuple[str, ...] = ("*",)  # fnmatch patterns on the relative paths of SHA256SUMS.txt

    @property
    def path(self) -> str:
        return f"{self.project}/{self.version}/"


DATASETS: dict[str, Dataset] = {
    "physionet2012": Dataset("physionet2012", "challenge-2012", "1.0.0",
                             "PhysioNet/CinC Challenge 2012", "ODC-By 1.0",
                             "physionet2012", ("set-a.tar.gz", "Outcomes-a.txt")),
    "eicu-demo": Dataset("eicu-demo", "eicu-crd-demo", "2.0.1", "eICU Collaborative Research Database Demo",
                         "ODbL 1.0", "eicu"),
    "mimic3-demo": Dataset("mimic3-demo", "mimiciii-demo", "1.4", "MIMIC-III Clinical Database Demo",
                           "ODbL 1.0", "mimic3"),
}


@dataclass(frozen=True)
class CredentialedDataset:
    """A PhysioNet project that only credentialed users may download; fedehr reads it but never fetches it."""

    project: str
    version: str
    title: str
    how_to_load: str


_LOAD = "fedehr prepare --source {} --path <{}> --out <cohort dir>"
_MIMIC3 = CredentialedDataset("mimiciii", "1.4", "MIMIC-III Clinical Database",
                              _LOAD.format("mimic3", "folder with the downloaded files"))
_EICU = CredentialedDataset("eicu-crd", "2.0", "eICU Collaborative Research Database",
                            _LOAD.format("eicu", "folder with the downloaded files"))
_MIMIC4 = CredentialedDataset("mimiciv", "3.1", "MIMIC-IV", "convert it to MEDS (e.g. with the MIMIC-IV MEDS ETL), "
                              "then " + _LOAD.format("meds", "MEDS folder"))
CREDENTIALED: dict[str, CredentialedDataset] = {
    "eicu": _EICU, "eicu-crd": _EICU, "mimic3": _MIMIC3, "mimiciii": _MIMIC3, "mimic4": _MIMIC4, "mimiciv": _MIMIC4,
}


@dataclass(frozen=True)
class FetchConfig:
    """How patient the HTTP client is. Transient failures (timeouts, resets, 429/5xx) are retried."""

    timeout_s: float = 60.0    # per socket operation
    retries: int = 4           # extra attempts per request after the first
    backoff_s: float = 1.0     # wait backoff_s * 2**k before retry k
    chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name, ok, expected in (("timeout_s", self.timeout_s > 0, "> 0"), ("retries", self.retries >= 0, ">= 0"),
                                   ("backoff_s", self.backoff_s >= 0, ">= 0"),
                                   ("chunk_bytes", self.chunk_bytes > 0, "> 0")):
            if not ok:
                raise InputError("invalid download setting", field=name, value=getattr(self, name),
                                 expected=f"a number {expected}")


class _Transient(Exception):
    """A network failure worth retrying (the .part file keeps what arrived)."""


# -- public API ------------------------------------------------------------------------------------------------------

def dataset_spec(name: str) -> Dataset:
    """The registry entry for ``name``; a clear error for credentialed or unknown datasets."""
    if name in DATASETS:
        return DATASETS[name]
    key = name.lower()
    if key in CREDENTIALED:
        c = CREDENTIALED[key]
        raise FedEHRError(
            f"{c.title} ({name!r}) cannot be downloaded by fedehr: it is a credentialed PhysioNet dataset. "
            f"You need a credentialed PhysioNet account, completion of the required CITI training "
            f"('Data or Specimens Only Research'), and to sign the data use agreement on "
            f"https://physionet.org/content/{c.project}/{c.version}/. Then download it with your own credentials, "
            f"e.g. `wget -r -N -c -np --user USER --ask-password "
            f"https://physionet.org/files/{c.project}/{c.version}/`, and point fedehr at those files: "
            f"{c.how_to_load}. Open datasets fedehr can download: {', '.join(sorted(DATASETS))}.")
    raise InputError("unknown dataset", field="dataset", value=name, expected=" | ".join(sorted(DATASETS)))


def resolve_base_url(base_url: str | None = None) -> str:
    """``base_url``, else $FEDEHR_PHYSIONET_BASE_URL, else https://physionet.org/files/ (always ending in '/')."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("not an HTTP(S) URL", field="base_url", value=url, expected="e.g. " + DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def parse_checksums(text: str, *, source: str = CHECKSUM_FILE) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-style list; rejects malformed lines and unsafe paths."""
    sums: dict[str, str] = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(.+)", line)
        if m is None:
            raise InputError("malformed checksum line", file=source, line=i, value=line[:120],
                             expected="'<64 hex digits> <relative path>'")
        rel = m[2]
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or "\\" in rel or rel.startswith("/") or rel in (".", ""):
            raise InputError("unsafe path in checksum list", file=source, line=i, field="path", value=rel,
                             expected="a relative path inside the project")
        sums[str(p)] = m[1].lower()
    sums.pop(CHECKSUM_FILE, None)
    if not sums:
        raise InputError("checksum list names no files", file=source, expected="lines '<sha256> <path>'")
    return sums


def select_files(sums: dict[str, str], patterns: list[str] | tuple[str, ...], *,
                 source: str = CHECKSUM_FILE) -> list[str]:
    """Relative paths matching any fnmatch pattern ('all' means every file), in checksum-list order."""
    if any(p.strip() == "all" for p in patterns):
        return list(sums)
    chosen: set[str] = set()
    for pat in patterns:
        hits = {rel for rel in sums if fnmatch.fnmatchcase(rel, pat.strip())}
        if not hits:
            shown = ", ".join(list(sums)[:12]) + (", ..." if len(sums) > 12 else "")
            raise InputError("no file in the checksum list matches this pattern", file=source, field="files",
                             value=pat, expected=f"'all' or a pattern matching one of: {shown}")
        chosen |= hits
    return [rel for rel in sums if rel in chosen]


def list_files(dataset: str, *, base_url: str | None = None, fetch: FetchConfig | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of every file PhysioNet publishes for ``dataset``."""
    spec = dataset_spec(dataset)
    url = resolve_base_url(base_url) + spec.path + CHECKSUM_FILE
    return parse_checksums(_get_bytes(url, fetch or FetchConfig()).decode("utf-8"), source=url)


def download(dataset: str, dest: str | Path, *, base_url: str | None = None, files: list[str] | None = None,
             progress: bool = True, fetch: FetchConfig | None = None) -> list[Path]:
    """Fetch ``dataset``'s files into ``dest`` (keeping PhysioNet's relative paths); return their paths.

    ``files`` are fnmatch patterns on the paths listed in SHA256SUMS.txt (``["all"]`` for every file; default:
    the dataset's default selection). Files already present with the published SHA-256 are skipped; a partial
    ``<file>.part`` is resumed; every file is verified before it gets its final name.
    """
    spec = dataset_spec(dataset)
    fetch = fetch or FetchConfig()
    root = resolve_base_url(base_url) + spec.path
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError("destination exists and is not a directory", file=dest, field="dest")
    sums_url = root + CHECKSUM_FILE
    sums = parse_checksums(_get_bytes(sums_url, fetch).decode("utf-8"), source=sums_url)
    chosen = select_files(sums, files or list(spec.default_files), source=sums_url)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    with _progress(progress) as ui:
        for rel in chosen:
            target = dest.joinpath(*PurePosixPath(rel).parts)
            _fetch_verified(root + urllib.parse.quote(rel), target, sums[rel], fetch, ui, rel)
            out.append(target)
    return out


# -- one file --------------------------------------------------------------------------------------------------------

def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def _fetch_verified(url: str, target: Path, expected: str, fetch: FetchConfig, ui: _UI, label: str) -> None:
    part = target.with_name(target.name + ".part")
    if target.is_file() and sha256_file(target, fetch.chunk_bytes) == expected:
        part.unlink(missing_ok=True)  # a stale partial copy of a file we already have
        ui.note(f"{label}: already present, SHA-256 ok")
        return
    if target.exists() and not target.is_file():
        raise InputError("exists and is not a regular file", file=target, expected="a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    resumed = _transfer(url, part, fetch, ui, label)
    actual = sha256_file(part, fetch.chunk_bytes)
    if actual != expected and resumed:
        # The old partial copy may come from another file version: one clean retry from byte 0.
        ui.note(f"{label}: resumed copy failed verification; downloading it again from the start")
        part.unlink()
        _transfer(url, part, fetch, ui, label)
        actual = sha256_file(part, fetch.chunk_bytes)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise InputError(f"SHA-256 checksum mismatch for {url}; the downloaded file was deleted (the server copy "
                         "or its checksum list is wrong, or the transfer was corrupted: try again)", file=target,
                         field="sha256", value=actual, expected=f"{expected}, as published in {CHECKSUM_FILE}")
    part.replace(target)  # atomic: the final name only ever holds verified bytes


def _transfer(url: str, part: Path, fetch: FetchConfig, ui: _UI, label: str) -> bool:
    """Fill ``part`` with the whole body of ``url``, resuming and retrying; True if it reused earlier bytes."""
    resumed = False
    for attempt in range(fetch.retries + 1):
        try:
            resumed |= _attempt(url, part, fetch, ui, label)
            return resumed
        except _Transient as e:
            if attempt == fetch.retries:
                kept = (f"; the partial file {part} is kept: run the command again to resume"
                        if part.exists() and part.stat().st_size else "")
                raise FedEHRError(f"could not download {url} after {attempt + 1} attempts ({e}){kept}") from e
            wait = fetch.backoff_s * 2**attempt
            ui.note(f"{label}: {e}; retrying in {wait:g} s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def _attempt(url: str, part: Path, fetch: FetchConfig, ui: _UI, label: str) -> bool:
    """One request: append the missing bytes to ``part`` (or rewrite it); True if earlier bytes were kept."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, fetch, offset)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:  # nothing left to send: the part is complete (verification decides)
            e.close()
            return True
        raise
    with resp, _network_errors():
        total: int | None
        if resp.status == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if m is None or int(m[1]) != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server answered range {resp.headers.get('Content-Range')!r} to 'bytes={offset}-'")
            total = int(m[3]) if m[3] != "*" else None
            if offset:
                ui.note(f"{label}: resuming at byte {offset:,}")
        else:
            if offset:
                ui.note(f"{label}: server does not support resuming; restarting from byte 0")
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        got = offset
        ui.start(label, total, got)
        with open(part, "ab" if offset else "wb") as fh:
            while chunk := resp.read(fetch.chunk_bytes):
                fh.write(chunk)
                got += len(chunk)
                ui.advance(got)
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and got < total:
            raise _Transient(f"connection closed after {got:,} of {total:,} bytes")
    return offset > 0


# -- HTTP ------------------------------------------------------------------------------------------------------------

def _open(url: str, fetch: FetchConfig, offset: int = 0) -> http.client.HTTPResponse:
    """urlopen with our headers; permanent HTTP errors become FedEHRError, transient ones _Transient."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        with _network_errors():
            return urllib.request.urlopen(req, timeout=fetch.timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            raise
        e.close()
        if e.code in (401, 403):
            raise FedEHRError(f"access to {url} was refused (HTTP {e.code}): this file needs PhysioNet "
                              "credentials, which fedehr does not handle") from None
        if e.code == 404:
            raise FedEHRError(f"{url} was not found (HTTP 404); check --base-url / "
                              f"${BASE_URL_ENV} and the dataset version") from None
        raise FedEHRError(f"{url} failed with HTTP {e.code} {e.reason}") from None


@contextlib.contextmanager
def _network_errors() -> Iterator[None]:
    """Turn retryable network failures into _Transient; everything else (e.g. a full disk) propagates."""
    try:
        yield
    except urllib.error.HTTPError as e:
        if e.code in (408, 425, 429) or e.code >= 500:
            e.close()
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e


def _get_bytes(url: str, fetch: FetchConfig) -> bytes:
    """A small file (the checksum list) into memory, with the same retry policy."""
    for attempt in range(fetch.retries + 1):
        try:
            with _open(url, fetch) as resp, _network_errors():
                body = resp.read(_MAX_CHECKSUM_BYTES + 1)
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and len(body) < int(length):
                    raise _Transient(f"connection closed after {len(body):,} of {int(length):,} bytes")
        except _Transient as e:
            if attempt == fetch.retries:
                raise FedEHRError(f"could not download {url} after {attempt + 1} attempts ({e})") from e
            time.sleep(fetch.backoff_s * 2**attempt)
            continue
        if len(body) > _MAX_CHECKSUM_BYTES:
            raise InputError("checksum list is implausibly large", file=url, expected="< 16 MiB")
        return body
    raise AssertionError("unreachable")


# -- progress --------------------------------------------------------------------------------------------------------

class _UI:
    """A rich progress bar on stderr (one row per file), or nothing at all."""

    def __init__(self, progress: Progress | None) -> None:
        self._p = progress
        self._tasks: dict[str, TaskID] = {}
        self._current: TaskID | None = None

    def start(self, label: str, total: int | None, completed: int) -> None:
        if self._p is None:
            return
        if label in self._tasks:  # a retry or restart of the same file reuses its row
            self._current = self._tasks[label]
            self._p.reset(self._current, total=total, completed=completed)
        else:
            self._current = self._tasks[label] = self._p.add_task(label, total=total, completed=completed)

    def advance(self, completed: int) -> None:
        if self._p is not None and self._current is not None:
            self._p.update(self._current, completed=completed)

    def note(self, message: str) -> None:
        log.info(message)
        if self._p is not None:
            self._p.console.print(message, highlight=False, markup=False)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[_UI]:
    if not enabled:
        yield _UI(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as p:
        ui = _UI(p)
        yield ui

