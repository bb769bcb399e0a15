"""Real headless Chromium for the browser tests (Debian's ``chromium``, driven by playwright)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed; .ci/run installs it"),
]


@contextmanager
def chromium_page(width: int, height: int, *, args: tuple[str, ...] = ()) -> Iterator:
    """A page of a fresh headless Chromium at ``width`` x ``height``; the browser closes after."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS + list(args))
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
