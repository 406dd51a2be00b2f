"""Small typed records passed across module boundaries.

Geometry is in image pixels (x to the right, y down, origin at the top-left
pixel centre) unless a field name says otherwise (``*_mm``, ``*_deg``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in image pixels.

    ``semi_axis_a_px`` >= ``semi_axis_b_px`` always: ``a`` is the semi-major axis,
    ``angle_deg`` the direction of the major axis measured from the +x axis
    towards +y (clockwise on screen), in [0, 180).
    """

    center_x_px: float
    center_y_px: float
    semi_axis_a_px: float
    semi_axis_b_px: float
    angle_deg: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadMeasurement:
    """Fetal head biometry from a fitted ellipse.

    Lengths are in mm when ``pixel_mm`` is known, otherwise in pixels and
    ``units`` says ``"px"``.
    """

    ellipse: Ellipse
    hc: float
    bpd: float
    ofd: float
    units: str  # "mm" or "px"
    pixel_mm: Optional[float]


@dataclass
class HeadSample:
    """One HC18 image with its ground truth.

    ``image`` is H x W uint8 grayscale, ``mask`` H x W uint8 in {0, 1} (the head,
    filled), ``ellipse`` the ellipse fitted to the annotation outline.
    """

    image_id: str
    subject_id: str
    image: np.ndarray
    mask: np.ndarray
    ellipse: Ellipse
    pixel_mm: float
    hc_mm: Optional[float]


@dataclass
class ImageDetections:
    """A detector's output for one image: boxes (x1, y1, x2, y2 in image pixels), scores, class indices."""

    boxes_xyxy: np.ndarray   # N x 4 float32
    scores: np.ndarray       # N float32
    labels: np.ndarray       # N int64, index into the model's (or set's) categories

    def above(self, conf: float) -> "ImageDetections":
        keep = self.scores >= conf
        return ImageDetections(self.boxes_xyxy[keep], self.scores[keep], self.labels[keep])

    @staticmethod
    def empty() -> "ImageDetections":
        return ImageDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
