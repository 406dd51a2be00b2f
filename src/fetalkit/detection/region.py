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


def detection_region(gray: np.ndarray, roi: RoiOption, grown: Optional[Region] = None) -> Optional[Region]:
    """The region to detect in for ``roi`` (None: the whole frame, also when ``auto``
    finds no image).  With ``auto`` and ``grown`` (the region of earlier frames of the
    same video), the union of both: the region only ever grows."""
    h, w = gray.shape
    if roi == "full":
        return None
    if roi == "auto":
        from fetalkit.preprocess.sector import imaged_box
        box = imaged_box(gray)
        old = grown if grown is not None and grown[2] <= w and grown[3] <= h else None
        if box is None:
            box = old
        elif old is not None:
            box = (min(box[0], old[0]), min(box[1], old[1]), max(box[2], old[2]), max(box[3], old[3]))
    else:
        x, y, bw, bh = roi
        box = (min(x, w - 1), min(y, h - 1), min(x + bw, w), min(y + bh, h))
    return box


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
