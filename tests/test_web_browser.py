"""The page of `fetalkit serve` in a real headless Chromium (Debian's, driven by Playwright):
masking a phantom clip, head biometry equal to the CLI's, bad uploads then good ones (biometry,
de-identification), live masking of a played file and of a (fake) camera, and the black view on a
dropped connection.

Skips with a one-line reason where /usr/bin/chromium or Playwright is missing (.ci/run installs
Debian's chromium, make test installs Playwright with the dev extra); no browser is ever downloaded."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); browser test skipped",
                allow_module_level=True)
pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'fetalkit[web]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from pydicom.dataset import Dataset  # noqa: E402

from fetalkit.demo import phantom_clip  # noqa: E402
from fetalkit.io.dicom import write_dicom  # noqa: E402
from fetalkit.io.images import write_image  # noqa: E402
from fetalkit.io.video import open_source  # noqa: E402
from fetalkit.masking.render import FILL_VALUE  # noqa: E402
from fetalkit.preprocess.text import draw_synthetic_overlays  # noqa: E402
from fetalkit.synth.phantom import head_phantom  # noqa: E402
from fetalkit.web.server import BackgroundServer  # noqa: E402
from fetalkit.web.settings import WebSettings  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 60_000

# The largest and the 99th-percentile grey level of a box of a canvas, read in the page.
CANVAS_BOX = """([id, x1, y1, x2, y2]) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(x1, y1, x2 - x1, y2 - y1).data;
  const grey = [];
  for (let i = 0; i < d.length; i += 4) grey.push(Math.max(d[i], d[i + 1], d[i + 2]));
  grey.sort((a, b) => a - b);
  return {max: grey[grey.length - 1], p99: grey[Math.floor(0.99 * (grey.length - 1))],
          width: c.width, height: c.height};
}"""
CANVAS_MAX = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let m = 0;
  for (let i = 0; i < d.length; i += 4) m = Math.max(m, d[i], d[i + 1], d[i + 2]);
  return m;
}"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser_data")
    truth = phantom_clip(d / "clip.avi", n_frames=40, seed=0)
    live = phantom_clip(d / "live.avi", n_frames=120, seed=1)  # 6 s at 20 frames/s: long enough to cut
    head = head_phantom(seed=5)
    write_image(d / "head.png", head.image)
    (d / "notes.png").write_text("not an image at all")
    scan = head_phantom(seed=3)
    phi = Dataset()
    phi.PatientName, phi.PatientID = "DOE^JANE", "PID-778812"
    write_dicom(d / "scan.dcm", draw_synthetic_overlays(scan.image, scan.sector, seed=0).image, template=phi,
                pixel_mm=scan.pixel_mm, burned_in_annotation="YES")
    return {"scan_dcm": d / "scan.dcm","dir": d, "clip": d / "clip.avi", "boxes": truth["boxes"], "live": d / "live.avi",
            "live_boxes": live["boxes"], "head": head, "head_png": d / "head.png",
            "notes": d / "notes.png"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with BackgroundServer(WebSettings(temp_dir=tmp_path_factory.mktemp("browser_tmp"))) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready=true]")
    yield pg
    context.close()


def inside(box, shrink: int = 6) -> list[int]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return [x1 + shrink, y1 + shrink, x2 - shrink, y2 - shrink]


def test_masking_the_phantom_clip_in_the_page(page, files, tmp_path):
    page.set_input_files("#mask-file", str(files["clip"]))
    page.wait_for_selector("#mask-result:not([hidden])")
    assert page.text_content("#mask-progress-text") == "done"
    k = int(page.get_attribute("#mask-preview", "data-frame"))
    box = files["boxes"][k]
    assert box is not None
    px = page.evaluate(CANVAS_BOX, ["mask-preview", *inside(box)])
    assert (px["width"], px["height"]) == (540, 360)
    assert px["max"] <= FILL_VALUE + 2  # the head of the preview frame is covered
    assert page.evaluate(CANVAS_MAX, "mask-preview") > 100  # and the rest of the scan is shown
    assert "40 frames masked" in page.text_content("#mask-summary")
    page.screenshot(path=str(tmp_path / "masking.png"), full_page=True)
    with page.expect_download() as dl:
        page.click("#mask-download")
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    frames = [f for _, f in open_source(str(saved))]
    assert saved.name == "clip_masked.avi" and len(frames) == 40
    gray = cv2.cvtColor(frames[k], cv2.COLOR_BGR2GRAY) if frames[k].ndim == 3 else frames[k]
    x1, y1, x2, y2 = inside(box)
    assert gray[y1:y2, x1:x2].max() <= FILL_VALUE + 2


def test_head_hc_in_the_page_equals_the_cli(page, files, tmp_path):
    px = repr(files["head"].pixel_mm)
    res = subprocess.run([sys.executable, "-m", "fetalkit.cli", "biometry", "head", str(files["head_png"]),
                          "--pixel-mm", px, "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    cli = next(csv.DictReader(open(tmp_path / "cli" / "measurements.csv")))
    page.click("button[data-tab=biometry]")
    page.fill("#bio-pixel-mm", px)
    page.set_input_files("#bio-file", str(files["head_png"]))
    page.wait_for_selector("#bio-table-head tbody tr")
    assert page.text_content("#bio-table-head td[data-col=hc_mm]") == cli["hc_mm"]
    assert page.text_content("#bio-table-head td[data-col=bpd]") == cli["bpd_mm"]
    assert page.text_content("#bio-table-head td[data-col=ofd]") == cli["ofd_mm"]
    assert page.is_visible("#bio-overlay")
    page.screenshot(path=str(tmp_path / "biometry.png"), full_page=True)
    with page.expect_download() as dl:
        page.click("#bio-csv")
    rows = list(csv.DictReader(open(dl.value.path())))
    assert rows == [{**cli, "filename": "head.png"}]


def test_a_bad_upload_shows_its_message_and_the_next_one_works(page, files):
    """Biometry and de-identification: the error in the page, then a good file in the same page."""
    page.click("button[data-tab=biometry]")
    page.set_input_files("#bio-file", str(files["notes"]))
    page.wait_for_selector("#bio-error:not([hidden])")
    assert "notes.png: not a readable image" in page.text_content("#bio-error")
    page.set_input_files("#bio-file", str(files["head_png"]))
    page.wait_for_selector("#bio-table-head tbody tr")
    assert page.is_hidden("#bio-error")
    page.click("button[data-tab=deid]")
    page.set_input_files("#deid-file", str(files["head_png"]))
    page.wait_for_selector("#deid-error:not([hidden])")
    assert "head.png: not a DICOM file" in page.text_content("#deid-error")
    page.set_input_files("#deid-file", str(files["scan_dcm"]))
    page.wait_for_selector("#deid-result:not([hidden])")
    assert page.is_hidden("#deid-error")
    assert "Burned In Annotation NO" in page.text_content("#deid-summary")
    assert page.locator("#deid-regions li").count() >= 3  # the pasted text lines
    assert "PatientName" in page.text_content("#deid-attributes")


def test_live_play_shows_masked_frames_and_goes_black_when_the_connection_drops(page, files, tmp_path):
    relay = {"cut": False}

    def route(ws):  # the real server behind a relay that the test can cut, as a network fault would
        relay["page_side"] = ws
        server = ws.connect_to_server()
        ws.on_message(lambda m: server.send(m))
        server.on_message(lambda m: None if relay["cut"] else ws.send(m))

    page.route_web_socket("**/api/live", route)
    page.click("button[data-tab=live]")
    page.set_input_files("#live-file", str(files["live"]))
    page.wait_for_function("Number(document.getElementById('live-frames').textContent) >= 3")
    checked = 0
    while checked < 3 and int(page.text_content("#live-frames")) < 60:
        shot = page.evaluate("""() => ({state: document.getElementById('live-state').textContent,
                                         hold: document.getElementById('live-hold').textContent})""")
        if not shot["state"].startswith("playing") or shot["hold"] != "detected":
            continue
        k = int(shot["state"].split()[1]) - 1
        px = page.evaluate(CANVAS_BOX, ["live-canvas", *inside(files["live_boxes"][k])])
        if page.text_content("#live-state") == shot["state"]:  # still the same frame on the canvas
            assert px["p99"] <= 8  # JPEG of the fill over the head
            checked += 1
    assert checked >= 1
    assert float(page.text_content("#live-fps")) > 0
    assert page.text_content("#live-state").startswith("playing")  # cut while the file still plays
    relay["cut"] = True  # no more frames reach the page, then its connection drops
    relay["page_side"].close(code=1011, reason="network fault")
    page.wait_for_function("document.getElementById('live-state').textContent.includes('blanked')")
    assert page.evaluate(CANVAS_MAX, "live-canvas") == 0  # a fault leaves a black view, no frame
    assert "disconnected" in page.text_content("#live-state")
    page.screenshot(path=str(tmp_path / "live_blanked.png"), full_page=True)


def test_live_camera_frames_come_back_and_stop_blanks_the_view(page):
    page.click("button[data-tab=live]")
    page.click("#live-camera")
    page.wait_for_function("Number(document.getElementById('live-frames').textContent) >= 3")
    assert page.text_content("#live-state") == "streaming"
    assert page.evaluate(CANVAS_MAX, "live-canvas") > 0  # the fake camera's pattern, through the masker
    page.click("#live-stop")
    assert page.evaluate(CANVAS_MAX, "live-canvas") == 0
    assert page.text_content("#live-state") == "stopped"
