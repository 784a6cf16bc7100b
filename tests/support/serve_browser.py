"""Drive the hdetr serve page in Debian's chromium with Playwright (no browser download).

Used by tests/integration/test_serve_browser.py and by benchmarks/serve_screenshot.py (the screenshot in
docs/serve.md).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

# Waits go through locator expectations, never page.wait_for_function: the page's Content-Security-Policy
# forbids eval, and wait_for_function compiles its predicate string with eval inside the page.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def browser_page(width: int = 1200, height: int = 800):
    """A fresh headless chromium page (own user-data-dir), closed on exit."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="hdetr-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


def open_page(page, url: str) -> None:
    """Load the page and wait until it has the model's information (class names, default threshold)."""
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#model-info")).to_contain_text("classes")


def upload_and_wait(page, image: Path) -> list[dict]:
    """Pick ``image`` in the page and wait until the server answered and the page drew the result.

    Returns the detections the server sent (the page filters them with its slider)."""
    with page.expect_response(lambda r: r.url.endswith("/predict")) as answer:
        page.set_input_files("#file", str(image))
    detections = answer.value.json()["detections"]
    from playwright.sync_api import expect

    expect(page.locator("#canvas")).not_to_have_attribute("width", "0")
    return detections


def set_slider(page, value: float) -> None:
    """Move the threshold slider as a user would (an 'input' event)."""
    page.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def shown_count(page) -> int:
    return page.locator("#detections li.detection").count()
