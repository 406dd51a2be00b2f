"""Drawing masks over frames: margins, a minimum size, and the fail-safe blank.

Boxes are x1, y1, x2, y2 in frame pixels.  Frames are H x W grey or H x W x 3 BGR and
keep their colour: every channel of a masked pixel is hidden, no other pixel changes.
Rendering always works on a copy: the input frame is never changed in place.
"""

from __future__ import annotations

import cv2
import numpy as np

STYLES = ("fill", "blur", "pixelate")
FILL_VALUE = 0
PIXEL_BLOCK_PX = 16


def grow_boxes(boxes_xyxy: np.ndarray, frame_hw: tuple[int, int], margin: float = 0.0,
               min_size_px: float = 0.0) -> np.ndarray:
    """Boxes grown by ``margin`` on every side (pixels if >= 1, else a fraction of the box's
    longer side), then to at least ``min_size_px`` a side around their centre, clipped to the
    frame and rounded outwards to whole pixels (a mask never shrinks by rounding)."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4).copy()
    if not len(b):
        return b.astype(np.float32)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    m = np.full(len(b), float(margin)) if margin >= 1 else margin * np.maximum(w, h)
    b += np.column_stack([-m, -m, m, m])
    for lo, hi in ((0, 2), (1, 3)):
        side = b[:, hi] - b[:, lo]
        grow = np.maximum(0.0, min_size_px - side) / 2
        b[:, lo] -= grow
        b[:, hi] += grow
    b = np.column_stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])])
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, frame_hw[1])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, frame_hw[0])
    return b.astype(np.float32)


def render_masks(frame: np.ndarray, boxes_xyxy: np.ndarray, style: str = "fill") -> np.ndarray:
    """A copy of ``frame`` with every box hidden (``fill``: black; ``blur``: a box blur as wide as
    the region; ``pixelate``: 16 px blocks).  Boxes must already be whole pixels (grow_boxes)."""
    if style not in STYLES:
        raise ValueError(f"unknown mask style {style!r}; use one of {', '.join(STYLES)}")
    out = frame.copy()
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, np.int64).reshape(-1, 4):
        if x2 <= x1 or y2 <= y1:
            continue
        roi = out[y1:y2, x1:x2]
        if style == "fill":
            roi[...] = FILL_VALUE
        elif style == "blur":
            k = max(3, max(roi.shape[:2]) | 1)
            roi[...] = cv2.blur(cv2.blur(roi, (k, k)), (k, k))  # two passes: nothing of the detail survives
        else:
            small = cv2.resize(roi, (max(1, roi.shape[1] // PIXEL_BLOCK_PX), max(1, roi.shape[0] // PIXEL_BLOCK_PX)),
                               interpolation=cv2.INTER_AREA)
            roi[...] = cv2.resize(small, (roi.shape[1], roi.shape[0]), interpolation=cv2.INTER_NEAREST)
    return out


def blank_frame(frame: np.ndarray, sector_mask: np.ndarray | None = None) -> np.ndarray:
    """The fail-safe output for a frame the detector did not process: the imaging sector (or, without
    one, the whole frame) filled, so a fault never shows an unmasked frame."""
    out = frame.copy()
    if sector_mask is None:
        out[...] = FILL_VALUE
    else:
        out[sector_mask > 0] = FILL_VALUE
    return out
