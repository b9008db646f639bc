"""Load a report.html in headless Chromium and check what a reader would see (shared by the report tests)."""
import re
import shutil
import subprocess

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def check_in_browser(page, tmp_path, methods: int) -> str:
    """No console errors, every image resolves (the page's load handler counts them), `methods` headline rows.
    Returns the rendered DOM. Skips with a message where Chromium is not installed."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here: `apt-get install chromium` (.ci/run installs it) to run the browser test")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--allow-file-access-from-files",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
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
    return dom
