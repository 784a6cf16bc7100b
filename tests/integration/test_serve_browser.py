"""The hdetr serve page in a real headless chromium: upload an image, boxes appear, the slider filters them.

Needs Debian's chromium (apt-get install chromium; .ci/run installs it) and Playwright's Python package;
skipped otherwise.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'hdetr[serve]'")
pytest.importorskip("playwright", reason="needs playwright (pip install playwright; the browser is Debian's)")

from support.serve_browser import (  # noqa: E402
    browser_page, chromium_path, open_page, set_slider, shown_count, upload_and_wait,
)
from support.serve_helpers import CLASS_NAMES, image_bytes, save_tiny_model  # noqa: E402

pytestmark = [pytest.mark.process, pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no chromium installed (apt-get install chromium)")]


@pytest.mark.timeout(180)
def test_page_draws_the_detections_and_the_slider_filters_them(tmp_path):
    import torch
    from PIL import Image
    from playwright.sync_api import expect

    from hdetr import Detector
    from hdetr.serve import create_app
    from hdetr.serve.server import background_server

    torch.set_num_threads(1)
    app = create_app(Detector.from_checkpoint(save_tiny_model(tmp_path / "model")), threshold=0.5)
    image = tmp_path / "scene.png"
    image.write_bytes(image_bytes(160, 120))
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with background_server(app) as url, browser_page() as page:
        open_page(page, url)
        detections = upload_and_wait(page, image)
        scores = sorted((d["score"] for d in detections), reverse=True)
        assert len(scores) == 20 and all(d["category_name"] in CLASS_NAMES for d in detections)
        # The page asked for every candidate and starts at the server's default threshold.
        assert page.input_value("#threshold") == "0.5"
        assert shown_count(page) == sum(s >= 0.5 for s in scores)
        set_slider(page, 0)
        assert shown_count(page) == 20 and page.inner_text("#count") == "20"
        cut = round(scores[7], 2)
        set_slider(page, cut)
        expected = sum(s >= cut for s in scores)
        assert 0 < expected < 20 and shown_count(page) == expected
        first = page.inner_text("#detections li.detection >> nth=0")
        assert first.split()[0] in CLASS_NAMES and float(first.split()[1]) == pytest.approx(scores[0], abs=0.005)
        # The canvas holds the image at its own size with the boxes drawn over it.
        assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [160, 120]
        page.screenshot(path=str(tmp_path / "serve_page.png"))
        drawn = Image.open(tmp_path / "serve_page.png")
        assert drawn.size == (1200, 800)

        # A bad upload shows the server's message; the page and the server keep working.
        page.set_input_files("#file", str(not_image))
        expect(page.locator("#status")).to_have_class("error")
        assert "not an image" in page.inner_text("#status") and shown_count(page) == 0
        upload_and_wait(page, image)
        assert shown_count(page) == expected and page.input_value("#threshold") == str(cut)
