"""Load a report.html in headless Chromium and check what a reader would see (shared by the report tests)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Where the browser check leaves its screenshot of the page for review (CI keeps the folder as an artefact).
SCREENSHOT_DIR = "ERASELAB_SCREENSHOT_DIR"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(browser: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--allow-file-access-from-files",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def check_in_browser(page, tmp_path, methods: int) -> str:
    """No console errors, every image resolves (the page's load handler counts them), `methods` headline rows,
    a glossary, every data plot marked as drawing 95 % intervals; a screenshot of the page's first 4000 px is
    written to $ERASELAB_SCREENSHOT_DIR (or tmp_path). Returns the rendered DOM. Skips with a message where
    Chromium is not installed."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here: `apt-get install chromium` (.ci/run installs it) to run the browser "
                    "test")
    run = _browser(browser, tmp_path, "--dump-dom", page.resolve().as_uri())
    dom = run.stdout
    assert "<h1>eraselab report</h1>" in dom, run.stderr[-2000:]
    broken = re.search(r'data-images-broken="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert broken and loaded, "the page's load handler did not run"
    assert int(broken.group(1)) == 0 and int(loaded.group(1)) > 10
    console_errors = [line for line in run.stderr.splitlines()
                      if "CONSOLE" in line and ("Error" in line or "Failed" in line)]
    assert not console_errors, console_errors
    headline = dom.split('id="headline"')[1].split("</table>")[0]
    assert headline.count('<tr class="method">') == methods
    assert 'id="glossary"' in dom and dom.split('id="glossary"')[1].count("<tr>") >= 3
    plots_section = dom.split("<h2>Plots</h2>")[1].split('id="attention"')[0]
    plots = re.findall(r'<img class="plot"([^>]*)>', plots_section)
    assert plots and all('data-intervals="95%"' in p for p in plots), plots
    shots = Path(os.environ.get(SCREENSHOT_DIR) or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"report-{page.resolve().parent.name}.png"
    _browser(browser, tmp_path, "--window-size=1280,4000", f"--screenshot={shot}", page.resolve().as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot"
    return dom
