"""Procedural 2D fetal-head ultrasound phantom with exact ground truth.

The phantom imitates an HC18-style transthalamic head image (a convex-probe
B-mode frame, 800 x 540 by default) and knows its own truth exactly: the head is
an :class:`~fetalkit.types.Ellipse` at the *outer* edge of the skull, the mask is
that ellipse rasterised by :func:`~fetalkit.biometry.ellipse.ellipse_mask`, and
``hc_mm`` is its Ramanujan perimeter times the pixel size.

Model
-----
1. **Geometry.**  A fan (sector) with its apex above the top edge, a top arc,
   straight side edges and a far arc, usually below the image.  A head ellipse
   (semi-axis ratio 0.70-0.90, mostly near-horizontal but any orientation) is
   placed fully inside both the fan and the image.  Pixel size and HC are drawn
   from HC18-like ranges (0.05-0.30 mm, 50-350 mm) such that the head spans a
   realistic 35-70 % of the image width.
2. **Scene.**  Maps in image pixels describe the tissue:
   *diffuse backscatter* in dB (banded maternal wall near the probe, textured
   tissue with fibrous streaks, dark amniotic fluid around the head and in pools,
   scalp, hypoechoic brain with thalami, cavum septi pellucidi and choroid
   plexus), *specular reflector amplitude* (the skull ring, the broken falx,
   paired brain interfaces, maternal layer interfaces; skull and brain lines are
   scaled by a power of the cosine of the beam incidence angle, so the skull is
   brightest where the beam meets it perpendicularly, at the top and bottom, and
   weak at the lateral walls), *attenuation* in dB per pixel (tissue; almost none
   in fluid and little in brain) and *bone occupancy* (the acoustic shadow).
3. **Beam formation.**  The maps are resampled onto the beam (polar) grid of the
   probe.  Complex Gaussian scatterers weighted by the diffuse amplitude, plus
   the specular amplitude, are convolved with an anisotropic Gaussian PSF (wider
   laterally than axially); the envelope is fully developed speckle (Rayleigh)
   with laterally elongated grains that widen with depth, compounded over three
   looks.  Strong reflectors get a short incoherent ring-down tail below them.
   Round-trip loss accumulates along each beam (a saturating loss per skull
   crossing darkens the region below the head) and a time-gain-compensation
   curve with small random errors compensates most of the soft-tissue loss.
4. **Display.**  Log compression (55-65 dB dynamic range), mild speckle
   smoothing, scan conversion back to the image grid, a slight blur and black
   outside the fan.  Grey levels are calibrated against HC18: in-fan median
   30-45, local speckle contrast ~0.12, skull ~200-255 at the top and bottom
   and ~85-170 at the lateral walls.

Limits
------
* A caricature of the physics, not a simulator: no wave propagation,
  refraction, side lobes, multi-path reverberation or harmonic imaging; the PSF
  is Gaussian and fixed in beam coordinates.
* The brain anatomy is a handful of schematic shapes (straight-ish lines and
  soft ellipses); real heads show much more, and more variable, structure.
  Fetal body parts, placenta and limbs are only hinted at by texture and fluid
  pools, and there are no calipers, text or colour-bar overlays.
* The outer skull edge is a perfect ellipse (that is the ground truth); only the
  thickness and brightness of the bone vary along it.
* Good for tests, demos and sanity checks of a segmentation pipeline; not a
  substitute for real data when measuring accuracy.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.biometry.ellipse import ellipse_mask, ellipse_perimeter, ellipse_points, make_ellipse
from fetalkit.types import Ellipse

PIXEL_MM_RANGE = (0.05, 0.30)  # for HC18's 800 px width; scaled by 800 / W for other widths
HC18_WIDTH_PX = 800
HC_MM_RANGE = (50.0, 350.0)
AXIS_RATIO_RANGE = (0.70, 0.90)
HEAD_WIDTH_FRACTION_RANGE = (0.35, 0.70)  # major axis (2a) / image width
CSV_HEADER = ("filename", "pixel size(mm)", "head circumference (mm)")
ELLIPSE_CSV_HEADER = ("filename", "center_x_px", "center_y_px", "semi_axis_a_px",
                      "semi_axis_b_px", "angle_deg", "pixel_mm", "hc_mm")


@dataclass(frozen=True)
class HeadPhantom:
    """One synthetic head image with its exact ground truth.

    ``image`` is H x W uint8 grayscale; ``mask`` H x W uint8 in {0, 1}, the filled
    head ellipse at the outer edge of the skull (what HC18 annotates); ``sector``
    H x W uint8 in {0, 1}, the imaging fan; ``ellipse`` the true head ellipse in
    image pixels; ``hc_mm`` = ``ellipse_perimeter(a, b) * pixel_mm``.
    """

    image: np.ndarray
    mask: np.ndarray
    sector: np.ndarray
    ellipse: Ellipse
    pixel_mm: float
    hc_mm: float
    seed: int


@dataclass(frozen=True)
class _Fan:
    """Convex-probe fan: beams leave the apex at angles in [-half, +half] from +y."""

    apex_x_px: float
    apex_y_px: float
    radius_min_px: float
    radius_max_px: float
    half_angle_deg: float


# --------------------------------------------------------------------------- geometry


@dataclass
class _Beams:
    """Per-pixel probe geometry on the image grid."""

    radius_px: np.ndarray  # distance from the fan apex
    angle_rad: np.ndarray  # beam angle from +y towards +x
    dir_x: np.ndarray      # unit beam direction
    dir_y: np.ndarray


def _beam_coordinates(shape_hw: tuple[int, int], apex_xy: tuple[float, float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distance from the apex (px) and beam angle (rad, from +y towards +x) of every pixel."""
    h, w = shape_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - np.float32(apex_xy[0]), ys - np.float32(apex_xy[1])
    return np.hypot(dx, dy), np.arctan2(dx, dy)


def sector_mask(shape_hw: tuple[int, int], apex_xy: tuple[float, float], radius_min_px: float,
                radius_max_px: float, half_angle_deg: float) -> np.ndarray:
    """Rasterise a convex-probe imaging fan.

    Parameters
    ----------
    shape_hw : (H, W) of the image.
    apex_xy : (x, y) of the fan apex in pixels; usually above the image (y < 0).
    radius_min_px, radius_max_px : radii of the near (top) and far arcs.
    half_angle_deg : half opening angle, measured from the +y (downward) axis.

    Returns
    -------
    H x W uint8 mask in {0, 1}: pixel centres inside the fan.
    """
    radius_px, angle_rad = _beam_coordinates(shape_hw, apex_xy)
    return _inside_fan(radius_px, angle_rad, radius_min_px, radius_max_px, half_angle_deg)


def _inside_fan(radius_px: np.ndarray, angle_rad: np.ndarray, radius_min_px: float,
                radius_max_px: float, half_angle_deg: float) -> np.ndarray:
    inside = ((radius_px >= radius_min_px) & (radius_px <= radius_max_px)
              & (np.abs(angle_rad) <= math.radians(half_angle_deg)))
    return inside.astype(np.uint8)


def _beams(fan: _Fan, shape_hw: tuple[int, int]) -> _Beams:
    radius_px, angle_rad = _beam_coordinates(shape_hw, (fan.apex_x_px, fan.apex_y_px))
    return _Beams(radius_px, angle_rad, np.sin(angle_rad), np.cos(angle_rad))


def _draw_fan(rng: np.random.Generator, shape_hw: tuple[int, int]) -> _Fan:
    """A random HC18-like fan: apex above the image, top arc near the top edge."""
    h, w = shape_hw
    apex_x_px = w / 2.0 + rng.normal(0.0, 0.02 * w)
    apex_y_px = -h * rng.uniform(0.35, 1.0)
    top_y_px = h * rng.uniform(0.02, 0.12)
    bottom_y_px = h * rng.uniform(0.97, 1.35)
    return _Fan(apex_x_px, apex_y_px, top_y_px - apex_y_px, bottom_y_px - apex_y_px,
                rng.uniform(32.0, 42.0))


def _ellipse_fits(ellipse: Ellipse, fan: _Fan, shape_hw: tuple[int, int], margin_px: float) -> bool:
    """True when the whole ellipse lies ``margin_px`` inside both the image and the fan."""
    h, w = shape_hw
    pts = ellipse_points(ellipse, n=256)
    x, y = pts[:, 0], pts[:, 1]
    if x.min() < margin_px or y.min() < margin_px or x.max() > w - 1 - margin_px \
            or y.max() > h - 1 - margin_px:
        return False
    dx, dy = x - fan.apex_x_px, y - fan.apex_y_px
    radius_px = np.hypot(dx, dy)
    if radius_px.min() < fan.radius_min_px + margin_px or radius_px.max() > fan.radius_max_px - margin_px:
        return False
    # Distance of each point to the nearer straight fan edge.
    edge_gap_px = radius_px * np.sin(math.radians(fan.half_angle_deg) - np.abs(np.arctan2(dx, dy)))
    return bool(edge_gap_px.min() >= margin_px)


def _place_head(rng: np.random.Generator, fan: _Fan, shape_hw: tuple[int, int], a_px: float,
                b_px: float, angle_deg: float, margin_px: float, n_tries: int = 64
                ) -> Optional[Ellipse]:
    """Try random centres for an ellipse of the given size; ``None`` when none fits."""
    h, w = shape_hw
    th = math.radians(angle_deg)
    half_w_px = math.sqrt((a_px * math.cos(th)) ** 2 + (b_px * math.sin(th)) ** 2)
    half_h_px = math.sqrt((a_px * math.sin(th)) ** 2 + (b_px * math.cos(th)) ** 2)
    x_lo, x_hi = margin_px + half_w_px, w - 1 - margin_px - half_w_px
    y_lo = max(margin_px, fan.apex_y_px + fan.radius_min_px + margin_px) + half_h_px
    y_hi = h - 1 - margin_px - half_h_px
    if x_lo > x_hi or y_lo > y_hi:
        return None
    for _ in range(n_tries):
        # Heads are usually near the middle of the frame laterally.
        cx = float(np.clip(rng.normal(w / 2.0, 0.08 * w), x_lo, x_hi))
        cy = float(rng.uniform(y_lo, y_hi))
        ellipse = make_ellipse(cx, cy, a_px, b_px, angle_deg)
        if _ellipse_fits(ellipse, fan, shape_hw, margin_px):
            return ellipse
    return None


def _draw_angle_deg(rng: np.random.Generator) -> float:
    """Major-axis direction: mostly near horizontal (as in HC18), sometimes anything."""
    near_horizontal = rng.uniform() < 0.75
    angle_deg = rng.normal(0.0, 15.0) if near_horizontal else rng.uniform(0.0, 180.0)
    return _fold_angle_deg(angle_deg)


def _fold_angle_deg(angle_deg: float) -> float:
    """Fold into [0, 180) (``x % 180`` alone can round to 180.0 for tiny negative x)."""
    folded = float(angle_deg) % 180.0
    return 0.0 if folded >= 180.0 else folded


def _head_size(shape_hw: tuple[int, int], unit_perimeter: float, width_fraction: float,
               hc_quantile: float, pixel_mm: Optional[float], hc_mm: Optional[float]
               ) -> tuple[float, float]:
    """Semi-major axis (px) and pixel size (mm) before fitting the head into the fan.

    ``unit_perimeter`` is the perimeter of the ellipse per px of semi-major axis.  The
    head spans ``width_fraction`` of the image width unless both sizes are fixed; the
    free quantities stay within their realistic ranges.
    """
    w = shape_hw[1]
    pixel_range_mm = tuple(p * HC18_WIDTH_PX / w for p in PIXEL_MM_RANGE)
    perimeter_px = width_fraction * w / 2.0 * unit_perimeter
    if pixel_mm is None:
        if hc_mm is None:  # an HC for which this head size needs a realistic pixel size
            hc_lo = max(HC_MM_RANGE[0], pixel_range_mm[0] * perimeter_px)
            hc_hi = min(HC_MM_RANGE[1], pixel_range_mm[1] * perimeter_px)
            hc_mm = hc_lo + hc_quantile * (hc_hi - hc_lo)
        pixel_mm = float(np.clip(hc_mm / perimeter_px, *pixel_range_mm))
    elif hc_mm is None:
        hc_mm = float(np.clip(perimeter_px * pixel_mm, *HC_MM_RANGE))
    return hc_mm / (pixel_mm * unit_perimeter), float(pixel_mm)


def _head_geometry(rng: np.random.Generator, fan: _Fan, shape_hw: tuple[int, int],
                   pixel_mm: Optional[float], hc_mm: Optional[float], axis_ratio: Optional[float],
                   angle_deg: Optional[float]) -> tuple[Ellipse, float]:
    """Choose the head ellipse and the pixel size (mm).

    Free quantities (``None``) are drawn.  When the head does not fit the fan it is
    shrunk, which enlarges the pixel size (when it is free) or reduces the HC (when
    the pixel size is fixed).  Raises ValueError for invalid values or when both
    sizes are fixed and the head cannot fit.
    """
    # Draw everything first, so the random stream does not depend on the arguments.
    drawn_ratio = rng.uniform(*AXIS_RATIO_RANGE)
    drawn_angle_deg = _draw_angle_deg(rng)
    hc_quantile = rng.uniform()
    width_fraction = rng.uniform(*HEAD_WIDTH_FRACTION_RANGE)

    ratio = float(axis_ratio) if axis_ratio is not None else drawn_ratio
    angle = _fold_angle_deg(angle_deg) if angle_deg is not None else drawn_angle_deg
    for name, value in (("pixel_mm", pixel_mm), ("hc_mm", hc_mm)):
        if value is not None and not (float(value) > 0 and math.isfinite(float(value))):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not 0.2 <= ratio <= 1.0:
        raise ValueError(f"axis_ratio must be in [0.2, 1], got {ratio}")

    a_px, size_pixel_mm = _head_size(shape_hw, ellipse_perimeter(1.0, ratio), width_fraction,
                                     hc_quantile, None if pixel_mm is None else float(pixel_mm),
                                     None if hc_mm is None else float(hc_mm))
    margin_px = max(4.0, 0.015 * min(shape_hw))
    for _ in range(40):
        ellipse = _place_head(rng, fan, shape_hw, a_px, a_px * ratio, angle, margin_px)
        if ellipse is not None:
            return ellipse, size_pixel_mm
        if pixel_mm is not None and hc_mm is not None:
            break
        a_px *= 0.92
        if pixel_mm is None:  # keep the HC: a smaller head in pixels means bigger pixels
            size_pixel_mm /= 0.92
    raise ValueError(f"the head (semi-major axis {a_px:.0f} px at {size_pixel_mm:.4g} mm/px) does not "
                     f"fit the fan of a {shape_hw[0]}x{shape_hw[1]} image; give a larger pixel_mm "
                     f"or a smaller hc_mm")


# --------------------------------------------------------------------------- noise helpers


def _smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale_px`` wide."""
    h, w = shape_hw
    gh, gw = max(2, int(round(h / scale_px)) + 2), max(2, int(round(w / scale_px)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    # Blur at ~8 px per random cell (cheap, and no blocky cubic-interpolation artefacts).
    mid_hw = (min(h, 8 * gh), min(w, 8 * gw))
    field = cv2.resize(coarse, (mid_hw[1], mid_hw[0]), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), 0.35 * mid_hw[0] / gh)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _periodic_noise(rng: np.random.Generator, angle_rad: np.ndarray, n_terms: int = 6) -> np.ndarray:
    """Smooth 2*pi-periodic random function of an angle (any shape), roughly unit std.

    A random Fourier series with 1/k amplitudes, looked up in a 4096-entry table.
    """
    n_table = 4096  # power of two: the bitwise ``&`` below wraps negative indices too
    table_rad = np.arange(n_table) * (2 * np.pi / n_table)
    table = np.zeros(n_table)
    for k in range(1, n_terms + 1):
        table += rng.normal(0.0, 1.0) / k * np.cos(k * table_rad + rng.uniform(0.0, 2 * np.pi))
    table /= math.sqrt(sum(1.0 / k ** 2 for k in range(1, n_terms + 1)) / 2.0)
    index = np.floor(np.asarray(angle_rad) * np.float32(n_table / (2 * np.pi))).astype(np.int32)
    return table.astype(np.float32)[index & (n_table - 1)]


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _db_to_amplitude(level_db) -> np.ndarray:
    return np.power(np.float32(10.0), np.asarray(level_db, dtype=np.float32) / np.float32(20.0))


# --------------------------------------------------------------------------- scene


@dataclass
class _Scene:
    """Tissue maps (float32), on the image grid or, after resampling, on the beam grid."""

    diffuse_db: np.ndarray      # diffuse backscatter level, 0 dB = average soft tissue
    specular_amp: np.ndarray    # coherent reflector amplitude (same units as the diffuse RMS)
    attenuation_db: np.ndarray  # round-trip soft-tissue attenuation per pixel of depth
    bone_per_px: np.ndarray     # bone along a beam: sums to 1 across one perpendicular crossing
    bone_loss_db: float         # saturating loss of the beams that cross bone (shadow depth)


@dataclass
class _HeadFrame:
    """Per-pixel coordinates relative to the head ellipse."""

    u_px: np.ndarray           # along the major axis
    v_px: np.ndarray           # along the minor axis
    dist_px: np.ndarray        # approximate signed distance to the outer skull edge (<0 inside)
    contour_angle: np.ndarray  # parametric angle (rad) of the ellipse point on the same ray
    normal_x: np.ndarray       # unit outward normal of the ellipse level set
    normal_y: np.ndarray


def _head_frame(ellipse: Ellipse, shape_hw: tuple[int, int]) -> _HeadFrame:
    """Rotate pixels into the head frame and compute a first-order signed distance."""
    h, w = shape_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    th = math.radians(ellipse.angle_deg)
    c, s = np.float32(math.cos(th)), np.float32(math.sin(th))
    dx, dy = xs - np.float32(ellipse.center_x_px), ys - np.float32(ellipse.center_y_px)
    u, v = dx * c + dy * s, -dx * s + dy * c
    a, b = np.float32(ellipse.semi_axis_a_px), np.float32(ellipse.semi_axis_b_px)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) + np.float32(1e-6)
    # gradient of rho, in the head frame: (u / a^2, v / b^2) / rho
    gu, gv = u / (a * a) / rho, v / (b * b) / rho
    grad = np.sqrt(gu * gu + gv * gv) + np.float32(1e-9)
    nu, nv = gu / grad, gv / grad
    return _HeadFrame(u_px=u, v_px=v, dist_px=(rho - 1.0) / grad,
                      contour_angle=np.arctan2(v / b, u / a),
                      normal_x=nu * c - nv * s, normal_y=nu * s + nv * c)


def _incidence(normal_x, normal_y, beams: _Beams, floor: float, power: float) -> np.ndarray:
    """Specular brightness factor: 1 at perpendicular incidence, ``floor`` at grazing."""
    cos_inc = np.abs(normal_x * beams.dir_x + normal_y * beams.dir_y)
    return floor + (1.0 - floor) * cos_inc ** power


def _segment(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, width_px: float,
             curvature: float = 0.0) -> np.ndarray:
    """A soft line from u0 to u1 at v = v0 + curvature * (u - mid)^2, peak 1, tapered ends."""
    mid, half = 0.5 * (u0 + u1), 0.5 * abs(u1 - u0) + 1e-6
    across = v - (v0 + curvature * (u - mid) ** 2)
    along = 1.0 - _smoothstep(0.5, 1.0, np.abs(u - mid) / half)
    return np.exp(-0.5 * (across / width_px) ** 2) * along


def _soft_ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float,
                  edge: float = 0.3) -> np.ndarray:
    """Filled ellipse weight (1 inside, 0 outside) with a soft edge, in head-frame px."""
    rho = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return 1.0 - _smoothstep(1.0 - edge, 1.0 + edge, rho)


def _tissue_streaks(rng: np.random.Generator, shape_hw: tuple[int, int], n: int) -> np.ndarray:
    """Short fibrous specular echoes (fascia, vessel walls), mostly across the beams."""
    h, w = shape_hw
    canvas = np.zeros(shape_hw, np.uint8)
    shift = 4  # sub-pixel precision of cv2.line
    for _ in range(n):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        length_px = rng.uniform(0.02, 0.10) * w
        th = rng.normal(0.0, 0.35)
        ends = [int(round(c * (1 << shift))) for c in
                (x0, y0, x0 + length_px * math.cos(th), y0 + length_px * math.sin(th))]
        cv2.line(canvas, (ends[0], ends[1]), (ends[2], ends[3]), int(rng.integers(60, 255)),
                 thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA, shift=shift)
    streaks = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 1.5)
    return streaks * np.float32(_db_to_amplitude(8.0) / 255.0)


def _background(rng, shape_hw) -> tuple[np.ndarray, np.ndarray]:
    """Textured soft tissue (fetal body, placenta, uterus): diffuse dB and fibrous echoes."""
    h = shape_hw[0]
    diffuse_db = (rng.uniform(-3.0, 1.0) + 5.5 * _smooth_noise(rng, shape_hw, 0.25 * h)
                  + 3.0 * _smooth_noise(rng, shape_hw, 0.06 * h))
    return diffuse_db, _tissue_streaks(rng, shape_hw, int(rng.integers(8, 25)))


def _amniotic_fluid(rng, shape_hw, frame: _HeadFrame, ellipse: Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """Weight (0-1) of the fluid around the head and in a few pools, and its diffuse dB."""
    h = shape_hw[0]
    rho = frame.dist_px / np.float32(ellipse.semi_axis_b_px)
    band = (rng.uniform(0.0, 0.25) + 0.12 * _periodic_noise(rng, frame.contour_angle, n_terms=4)
            + 0.03 * _smooth_noise(rng, shape_hw, 0.1 * h))
    pools = _smooth_noise(rng, shape_hw, 0.3 * h)
    weight = np.maximum(1.0 - _smoothstep(-0.06, 0.06, rho - band), _smoothstep(1.1, 1.6, pools))
    fluid_db = rng.uniform(-13.0, -9.0) + 2.0 * _smooth_noise(rng, shape_hw, 20.0)
    return weight, fluid_db


def _maternal_wall(rng, shape_hw, fan: _Fan, beams: _Beams, thickness_px: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Banded maternal abdominal/uterine wall below the top arc.

    Returns (weight of the wall region, diffuse dB inside it, specular interface amplitude).
    """
    depth_px = beams.radius_px - np.float32(fan.radius_min_px)
    n_layers = int(rng.integers(3, 6))
    bounds_px = np.cumsum(rng.dirichlet(np.full(n_layers, 2.0))) * thickness_px
    layer_db = rng.uniform(-7.0, 3.0, size=n_layers)
    layer_db[0] = rng.uniform(2.0, 6.0)  # skin and near-field haze: bright
    diffuse_db = np.full(shape_hw, layer_db[0], np.float32)
    specular = np.zeros(shape_hw, np.float32)
    wall_bottom_px = None
    for k, bound_px in enumerate(bounds_px):
        # each interface undulates on its own; interfaces face the probe (no incidence loss)
        bend = _periodic_noise(rng, beams.angle_rad * np.float32(rng.uniform(1.5, 4.0)), n_terms=4)
        boundary_px = np.float32(bound_px) + bend * np.float32(0.08 * thickness_px)
        below = depth_px > boundary_px
        if k + 1 < n_layers:
            diffuse_db[below] = layer_db[k + 1]
        else:
            wall_bottom_px = boundary_px
        broken = _smoothstep(-0.5, 0.5, _periodic_noise(rng, beams.angle_rad * np.float32(10.0), 8) + 0.5)
        specular += (_db_to_amplitude(rng.uniform(4.0, 12.0)) * broken
                     * np.exp(-0.5 * ((depth_px - boundary_px) / 1.5) ** 2))
    diffuse_db += 2.0 * _smooth_noise(rng, shape_hw, 25.0)
    weight = 1.0 - _smoothstep(-2.0, 2.0, depth_px - wall_bottom_px)
    return weight, diffuse_db, specular


def _skull(rng, frame: _HeadFrame, beams: _Beams, skull_px: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bone occupancy (0-1), its specular amplitude and its extra diffuse dB.

    The bone band runs from the ellipse (outer table) inward by ``skull_px`` (which
    varies a little along the ring); the echo is strongest at the outer table and
    where the beam meets the bone perpendicularly.
    """
    d = frame.dist_px
    thickness_px = np.float32(skull_px) * np.exp(0.15 * _periodic_noise(rng, frame.contour_angle, 12))
    outside_outer = _smoothstep(-0.7, 0.7, d)
    inside_inner = 1.0 - _smoothstep(-0.7, 0.7, d + thickness_px)
    bone = np.clip(1.0 - outside_outer - inside_inner, 0.0, 1.0)
    incidence = _incidence(frame.normal_x, frame.normal_y, beams,
                           rng.uniform(0.03, 0.08), rng.uniform(3.0, 5.0))
    along = np.exp(0.35 * _periodic_noise(rng, frame.contour_angle, n_terms=6)
                   + 0.35 * _periodic_noise(rng, frame.contour_angle * np.float32(8.0), n_terms=4))
    outer_table = 0.5 + 0.5 * np.exp(np.minimum(d, 0.0) / (0.5 * thickness_px))
    specular = bone * incidence * along * outer_table * _db_to_amplitude(rng.uniform(34.0, 39.0))
    diffuse_db = bone * (18.0 + 12.0 * incidence) * along ** 0.5
    # faint reverberation glow just inside the inner table
    glow = inside_inner * np.exp(np.minimum(d + thickness_px, 0.0) / thickness_px)
    return bone, specular, diffuse_db + glow * 5.0 * incidence


def _brain(rng, frame: _HeadFrame, ellipse: Ellipse, pixel_mm: float, shape_hw, beams: _Beams
           ) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse dB and specular amplitude of a transthalamic brain section.

    Midline echo (falx) interrupted by the cavum septi pellucidi, paired thalami,
    echogenic choroid plexus and a few interfaces roughly parallel to the midline.
    Only meaningful inside the skull.
    """
    a, b = ellipse.semi_axis_a_px, ellipse.semi_axis_b_px
    u, v = frame.u_px, frame.v_px
    front = 1.0 if rng.uniform() < 0.5 else -1.0  # which end of the major axis is frontal
    line_px = max(1.8, 0.25 / pixel_mm)

    diffuse_db = rng.uniform(-10.0, -6.0) + 2.0 * _smooth_noise(rng, shape_hw, max(8.0, 0.08 * a))
    for side in (-1.0, 1.0):  # thalami: mildly hypoechoic
        diffuse_db -= (_soft_ellipse(u, v, front * 0.02 * a, side * 0.15 * b, 0.17 * a, 0.11 * b)
                       * rng.uniform(1.5, 4.0))
    csp_u, csp_len, csp_half_w = front * rng.uniform(0.28, 0.38) * a, 0.09 * a, 0.05 * b
    csp = _soft_ellipse(u, v, csp_u, 0.0, csp_len, csp_half_w)
    diffuse_db = diffuse_db * (1 - csp) + csp * -10.0
    for side in (-1.0, 1.0):  # choroid plexus: echogenic, posterior
        diffuse_db += (_soft_ellipse(u, v, -front * 0.55 * a, side * 0.22 * b, 0.13 * a, 0.05 * b, 0.4)
                       * rng.uniform(3.0, 7.0))

    # Specular lines: their brightness depends on how squarely the beams meet the midline.
    minor_x = -math.sin(math.radians(ellipse.angle_deg))
    minor_y = math.cos(math.radians(ellipse.angle_deg))
    facing = float(np.mean(_incidence(minor_x, minor_y, beams, 0.15, 2.0)))
    gaps = _smoothstep(-0.3, 0.3, _periodic_noise(rng, u / np.float32(a) * np.float32(math.pi), 12) + 0.3)
    falx = _segment(u, v, -0.92 * a, 0.92 * a, 0.0, line_px)
    falx *= _smoothstep(0.8, 1.2, np.abs(u - csp_u) / csp_len)  # the cavum interrupts the midline
    specular = falx * gaps * _db_to_amplitude(rng.uniform(10.0, 16.0))
    for side in (-1.0, 1.0):  # cavum walls
        specular += (_segment(u, v, csp_u - csp_len, csp_u + csp_len, side * csp_half_w, line_px)
                     * _db_to_amplitude(rng.uniform(3.0, 9.0)))
    for _ in range(int(rng.integers(1, 4))):  # paired interfaces: insula, ventricle walls
        v0 = rng.uniform(0.15, 0.55) * b
        u0 = rng.uniform(-0.6, 0.1) * a
        u1 = u0 + rng.uniform(0.25, 0.6) * a
        bend = v0 / (a * a) * rng.uniform(0.3, 1.0)  # curve towards the midline at the ends
        for side in (-1.0, 1.0):
            broken = _smoothstep(-0.4, 0.4, _periodic_noise(rng, u / np.float32(0.2 * a), 6) + 0.4)
            specular += (_segment(u, v, u0, u1, side * v0, rng.uniform(1.0, 1.8) * line_px, -side * bend)
                         * broken * _db_to_amplitude(rng.uniform(0.0, 9.0)))
    return diffuse_db, specular * facing


def _render_scene(rng: np.random.Generator, shape_hw, fan: _Fan, beams: _Beams, ellipse: Ellipse,
                  pixel_mm: float, skull_thickness_mm: float) -> _Scene:
    """Build the tissue maps for one phantom, layering regions from back to front."""
    h = shape_hw[0]
    frame = _head_frame(ellipse, shape_hw)
    skull_px = float(np.clip(skull_thickness_mm / pixel_mm, 4.0, 12.0))
    scalp_px = float(np.clip(rng.uniform(1.0, 2.5) / pixel_mm, 3.0, 20.0))
    tissue_db_px = rng.uniform(2.5, 4.0) * pixel_mm / 10.0  # round trip at ~3.5 MHz, per px

    diffuse_db, specular = _background(rng, shape_hw)
    attenuation_db = np.full(shape_hw, tissue_db_px, np.float32)

    fluid, fluid_db = _amniotic_fluid(rng, shape_hw, frame, ellipse)
    diffuse_db = diffuse_db * (1 - fluid) + fluid_db * fluid
    attenuation_db *= 1 - 0.85 * fluid
    specular *= 1 - fluid

    # Maternal wall, kept above the head (the head floats in the amniotic cavity).
    head_top_px = float(np.min(beams.radius_px[frame.dist_px <= 0])) - fan.radius_min_px
    wall_px = min(h * rng.uniform(0.08, 0.2), 0.8 * head_top_px - scalp_px)
    if wall_px > 3.0:
        wall, wall_db, wall_specular = _maternal_wall(rng, shape_hw, fan, beams, wall_px)
        diffuse_db = diffuse_db * (1 - wall) + wall_db * wall
        attenuation_db = attenuation_db * (1 - wall) + wall * tissue_db_px * 1.2
        specular = specular * (1 - wall) + wall_specular * wall

    # Head: scalp, then everything inside the outer skull edge is brain and bone.
    d = frame.dist_px
    head = 1.0 - _smoothstep(-0.7, 0.7, d)
    scalp = (1.0 - _smoothstep(scalp_px - 1.0, scalp_px + 1.0, d)) * (1.0 - head)
    diffuse_db = diffuse_db * (1 - scalp) + scalp * rng.uniform(-6.0, -2.0)
    brain_db, brain_specular = _brain(rng, frame, ellipse, pixel_mm, shape_hw, beams)
    diffuse_db = diffuse_db * (1 - head) + head * brain_db
    brain_core = 1.0 - _smoothstep(-skull_px - 4.0, -skull_px - 1.0, d)
    specular = specular * (1 - head) + brain_specular * brain_core
    attenuation_db = attenuation_db * (1 - head) + head * tissue_db_px * 0.7

    bone, bone_specular, bone_db = _skull(rng, frame, beams, skull_px)
    return _Scene(diffuse_db=(diffuse_db + bone_db).astype(np.float32),
                  specular_amp=(specular + bone_specular).astype(np.float32),
                  attenuation_db=attenuation_db.astype(np.float32),
                  bone_per_px=(bone / np.float32(skull_px)).astype(np.float32),
                  bone_loss_db=float(rng.uniform(4.0, 8.0)))


# --------------------------------------------------------------------------- beam formation


@dataclass(frozen=True)
class _PolarGrid:
    """Beam grid: rows are depths (``dr_px`` apart), columns beam angles."""

    radius0_px: float
    dr_px: float
    angle0_rad: float
    dangle_rad: float
    n_radius: int
    n_angle: int


def _polar_grid(beams: _Beams, sector: np.ndarray) -> _PolarGrid:
    """Beam grid covering the visible part of the fan, <= 1 px spacing everywhere."""
    r_vis, a_vis = beams.radius_px[sector > 0], beams.angle_rad[sector > 0]
    r0, r1 = float(r_vis.min()) - 2.0, float(r_vis.max()) + 2.0
    dangle = 1.0 / r1
    a0, a1 = float(a_vis.min()) - 2 * dangle, float(a_vis.max()) + 2 * dangle
    return _PolarGrid(r0, 1.0, a0, dangle, int(math.ceil(r1 - r0)) + 1,
                      int(math.ceil((a1 - a0) / dangle)) + 1)


def _to_polar(image: np.ndarray, grid: _PolarGrid, fan: _Fan) -> np.ndarray:
    """Sample an image-grid map at the beam-grid points."""
    r = grid.radius0_px + grid.dr_px * np.arange(grid.n_radius, dtype=np.float32)
    a = grid.angle0_rad + grid.dangle_rad * np.arange(grid.n_angle, dtype=np.float32)
    map_x = (fan.apex_x_px + r[:, None] * np.sin(a)[None, :]).astype(np.float32)
    map_y = (fan.apex_y_px + r[:, None] * np.cos(a)[None, :]).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _to_image(polar: np.ndarray, grid: _PolarGrid, beams: _Beams) -> np.ndarray:
    """Scan-convert a beam-grid map back to the image grid."""
    map_x = ((beams.angle_rad - grid.angle0_rad) / grid.dangle_rad).astype(np.float32)
    map_y = ((beams.radius_px - grid.radius0_px) / grid.dr_px).astype(np.float32)
    return cv2.remap(polar, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _speckle_db(rng: np.random.Generator, scene: _Scene, axial_px: float, lateral_samples: float,
                n_looks: int) -> np.ndarray:
    """Envelope (dB) of scatterers convolved with a Gaussian PSF, compounded over looks.

    Scatterers are complex Gaussian with RMS amplitude ``10^(diffuse_db/20)`` plus the
    real specular amplitude; the PSF is normalised so that the diffuse RMS survives.
    """
    n_r, n_a = scene.diffuse_db.shape
    gain = math.sqrt(4.0 * math.pi * axial_px * lateral_samples / 2.0)
    amp = _db_to_amplitude(scene.diffuse_db) * np.float32(gain)
    intensity = np.zeros((n_r, n_a), np.float32)
    for _ in range(n_looks):
        field = np.empty((n_r, n_a, 2), np.float32)
        field[..., 0] = amp * rng.standard_normal((n_r, n_a), dtype=np.float32) + scene.specular_amp
        field[..., 1] = amp * rng.standard_normal((n_r, n_a), dtype=np.float32)
        field = cv2.GaussianBlur(field, (0, 0), sigmaX=lateral_samples, sigmaY=axial_px)
        intensity += field[..., 0] ** 2 + field[..., 1] ** 2
    echo_db = 10.0 * np.log10(intensity / np.float32(n_looks) + np.float32(1e-6))
    # mild speckle reduction, as scanners do
    return cv2.GaussianBlur(echo_db, (0, 0), sigmaX=0.8 * lateral_samples, sigmaY=0.8 * axial_px)


def _add_reverberation_tail(scene: _Scene, decay_px: float, level_db: float) -> _Scene:
    """Add incoherent ring-down below strong reflectors (each beam, deeper only).

    The specular amplitude is smeared along depth by a one-sided exponential and
    added to the diffuse intensity, so the skull echo gets a speckled tail
    (brightening the brain under the near skull and the tissue under the far skull).
    """
    length = max(3, int(round(3 * decay_px)))
    taps = np.exp(-np.arange(length, dtype=np.float32) / np.float32(decay_px))
    kernel = (taps[::-1] / taps.sum()).reshape(-1, 1)  # anchor at the end: a causal filter
    tail = cv2.filter2D(scene.specular_amp, -1, kernel, anchor=(0, length - 1),
                        borderType=cv2.BORDER_CONSTANT)
    intensity = _db_to_amplitude(scene.diffuse_db) ** 2 + (tail * _db_to_amplitude(level_db)) ** 2
    diffuse_db = (10.0 * np.log10(intensity)).astype(np.float32)
    return _Scene(diffuse_db, scene.specular_amp, scene.attenuation_db, scene.bone_per_px,
                  scene.bone_loss_db)


def _depth_gain_db(rng: np.random.Generator, scene: _Scene, grid: _PolarGrid,
                   lateral_samples: float) -> np.ndarray:
    """Time-gain compensation minus the round-trip loss accumulated along each beam.

    The TGC is a function of depth only (like the sliders of a scanner), set to
    85-100 % of the mean loss at each depth, plus a small random wiggle.
    """
    loss_db = np.cumsum(scene.attenuation_db, axis=0) - 0.5 * scene.attenuation_db
    # Bone: about 60 % of the maximum loss after one crossing; saturating, so beams grazing
    # the skull (long paths in bone) are not black; smoothed across the beam width.
    bone_crossed = np.cumsum(scene.bone_per_px, axis=0) - 0.5 * scene.bone_per_px
    bone_loss = scene.bone_loss_db * (1.0 - np.exp(-bone_crossed))
    loss_db += cv2.GaussianBlur(bone_loss, (0, 0), sigmaX=2.0 * lateral_samples, sigmaY=1.0)
    depth_px = grid.dr_px * np.arange(grid.n_radius, dtype=np.float32)[:, None]
    wiggle_db = 1.5 * _periodic_noise(rng, depth_px / np.float32(grid.n_radius) * np.float32(math.pi), 3)
    tgc_db = rng.uniform(0.85, 1.0) * loss_db.mean(axis=1, keepdims=True) + wiggle_db
    edge = np.abs(np.linspace(-1.0, 1.0, grid.n_angle, dtype=np.float32))[None, :]
    return tgc_db - loss_db - 3.0 * edge ** 4  # weaker outer beams


def _beamform_db(rng: np.random.Generator, scene_polar: _Scene, grid: _PolarGrid,
                 pixel_mm: float, n_looks: int = 3) -> np.ndarray:
    """Speckle, attenuation and TGC on the beam grid; returns the echo level in dB."""
    axial_px = float(np.clip(0.12 / pixel_mm, 0.8, 1.5))
    lateral_px = float(np.clip(0.3 / pixel_mm, 2.0, 3.5))
    r_mid_px = grid.radius0_px + 0.5 * grid.n_radius * grid.dr_px
    lateral_samples = lateral_px / (r_mid_px * grid.dangle_rad)  # beam width grows with depth
    scene_polar = _add_reverberation_tail(scene_polar, decay_px=rng.uniform(3.0, 8.0),
                                          level_db=rng.uniform(-8.0, -3.0))
    echo_db = _speckle_db(rng, scene_polar, axial_px, lateral_samples, n_looks)
    return echo_db + _depth_gain_db(rng, scene_polar, grid, lateral_samples)


def _to_uint8(level_db: np.ndarray, sector: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log-compressed display: in-fan median -> 30-45 grey, ``dynamic range`` dB -> 255 greys."""
    dynamic_range_db = rng.uniform(55.0, 65.0)
    median_grey = rng.uniform(30.0, 45.0)
    median_db = float(np.median(level_db[sector > 0]))
    grey = (level_db - median_db) * np.float32(255.0 / dynamic_range_db) + np.float32(median_grey)
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 0.9)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8) * sector


def _image_scene(rng: np.random.Generator, scene: _Scene, fan: _Fan, beams: _Beams,
                 sector: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Scan the scene: beam grid -> speckle, loss and TGC -> scan conversion -> uint8."""
    grid = _polar_grid(beams, sector)
    scene_polar = _Scene(
        diffuse_db=_to_polar(scene.diffuse_db, grid, fan),
        specular_amp=_to_polar(scene.specular_amp, grid, fan),
        attenuation_db=_to_polar(scene.attenuation_db, grid, fan),
        bone_per_px=_to_polar(scene.bone_per_px, grid, fan),
        bone_loss_db=scene.bone_loss_db)
    level_db = _to_image(_beamform_db(rng, scene_polar, grid, pixel_mm), grid, beams)
    return _to_uint8(level_db, sector, rng)


def _default_skull_thickness_mm(hc_mm: float) -> float:
    """Bright bone band thickness, growing with gestational age (about 0.6-1.6 mm)."""
    fraction = (hc_mm - HC_MM_RANGE[0]) / (HC_MM_RANGE[1] - HC_MM_RANGE[0])
    return 0.6 + 1.0 * float(np.clip(fraction, 0.0, 1.0))


# --------------------------------------------------------------------------- public API


def head_phantom(seed: int = 0, shape_hw: tuple[int, int] = (540, 800), pixel_mm: Optional[float] = None,
                 hc_mm: Optional[float] = None, *, axis_ratio: Optional[float] = None,
                 angle_deg: Optional[float] = None, skull_thickness_mm: Optional[float] = None
                 ) -> HeadPhantom:
    """Generate one synthetic fetal-head B-mode image with exact ground truth.

    Parameters
    ----------
    seed : random seed; the result is a deterministic function of all arguments.
    shape_hw : (H, W) of the image (HC18 is 540 x 800).
    pixel_mm : pixel size in mm; ``None`` draws one in 0.05-0.30 (HC18's range,
        scaled by 800 / W for other widths) so that the head spans 35-70 % of the
        image width.
    hc_mm : head circumference in mm; ``None`` draws one in 50-350.
    axis_ratio : semi-minor / semi-major axis; ``None`` draws 0.70-0.90.
    angle_deg : direction of the major axis (degrees from +x towards +y);
        ``None`` draws mostly near-horizontal angles.
    skull_thickness_mm : thickness of the bright bone band, drawn inward from the
        ellipse; ``None`` draws a value growing with HC (about 0.5-2 mm).  It is
        always shown 4-12 px thick.

    Returns
    -------
    HeadPhantom.  When the head does not fit it is shrunk (the free quantity
    among ``pixel_mm`` and ``hc_mm`` changes); ValueError when both are given
    and it cannot fit.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if h < 64 or w < 64:
        raise ValueError(f"shape_hw must be at least 64 x 64, got {shape_hw}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    shape_hw = (h, w)
    # independent streams: geometry, tissue scene, speckle and display
    geometry_seq, scene_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    geometry_rng = np.random.default_rng(geometry_seq)
    scene_rng = np.random.default_rng(scene_seq)
    noise_rng = np.random.default_rng(noise_seq)

    fan = _draw_fan(geometry_rng, shape_hw)
    ellipse, pixel_mm = _head_geometry(geometry_rng, fan, shape_hw, pixel_mm, hc_mm, axis_ratio,
                                       angle_deg)
    true_hc_mm = ellipse_perimeter(ellipse.semi_axis_a_px, ellipse.semi_axis_b_px) * pixel_mm
    # drawn even when given, so that the rest of the scene does not depend on the argument
    drawn_thickness_mm = _default_skull_thickness_mm(true_hc_mm) * scene_rng.uniform(0.8, 1.2)
    if skull_thickness_mm is None:
        skull_thickness_mm = drawn_thickness_mm

    beams = _beams(fan, shape_hw)
    sector = _inside_fan(beams.radius_px, beams.angle_rad, fan.radius_min_px, fan.radius_max_px,
                         fan.half_angle_deg)
    scene = _render_scene(scene_rng, shape_hw, fan, beams, ellipse, pixel_mm, float(skull_thickness_mm))
    image = _image_scene(noise_rng, scene, fan, beams, sector, pixel_mm)
    return HeadPhantom(image=image, mask=ellipse_mask(ellipse, shape_hw), sector=sector,
                       ellipse=ellipse, pixel_mm=float(pixel_mm), hc_mm=float(true_hc_mm),
                       seed=int(seed))


def phantom_series(n: int, seed: int = 0, **kwargs) -> list[HeadPhantom]:
    """``n`` different phantoms, deterministic in ``seed``.

    Phantom ``i`` is ``head_phantom(seed * 1000 + i, **kwargs)``, so each one can be
    regenerated alone from its ``seed`` field (series with different ``seed`` do not
    overlap while ``n <= 1000``).

    Parameters
    ----------
    n : number of phantoms.
    seed : series seed (non-negative).
    kwargs : passed to :func:`head_phantom` (``shape_hw``, ``pixel_mm``, ...).

    Returns
    -------
    list of HeadPhantom.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return [head_phantom(seed * 1000 + i, **kwargs) for i in range(n)]


def write_phantom_folder(out_dir, n: int = 6, seed: int = 0, **kwargs) -> Path:
    """Write an HC18-style folder of phantoms.

    Writes ``phantom_XX.png`` (8-bit grayscale), ``pixel_size.csv`` in the HC18
    format (``filename,pixel size(mm),head circumference (mm)``) and
    ``ellipses.csv`` with the true ellipse of every image.

    Parameters
    ----------
    out_dir : folder to create or fill.
    n, seed, kwargs : passed to :func:`phantom_series`.

    Returns
    -------
    Path of ``pixel_size.csv``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size_rows, ellipse_rows = [], []
    for i, phantom in enumerate(phantom_series(n, seed=seed, **kwargs)):
        name = f"phantom_{i:02d}.png"
        if not cv2.imwrite(str(out / name), phantom.image):
            raise OSError(f"could not write {out / name}")
        e = phantom.ellipse
        size_rows.append((name, repr(phantom.pixel_mm), repr(phantom.hc_mm)))
        ellipse_rows.append((name, repr(e.center_x_px), repr(e.center_y_px), repr(e.semi_axis_a_px),
                             repr(e.semi_axis_b_px), repr(e.angle_deg), repr(phantom.pixel_mm),
                             repr(phantom.hc_mm)))
    csv_path = out / "pixel_size.csv"
    _write_csv(csv_path, CSV_HEADER, size_rows)
    _write_csv(out / "ellipses.csv", ELLIPSE_CSV_HEADER, ellipse_rows)
    return csv_path


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
