"""Settings of the web app and the binding rule (no web framework needed to import this)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fetalkit.errors import FetalkitError


@dataclass(frozen=True)
class WebSettings:
    """What ``fetalkit serve`` can change.

    Parameters
    ----------
    max_upload_mb : largest upload (a whole request body) in MB; larger ones get HTTP 413.
    token : when set, every request must carry it (``Authorization: Bearer <token>``,
        or the cookie the page gets from ``/?token=<token>``).
    temp_dir : where uploads and results live while a request or job needs them (a
        fresh folder inside it, removed at shutdown); None: the system's temp folder.
    max_running_jobs : masking / de-identification jobs run at once (thread pool).
    max_pending_jobs : jobs queued or running; more get HTTP 429 (try again later).
    quick_workers : threads for the quick requests (biometry, live frames).
    keep_results_s : a finished job's result is removed when downloaded, or after this long.
    """

    max_upload_mb: float = 200.0
    token: Optional[str] = None
    temp_dir: Optional[Path] = None
    max_running_jobs: int = 1
    max_pending_jobs: int = 32
    quick_workers: int = 2
    keep_results_s: float = 900.0

    def __post_init__(self):
        if not self.max_upload_mb > 0:
            raise FetalkitError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.token is not None and len(self.token) < 8:
            raise FetalkitError("--token must be at least 8 characters (e.g. python -c 'import secrets; "
                                "print(secrets.token_urlsafe())')")
        if self.max_running_jobs < 1 or self.max_pending_jobs < self.max_running_jobs or self.quick_workers < 1:
            raise FetalkitError("job limits must be at least 1 (and pending >= running)")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: Optional[str]) -> Optional[str]:
    """The warning to print when ``host`` is reachable from other machines (None on loopback);
    FetalkitError when it is and no token is set."""
    if is_loopback(host):
        return None
    if not token:
        raise FetalkitError(f"--host {host} makes the server reachable from other machines: give --token "
                            "(or FETALKIT_TOKEN) so every request must carry it, or keep --host 127.0.0.1")
    return (f"warning: serving on {host}: other machines can reach this server; every request must carry the "
            "token, and traffic is plain HTTP (put it behind a TLS proxy on a shared network)")
