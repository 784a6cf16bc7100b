"""The screenshot of the hdetr serve page in docs/serve.md, taken the way the browser test drives the page.

    python benchmarks/serve_screenshot.py MODEL [--image PATH | --size 480x640] [--threshold 0.3] \
        [--out docs/serve_page.png]

Serves MODEL on a free localhost port, opens the page in Debian's headless chromium (Playwright),
uploads the image (default: a generated synthetic scene, as hdetr bench serve sends), sets the slider
and saves the screenshot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.serve_browser import (  # noqa: E402
    browser_page, chromium_path, open_page, set_slider, shown_count, upload_and_wait,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--image", type=Path, default=None)
    p.add_argument("--size", default="480x640", help="HxW of the generated scene (default: 480x640)")
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=Path("docs/serve_page.png"))
    args = p.parse_args()
    if chromium_path() is None:
        sys.exit("no chromium installed: apt-get install chromium")
    from hdetr import Detector
    from benchmarks.serve import scene_jpeg
    from hdetr.serve import create_app
    from hdetr.serve.server import background_server

    data, _, _ = scene_jpeg(args.image, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / (args.image.name if args.image else "scene.jpg")
        image.write_bytes(data)
        app = create_app(Detector.from_checkpoint(args.checkpoint), threshold=args.threshold,
                         source=str(args.checkpoint))
        with background_server(app) as url, browser_page(width=1100, height=620) as page:
            open_page(page, url)
            found = upload_and_wait(page, image)
            set_slider(page, args.threshold)
            page.screenshot(path=str(args.out))
            print(f"{len(found)} candidates, {shown_count(page)} shown at {args.threshold} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
