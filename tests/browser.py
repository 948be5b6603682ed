"""Opening a page in headless Chromium and reading back what it rendered (tables, loaded images, videos).

A copy of the page gets a script that, once everything has loaded, writes a JSON summary into the document;
Chromium's ``--dump-dom`` prints the document after ``--virtual-time-budget`` ms of page time, and the summary is
read back from it.  Tests that use it skip where no Chromium is installed (``make setup`` installs Debian's).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const images = [...document.images];
  const videos = [...document.querySelectorAll("video")];
  const summary = {
    tables: [...document.querySelectorAll("table")].map(t => t.rows.length),
    headers: [...document.querySelectorAll("th")].map(th => th.textContent),
    images: images.length,
    images_loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    videos: videos.length,
    videos_with_frames: videos.filter(v => v.readyState >= 2 && v.videoWidth > 0).length,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(summary);
  document.body.appendChild(out);
}, 500));
</script>
"""


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def render_summary(page: Path) -> dict:
    """What Chromium rendered of ``page``: {"tables": [rows per table], "headers", "images", "images_loaded",
    "videos", "videos_with_frames"}.  Skips the test when no browser is installed."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless Chromium installed (make setup installs Debian's chromium)")
    probe = page.with_name(f".probe_{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
                                 "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=8000",
                                 "--dump-dom", probe.resolve().as_uri()],
                                capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium: {result.stderr[-500:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
