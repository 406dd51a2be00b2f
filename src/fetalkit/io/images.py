"""The one image reader and writer of fetalkit."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fetalkit.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H x W uint8 grayscale.

    Colour images are converted with ITU-R BT.601 luma; 16-bit images are scaled
    to 8 bit.  Raises InputError (naming the file) when the file is missing or
    is not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    data = np.fromfile(str(p), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"{p}: not a readable image (expected PNG/JPEG/BMP/TIFF)")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"{p}: unsupported pixel type {image.dtype}; convert it to 8-bit")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    return np.ascontiguousarray(image)


def check_image_content(path: str | os.PathLike, image: np.ndarray) -> None:
    """Refuse frames nothing can be measured on (tiny, constant, or without contrast): InputError naming the file."""
    if image.size == 0 or min(image.shape[:2]) < 32:
        raise InputError(f"{path}: image is empty or smaller than 32 x 32 pixels")
    if int(image.max()) == int(image.min()):
        raise InputError(f"{path}: image is constant (value {int(image.min())}); nothing to measure")
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi - lo < 16:
        # Near-black or near-flat frames make segmenters hallucinate; refuse them instead.
        raise InputError(f"{path}: image has almost no contrast (grey levels {lo:.0f}..{hi:.0f}); "
                         "check the export/window settings")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike):
    """Open a temp file beside ``path`` for writing; on success rename it over ``path``.

    Readers never see a half-written file, and a failure leaves any old file intact.
    Streams to disk, so large outputs (DICOM cine) are not held twice in memory.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp_", suffix=p.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, *chunks: bytes) -> Path:
    """Write bytes to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        for chunk in chunks:
            f.write(chunk)
    return Path(path)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an image atomically (format from the suffix, PNG by default)."""
    p = Path(path)
    ok, buf = cv2.imencode(p.suffix or ".png", image)
    if not ok:
        raise InputError(f"{p}: cannot encode an image with this suffix")
    return atomic_write_bytes(p, buf.tobytes())


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into a sorted list of paths.

    Directories contribute their image files (by suffix, not recursive); files are
    kept as given even when their suffix is unknown, so that the caller reports
    them as unreadable instead of silently skipping them.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def read_still(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """One H x W uint8 grey image from an image file or a single-frame DICOM, with its pixel size.

    The pixel size in mm comes from the DICOM (its ultrasound regions or Pixel
    Spacing); image files carry none, so it is None for them.  A cine DICOM or
    a DICOM with non-square pixels raises InputError naming the file.
    """
    p = Path(path)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return read_gray(p), None
    from fetalkit.io.dicom import read_dicom
    d = read_dicom(p)
    if len(d.frames) != 1:
        raise InputError(f"{p}: a {len(d.frames)}-frame cine DICOM; measurements take a single image "
                         "(export the frame to measure, or mask the clip)")
    if d.pixel_mm is None:
        return d.frames[0], None
    x_mm, y_mm = d.pixel_mm
    if abs(x_mm - y_mm) > 0.01 * max(x_mm, y_mm):
        raise InputError(f"{p}: pixels are {x_mm:g} x {y_mm:g} mm (not square); resample the image to "
                         "square pixels and give --pixel-mm")
    return d.frames[0], (x_mm + y_mm) / 2
