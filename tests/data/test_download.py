"""Dataset downloader against a local PhysioNet-like HTTP server: selection, resume, verification, errors, CLI."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import random
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, shared_data
from fedehr.data.download import CHECKSUM_FILE, DATASETS, FetchConfig, download, list_files, parse_checksums
from fedehr.errors import FedEHRError, InputError

FAST = FetchConfig(timeout_s=5, retries=2, backoff_s=0.01, chunk_bytes=64 << 10)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """GET with optional single-range support, failure injection and per-file byte accounting."""

    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        s = self.server
        rel = self.path.lstrip("/")
        with s.lock:
            s.requests.append((rel, self.headers.get("Range")))
            fail = s.fail_next.get(rel, 0) or (s.fail_ranged and "Range" in self.headers)
            if s.fail_next.get(rel):
                s.fail_next[rel] -= 1
        if fail:
            self.send_error(503, "try later")
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as fh:
            data = fh.read()
        start, rng = 0, self.headers.get("Range")
        if rng and s.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with s.lock:
            cut = s.cut_next.pop(rel, None)
        if cut is not None:  # announce the full length, send part of it, drop the connection
            body = body[:cut]
        with s.lock:  # counted before the write: once the bytes are out, the client may finish and assert
            s.served[rel] += len(body)  # before this thread runs again
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.lock = threading.Lock()
        self.ranges = True
        self.fail_ranged = False
        self.requests: list[tuple[str, str | None]] = []
        self.served: Counter[str] = Counter()
        self.fail_next: dict[str, int] = {}
        self.cut_next: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "physionet"
    root.mkdir()
    server = _Server(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield root, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _publish(project_dir: Path, files: dict[str, bytes], sums: dict[str, str] | None = None) -> None:
    """Write files and a SHA256SUMS.txt (optionally with wrong sums) laid out like PhysioNet."""
    project_dir.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (project_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (project_dir / rel).write_bytes(data)
    sums = {rel: _sha(d) for rel, d in files.items()} | (sums or {})
    (project_dir / CHECKSUM_FILE).write_text("".join(f"{h} {rel}\n" for rel, h in sums.items()))


def _blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# -- real data -------------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_physionet2012_real_files_default_selection_byte_identical(served, tmp_path: Path) -> None:
    """Default physionet2012 files arrive byte-identical; set-b is listed but not fetched; rerun fetches nothing."""
    src = shared_data("physionet-2012")
    root, server = served
    proj = root / "challenge-2012" / "1.0.0"
    proj.mkdir(parents=True)
    lines = []
    for name in ("set-a.tar.gz", "Outcomes-a.txt"):
        (proj / name).symlink_to(src / name)
        lines.append(f"{_sha((src / name).read_bytes())} {name}")
    (proj / "set-b.tar.gz").write_bytes(b"other set")
    lines.append(f"{_sha(b'other set')} set-b.tar.gz")
    (proj / CHECKSUM_FILE).write_text("\n".join(lines) + "\n")

    dest = tmp_path / "dl"
    paths = download("physionet2012", dest, base_url=server.url, progress=True, fetch=FAST)

    assert [p.name for p in paths] == ["set-a.tar.gz", "Outcomes-a.txt"]
    for name in ("set-a.tar.gz", "Outcomes-a.txt"):
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["Outcomes-a.txt", "set-a.tar.gz"]  # no .part, no set-b
    assert server.served["challenge-2012/1.0.0/set-a.tar.gz"] == (src / "set-a.tar.gz").stat().st_size

    before = dict(server.served)
    download("physionet2012", dest, base_url=server.url, progress=False, fetch=FAST)
    after = dict(server.served)
    assert {k: after[k] - before.get(k, 0) for k in after if not k.endswith(CHECKSUM_FILE)} == {
        k: 0 for k in after if not k.endswith(CHECKSUM_FILE)}


# -- selection -------------------------------------------------------------------------------------------------------

def test_patterns_and_all_select_from_checksum_list(served, tmp_path: Path) -> None:
    """--files patterns pick matching files (nested paths kept); 'all' picks every listed file."""
    root, server = served
    files = {"set-a.tar.gz": b"a", "set-b.tar.gz": b"bb", "Outcomes-b.txt": b"ob", "sub/dir/x.csv": b"x"}
    _publish(root / "challenge-2012" / "1.0.0", files)

    got = download("physionet2012", tmp_path / "b", base_url=server.url, files=["set-b*", "Outcomes-b.txt"],
                   progress=False, fetch=FAST)
    assert [p.name for p in got] == ["set-b.tar.gz", "Outcomes-b.txt"]
    assert not (tmp_path / "b" / "set-a.tar.gz").exists()

    got = download("physionet2012", tmp_path / "all", base_url=server.url, files=["all"], progress=False,
                   fetch=FAST)
    assert len(got) == 4
    assert (tmp_path / "all" / "sub" / "dir" / "x.csv").read_bytes() == b"x"

    with pytest.raises(InputError, match="set-z"):
        download("physionet2012", tmp_path / "z", base_url=server.url, files=["set-z*"], progress=False, fetch=FAST)


def test_base_url_from_environment(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, server = served
    _publish(root / "mimiciii-demo" / "1.4", {"PATIENTS.csv": b"row_id\n1\n", "LICENSE.txt": b"ODbL"})
    monkeypatch.setenv("FEDEHR_PHYSIONET_BASE_URL", server.url.rstrip("/"))
    got = download("mimic3-demo", tmp_path / "m", progress=False, fetch=FAST)
    assert sorted(p.name for p in got) == ["LICENSE.txt", "PATIENTS.csv"]
    assert list_files("mimic3-demo") == {"PATIENTS.csv": _sha(b"row_id\n1\n"), "LICENSE.txt": _sha(b"ODbL")}


# -- resume / restart ------------------------------------------------------------------------------------------------

def test_resume_requests_only_the_remainder(served, tmp_path: Path) -> None:
    root, server = served
    data = _blob(300_000, 1)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "patient.csv.gz.part").write_bytes(data[:120_000])

    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)

    assert (dest / "patient.csv.gz").read_bytes() == data
    assert not (dest / "patient.csv.gz.part").exists()
    assert server.served["eicu-crd-demo/2.0.1/patient.csv.gz"] == 300_000 - 120_000
    assert ("eicu-crd-demo/2.0.1/patient.csv.gz", "bytes=120000-") in server.requests


def test_server_without_range_support_restarts_cleanly(served, tmp_path: Path) -> None:
    """A 200 answer to a Range request rewrites the .part from byte 0 (a garbage prefix would fail the hash)."""
    root, server = served
    server.ranges = False
    data = _blob(200_000, 2)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "patient.csv.gz.part").write_bytes(b"\0" * 50_000)

    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)

    assert (dest / "patient.csv.gz").read_bytes() == data
    assert server.served["eicu-crd-demo/2.0.1/patient.csv.gz"] == 200_000


def test_complete_part_is_verified_and_promoted(served, tmp_path: Path) -> None:
    """A .part already holding every byte gets 416 from the server and is verified, not refetched."""
    root, server = served
    data = _blob(10_000, 3)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "patient.csv.gz.part").write_bytes(data)
    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert (dest / "patient.csv.gz").read_bytes() == data
    assert server.served["eicu-crd-demo/2.0.1/patient.csv.gz"] == 0


def test_stale_part_from_another_version_is_refetched_once(served, tmp_path: Path) -> None:
    """Resuming a wrong prefix fails verification, so the file is fetched once more from the start."""
    root, server = served
    data = _blob(100_000, 4)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "patient.csv.gz.part").write_bytes(_blob(30_000, 99))
    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert (dest / "patient.csv.gz").read_bytes() == data
    assert server.served["eicu-crd-demo/2.0.1/patient.csv.gz"] == 70_000 + 100_000


def test_transient_errors_and_dropped_connection_are_retried(served, tmp_path: Path) -> None:
    """503s are retried with backoff; a connection dropped mid-body resumes with a Range request."""
    root, server = served
    data = _blob(150_000, 5)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    server.fail_next = {"eicu-crd-demo/2.0.1/SHA256SUMS.txt": 1, "eicu-crd-demo/2.0.1/patient.csv.gz": 1}
    server.cut_next = {"eicu-crd-demo/2.0.1/patient.csv.gz": 40_000}
    dest = tmp_path / "e"
    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert (dest / "patient.csv.gz").read_bytes() == data
    assert server.served["eicu-crd-demo/2.0.1/patient.csv.gz"] == 150_000
    assert ("eicu-crd-demo/2.0.1/patient.csv.gz", "bytes=40000-") in server.requests


def test_persistent_failure_keeps_part_and_a_rerun_resumes(served, tmp_path: Path) -> None:
    """After the retries run out the .part stays; running again fetches only the missing bytes."""
    root, server = served
    data = _blob(90_000, 6)
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data})
    rel = "eicu-crd-demo/2.0.1/patient.csv.gz"
    server.cut_next = {rel: 25_000}
    server.fail_ranged = True
    dest = tmp_path / "e"
    with pytest.raises(FedEHRError, match=r"after 3 attempts.*HTTP 503.*partial file .* is kept"):
        download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert not (dest / "patient.csv.gz").exists()
    assert (dest / "patient.csv.gz.part").read_bytes() == data[:25_000]

    server.fail_ranged = False
    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert (dest / "patient.csv.gz").read_bytes() == data
    assert server.served[rel] == 90_000


# -- verification ----------------------------------------------------------------------------------------------------

def test_checksum_mismatch_deletes_download_and_names_hashes(served, tmp_path: Path) -> None:
    root, server = served
    data = _blob(5000, 7)
    wrong = _sha(b"what the checksum list promises")
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": data, "hospital.csv.gz": b"h"},
             sums={"patient.csv.gz": wrong})
    dest = tmp_path / "e"
    with pytest.raises(InputError) as e:
        download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    msg = str(e.value)
    assert "patient.csv.gz" in msg and wrong in msg and _sha(data) in msg
    assert not (dest / "patient.csv.gz").exists()
    assert not (dest / "patient.csv.gz.part").exists()


def test_present_file_with_wrong_bytes_is_replaced(served, tmp_path: Path) -> None:
    root, server = served
    _publish(root / "eicu-crd-demo" / "2.0.1", {"patient.csv.gz": b"good bytes"})
    dest = tmp_path / "e"
    dest.mkdir()
    (dest / "patient.csv.gz").write_bytes(b"corrupted")
    download("eicu-demo", dest, base_url=server.url, progress=False, fetch=FAST)
    assert (dest / "patient.csv.gz").read_bytes() == b"good bytes"


def test_checksum_list_is_validated() -> None:
    ok = "a" * 64
    text = f"{ok} x/y.csv\n{ok} *z.txt\n{ok}  w.txt\n\n{ok} {CHECKSUM_FILE}\n"
    assert parse_checksums(text) == {"x/y.csv": ok, "z.txt": ok, "w.txt": ok}
    with pytest.raises(InputError, match="line 2"):
        parse_checksums(f"{ok} a.txt\nnot-a-hash a.txt\n")
    for bad in ("../../etc/passwd", "/abs/path", "a/../../b"):
        with pytest.raises(InputError, match="unsafe path"):
            parse_checksums(f"{ok} {bad}\n")


def test_missing_project_is_a_clear_error(served, tmp_path: Path) -> None:
    _, server = served
    with pytest.raises(FedEHRError, match="404"):
        download("physionet2012", tmp_path / "x", base_url=server.url, progress=False, fetch=FAST)
    assert not (tmp_path / "x").exists()


# -- dataset names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "project", "source"), [("mimic3", "mimiciii/1.4", "--source mimic3"),
                                                         ("eicu", "eicu-crd/2.0", "--source eicu"),
                                                         ("eicu-crd", "eicu-crd/2.0", "--source eicu"),
                                                         ("mimic4", "mimiciv/", "--source meds")])
def test_credentialed_datasets_explain_how_to_get_access(name: str, project: str, source: str,
                                                         tmp_path: Path) -> None:
    with pytest.raises(FedEHRError) as e:
        download(name, tmp_path / "x", base_url="http://127.0.0.1:9/", progress=False)  # port 9: never contacted
    msg = str(e.value)
    assert not isinstance(e.value, InputError)
    for needle in ("credentialed", "CITI", "data use agreement", "wget -r -N -c -np --user USER",
                   f"https://physionet.org/files/{project}", source):
        assert needle in msg
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_and_bad_base_url(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown dataset.*eicu-demo.*mimic3-demo.*physionet2012"):
        download("physionet2019", tmp_path, progress=False)
    with pytest.raises(InputError, match="HTTP"):
        download("physionet2012", tmp_path, base_url="ftp://example.org/", progress=False)
    assert set(DATASETS) == {"physionet2012", "eicu-demo", "mimic3-demo"}


# -- CLI -------------------------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("fedehr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from fedehr.cli import main; main()"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "FEDEHR_PHYSIONET_BASE_URL": ""})


def test_cli_downloads_lists_and_reports_errors(served, tmp_path: Path) -> None:
    root, server = served
    files = {"set-a.tar.gz": _blob(70_000, 8), "Outcomes-a.txt": b"RecordID\n", "set-b.tar.gz": b"b",
             "Outcomes-b.txt": b"ob"}
    _publish(root / "challenge-2012" / "1.0.0", files)
    dest = tmp_path / "dl"

    r = _cli("data", "download", "physionet2012", "--dest", str(dest), "--base-url", server.url)
    assert r.returncode == 0, r.stderr
    assert (dest / "set-a.tar.gz").read_bytes() == files["set-a.tar.gz"]
    assert sorted(p.name for p in dest.iterdir()) == ["Outcomes-a.txt", "set-a.tar.gz"]
    assert "fedehr prepare --source physionet2012" in r.stdout

    r = _cli("data", "download", "physionet2012", "--dest", str(dest), "--base-url", server.url,
             "--files", "set-b.tar.gz,Outcomes-b.txt", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (dest / "Outcomes-b.txt").read_bytes() == b"ob"

    r = _cli("data", "download", "physionet2012", "--list", "--base-url", server.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{_sha(d)}  {rel}" for rel, d in files.items()]
    assert "downloaded by default: set-a.tar.gz, Outcomes-a.txt" in r.stderr

    r = _cli("data", "download", "mimic3", "--dest", str(tmp_path / "m"))
    assert r.returncode == 2
    assert "credentialed" in r.stderr and "Traceback" not in r.stderr
