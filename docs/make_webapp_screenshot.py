"""The picture in docs/webapp.md: ``fetalkit serve``'s page after masking a phantom clip, in a headless Chromium.

    python docs/make_webapp_screenshot.py [--out docs/webapp.png]

Uses only fetalkit's own phantom (``fetalkit.demo.phantom_clip``), the server on a
free loopback port, and Debian's Chromium driven by Playwright (the web extra and
``pip install playwright``; no browser is downloaded).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from fetalkit.demo import phantom_clip
from fetalkit.web.server import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("webapp.png"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="webapp_shot_") as tmp:
        clip = Path(tmp) / "phantom_clip.avi"
        phantom_clip(clip, n_frames=60, seed=5, shape_hw=(540, 800))  # a head small enough to leave scan around it
        with BackgroundServer() as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.uncheck("#mask-classes input[value=pubic_symphysis]")  # the phantom shows a head, as in make demo
            page.set_input_files("#mask-file", str(clip))
            page.wait_for_selector("#mask-result:not([hidden])", timeout=120_000)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
