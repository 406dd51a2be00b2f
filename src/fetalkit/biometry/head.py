"""Fetal head measurement from a segmentation probability map."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from fetalkit.biometry.ellipse import fit_ellipse_to_mask, measure_head
from fetalkit.biometry.regions import filled_contour_mask, largest_outer_contour
from fetalkit.types import HeadMeasurement


def head_mask_from_probability(probability: np.ndarray, shape_hw: tuple[int, int],
                               threshold: float = 0.5) -> np.ndarray:
    """Head mask at the input image size from a model-size probability map.

    The probability map is upsampled bilinearly before thresholding, which keeps a
    sub-pixel boundary; then the largest region is kept, holes filled (one
    contour pass does both).
    """
    h, w = shape_hw
    prob = cv2.resize(probability.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return filled_contour_mask(largest_outer_contour(prob >= threshold), (h, w))


def measure_head_mask(mask: np.ndarray, pixel_mm: Optional[float]) -> HeadMeasurement:
    """HC / BPD / OFD of the ellipse fitted to a head mask (MeasurementError when there is no head)."""
    return measure_head(fit_ellipse_to_mask(mask, min_area_px=max(100, mask.size // 2000)), pixel_mm)


class HeadBiometry:
    """Segment the fetal head with an ONNX model and measure it.

    >>> hb = HeadBiometry()                        # bundled model            # doctest: +SKIP
    >>> m, mask = hb.measure(image, pixel_mm=0.12)                             # doctest: +SKIP
    """

    def __init__(self, model=None, threads: int = 2, threshold: float = 0.5):
        from fetalkit.runtime.registry import load_model
        self.model = model if hasattr(model, "predict") else load_model(model, "head-seg", threads=threads)
        self.threshold = threshold

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Head mask (uint8 0/1) at the image's size."""
        prob = self.model.predict([image])[0, 0]
        return head_mask_from_probability(prob, image.shape[:2], self.threshold)

    def measure(self, image: np.ndarray, pixel_mm: Optional[float] = None) -> tuple[HeadMeasurement, np.ndarray]:
        mask = self.segment(image)
        return measure_head_mask(mask, pixel_mm), mask
