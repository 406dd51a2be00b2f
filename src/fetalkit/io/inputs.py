"""The input rules every command, batch job and the web page share.

An archive is hostile by accident: names that are not UTF-8, files that cannot be
read, 1 MB PNGs that declare 30000 x 30000 pixels, folders named ``scan.png``,
outputs pointed at the inputs.  The rules, in one place:

* **Names are bytes.**  A path is handled as the operating system gave it (``str``
  with surrogate escapes for bytes that are not UTF-8) and only turned into text at
  the edge: :func:`printable` writes each such byte as ``\\xNN`` in csv, json and
  messages, so every row names its file and nothing crashes on encoding.
* **Declared size before decoding.**  :func:`check_pixels` refuses an image, DICOM
  or video frame whose header declares more than :func:`max_pixels` pixels (default
  10 million per frame, ``FETALKIT_MAX_PIXELS`` to change), or a DICOM whose frames
  together exceed :func:`max_decoded_bytes` (default 512 MB,
  ``FETALKIT_MAX_DECODED_MB``), before any pixel is decoded.
* **Every OS error is one line for that file** (:func:`os_error`), never a traceback.
* **Nothing is skipped in silence.**  :func:`list_inputs` returns what it passed over
  (FIFOs, folders with an image's name, dangling links, unreadable folders) as errors.
* **Outputs never overwrite inputs** (:func:`refuse_overwrite`).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fetalkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
STILL_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES

DEFAULT_MAX_PIXELS = 10_000_000      # per frame: a 4K screen capture (3840 x 2160) is 8.3 Mpx
DEFAULT_MAX_DECODED_MB = 512         # all frames of one DICOM, as decoded


def max_pixels() -> int:
    """Largest frame fetalkit decodes, in pixels (``FETALKIT_MAX_PIXELS``, default 10 million)."""
    return _env_int("FETALKIT_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_decoded_bytes() -> int:
    """Largest decoded pixel data of one multi-frame file, in bytes (``FETALKIT_MAX_DECODED_MB``, default 512)."""
    return _env_int("FETALKIT_MAX_DECODED_MB", DEFAULT_MAX_DECODED_MB) * 1024 * 1024


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise InputError(f"${name}={text!r}: not a number; unset it or give a positive integer") from None
    if value <= 0:
        raise InputError(f"${name}={text!r}: must be positive")
    return value


# --------------------------------------------------------------------------- names


def printable(value: object) -> str:
    """Text for a csv cell, a json string or a message: bytes of a name that are not UTF-8 as ``\\xNN``.

    ``os.fsencode`` gives back the bytes the file system holds; they are decoded as
    UTF-8 with ``backslashreplace``, so a valid name is unchanged and an old archive's
    Latin-1 ``\\xe9`` stays visible (``printf 'caf\\xe9.png'`` finds the file again).

    >>> printable("caf\\udce9.png")
    'caf\\\\xe9.png'
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def os_error(path: str | os.PathLike, err: OSError) -> InputError:
    """The one-line error for an OS error on ``path`` (permission, vanished file, I/O error)."""
    reason = err.strerror or err.__class__.__name__
    hint = {13: "give fetalkit read permission (or leave the file out)",
            2: "the file vanished while fetalkit ran; run again",
            5: "the disk could not be read; copy the file again",
            21: "give a file, not a folder"}.get(err.errno or 0, "check the file")
    return InputError(f"{printable(path)}: {reason.lower()}; {hint}")


# --------------------------------------------------------------------------- listing


def _entry_problem(p: Path) -> str | None:
    """Why ``p`` cannot be read as an input file (None when it is a regular file)."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "a dangling link (its target does not exist)" if p.is_symlink() else "file not found"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe (FIFO), not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device or socket)"
    return None


def list_inputs(inputs: Iterable[str | os.PathLike],
                suffixes: set[str] = STILL_SUFFIXES) -> tuple[list[Path], list[tuple[Path, InputError]]]:
    """Files and folders -> (the files to read, in order; what was passed over, with why).

    A folder contributes its entries whose suffix is in ``suffixes`` (not recursive);
    an entry with such a suffix that is not a regular file (FIFO, sub-folder, dangling
    link) is reported, not dropped.  A file given by name is kept whatever its suffix,
    so that an unreadable one gets its own error row.
    """
    files: list[Path] = []
    skipped: list[tuple[Path, InputError]] = []
    for item in inputs:
        p = Path(item)
        try:
            is_dir = p.is_dir()
        except OSError as e:
            skipped.append((p, os_error(p, e)))
            continue
        if not is_dir:
            files.append(p)
            continue
        try:
            entries = sorted(p.iterdir(), key=lambda q: os.fsencode(q.name))
        except OSError as e:
            skipped.append((p, os_error(p, e)))
            continue
        for q in entries:
            if q.suffix.lower() not in suffixes or q.name.startswith(".tmp_"):
                continue
            problem = _entry_problem(q)
            if problem is None:
                files.append(q)
            else:
                skipped.append((q, InputError(f"{printable(q)}: {problem}; skipped")))
    return files, skipped


# --------------------------------------------------------------------------- sizes


def check_pixels(name: object, height: int, width: int, frames: int = 1, bytes_per_pixel: int = 1) -> None:
    """Refuse a declared size above the limits, before anything is decoded (InputError naming the file)."""
    if height <= 0 or width <= 0 or frames < 0:
        raise InputError(f"{printable(name)}: declares {width} x {height} pixels; the header is damaged")
    limit = max_pixels()
    if height * width > limit:
        raise InputError(f"{printable(name)}: declares {width} x {height} pixels ({height * width / 1e6:.0f} Mpx), "
                         f"above the limit of {limit / 1e6:g} Mpx; resize it, or raise FETALKIT_MAX_PIXELS "
                         "if it is a real scan")
    total = height * width * max(frames, 1) * bytes_per_pixel
    if total > max_decoded_bytes():
        raise InputError(f"{printable(name)}: {frames} frames of {width} x {height} would decode to "
                         f"{total / 2**20:.0f} MB, above the limit of {max_decoded_bytes() / 2**20:g} MB; "
                         "split the clip, or raise FETALKIT_MAX_DECODED_MB")


def declared_image_size(data: bytes, name: object = "image") -> tuple[int, int] | None:
    """(height, width) an image file declares in its header, without decoding it; None if unknown.

    A header declaring more than Pillow's own bomb limit (179 Mpx) raises InputError.
    """
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        raise InputError(f"{printable(name)}: declares a frame far above the limit of {max_pixels() / 1e6:g} Mpx "
                         f"({e}); resize it, or raise FETALKIT_MAX_PIXELS if it is a real scan") from None
    except Exception:  # noqa: BLE001 - PIL raises many types on damaged headers
        return None
    return int(h), int(w)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[io.StringIO]:
    """Capture what C libraries print on file descriptor 2 (libpng, libjpeg, FFmpeg) while decoding.

    Their lines would appear beside fetalkit's one error line; what they said is
    kept in the yielded buffer, filled when the block ends, for the error message.
    File descriptor 2 belongs to the process, so one thread at a time holds it
    (decodes are milliseconds; the web page's job threads wait that long).
    """
    said = io.StringIO()
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield said
            return
        with _captured_fd2(saved, said):
            yield said


_STDERR_LOCK = threading.RLock()


@contextlib.contextmanager
def _captured_fd2(saved: int, said: io.StringIO) -> Iterator[None]:
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.write(sink.read(4000).decode("utf-8", "replace"))


def decode_image(data: bytes, name: object, keep_colour: bool = True) -> np.ndarray:
    """Decode image bytes (PNG, JPEG, BMP, TIFF) after checking the declared size.

    Returns H x W or H x W x 3 (BGR) uint8 with ``keep_colour``, else H x W grey
    (ITU-R BT.601 luma).  16-bit images are scaled to 8 bit; alpha is dropped.
    Raises InputError naming ``name`` for anything that is not a readable image.
    """
    import cv2
    size = declared_image_size(data, name)
    if size is None:
        raise InputError(f"{printable(name)}: not a readable image (expected PNG/JPEG/BMP/TIFF, or a DICOM file)")
    check_pixels(name, *size)
    with quiet_stderr() as said:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        detail = said.getvalue().strip().splitlines()
        reason = f" ({detail[0].strip()})" if detail else ""
        raise InputError(f"{printable(name)}: not a readable image{reason}; the file is damaged or cut short")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{printable(name)}: unsupported pixel type {image.dtype}; convert it to 8-bit")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and not keep_colour:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(image)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an input file, with every OS error as the one-line InputError naming it."""
    p = Path(path)
    problem = _entry_problem(p)
    if problem is not None:
        raise InputError(f"{printable(p)}: {problem}")
    limit = max_decoded_bytes()
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise os_error(p, e) from None
    if len(data) > limit:
        raise InputError(f"{printable(p)}: larger than {limit / 2**20:g} MB; raise FETALKIT_MAX_DECODED_MB "
                         "if it is a real image")
    return data


# --------------------------------------------------------------------------- outputs


def _real(path: str | os.PathLike) -> str:
    """The path with links and '..' resolved (what a write would replace)."""
    return os.path.realpath(os.fspath(path))


class InputFiles:
    """The files of a run, by resolved path and by inode, to tell whether an output would replace one."""

    def __init__(self, inputs: Iterable[str | os.PathLike]):
        self.real: set[str] = set()
        self.inodes: set[tuple[int, int]] = set()
        for p in inputs:
            self.real.add(_real(p))
            with contextlib.suppress(OSError):
                st = os.stat(p)
                if stat.S_ISREG(st.st_mode):
                    self.inodes.add((st.st_dev, st.st_ino))

    def overwritten_by(self, output: str | os.PathLike) -> bool:
        """Whether writing ``output`` would replace an input (the same path, through a link, or a hard link)."""
        if _real(output) in self.real:
            return True
        try:
            st = os.stat(output)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.inodes


def refuse_overwrite(inputs: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike]) -> None:
    """InputError when an output would replace an input file (links resolved, hard links caught)."""
    files = inputs if isinstance(inputs, InputFiles) else InputFiles(inputs)
    for out in outputs:
        if files.overwritten_by(out):
            raise InputError(f"{printable(out)}: this output would overwrite an input; choose another output path")


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (links resolved)."""
    p, f = _real(path), _real(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)
