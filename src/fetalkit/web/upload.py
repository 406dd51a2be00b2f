"""Receiving one uploaded file: streamed into the request's own folder, size-limited.

The body (``multipart/form-data``: one file part named ``file`` plus a few text
fields) is parsed as it arrives with python-multipart; the file's bytes go straight
to ``work_dir/<its cleaned name>``, nowhere else (no spooling to the system temp
folder), and the request is refused with 413 as soon as it passes the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional

from python_multipart.multipart import MultipartParser, parse_options_header

from fetalkit.errors import RequestError

MAX_FIELDS = 16
MAX_FIELD_BYTES = 4096
MAX_NAME_CHARS = 120


@dataclass
class Upload:
    """An uploaded file in ``work_dir`` (the request's folder, removed by whoever made it)."""

    path: Path
    name: str                       # the cleaned file name, the one messages show
    fields: dict[str, str] = field(default_factory=dict)


def clean_name(filename: str) -> str:
    """A safe file name from a browser's: no folders, no odd characters, the suffix kept (in lower case)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .") or "upload"
    stem, dot, suffix = base.rpartition(".")
    if not dot or not stem:
        stem, suffix = base, ""
    suffix = suffix.lower()[:8]
    stem = stem[:MAX_NAME_CHARS]
    return f"{stem}.{suffix}" if suffix else stem


class _Receiver:
    """python-multipart callbacks: text fields in memory, the one file part onto disk."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.fields: dict[str, str] = {}
        self.upload: Optional[Upload] = None
        self._file: Optional[BinaryIO] = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field: Optional[str] = None
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self._disposition, self._field, self._value = b"", None, bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            if len(self.fields) >= MAX_FIELDS:
                raise RequestError(f"more than {MAX_FIELDS} form fields; send the file and its few options only")
            self._field = name
            return
        if name != "file" or self.upload is not None:
            raise RequestError("send exactly one file, in the form field 'file'")
        filename = clean_name(options[b"filename"].decode("utf-8", "replace"))
        self.upload = Upload(self.work_dir / filename, filename, self.fields)
        self._file = open(self.upload.path, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file.write(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise RequestError(f"form field {self._field!r} is longer than {MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._field is not None:
            self.fields[self._field] = self._value.decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def receive_upload(request, work_dir: Path, limit_mb: float) -> Upload:
    """Parse a ``multipart/form-data`` request holding one file (field ``file``) into ``work_dir``.

    Raises RequestError: 413 past ``limit_mb`` (checked on Content-Length first,
    then while streaming), 400 for a body that is not such a form or has no file.
    """
    max_bytes = int(limit_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"upload of {int(declared) / 2**20:.3g} MB is over this server's limit of "
                           f"{limit_mb:g} MB; send a smaller file or restart it with a larger --max-upload-mb", 413)
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise RequestError("send the file as multipart/form-data in the field 'file' "
                           "(curl -F file=@scan.png ...)")
    receiver = _Receiver(work_dir)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise RequestError(f"upload is over this server's limit of {limit_mb:g} MB; send a smaller "
                                   "file or restart it with a larger --max-upload-mb", 413)
            parser.write(chunk)
        parser.finalize()
    except RequestError:
        raise
    except Exception as e:  # a malformed body: python-multipart's own errors
        raise RequestError(f"the upload is not a valid multipart form ({e}); send it again") from None
    finally:
        receiver.close()
    if receiver.upload is None:
        raise RequestError("no file in the upload; send it in the form field 'file'")
    if receiver.upload.path.stat().st_size == 0:
        raise RequestError(f"{receiver.upload.name}: the file is empty; choose the file again")
    return receiver.upload
