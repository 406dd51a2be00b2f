"""``fetalkit serve``'s web app: one page (static/), a JSON API and a live WebSocket.

>>> from fetalkit.web.app import create_app                  # doctest: +SKIP
>>> from fetalkit.web.settings import WebSettings            # doctest: +SKIP
>>> app = create_app(WebSettings(max_upload_mb=50))          # doctest: +SKIP

Endpoints (every error is ``{"error": "..."}`` with a 4xx status, naming the file
and what to do; the server keeps serving):

==========================  =====================================================
``GET /``                   the page (``/?token=T`` once when a token is set)
``GET /api/info``           detector classes, styles, limits
``POST /api/biometry/head`` image / DICOM (+ ``pixel_mm``) -> HC, BPD, OFD, overlay, csv
``POST /api/biometry/aop``  image / DICOM (+ ``caudal_end``, ``opening``) -> AoP, overlay, csv
``POST /api/mask``          video / cine DICOM (+ ``classes``, ``style``) -> 202 job
``POST /api/deid``          DICOM -> 202 job
``GET /api/jobs/{id}``      a job's state and progress (frames done of total)
``GET /api/jobs/{id}/result`` the job's file (then removed from the server)
``POST /api/live/files``    stage a video to play live
``WS /api/live``            live masking (fetalkit.web.live)
==========================  =====================================================

Uploads are ``multipart/form-data`` with the file in the field ``file``.  Long
work runs on thread pools (fetalkit.web.jobs), never on the event loop.  Every
request must name this server in its ``Host`` header (loopback, the address served
on, ``--allow-host``; else 400), typed numbers must lie in their stated range, and an
image's declared size is checked before it is decoded (413 above ``FETALKIT_MAX_PIXELS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.cookies import SimpleCookie
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketClose

from fetalkit import __version__
from fetalkit.errors import FetalkitError, MeasurementError, ModelError, RequestError
from fetalkit.io.video import open_source
from fetalkit.masking.render import STYLES
from fetalkit.web import services
from fetalkit.web.jobs import JobManager, user_message
from fetalkit.web.live import LiveMasker
from fetalkit.web.settings import HostPolicy, WebSettings
from fetalkit.web.upload import Upload, receive_upload

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "fetalkit_token"


class AppState:
    """What the routes share: settings, the temp root, the job manager, the models, the quick pool."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        if settings.temp_dir is not None:
            Path(settings.temp_dir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="fetalkit-web-", dir=settings.temp_dir))
        self.jobs = JobManager(self.root, settings.max_running_jobs, settings.max_pending_jobs,
                               settings.keep_results_s)
        self.models = services.Models()
        self.quick_pool = ThreadPoolExecutor(settings.quick_workers, thread_name_prefix="fetalkit-quick")

    async def quick(self, fn, *args, **kwargs):
        """Run a short blocking call (a measurement, one frame) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.quick_pool, partial(fn, *args, **kwargs))

    async def receive(self, request: Request) -> tuple[Upload, Path]:
        """The request's upload in a fresh folder (removed here if receiving fails)."""
        work = self.jobs.new_folder()
        try:
            return await receive_upload(request, work, self.settings.max_upload_mb), work
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def close(self) -> None:
        self.jobs.shutdown()
        self.quick_pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _status_of(error: FetalkitError) -> int:
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, MeasurementError):
        return 422
    if isinstance(error, ModelError):
        return 500  # the server's bundled models, not the user's upload
    return 400


class Guard:
    """ASGI middleware: refuses other hosts' names and cross-site posts / WebSockets, and checks the
    token when one is set.

    The ``Host`` check comes first: a page of another site can point a DNS name of its own
    at 127.0.0.1 (DNS rebinding) and then reach the loopback server as if same-site; only
    the names in ``hosts`` (loopback, the bound address, --allow-host) are served.

    A token is taken from ``Authorization: Bearer <token>`` or from the cookie set by
    opening ``/?token=<token>`` (the page then works like any other, token-free URL).
    """

    def __init__(self, app, token: str | None, hosts: HostPolicy):
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if not self.hosts.allows(headers.get("host")):
            return await self._deny(scope, receive, send, 400, _host_refused(headers.get("host")))
        if self._cross_site(scope, headers):
            return await self._deny(scope, receive, send, 403, "cross-site request refused: use the page "
                                    "served by this fetalkit server")
        if self.token is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/" and "token" in QueryParams(scope["query_string"]):
            return await self._login(scope, receive, send)
        if self._has_token(headers):
            return await self.app(scope, receive, send)
        return await self._deny(scope, receive, send, 401, "this server needs its token: open the page as "
                                "/?token=<token>, or send 'Authorization: Bearer <token>'")

    @staticmethod
    def _cross_site(scope, headers: Headers) -> bool:
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        return bool(unsafe and origin and origin.split("://", 1)[-1] != headers.get("host"))

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _has_token(self, headers: Headers) -> bool:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and self._matches(auth[7:].strip()):
            return True
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(headers.get("cookie", ""))
        return COOKIE in cookie and self._matches(cookie[COOKIE].value)

    async def _login(self, scope, receive, send):
        if not self._matches(QueryParams(scope["query_string"]).get("token")):
            return await self._deny(scope, receive, send, 401, "wrong token: check the one given to fetalkit serve")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        await response(scope, receive, send)

    @staticmethod
    async def _deny(scope, receive, send, status: int, message: str):
        if scope["type"] == "websocket":
            return await WebSocketClose(code=1008, reason=message[:120])(scope, receive, send)
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _host_refused(host: str | None) -> str:
    shown = repr(host[:80]) if host else "(none)"
    return (f"Host {shown} is not a name of this server (refused so that pages of other sites cannot reach it); "
            "open the page as http://127.0.0.1:<port>/, or start fetalkit serve with --allow-host <name>")


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """The web app of ``fetalkit serve`` (its temp folder is removed when the app shuts down)."""
    settings = settings or WebSettings()
    state = AppState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    # No /docs: Swagger UI would load scripts from a CDN, and the page must work offline.
    app = FastAPI(title="fetalkit", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.fetalkit = state
    app.add_middleware(Guard, token=settings.token, hosts=HostPolicy.of(settings))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def error_response(message: str, status: int, **extra) -> JSONResponse:
        return JSONResponse({"error": user_message(message, state.root), **extra}, status_code=status)

    @app.exception_handler(FetalkitError)
    async def on_fetalkit_error(_request, e: FetalkitError):
        return error_response(str(e), _status_of(e))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def on_error(_request, e: Exception):
        return error_response(user_message(e, state.root), 500)

    def measured(result: dict) -> JSONResponse:
        if result["error"]:
            return error_response(result.pop("error"), 422, **result)
        return JSONResponse(result)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/info")
    async def info():
        detector = await state.quick(state.models.detector)
        return {"version": __version__, "classes": detector.classes, "styles": list(STYLES),
                "caudal_ends": list(services.CAUDAL_ENDS), "openings": list(services.OPENINGS),
                "max_upload_mb": settings.max_upload_mb}

    @app.post("/api/biometry/head")
    async def biometry_head(request: Request):
        upload, work = await state.receive(request)
        try:
            pixel_mm = services.parse_pixel_mm(upload.fields.get("pixel_mm"))
            return measured(await state.quick(services.measure_head, state.models, upload, work, pixel_mm,
                                              upload.fields.get("force") == "true"))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @app.post("/api/biometry/aop")
    async def biometry_aop(request: Request):
        upload, work = await state.receive(request)
        try:
            return measured(await state.quick(services.measure_aop, state.models, upload, work,
                                              upload.fields.get("caudal_end") or "right",
                                              upload.fields.get("opening") or "counterclockwise",
                                              upload.fields.get("force") == "true"))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @app.post("/api/mask", status_code=202)
    async def mask(request: Request):
        upload, work = await state.receive(request)
        try:
            detector = await state.quick(state.models.detector)
            cfg = services.mask_config(upload.fields.get("classes"), upload.fields.get("style"), detector.classes)
            await state.quick(services.probe_video, upload)  # unreadable: 400 now, not a failed job
            job = state.jobs.submit("mask", upload.name, work,
                                    lambda job: services.mask_job(state.models, job, upload, cfg),
                                    inputs=(upload.path,))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return JSONResponse(job.as_dict(), status_code=202)

    @app.post("/api/deid", status_code=202)
    async def deid(request: Request):
        upload, work = await state.receive(request)
        try:
            services.check_dicom(upload)
            job = state.jobs.submit("deid", upload.name, work, lambda job: services.deid_job(job, upload),
                                    inputs=(upload.path,))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return JSONResponse(job.as_dict(), status_code=202)

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str):
        return state.jobs.get(job_id).as_dict()

    @app.get("/api/jobs/{job_id}/result")
    async def job_result(job_id: str):
        job = state.jobs.get(job_id)
        if job.kind == "live" or job.state != "done" or job.output is None:
            raise RequestError(f"job {job_id} is {job.state}: its result can be downloaded when it is done", 409)
        return FileResponse(job.output, filename=job.output.name, media_type="application/octet-stream",
                            background=BackgroundTask(state.jobs.discard, job))

    @app.post("/api/live/files")
    async def live_file(request: Request):
        upload, work = await state.receive(request)
        try:
            probe = await state.quick(services.probe_video, upload)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        job = state.jobs.stage("live", upload.name, work, upload.path)
        return {"upload": job.id, "name": upload.name, **probe}

    @app.websocket("/api/live")
    async def live(ws: WebSocket):
        await ws.accept()
        try:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            start = _start_message(message.get("text"))
            detector = await state.quick(state.models.detector)
            cfg = services.mask_config(start.get("classes"), start.get("style"), detector.classes)
            session = LiveMasker(detector, cfg, await state.quick(state.models.detector_domain))
            if start.get("source") == "file":
                await _play_file(ws, state, session, str(start.get("upload")))
            elif start.get("source") == "camera":
                await _mask_camera(ws, state, session)
            else:
                raise RequestError("start with {\"source\": \"camera\"} or {\"source\": \"file\", \"upload\": id}")
        except WebSocketDisconnect:
            return
        except (FetalkitError, ValueError) as e:  # a bad start message or staged file: say so, then close
            with contextlib.suppress(Exception):
                await ws.send_json({"error": user_message(e if isinstance(e, FetalkitError) else
                                                          f"bad start message ({e})", state.root)})
                await ws.close(1008)

    return app


def _start_message(text: str | None) -> dict:
    """The live stream's first message, a JSON object (RequestError for anything else)."""
    try:
        start = json.loads(text) if text is not None else None
    except (ValueError, RecursionError) as e:
        raise RequestError(f"bad start message ({str(e)[:80]}); send a JSON object") from None
    if not isinstance(start, dict):
        raise RequestError("start with {\"source\": \"camera\"} or {\"source\": \"file\", \"upload\": id}, "
                           "sent as a JSON text message")
    return start


async def _mask_camera(ws: WebSocket, state: AppState, session: LiveMasker) -> None:
    """Answer every frame the page sends with its masked frame (or an error status and no picture)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is None:
            continue  # text after the start message: nothing to do
        try:
            status, jpeg = await state.quick(session.mask_jpeg, message["bytes"])
        except Exception as e:  # noqa: BLE001 - any fault: no picture, the page blanks
            await ws.send_json({"error": user_message(e, state.root), "frame": session.index})
            session.index += 1
            continue
        await ws.send_json(status)
        await ws.send_bytes(jpeg)


async def _play_file(ws: WebSocket, state: AppState, session: LiveMasker, upload_id: str) -> None:
    """Play a staged video at its frame rate, every frame masked; the file is removed at the end."""
    job = state.jobs.get(upload_id)
    if job.kind != "live":
        raise RequestError(f"{upload_id} is not a file staged for live play (POST /api/live/files)", 404)
    try:
        source = await state.quick(open_source, str(job.output))
        fps = source.fps or 25.0
        frames = iter(source)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while (item := await state.quick(next, frames, None)) is not None:
            i, frame = item
            await asyncio.sleep(max(0.0, t0 + i / fps - loop.time()))
            try:
                status, jpeg = await state.quick(session.mask, frame)
            except Exception as e:  # noqa: BLE001 - no picture for this frame; the page blanks
                await ws.send_json({"error": user_message(e, state.root), "frame": i})
                continue
            await ws.send_json({**status, "total": source.count})
            await ws.send_bytes(jpeg)
        await ws.send_json({"end": True, "frames": session.index})
        await ws.close(1000)
    finally:
        state.jobs.discard(job)
