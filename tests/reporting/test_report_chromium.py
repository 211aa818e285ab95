"""The report renders in a real browser: headless Chromium loads every embedded image and paints the page."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from matplotlib import image as mpimg
from test_report import RUN_INFO, fake_evaluation, make_cohorts

from fedehr.reporting import write_report

TIMEOUT_S = 90

# Injected into a test copy only: the report itself carries no script.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
});
</script>
"""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("no Chromium found: install Debian's chromium to run the rendering test")


def run_chromium(exe: str, profile: Path, *args: str) -> str:
    """Run headless Chromium; on timeout kill its whole process group (it forks renderers) by our PID."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s")
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {err[-2000:]}"
    return out


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = find_chromium()
    c = make_cohorts()
    report = write_report(tmp_path / "report.html", evaluation=fake_evaluation(len(c.synthetic)), train=c.train,
                          test=c.test, synthetic=c.synthetic, run_info=RUN_INFO)
    text = report.read_text(encoding="utf-8")
    n_imgs = text.count("<img ")
    assert n_imgs == 8
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    # Every image decoded by the browser (complete and with a natural width).
    dom = run_chromium(exe, tmp_path / "profile-dom", "--dump-dom", probe.as_uri())
    m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    assert m, "the load probe never ran: " + dom[:500]
    assert (int(m.group(1)), int(m.group(2))) == (n_imgs, n_imgs)
    assert 'id="summary-table"' in dom and "discriminative_gbm" in dom

    # The untouched report paints: a non-trivial screenshot.
    shot = tmp_path / "shot.png"
    run_chromium(exe, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
                 "--hide-scrollbars", report.as_uri())
    assert shot.exists() and shot.stat().st_size > 20_000
    pixels = mpimg.imread(io.BytesIO(shot.read_bytes()), format="png")
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels[..., :3].std() > 0.05  # text, tables and figures, not a blank page
    if os.environ.get("FEDEHR_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["FEDEHR_KEEP_SCREENSHOT"])
