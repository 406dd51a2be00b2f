"""`fetalkit serve`'s API with the framework's test client: every endpoint on generated files,
numbers equal to the CLI's, bad uploads, the size limit, the token, bounded jobs, live masking."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'fetalkit[web]')")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from fetalkit.demo import phantom_clip  # noqa: E402
from fetalkit.io.dicom import read_dicom, write_dicom  # noqa: E402
from fetalkit.io.images import write_image  # noqa: E402
from fetalkit.io.video import open_source  # noqa: E402
from fetalkit.masking.render import FILL_VALUE  # noqa: E402
from fetalkit.preprocess.jobs import deidentify_path  # noqa: E402
from fetalkit.preprocess.text import draw_synthetic_overlays  # noqa: E402
from fetalkit.synth.phantom import head_phantom  # noqa: E402
from fetalkit.web import services  # noqa: E402
from fetalkit.web.app import create_app  # noqa: E402
from fetalkit.web.settings import WebSettings, check_bind, is_loopback  # noqa: E402

TOKEN = "s3cret-token-for-tests"
TEST_HOSTS = ("testserver",)  # the Host the framework's TestClient sends; others get HTTP 400


def fetalkit(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def frames_of(path: Path) -> list[np.ndarray]:
    return [f for _, f in open_source(str(path))]


def inner(box, shrink: int = 6):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return slice(y1 + shrink, y2 - shrink), slice(x1 + shrink, x2 - shrink)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("web_data")
    clip_truth = phantom_clip(d / "clip.avi", n_frames=30, seed=0)
    head = head_phantom(seed=5)
    write_image(d / "head.png", head.image)
    write_dicom(d / "head.dcm", head.image, pixel_mm=head.pixel_mm)
    frames = np.stack([f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_of(d / "clip.avi")])
    write_dicom(d / "cine.dcm", frames, fps=20.0)
    scan = head_phantom(seed=3)
    burned = draw_synthetic_overlays(scan.image, scan.sector, seed=0)
    phi = Dataset()
    phi.PatientName, phi.PatientID, phi.PatientBirthDate = "DOE^JANE", "PID-778812", "19880314"
    phi.InstitutionName, phi.ReferringPhysicianName = "CITY HOSPITAL", "HOUSE^GREGORY"
    write_dicom(d / "phi.dcm", burned.image, template=phi, pixel_mm=scan.pixel_mm, burned_in_annotation="YES")
    (d / "notes.png").write_text("this is not an image")
    (d / "broken.avi").write_bytes(b"RIFF" + os.urandom(3000))
    return SimpleNamespace(dir=d, clip=d / "clip.avi", clip_boxes=clip_truth["boxes"], head=head,
                           head_png=d / "head.png", head_dcm=d / "head.dcm", cine=d / "cine.dcm",
                           phi=d / "phi.dcm", burned=burned, notes=d / "notes.png", broken=d / "broken.avi")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(WebSettings(allowed_hosts=TEST_HOSTS, temp_dir=tmp_path_factory.mktemp("web_tmp")))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def post(client, url, path: Path, name: str | None = None, **fields):
    with open(path, "rb") as f:
        return client.post(url, files={"file": (name or path.name, f)}, data=fields)


def run_job(client, response) -> dict:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    for _ in range(600):
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def download(client, job: dict, to: Path) -> Path:
    r = client.get(job["download"])
    assert r.status_code == 200
    to.write_bytes(r.content)
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404  # removed from the server once sent
    return to


def temp_files(app) -> list[Path]:
    return [p for p in app.state.fetalkit.root.rglob("*") if p.is_file()]


# ------------------------------------------------------------------ page, info

def test_the_page_and_its_assets_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "css")):
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text and "@import" not in r.text
    refs = [m.split("=", 1)[1].strip("\"'") for m in re.findall(r"(?:src|href)=\"[^\"]+\"", page.text)]
    assert refs and all(r.startswith("/static/") for r in refs), refs
    assert client.get("/docs").status_code == 404  # Swagger UI would pull scripts from a CDN


def test_info_lists_what_the_page_offers(client):
    info = client.get("/api/info").json()
    assert info["classes"] == ["pubic_symphysis", "fetal_head"]
    assert info["styles"] == ["fill", "blur", "pixelate"] and "right" in info["caudal_ends"]
    assert info["max_upload_mb"] == 200


# ------------------------------------------------------------------ biometry

@pytest.fixture(scope="module")
def cli_head(data, tmp_path_factory):
    """What `fetalkit biometry head` writes for the phantom image with its pixel size."""
    out = tmp_path_factory.mktemp("cli_head")
    res = fetalkit("biometry", "head", data.head_png, "--pixel-mm", repr(data.head.pixel_mm), "--out", out)
    assert res.returncode == 0, res.stderr
    return read_csv(out / "measurements.csv")[0]


def test_head_biometry_equals_the_cli(client, data, cli_head):
    r = post(client, "/api/biometry/head", data.head_png, pixel_mm=repr(data.head.pixel_mm))
    assert r.status_code == 200, r.text
    body = r.json()
    row = body["row"]
    for key in ("hc_mm", "bpd_mm", "ofd_mm", "hc_px", "center_x_px", "angle_deg", "pixel_mm", "units"):
        assert row[key] == cli_head[key], key
    assert row["filename"] == "head.png" and row["units"] == "mm" and body["pixel_mm_source"] == "typed"
    assert float(row["hc_mm"]) == pytest.approx(data.head.hc_mm, rel=0.05)
    csv_rows = list(csv.DictReader(io.StringIO(body["csv"])))
    assert csv_rows == [{**cli_head, "filename": "head.png"}]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay"].split(",", 1)[1]), np.uint8),
                           cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == data.head.image.shape


def test_head_biometry_of_a_dicom_takes_its_pixel_size_unless_one_is_typed(client, data, cli_head):
    body = post(client, "/api/biometry/head", data.head_dcm).json()
    assert body["pixel_mm_source"] == "dicom" and body["row"]["filename"] == "head.dcm"
    assert float(body["row"]["hc_mm"]) == pytest.approx(float(cli_head["hc_mm"]), abs=0.011)
    typed = post(client, "/api/biometry/head", data.head_dcm, pixel_mm=repr(2 * data.head.pixel_mm)).json()
    assert typed["pixel_mm_source"] == "typed"
    assert float(typed["row"]["hc_mm"]) == pytest.approx(2 * float(cli_head["hc_mm"]), abs=0.03)


def test_head_biometry_without_a_pixel_size_is_in_pixels(client, data, cli_head):
    body = post(client, "/api/biometry/head", data.head_png).json()
    assert body["row"]["units"] == "px" and body["row"]["hc_mm"] == "" and body["pixel_mm_source"] is None
    assert body["row"]["hc_px"] == cli_head["hc_px"]


def test_aop_equals_the_cli(client, data, tmp_path):
    res = fetalkit("biometry", "aop", data.head_png, "--out", tmp_path)
    cli = read_csv(tmp_path / "measurements.csv")[0]
    r = post(client, "/api/biometry/aop", data.head_png)
    body = r.json()
    if cli["error"]:  # a head scan has no pubic symphysis: both say so, the page still gets the overlay
        assert res.returncode == 1 and r.status_code == 422
        assert body["error"] == cli["error"].replace(str(data.head_png), "head.png")
        assert body["overlay"].startswith("data:image/png;base64,")
    else:
        assert r.status_code == 200 and body["row"]["aop_deg"] == cli["aop_deg"]
    bad = post(client, "/api/biometry/aop", data.head_png, caudal_end="sideways")
    assert bad.status_code == 400 and "caudal end" in bad.json()["error"]


# ------------------------------------------------------------------ bad uploads

def test_bad_uploads_get_a_4xx_json_error_and_the_server_keeps_serving(client, app, data):
    cases = [
        (post(client, "/api/biometry/head", data.notes), 400, "notes.png: not a readable image"),
        (post(client, "/api/biometry/head", data.cine), 400, "cine.dcm: a 30-frame cine DICOM"),
        (post(client, "/api/biometry/head", data.head_png, pixel_mm="abc"), 400, "pixel_mm (pixel size) must be"),
        (post(client, "/api/biometry/head", data.head_png, pixel_mm="-1"), 400, "pixel_mm (pixel size) must be"),
        (post(client, "/api/mask", data.broken), 400, "broken.avi: unreadable video"),
        (post(client, "/api/mask", data.clip, classes="placenta"), 400, "placenta: not classes of the detector"),
        (post(client, "/api/deid", data.head_png, name="scan.dcm"), 400, "scan.dcm: not a DICOM file"),
        (post(client, "/api/live/files", data.notes, name="notes.avi"), 400, "notes.avi: unreadable video"),
        (client.post("/api/biometry/head", content=b"raw bytes"), 400, "multipart/form-data"),
        (client.post("/api/biometry/head", files={"other": ("x.png", b"123")}), 400, "the form field 'file'"),
        (client.post("/api/biometry/head", files={"file": ("empty.png", b"")}), 400, "empty.png: the file is empty"),
        (client.get("/api/jobs/0123abcd"), 404, "no job 0123abcd"),
        (client.get("/api/nothing"), 404, "Not Found"),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (message, r.text)
        error = r.json()["error"]
        assert message in error, error
        assert str(app.state.fetalkit.root) not in error  # no server paths, only the user's file name
    good = post(client, "/api/biometry/head", data.head_png, pixel_mm="0.2")
    assert good.status_code == 200 and good.json()["row"]["units"] == "mm"
    assert temp_files(app) == []  # every request's files were removed after its response


def test_upload_size_limit(tmp_path, data):
    app = create_app(WebSettings(allowed_hosts=TEST_HOSTS, max_upload_mb=0.05, temp_dir=tmp_path))
    with TestClient(app) as c:
        big = tmp_path / "big.png"
        big.write_bytes(os.urandom(80_000))
        r = post(c, "/api/biometry/head", big)
        assert r.status_code == 413 and "limit of 0.05 MB" in r.json()["error"]
        small = post(c, "/api/biometry/head", data.notes)
        assert small.status_code == 400  # the server keeps serving
        assert temp_files(app) == []
    assert not any(tmp_path.glob("fetalkit-web-*"))  # the temp folder goes with the app


def test_token_is_checked_on_every_request(tmp_path):
    app = create_app(WebSettings(allowed_hosts=TEST_HOSTS, token=TOKEN, temp_dir=tmp_path))
    with TestClient(app) as c:
        for url in ("/", "/static/app.js", "/api/info"):
            r = c.get(url)
            assert r.status_code == 401 and "token" in r.json()["error"]
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/?token=wrong-token", follow_redirects=False).status_code == 401
        login = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
        assert c.get("/api/info").status_code == 200  # the cookie from the login
        assert c.get("/static/app.js").status_code == 200
        c.cookies.clear()
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect("/api/live") as ws:
                ws.receive_json()
        with c.websocket_connect("/api/live", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            ws.send_json({"source": "nothing"})
            assert "start with" in ws.receive_json()["error"]


def test_cross_site_posts_and_websockets_are_refused(client, data):
    with open(data.head_png, "rb") as f:
        r = client.post("/api/biometry/head", files={"file": ("head.png", f)},
                        headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.json()["error"]
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/api/live", headers={"Origin": "http://evil.example"}) as ws:
            ws.receive_json()


def test_binding_rule():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.4.5.6", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.20", "::", "scanner-pc"))
    assert check_bind("127.0.0.1", None) is None
    assert "other machines" in check_bind("0.0.0.0", TOKEN)
    with pytest.raises(Exception, match="--token"):
        check_bind("0.0.0.0", None)


# ------------------------------------------------------------------ masking jobs

@pytest.fixture(scope="module")
def cli_masked(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_mask") / "masked.avi"
    res = fetalkit("mask", data.clip, "-o", out, "--quiet")
    assert res.returncode == 0, res.stderr
    return frames_of(out)


def test_masking_a_video_equals_the_cli_frame_for_frame(client, app, data, cli_masked, tmp_path):
    job = run_job(client, post(client, "/api/mask", data.clip))
    assert job["state"] == "done" and job["done"] == job["total"] == 30, job
    r = job["result"]
    assert r["frames"] == 30 and r["output_name"] == "clip_masked.avi" and r["frames_fail_safe"] == 0
    web = frames_of(download(client, job, tmp_path / "web.avi"))
    assert len(web) == len(cli_masked) == 30
    assert all(np.array_equal(a, b) for a, b in zip(web, cli_masked))
    # the page shows the machine audit of the download, naming no server path
    assert r["audit"]["clean"] is True and r["audit"]["summary"].startswith("audit mask clip_masked.avi: clean")
    # the preview is the most masked frame, and the head in it is covered by the fill
    k = r["preview_frame"]
    assert r["preview_masks"] and data.clip_boxes[k] is not None
    gray = cv2.cvtColor(web[k], cv2.COLOR_BGR2GRAY) if web[k].ndim == 3 else web[k]
    assert np.abs(gray[inner(data.clip_boxes[k])].astype(int) - FILL_VALUE).max() <= 2
    assert temp_files(app) == []


def test_masking_a_cine_dicom_gives_a_dicom(client, data, tmp_path):
    job = run_job(client, post(client, "/api/mask", data.cine, classes="fetal_head"))
    assert job["state"] == "done" and job["result"]["output_name"] == "cine_masked.dcm"
    masked = read_dicom(download(client, job, tmp_path / "masked.dcm"))
    k = job["result"]["preview_frame"]
    assert masked.frames.shape == (30, 360, 540) and masked.fps == pytest.approx(20.0)
    assert (masked.frames[k][inner(data.clip_boxes[k])] == FILL_VALUE).all()


def test_jobs_are_bounded_and_a_full_queue_says_try_again(tmp_path, data, monkeypatch):
    release = threading.Event()

    def slow_job(models, job, upload, cfg):
        release.wait(30)
        job.output, job.result = upload.path, {}

    monkeypatch.setattr(services, "mask_job", slow_job)
    app = create_app(WebSettings(allowed_hosts=TEST_HOSTS, temp_dir=tmp_path, max_running_jobs=1, max_pending_jobs=1))
    with TestClient(app) as c:
        first = post(c, "/api/mask", data.clip)
        assert first.status_code == 202
        second = post(c, "/api/mask", data.clip)
        assert second.status_code == 429 and "try again" in second.json()["error"]
        release.set()
        assert run_job(c, first)["state"] == "done"
        assert post(c, "/api/mask", data.clip).status_code == 202


# ------------------------------------------------------------------ de-identification

def test_deid_lists_the_attributes_and_burned_in_regions_removed(client, data, tmp_path):
    job = run_job(client, post(client, "/api/deid", data.phi))
    assert job["state"] == "done", job
    r = job["result"]
    cli = deidentify_path(data.phi, tmp_path / "cli.dcm")  # what fetalkit deid does to the same file
    for key in ("removed", "emptied", "replaced", "uids_remapped", "burned_in_annotation"):
        assert r[key] == cli[key], key
    named = set(r["removed"] + r["emptied"] + r["replaced"])
    assert {"PatientName", "PatientID", "PatientBirthDate", "InstitutionName"} <= named
    assert "source" not in r and "output" not in r  # no server paths in the report
    regions = [(b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]) for b in r["burned_in_regions"]]
    found = [any(x0 < rx1 and rx0 < x1 and y0 < ry1 and ry0 < y1 for rx0, ry0, rx1, ry1 in regions)
             for x0, y0, x1, y1 in data.burned.boxes]
    assert sum(found) >= 0.8 * len(found) and r["overlay_px_removed"] > 0 and r["frames"] == 1
    path = download(client, job, tmp_path / "deid.dcm")
    assert b"DOE^JANE" not in path.read_bytes() and b"CITY HOSPITAL" not in path.read_bytes()
    ds = pydicom.dcmread(path)
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert r["audit"]["summary"].startswith("audit deid phi_deid.dcm: ")
    assert r["audit"]["clean"] is True, r["audit"]["summary"]  # synthetic overlays on a phantom: all removed


# ------------------------------------------------------------------ live masking

def jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def test_live_camera_frames_come_back_masked_and_a_bad_frame_gets_no_picture(client, data):
    frames = frames_of(data.clip)
    k = next(i for i, b in enumerate(data.clip_boxes) if b is not None)
    with client.websocket_connect("/api/live") as ws:
        ws.send_json({"source": "camera", "classes": "fetal_head"})
        ws.send_bytes(jpeg(frames[k]))
        status = ws.receive_json()
        assert status["frame"] == 0 and status["hold"] == "detected" and status["masks"] >= 1
        masked = decode(ws.receive_bytes())
        assert masked.shape == frames[k].shape[:2]
        assert np.percentile(masked[inner(data.clip_boxes[k])], 99) <= 8  # JPEG of the fill
        ws.send_bytes(b"not a jpeg")
        bad = ws.receive_json()
        assert "not a JPEG/PNG picture" in bad["error"]
        ws.send_bytes(jpeg(frames[k + 1]))  # the stream goes on
        status = ws.receive_json()
        assert status["hold"] in ("detected", "held") and decode(ws.receive_bytes()) is not None
        assert status["fps"] > 0


def test_live_fail_safe_blanks_the_frame_when_the_detector_fails(tmp_path, data):
    class BrokenDetector:
        classes = ["pubic_symphysis", "fetal_head"]

        def detect(self, *args, **kwargs):
            raise RuntimeError("inference fault")

    app = create_app(WebSettings(allowed_hosts=TEST_HOSTS, temp_dir=tmp_path))
    app.state.fetalkit.models._loaded["detector"] = BrokenDetector()
    frame = frames_of(data.clip)[0]
    with TestClient(app) as c, c.websocket_connect("/api/live") as ws:
        ws.send_json({"source": "camera"})
        ws.send_bytes(jpeg(frame))
        status = ws.receive_json()
        assert status["fail_safe"] and status["hold"] == "fail-safe"
        masked = decode(ws.receive_bytes())
        sector = (frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)) > 20
        assert np.percentile(masked[sector], 99) <= 8  # the imaging area is blanked, nothing of it shown


def test_live_play_of_an_uploaded_file_masks_every_frame_then_removes_it(client, app, data):
    staged = post(client, "/api/live/files", data.clip)
    assert staged.status_code == 200 and staged.json()["frames"] == 30
    statuses = []
    with client.websocket_connect("/api/live") as ws:
        ws.send_json({"source": "file", "upload": staged.json()["upload"], "classes": "fetal_head"})
        while True:
            message = ws.receive_json()
            if message.get("end"):
                break
            statuses.append(message)
            frame = decode(ws.receive_bytes())
            box = data.clip_boxes[message["frame"]]
            if message["hold"] == "detected" and box is not None:
                assert np.percentile(frame[inner(box)], 99) <= 8
    assert message["frames"] == 30 and [s["frame"] for s in statuses] == list(range(30))
    assert all(s["total"] == 30 for s in statuses) and sum(s["masks"] > 0 for s in statuses) >= 10
    assert temp_files(app) == []  # the staged file is gone
    with client.websocket_connect("/api/live") as ws:  # and cannot be played again
        ws.send_json({"source": "file", "upload": staged.json()["upload"]})
        assert "no job" in ws.receive_json()["error"]


# ------------------------------------------------------------------ the command

def test_serve_without_the_web_extra_prints_a_one_line_hint():
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['fetalkit', 'serve']; "
            "from fetalkit.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "pip install 'fetalkit[web]'" in res.stderr


def test_serve_refuses_other_hosts_without_a_token():
    res = fetalkit("serve", "--host", "0.0.0.0")
    assert res.returncode == 1 and "--token" in res.stderr and "Traceback" not in res.stderr


def test_serve_runs_answers_and_cleans_up_on_ctrl_c(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fetalkit.cli", "serve", "--port", str(port), "--temp-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import httpx
        for _ in range(200):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert r.status_code == 200 and r.json()["classes"]
        assert any(tmp_path.glob("fetalkit-web-*"))
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130, -signal.SIGINT), err  # uvicorn passes Ctrl-C on after shutting down
    assert f"http://127.0.0.1:{port}/" in out
    assert not any(tmp_path.glob("fetalkit-web-*"))
