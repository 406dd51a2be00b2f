"""Where a detector looks in a frame (``--roi`` of ``fetalkit mask`` and ``fetalkit detect``).

A scanner shows its image in the middle of a wide screen; letterboxing the whole screen
into a 256 px network shrinks the target to about half the size the detector was
trained on.  ``auto`` detects in the imaged area only
(:func:`fetalkit.preprocess.sector.imaged_box`), ``full`` in the whole frame, a fixed
``(x, y, w, h)`` in that rectangle.  Regions are ``(x1, y1, x2, y2)`` in frame pixels
(exclusive ends); None means the whole frame.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from fetalkit.errors import InputError
from fetalkit.types import ImageDetections

Region = tuple[int, int, int, int]
RoiOption = Union[str, tuple[int, int, int, int]]   # "auto" | "full" | (x, y, w, h)


def parse_roi(text: str) -> RoiOption:
    """``--roi`` as given on the command line: auto, full or X,Y,W,H (frame pixels)."""
    if text in ("auto", "full"):
        return text
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--roi {text!r}: use auto, full or X,Y,W,H in frame pixels (e.g. 240,40,640,570)") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InputError(f"--roi {text!r}: X and Y must be >= 0 and W, H > 0")
    return (x, y, w, h)


# ``auto`` crops only when that makes the image at least this much larger in the network
# input (longer side of the frame over the longer side of the imaged area): an image that
# already fills its frame (PSFHS, HC18) is left whole, since trimming its black rows or
# columns only rescales it (PSFHS test symphysis AP 0.671 whole, 0.636 so cropped).
AUTO_MIN_GAIN = 1.1


def imaged_region(gray: np.ndarray, grown: Optional[Region] = None) -> Optional[Region]:
    """The imaged area of a frame (``imaged_box``), united with ``grown`` (the area of
    earlier frames of the same video): the area only ever grows.  None: none seen yet."""
    from fetalkit.preprocess.sector import imaged_box
    h, w = gray.shape
    box = imaged_box(gray)
    old = grown if grown is not None and grown[2] <= w and grown[3] <= h else None
    if box is None or old is None:
        return box or old
    return (min(box[0], old[0]), min(box[1], old[1]), max(box[2], old[2]), max(box[3], old[3]))


def detection_region(gray: np.ndarray, roi: RoiOption, imaged: Optional[Region] = None,
                     min_side_px: int = 0) -> Optional[Region]:
    """The region to detect in for ``roi`` (None: the whole frame).

    ``auto`` takes ``imaged`` (:func:`imaged_region`; computed here when not given),
    grown about its centre to at least ``min_side_px`` (the network's input size) on
    each side, so the network never sees the image magnified: a small imaged area
    (a shallow sector) is shown at the scale the detector knows, not zoomed.  It is
    used only if it enlarges the image by at least ``AUTO_MIN_GAIN``.
    """
    h, w = gray.shape
    if roi == "full":
        return None
    if roi == "auto":
        box = imaged if imaged is not None else imaged_region(gray)
        if box is None:
            return None
        box = _at_least(box, min_side_px, (h, w))
        if max(h, w) < AUTO_MIN_GAIN * max(box[2] - box[0], box[3] - box[1]):
            return None
        return box
    x, y, bw, bh = roi
    return (min(x, w - 1), min(y, h - 1), min(x + bw, w), min(y + bh, h))


def _at_least(box: Region, side_px: int, shape_hw: tuple[int, int]) -> Region:
    """``box`` grown about its centre to ``side_px`` wide and high where it is smaller,
    kept inside the frame."""
    def grow(lo: int, hi: int, size: int) -> tuple[int, int]:
        length = min(side_px, size)
        if hi - lo >= length:
            return lo, hi
        lo = max(0, lo - (length - (hi - lo)) // 2)
        return (lo, lo + length) if lo + length <= size else (size - length, size)

    x1, x2 = grow(box[0], box[2], shape_hw[1])
    y1, y2 = grow(box[1], box[3], shape_hw[0])
    return (x1, y1, x2, y2)


def crop(gray: np.ndarray, region: Optional[Region]) -> np.ndarray:
    return gray if region is None else gray[region[1]:region[3], region[0]:region[2]]


def to_frame(dets: ImageDetections, region: Optional[Region]) -> ImageDetections:
    """Detections made in ``crop(gray, region)`` in frame pixels."""
    if region is None:
        return dets
    return ImageDetections(dets.boxes_xyxy + np.array(region[:2] * 2, np.float32), dets.scores, dets.labels)


def region_xywh(region: Optional[Region], shape_hw: tuple[int, int]) -> Optional[list[int]]:
    """``[x, y, w, h]`` of a region for a log; None when it is the whole frame."""
    if region is None or region == (0, 0, shape_hw[1], shape_hw[0]):
        return None
    x1, y1, x2, y2 = region
    return [x1, y1, x2 - x1, y2 - y1]
