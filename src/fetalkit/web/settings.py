"""Settings of the web app and the binding rule (no web framework needed to import this)."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

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
    host : the address served on; besides the loopback names, the page may be opened under it
        (a wildcard address, 0.0.0.0 or ::, accepts this machine's names and any IP address).
    allowed_hosts : more names the page may be opened under (a DNS name, a TLS proxy's); every
        other ``Host`` header is refused, so that a page of another site cannot reach the server
        through a DNS name it points at this machine (DNS rebinding).
    """

    max_upload_mb: float = 200.0
    token: Optional[str] = None
    temp_dir: Optional[Path] = None
    max_running_jobs: int = 1
    max_pending_jobs: int = 32
    quick_workers: int = 2
    keep_results_s: float = 900.0
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.max_upload_mb > 0:
            raise FetalkitError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.token is not None and len(self.token) < 8:
            raise FetalkitError("--token must be at least 8 characters (e.g. python -c 'import secrets; "
                                "print(secrets.token_urlsafe())')")
        if self.max_running_jobs < 1 or self.max_pending_jobs < self.max_running_jobs or self.quick_workers < 1:
            raise FetalkitError("job limits must be at least 1 (and pending >= running)")
        bad = [h for h in self.allowed_hosts if host_name(h) is None]
        if bad:
            raise FetalkitError(f"--allow-host {bad[0]!r}: not a host name (give e.g. scanner-pc.example.org "
                                "or 192.168.1.20)")


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


# --------------------------------------------------------------------------- Host header

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# A Host header: a DNS name or IPv4 address, or an IPv6 address in brackets; then an optional port.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?")


def host_name(value: str) -> Optional[str]:
    """The name in a Host header or address (lower case, no port, no brackets); None when it is not one."""
    text = value.strip().lower()
    if ":" in text and not text.startswith("["):
        try:  # a bare IPv6 address, as --host takes it
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            pass
    m = _HOST.fullmatch(text)
    if m is None:
        return None
    return m["v6"] or m["name"].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _machine_names() -> set[str]:
    """This machine's own names, for a server bound to every address."""
    names = set()
    for get in (socket.gethostname, socket.getfqdn):
        try:
            names.add(get().lower().rstrip("."))
        except OSError:
            pass
    return names - {""}


class HostPolicy:
    """Which ``Host`` headers the server answers: loopback names, the bound address, the allowed names.

    DNS rebinding needs a DNS name (an attacker's, pointed at this machine), so an IP
    address is never a risk in itself; a server bound to every address (0.0.0.0) therefore
    accepts any IP address besides its own names.
    """

    def __init__(self, bound: str, extra: Iterable[str] = ()):
        self.any_ip = bound.strip("[]") in WILDCARDS
        self.names = set(LOOPBACK_NAMES) | {n for n in map(host_name, extra) if n}
        if self.any_ip:
            self.names |= _machine_names()
        elif host_name(bound):
            self.names.add(host_name(bound))

    @classmethod
    def of(cls, settings: WebSettings) -> "HostPolicy":
        return cls(settings.host, settings.allowed_hosts)

    def allows(self, header: Optional[str]) -> bool:
        name = host_name(header or "")
        if name is None:
            return False
        return name in self.names or is_loopback(name) or (self.any_ip and _is_ip(name))
