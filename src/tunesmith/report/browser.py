"""Open a report in headless Chromium: a screenshot, and how many of its plots actually loaded.

    python -m tunesmith.report.browser runs/<name>/report.html shot.png

The report marks `<body data-plots-loaded="N/M">` once the page has loaded; the DOM Chromium
dumps after running the page says whether every image decoded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tunesmith.errors import UserError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_report(html: Path, screenshot: Path, width: int = 1200, height: int = 4000) -> dict:
    """Screenshot the page and count loaded plots; raises if no browser is installed."""
    browser = find_browser()
    if browser is None:
        raise UserError("no Chromium found: install Debian's chromium package (apt-get install chromium)")
    url = html.resolve().as_uri()
    dom = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", url).stdout
    m = re.search(r'data-plots-loaded="(\d+)/(\d+)"', dom)
    shot = _headless(browser, f"--window-size={width},{height}", f"--screenshot={screenshot.resolve()}", url)
    if not screenshot.is_file():
        raise RuntimeError(f"chromium wrote no screenshot: {shot.stderr.strip()[-300:]}")
    return {
        "loaded": int(m.group(1)) if m else 0,
        "images": int(m.group(2)) if m else -1,
        "screenshot": str(screenshot),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tunesmith.report.browser REPORT.html SCREENSHOT.png")
    result = check_report(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{result['loaded']}/{result['images']} plots loaded; screenshot {result['screenshot']}")
    sys.exit(0 if result["loaded"] == result["images"] > 0 else 1)
