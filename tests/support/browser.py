"""A real browser for the console's tests: Debian's chromium driven by Playwright, headless.

Browser builds cannot be downloaded here, so Playwright is pointed at the system's chromium (tools/test installs
it with apt-get). Screenshots go to ARTIFACTS; with TANDEM_UPDATE_DOCS=1 the ones README shows are also written
to docs/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("TANDEM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TANDEM_ARTIFACTS", ROOT / ".tandem" / "artifacts")) / "console"
DOCS = ROOT / "docs"


@contextmanager
def chromium() -> Iterator[object]:
    """A headless chromium (a Playwright Browser), closed at the end."""
    if not CHROMIUM.exists():
        pytest.fail(f"no chromium at {CHROMIUM}: sudo apt-get install -y chromium (tools/test does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: object, name: str, docs: bool = False) -> Path:
    """The page as it is now, saved as an artifact (and, with docs and TANDEM_UPDATE_DOCS=1, under docs/)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))  # type: ignore[attr-defined]
    if docs and os.environ.get("TANDEM_UPDATE_DOCS") == "1":
        shutil.copyfile(path, DOCS / f"{name}.png")
    return path
