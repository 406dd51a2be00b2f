"""Binary-mask region helpers shared by the biometry modules."""

from __future__ import annotations

import cv2
import numpy as np


def largest_region(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground region of a binary mask (uint8 0/1)."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return binary
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == biggest).astype(np.uint8)


def largest_outer_contour(mask: np.ndarray) -> np.ndarray | None:
    """Outer contour (N x 2 int points, x then y) of the largest region by enclosed area, or None.

    One ``findContours`` pass: much cheaper than labelling components on large frames.
    """
    contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea).reshape(-1, 2)


def filled_contour_mask(contour: np.ndarray | None, shape_hw: tuple[int, int]) -> np.ndarray:
    """uint8 {0, 1} mask of a filled contour (all zeros for None)."""
    out = np.zeros(shape_hw, np.uint8)
    if contour is not None:
        cv2.drawContours(out, [contour.reshape(-1, 1, 2)], -1, 1, thickness=-1)
    return out
