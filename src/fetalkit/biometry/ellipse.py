"""Ellipse maths for fetal head biometry.

Conventions (shared with HC18): the head is modelled as an ellipse fitted to the
outer contour of the segmented skull.

* HC  = ellipse perimeter, Ramanujan's second approximation
  ``pi (a + b) (1 + 3h / (10 + sqrt(4 - 3h)))`` with ``h = (a - b)^2 / (a + b)^2``
  (relative error below 1e-9 for head-like eccentricities).
* BPD = minor axis length ``2 b``;  OFD = major axis length ``2 a``.
  These are the outer-to-outer diameters of the fitted ellipse, the definition
  used by HC18-style ellipse biometry (clinical BPD is often measured outer-to-inner;
  that differs by about one skull-bone thickness).
"""

from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np

from fetalkit.biometry.regions import largest_outer_contour
from fetalkit.errors import MeasurementError
from fetalkit.types import Ellipse, HeadMeasurement


def ellipse_perimeter(semi_axis_a: float, semi_axis_b: float) -> float:
    """Perimeter of an ellipse (Ramanujan II), in the units of the semi-axes.

    >>> round(ellipse_perimeter(1.0, 1.0), 9) == round(2 * math.pi, 9)
    True
    """
    a, b = float(semi_axis_a), float(semi_axis_b)
    if a < 0 or b < 0:
        raise ValueError("semi-axes must be non-negative")
    if a + b == 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def make_ellipse(center_x_px: float, center_y_px: float, axis_1_px: float, axis_2_px: float,
                 angle_deg: float) -> Ellipse:
    """Build a canonical :class:`Ellipse` from two semi-axes in any order.

    ``angle_deg`` is the direction of ``axis_1_px``; the result has ``a >= b`` and
    the angle of the major axis folded into [0, 180).
    """
    a, b, angle = float(axis_1_px), float(axis_2_px), float(angle_deg)
    if b > a:
        a, b, angle = b, a, angle + 90.0
    angle = angle % 180.0
    if angle >= 180.0:  # a tiny negative angle folds to exactly 180.0 in floating point
        angle = 0.0
    return Ellipse(float(center_x_px), float(center_y_px), a, b, angle)


def fit_ellipse_to_points(points_xy: np.ndarray) -> Ellipse:
    """Least-squares ellipse through points (N x 2, x then y), via OpenCV's fitEllipse.

    Raises MeasurementError when fewer than 5 points are given.
    """
    pts = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
    if len(pts) < 5:
        raise MeasurementError("an ellipse needs at least 5 contour points; the region is too small")
    (cx, cy), (w, h), angle = cv2.fitEllipse(pts)
    # OpenCV returns full axis lengths; ``w`` lies along ``angle``.
    return make_ellipse(cx, cy, w / 2.0, h / 2.0, angle)


def fit_ellipse_to_mask(mask: np.ndarray, min_area_px: int = 100) -> Ellipse:
    """Fit an ellipse to the outer contour of the largest region of a binary mask.

    Raises MeasurementError when there is no region enclosing at least ``min_area_px`` pixels.
    """
    contour = largest_outer_contour(mask)
    area = 0.0 if contour is None else cv2.contourArea(contour.reshape(-1, 1, 2))
    if contour is None or area < min_area_px:
        raise MeasurementError(f"no head found (largest region {area:.0f} px < {min_area_px} px)")
    return fit_ellipse_to_points(contour)


def ellipse_mask(ellipse: Ellipse, shape_hw: tuple[int, int]) -> np.ndarray:
    """Rasterise a filled ellipse into an H x W uint8 mask in {0, 1} (sub-pixel accurate)."""
    shift = 8  # fixed-point bits: draw with 1/256 px precision
    scale = 1 << shift
    out = np.zeros(shape_hw, dtype=np.uint8)
    cv2.ellipse(out,
                (int(round(ellipse.center_x_px * scale)), int(round(ellipse.center_y_px * scale))),
                (int(round(ellipse.semi_axis_a_px * scale)), int(round(ellipse.semi_axis_b_px * scale))),
                ellipse.angle_deg, 0, 360, color=1, thickness=-1, lineType=cv2.LINE_8, shift=shift)
    return out


def ellipse_points(ellipse: Ellipse, n: int = 360) -> np.ndarray:
    """``n`` points (N x 2, x then y) evenly spaced in parameter along the ellipse."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    th = np.deg2rad(ellipse.angle_deg)
    x = ellipse.semi_axis_a_px * np.cos(t)
    y = ellipse.semi_axis_b_px * np.sin(t)
    return np.stack([ellipse.center_x_px + x * np.cos(th) - y * np.sin(th),
                     ellipse.center_y_px + x * np.sin(th) + y * np.cos(th)], axis=1)


def measure_head(ellipse: Ellipse, pixel_mm: Optional[float] = None) -> HeadMeasurement:
    """HC, BPD and OFD of a fitted head ellipse.

    Parameters
    ----------
    ellipse : Ellipse in image pixels.
    pixel_mm : size of one (square) pixel in mm; ``None`` reports pixel units.

    Returns
    -------
    HeadMeasurement with ``units`` "mm" or "px".

    >>> m = measure_head(make_ellipse(0, 0, 100, 50, 0), pixel_mm=0.1)
    >>> round(m.bpd, 3), round(m.ofd, 3)
    (10.0, 20.0)
    """
    scale, units = 1.0, "px"
    if pixel_mm is not None:
        if not (pixel_mm > 0 and math.isfinite(pixel_mm)):
            raise MeasurementError(f"pixel size must be a positive number of mm, got {pixel_mm!r}")
        scale, units = float(pixel_mm), "mm"
    a, b = ellipse.semi_axis_a_px, ellipse.semi_axis_b_px
    return HeadMeasurement(ellipse=ellipse, hc=ellipse_perimeter(a, b) * scale,
                           bpd=2 * b * scale, ofd=2 * a * scale, units=units,
                           pixel_mm=float(pixel_mm) if pixel_mm is not None else None)
