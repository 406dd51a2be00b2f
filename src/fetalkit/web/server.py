"""Running the web app with uvicorn: in the foreground (``fetalkit serve``) or on a background
thread on a free loopback port (tests, the screenshot script)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Optional

import uvicorn

from fetalkit.web.app import create_app
from fetalkit.web.settings import WebSettings, is_loopback

# Connections served at once (uploads, polls, live streams); more get HTTP 503.
LIMIT_CONCURRENCY = 64
# Largest live frame a page may send (a 4K JPEG is far below this).
WS_MAX_BYTES = 16 * 2**20


class _RedactToken(logging.Filter):
    """Keep ``/?token=...`` out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(re.sub(r"token=[^&\s]+", "token=***", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def _config(settings: WebSettings, host: str, port: int, log_level: str) -> uvicorn.Config:
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level,
                            limit_concurrency=LIMIT_CONCURRENCY, ws_max_size=WS_MAX_BYTES, server_header=False)
    logging.getLogger("uvicorn.access").addFilter(_RedactToken())
    return config


def serve(settings: WebSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C); the temp folder is removed on the way out."""
    if not is_loopback(host) and not settings.token:
        raise ValueError("a server reachable from other machines needs a token (see settings.check_bind)")
    uvicorn.Server(_config(settings, host, port, log_level)).run()


class BackgroundServer:
    """The app on 127.0.0.1 with a free port, on a thread, for as long as the ``with`` block lasts.

    >>> with BackgroundServer() as server:          # doctest: +SKIP
    ...     page = server.url + "/"
    """

    def __init__(self, settings: Optional[WebSettings] = None, start_timeout_s: float = 30.0):
        self.settings = settings or WebSettings()
        self.start_timeout_s = start_timeout_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(_config(self.settings, "127.0.0.1", self.port, "warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the web app did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
