"""`fetalkit serve` under hostile input: other sites' Host names, tokens in logs, numbers out of range,
images that declare more pixels than they hold (uploads and live frames).  Nothing is lost: every
bad request gets a 4xx naming what was wrong, and the server keeps serving."""

from __future__ import annotations

import json
import logging
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'fetalkit[web]')")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from fetalkit.demo import phantom_clip  # noqa: E402
from fetalkit.io.dicom import write_dicom  # noqa: E402
from fetalkit.synth.hostile import bomb_png  # noqa: E402
from fetalkit.io.images import write_image  # noqa: E402
from fetalkit.synth.phantom import head_phantom  # noqa: E402
from fetalkit.web import services  # noqa: E402
from fetalkit.web.app import create_app  # noqa: E402
from fetalkit.web.server import BackgroundServer, redact  # noqa: E402
from fetalkit.web.settings import HostPolicy, WebSettings, host_name  # noqa: E402

TOKEN = "s3cret-token-for-hostile-tests"
TEST_HOSTS = ("testserver",)  # the Host the framework's TestClient sends
MAX_GROWTH_MB = 300  # a decoded 30000 x 30000 bomb is 900 MB grey, 2.7 GB colour


# ------------------------------------------------------------------ helpers


def peak_rss_mb() -> float:
    """This process's peak resident memory (the server runs in it, under TestClient)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def post(client, url, data: bytes, name: str, **fields):
    return client.post(url, files={"file": (name, data)}, data=fields)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = bomb_png(30000, 30000)
    assert len(data) < 2 * 2**20
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_data")
    head = head_phantom(seed=5)
    write_image(d / "head.png", head.image)
    write_dicom(d / "huge_spacing.dcm", head.image, pixel_mm=1e308)
    phantom_clip(d / "clip.avi", n_frames=4, seed=0)
    return d


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(WebSettings(allowed_hosts=TEST_HOSTS, temp_dir=tmp_path_factory.mktemp("hostile_tmp")))
    with TestClient(app) as c:
        assert c.get("/api/info").status_code == 200  # the detector is loaded before memory is measured
        yield c


def temp_files(client) -> list[Path]:
    return [p for p in client.app.state.fetalkit.root.rglob("*") if p.is_file()]


def jpeg(frame: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


# ------------------------------------------------------------------ 1. Host header (DNS rebinding)


def test_host_names_parse_with_ports_and_brackets():
    assert host_name("LocalHost:8000") == "localhost" and host_name("[::1]:80") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("localhost.") == "localhost"
    assert host_name("::1") == "::1"  # a bare IPv6 address, as --host takes it
    assert all(host_name(h) is None for h in ("", "a b", "localhost:abc", "127.0.0.1@evil.example", "x/y"))


def test_host_policy_loopback_bound_address_wildcard_and_allowed_names():
    loop = HostPolicy("127.0.0.1")
    assert all(loop.allows(h) for h in ("localhost", "localhost:8000", "127.0.0.1:1", "[::1]:9", "127.0.0.2"))
    assert not any(loop.allows(h) for h in (None, "", "evil.example", "evil.example:8000", "10.0.0.5",
                                             "localhost.evil.example", "testserver"))
    lan = HostPolicy("192.168.1.20", ["scanner.example.org"])
    assert lan.allows("192.168.1.20:8000") and lan.allows("Scanner.Example.Org:8000") and lan.allows("localhost")
    assert not lan.allows("192.168.1.21") and not lan.allows("evil.example")
    anywhere = HostPolicy("0.0.0.0")  # every address of the machine: any IP literal, never a foreign DNS name
    assert anywhere.allows("10.1.2.3:8000") and anywhere.allows(socket.gethostname())
    assert not anywhere.allows("evil.example")
    with pytest.raises(Exception, match="--allow-host"):
        WebSettings(allowed_hosts=("bad host/name",))


def test_other_hosts_are_refused_on_http_and_on_the_websocket(tmp_path, files):
    app = create_app(WebSettings(temp_dir=tmp_path))  # the defaults: loopback names only
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        for host in ("evil.example", "evil.example:8000", "testserver", "localhost.evil.example"):
            for r in (c.get("/", headers={"host": host}),
                      c.post("/api/biometry/head", files={"file": ("head.png", (files / "head.png").read_bytes())},
                             headers={"host": host})):
                assert r.status_code == 400, (host, r.text)
                assert "is not a name of this server" in r.json()["error"]
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert c.get("/", headers={"host": host}).status_code == 200, host
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect("/api/live", headers={"host": "evil.example:8000"}) as ws:
                ws.receive_json()
        with c.websocket_connect("/api/live", headers={"host": "localhost:8000"}) as ws:
            ws.send_json({"source": "nothing"})
            assert "start with" in ws.receive_json()["error"]


def test_the_bound_address_is_accepted_with_its_token(tmp_path):
    app = create_app(WebSettings(temp_dir=tmp_path, host="192.168.1.20", token=TOKEN))
    with TestClient(app) as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/", headers={"host": "192.168.1.20:8000", **auth}).status_code == 200
        assert c.get("/", headers={"host": "evil.example", **auth}).status_code == 400  # even with the token


# ------------------------------------------------------------------ 2. no token in any log line


def test_redact_hides_every_token_parameter():
    assert redact('GET /?token=abc HTTP/1.1') == 'GET /?token=*** HTTP/1.1'
    assert redact("/api/live?x=1&token=abc&y=2") == "/api/live?x=1&token=***&y=2"
    assert redact("/?%74oken=abc") == "/?%74oken=***" and redact("/?Token=abc") == "/?Token=***"
    assert redact("/?tokens=abc") == "/?tokens=abc" and redact(5) == 5


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_the_token_is_in_no_log_record_of_http_or_websocket_requests(tmp_path):
    websockets = pytest.importorskip("websockets.sync.client")
    import httpx
    records = Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")]
    with BackgroundServer(WebSettings(temp_dir=tmp_path, token=TOKEN), log_level="info") as server:
        for logger in loggers:
            logger.addHandler(records)
        try:
            assert httpx.get(f"{server.url}/?token={TOKEN}").status_code == 303
            ws_url = server.url.replace("http://", "ws://") + f"/api/live?token={TOKEN}"
            with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                ws.send(json.dumps({"source": "nothing"}))
                assert "start with" in ws.recv(timeout=30)
            for _ in range(100):  # the access lines are written as the responses finish
                if sum("token=***" in line for line in records.lines) >= 2:
                    break
                time.sleep(0.05)
        finally:
            for logger in loggers:
                logger.removeHandler(records)
    assert any("WebSocket /api/live?token=***" in line for line in records.lines), records.lines
    assert any("GET /?token=***" in line for line in records.lines), records.lines
    assert not any(TOKEN in line for line in records.lines), records.lines


def test_fetalkit_serve_prints_no_token_and_takes_allow_host(tmp_path):
    websockets = pytest.importorskip("websockets.sync.client")
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fetalkit.cli", "serve", "--port", str(port), "--token", TOKEN,
                             "--allow-host", "scanner.example.org", "--temp-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(base + "/", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(base + "/", headers={"Host": f"scanner.example.org:{port}", **auth}).status_code == 200
        assert httpx.get(base + "/", headers={"Host": "evil.example", **auth}).status_code == 400
        assert httpx.get(f"{base}/?token={TOKEN}").status_code == 303
        with websockets.connect(f"ws://127.0.0.1:{port}/api/live?token={TOKEN}", additional_headers=auth) as ws:
            ws.send(json.dumps({"source": "nothing"}))
            assert "start with" in ws.recv(timeout=30)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    log = out + err  # uvicorn writes the access log on stdout, the rest on stderr
    assert "WebSocket /api/live?token=***" in log and "GET /?token=***" in log, log
    assert TOKEN not in log


# ------------------------------------------------------------------ 3. numbers in range


@pytest.mark.parametrize("value", ["1e308", "nan", "inf", "-inf", "-1", "0", "abc", "1e-9", "11", "0x10"])
def test_pixel_size_out_of_range_is_a_400_naming_the_field_and_range(client, files, value):
    r = post(client, "/api/biometry/head", (files / "head.png").read_bytes(), "head.png", pixel_mm=value)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "pixel_mm" in error and "0.001 to 10 mm" in error and repr(value) in error, error


def test_pixel_sizes_in_range_are_measured(client, files):
    for value in ("0.2", "0,2", " 0.2 "):
        r = post(client, "/api/biometry/head", (files / "head.png").read_bytes(), "head.png", pixel_mm=value)
        assert r.status_code == 200 and float(r.json()["row"]["pixel_mm"]) == pytest.approx(0.2), r.text


def test_a_dicoms_own_pixel_size_out_of_range_is_refused_unless_one_is_typed(client, files):
    data = (files / "huge_spacing.dcm").read_bytes()
    r = post(client, "/api/biometry/head", data, "huge.dcm")
    assert r.status_code == 400 and "huge.dcm" in r.json()["error"] and "pixel size" in r.json()["error"]
    assert "inf" not in json.dumps(r.json().get("row", {}))
    typed = post(client, "/api/biometry/head", data, "huge.dcm", pixel_mm="0.2")
    assert typed.status_code == 200 and typed.json()["pixel_mm_source"] == "typed"


def test_parse_number_states_the_range():
    assert services.parse_number("", "x", 0, 1) is None and services.parse_number("0.5", "x", 0, 1) == 0.5
    with pytest.raises(Exception, match=r"margin must be a number from 0 to 1 px, got 'nan'"):
        services.parse_number("nan", "margin", 0, 1, unit=" px")


@pytest.mark.parametrize("start", ['[]', '5', '"camera"', 'nan', '{', '[' * 100_000,
                                   '{"source": "camera", "classes": 3}', '{"source": "camera", "style": ["fill"]}'])
def test_a_bad_live_start_message_gets_an_error_and_the_server_keeps_serving(client, start):
    with client.websocket_connect("/api/live") as ws:
        ws.send_text(start)
        assert ws.receive_json()["error"]
    with client.websocket_connect("/api/live") as ws:
        ws.send_bytes(b"\x00\x01")  # a frame before the start message
        assert "start with" in ws.receive_json()["error"]
    assert client.get("/").status_code == 200


# ------------------------------------------------------------------ 4. decoded size bounded


def test_bomb_pngs_are_refused_before_decoding_on_every_upload(client, bomb):
    before = peak_rss_mb()
    for url in ("/api/biometry/head", "/api/biometry/aop", "/api/mask", "/api/live/files"):
        for _ in range(2):
            r = post(client, url, bomb, "bomb.png")
            assert 400 <= r.status_code < 500, (url, r.text)
            assert "bomb.png" in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert peak_rss_mb() - before < MAX_GROWTH_MB, f"peak RSS grew {peak_rss_mb() - before:.0f} MB"
    assert temp_files(client) == []


def test_an_image_above_the_pixel_limit_is_a_413_naming_its_size(client):
    big = bomb_png(8000, 8000)  # 64 Mpx: above fetalkit's default limit, below PIL's own bomb limit
    before = peak_rss_mb()
    for url in ("/api/biometry/head", "/api/mask"):
        r = post(client, url, big, "big.png")
        assert r.status_code == 413, r.text
        assert r.json()["error"].startswith("big.png: declares 8000 x 8000 pixels"), r.text
    assert peak_rss_mb() - before < MAX_GROWTH_MB


def test_the_pixel_limit_follows_fetalkit_max_pixels(client, monkeypatch):
    small = bomb_png(2000, 1000)
    monkeypatch.setenv("FETALKIT_MAX_PIXELS", "1000000")
    r = post(client, "/api/biometry/head", small, "wide.png")
    assert r.status_code == 413 and "FETALKIT_MAX_PIXELS" in r.json()["error"]


def test_bomb_live_frames_get_an_error_no_picture_and_the_stream_goes_on(client, files, bomb):
    from fetalkit.io.video import open_source
    frame = next(iter(open_source(str(files / "clip.avi"))))[1]
    before = peak_rss_mb()
    with client.websocket_connect("/api/live") as ws:
        ws.send_json({"source": "camera"})
        for i, data in enumerate((bomb, bomb, bomb_png(8000, 8000))):
            ws.send_bytes(data)
            answer = ws.receive_json()  # text, not a picture: a refused frame is never echoed back
            assert answer["frame"] == i and answer["error"].startswith(f"frame {i}: "), answer
        assert "declares 8000 x 8000 pixels" in answer["error"]
        ws.send_bytes(jpeg(frame))
        status = ws.receive_json()
        assert status["frame"] == 3 and "error" not in status
        masked = cv2.imdecode(np.frombuffer(ws.receive_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert masked.shape == frame.shape[:2]
    assert peak_rss_mb() - before < MAX_GROWTH_MB, f"peak RSS grew {peak_rss_mb() - before:.0f} MB"
