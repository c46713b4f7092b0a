"""A real headless Chromium for the tests that look at pages: Debian's ``chromium`` (or ``$LOOKALIKE_CHROMIUM``),
driven by Playwright for Python. Playwright's own browser download needs the internet, so it is never used.

:func:`chromium_or_skip` gives a launched browser, or skips the test saying why no browser could be had.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Where screenshots go (git-ignored); look at them.
RESULTS = Path(__file__).parent / "results"

_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> tuple[str | None, str]:
    """``(executable, "")`` or ``(None, why there is none)``."""
    wanted = os.environ.get("LOOKALIKE_CHROMIUM")
    for name in (wanted,) if wanted else _CANDIDATES:
        found = shutil.which(name) if name else None
        if found:
            return found, ""
    where = f"$LOOKALIKE_CHROMIUM={wanted}" if wanted else "/usr/bin/chromium (or chromium, google-chrome on PATH)"
    return None, f"no Chromium at {where}: install Debian's package (apt-get install -y chromium)"


@contextmanager
def chromium_or_skip() -> Iterator[object]:
    """A headless Chromium ``Browser`` (Playwright, sync API), closed afterwards; skips when none can be had."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    executable, why = find_chromium()
    if executable is None:
        pytest.skip(why)
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        except PlaywrightError as exc:
            pytest.skip(f"Chromium at {executable} does not start: {str(exc).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()
