"""Running the web app with uvicorn: in the foreground (``fetalkit serve``) or on a background
thread on a free loopback port (tests, the screenshot script)."""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
import threading
import time
from typing import Optional
from urllib.parse import unquote_plus

import uvicorn

from fetalkit.web.app import create_app
from fetalkit.web.settings import WebSettings, is_loopback

# Connections served at once (uploads, polls, live streams); more get HTTP 503.
LIMIT_CONCURRENCY = 64
# Largest live frame a page may send (a 4K JPEG is far below this).
WS_MAX_BYTES = 16 * 2**20


# uvicorn logs HTTP requests on uvicorn.access, but WebSocket handshakes ("WebSocket /api/live?token=...")
# on uvicorn.error: both need the filter (a logger's filter sees only records logged on that logger).
LOGGERS = ("uvicorn.access", "uvicorn.error")
_PARAM = re.compile(r"([?&;])([^=&;\s\"']+)=([^&;\s\"']*)")


def _hide(m: re.Match) -> str:
    # The key as the app reads it: "%74oken" is "token" too.
    return f"{m[1]}{m[2]}=***" if unquote_plus(m[2]).lower() == "token" else m[0]


def redact(value):
    """``value`` with the value of every ``token`` query parameter written ``***`` (strings only)."""
    return _PARAM.sub(_hide, value) if isinstance(value, str) else value


class RedactToken(logging.Filter):
    """Keep ``?token=...`` out of every log line: the message and its arguments are rewritten."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) for k, v in record.args.items()}
        return True


def redact_tokens_in_logs() -> None:
    """Install :class:`RedactToken` on uvicorn's loggers (once)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) for f in logger.filters):
            logger.addFilter(RedactToken())


def _config(settings: WebSettings, host: str, port: int, log_level: str) -> uvicorn.Config:
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level,
                            limit_concurrency=LIMIT_CONCURRENCY, ws_max_size=WS_MAX_BYTES, server_header=False)
    redact_tokens_in_logs()
    return config


def serve(settings: WebSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C); the temp folder is removed on the way out."""
    if not is_loopback(host) and not settings.token:
        raise ValueError("a server reachable from other machines needs a token (see settings.check_bind)")
    if settings.host != host:  # the Host check accepts the address served on
        settings = dataclasses.replace(settings, host=host)
    uvicorn.Server(_config(settings, host, port, log_level)).run()


class BackgroundServer:
    """The app on 127.0.0.1 with a free port, on a thread, for as long as the ``with`` block lasts.

    >>> with BackgroundServer() as server:          # doctest: +SKIP
    ...     page = server.url + "/"
    """

    def __init__(self, settings: Optional[WebSettings] = None, start_timeout_s: float = 30.0,
                 log_level: str = "warning"):
        self.settings = settings or WebSettings()
        self.start_timeout_s = start_timeout_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(_config(self.settings, "127.0.0.1", self.port, log_level))
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
