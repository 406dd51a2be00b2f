"""The one image reader and writer of fetalkit."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fetalkit.errors import InputError
from fetalkit.io.inputs import (DICOM_SUFFIXES, IMAGE_SUFFIXES, decode_image, list_inputs, printable,
                                read_bytes)

MIN_SIDE_PX = 32  # smaller frames hold nothing a model can see (a 1 x 1 image is a thumbnail or an error)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image file or a single-frame DICOM as H x W uint8 grayscale.

    Colour images are converted with ITU-R BT.601 luma; 16-bit images are scaled
    to 8 bit.  Raises InputError (naming the file) when the file is missing,
    too large (see :mod:`fetalkit.io.inputs`) or not a readable image.
    """
    return read_still(path)[0]


def read_colour(path: str | os.PathLike) -> np.ndarray:
    """Read an image file or a single-frame DICOM as stored: H x W grey or H x W x 3 BGR uint8.

    For outputs that keep the source's colour (``fetalkit clean``); models take
    :func:`read_gray`'s frame (or ``fetalkit.io.video.to_gray`` of this one: the same
    BT.601 luma).  Errors as :func:`read_gray`.
    """
    return read_still(path, colour=True)[0]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """DICOM by suffix, or by the 'DICM' marker after the 128-byte preamble (archives name files IM0001)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return False
    try:
        if not p.is_file():  # never open a FIFO: it would block
            return False
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def check_min_size(path: str | os.PathLike, image: np.ndarray) -> None:
    """Refuse frames too small to hold anything a model was trained on (InputError naming the file)."""
    if image.size == 0 or min(image.shape[:2]) < MIN_SIDE_PX:
        raise InputError(f"{printable(path)}: image is {image.shape[1] if image.ndim > 1 else 0} x {image.shape[0]} "
                         f"pixels, smaller than {MIN_SIDE_PX} x {MIN_SIDE_PX}; give the full-size scan")


def check_image_content(path: str | os.PathLike, image: np.ndarray) -> None:
    """Refuse frames nothing can be measured on (tiny, constant, or without contrast): InputError naming the file."""
    check_min_size(path, image)
    if int(image.max()) == int(image.min()):
        raise InputError(f"{printable(path)}: image is constant (value {int(image.min())}); nothing to measure")
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi - lo < 16:
        # Near-black or near-flat frames make segmenters hallucinate; refuse them instead.
        raise InputError(f"{printable(path)}: image has almost no contrast (grey levels {lo:.0f}..{hi:.0f}); "
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
    """Expand files and folders into the list of files to read (see :func:`fetalkit.io.inputs.list_inputs`).

    Folders contribute their images and DICOM files (not recursive); what cannot be
    read (a FIFO, a folder named like an image, a dangling link) is passed over here:
    jobs that must report it call ``list_inputs`` directly.
    """
    return list_inputs(inputs)[0]


def read_still(path: str | os.PathLike, colour: bool = False) -> tuple[np.ndarray, float | None]:
    """One H x W uint8 grey image from an image file or a single-frame DICOM, with its pixel size
    (``colour``: a colour file's H x W x 3 BGR image instead).

    The pixel size in mm comes from the DICOM (its ultrasound regions or Pixel
    Spacing); image files carry none, so it is None for them.  A cine DICOM or
    a DICOM with non-square pixels raises InputError naming the file.
    """
    p = Path(path)
    if not is_dicom_file(p):
        return decode_image(read_bytes(p), p, keep_colour=colour), None
    from fetalkit.io.dicom import read_dicom
    d = read_dicom(p, colour=colour)
    if len(d.frames) != 1:
        raise InputError(f"{printable(p)}: a {len(d.frames)}-frame cine DICOM; measurements take a single image "
                         "(export the frame to measure, or mask the clip)")
    if d.pixel_mm is None:
        return d.frames[0], None
    x_mm, y_mm = d.pixel_mm
    if abs(x_mm - y_mm) > 0.01 * max(x_mm, y_mm):
        raise InputError(f"{printable(p)}: pixels are {x_mm:g} x {y_mm:g} mm (not square); resample the image to "
                         "square pixels and give --pixel-mm")
    return d.frames[0], (x_mm + y_mm) / 2
