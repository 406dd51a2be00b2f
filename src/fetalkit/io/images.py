"""The one image reader and writer of fetalkit."""

from __future__ import annotations

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


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an image atomically (temp file + rename) so no half-written file is left."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(p.suffix or ".png", image)
    if not ok:
        raise InputError(f"{p}: cannot encode an image with this suffix")
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp_", suffix=p.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


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
