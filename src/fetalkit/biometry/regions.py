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


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask (uint8 0/1) by drawing its outer contours filled."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out
