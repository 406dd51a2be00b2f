"""Find the imaging sector of an ultrasound frame: the region that holds the B-mode image.

Scanner exports carry user interface around the image: text, logos, grey-scale
bars, calipers, header bands and black margins.  :func:`detect_sector` finds the
image region and describes it as geometry, so the mask can be redrawn at any
size and reused for every frame of a clip:

* ``"fan"``: a convex-probe sector, the points whose distance from the apex
  lies in [``radius_min_px``, ``radius_max_px``] and whose beam angle lies in
  [``angle_min_deg``, ``angle_max_deg``], cut by the display window
  ``window_xyxy`` where the scanner hides part of the fan (under a header band,
  at the edge of the display area); the apex is usually above the frame;
* ``"rect"``: a linear-probe rectangle, ``window_xyxy`` alone;
* ``"other"``: neither model fits; the mask is the convex hull of the region found.

Conventions (as in :mod:`fetalkit.types`): pixel coordinates with the origin at
the centre of the top-left pixel, x to the right, y down.  The beam angle is
measured from the +y (downward) axis towards +x, in degrees: a symmetric fan has
``angle_min_deg = -angle_max_deg``, its left edge at the negative angle.
``window_xyxy`` is ``(x0, y0, x1, y1)`` in pixel-edge coordinates: a pixel is
inside when its centre is (the full frame is ``(-0.5, -0.5, W - 0.5, H - 0.5)``).
Zoomed frames show only part of the fan: the mask is the fan clipped to the
frame, and edges that are not visible are placed so that the fan covers the
frame on that side.

Method
------
1. Work on a copy about 400 px wide (INTER_AREA), which keeps the method fast
   and averages speckle.
2. *Texture*: ultrasound has (almost) no exactly-black pixel inside the image,
   even in fluid, while the surroundings are exactly the darkest grey level and
   text is sparse strokes on black; the fraction of non-black pixels per
   neighbourhood separates them.  *Flat graphics* (header bands, grey-scale bars)
   repeat one grey value along a row or column, which speckle never does over
   ~12 px; those pixels are removed.  An opening removes text and thin lines;
   the largest region is kept and its holes filled.
3. *Geometry*: straight side edges are fitted robustly (RANSAC over the outer
   edge of every row); two edges meet at the apex.  With one edge visible the
   fan is assumed symmetric about a vertical axis found from the arcs or the
   window, and with none the apex is the centre of a circle fitted to an arc.
   Arc radii and window sides are the best-supported boundary distances.
   Candidates (each edge found or assumed outside the frame, each arc found or
   outside, a rectangle) are scored by their IoU with the region; the best wins.
   Scoring rejects the straight edges of black anonymisation boxes taken for fan
   edges, and dark patches at the boundary taken for arcs.

Limitations: fans opening upwards (apex below the frame) and sectors wider than
about 140 degrees are not modelled (``"other"``); colour-Doppler boxes and
graphics drawn inside the fan count as image; a fan whose edge runs through
long black (fluid or shadow) stretches can lose that edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import cv2
import numpy as np

from fetalkit.errors import InputError

WORK_WIDTH_PX = 400          # detection runs on a copy about this wide (never upscaled)
_DENSITY_MIN = 0.5           # fraction of non-black pixels that makes a neighbourhood "image"
_UI_RUN = 5                  # identical grey values this long (working px) are graphics
_MIN_AREA_FRACTION = 0.05    # a region smaller than this part of the frame is no sector
_COVERAGE_MIN = 0.95         # a geometry leaving more of the textured region outside is no fit: "other"
_FILL_MIN = 0.4              # ... as is one that is mostly black
_RNG_SEED = 0                # seeded RANSAC: the same frame always gives the same sector
_BLACK_INSIDE_WEIGHT = 0.4     # cost of a black pixel inside a candidate, relative to texture outside
_ASYMMETRY_PENALTY_PER_10DEG = 0.015  # score lost per 10 deg of |angle_min + angle_max| over 2 deg
_TOL_PX = 1.0                # boundary samples within this of a model edge support it (working px)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Sector:
    """The imaging region of one frame.

    Attributes
    ----------
    mask : H x W uint8 in {0, 1}, the imaging region of the frame it was found on.
    bbox_xywh : (x, y, width, height) of the mask in whole pixels.
    kind : ``"fan"``, ``"rect"`` or ``"other"``.
    apex_xy, radius_min_px, radius_max_px, angle_min_deg, angle_max_deg :
        fan geometry (``None`` unless ``kind == "fan"``), see the module docstring.
    window_xyxy : display window cutting the fan, or the rectangle of a
        ``"rect"`` (pixel-edge coordinates); ``None`` when nothing is cut.
    fit_iou : agreement (IoU) of the geometry with the textured region found, a
        quality score in [0, 1] (the rest is dark image at the edges, black boxes
        or text inside the fan, or a poor fit).
    """

    mask: np.ndarray
    bbox_xywh: tuple[int, int, int, int]
    kind: str
    apex_xy: Optional[tuple[float, float]] = None
    radius_min_px: Optional[float] = None
    radius_max_px: Optional[float] = None
    angle_min_deg: Optional[float] = None
    angle_max_deg: Optional[float] = None
    window_xyxy: Optional[Box] = None
    fit_iou: float = 1.0

    @property
    def shape_hw(self) -> tuple[int, int]:
        return (int(self.mask.shape[0]), int(self.mask.shape[1]))

    def as_dict(self) -> dict:
        """JSON-ready description: kind, geometry, frame size and bbox (no mask).

        :func:`mask_from_description` turns it back into a mask at any size.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mask"}
        d["shape_hw"] = list(self.shape_hw)
        for key in ("bbox_xywh", "apex_xy", "window_xyxy"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    def mask_at(self, shape_hw: tuple[int, int]) -> np.ndarray:
        """Redraw the mask for the same frame resized to ``shape_hw`` (H, W).

        Fans and rectangles are redrawn from their geometry (sharp edges at any
        size); ``"other"`` masks are resized with nearest-neighbour sampling.
        """
        if self.kind == "other":
            h, w = int(shape_hw[0]), int(shape_hw[1])
            return cv2.resize(self.mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return mask_from_description(self.as_dict(), shape_hw)


# --------------------------------------------------------------------------- drawing


def _scale_coord(v: float, s: float) -> float:
    """A pixel coordinate after resizing the frame by ``s`` (frame edges map onto frame edges)."""
    return (v + 0.5) * s - 0.5


def _frame_box(shape_hw) -> Box:
    return (-0.5, -0.5, shape_hw[1] - 0.5, shape_hw[0] - 0.5)


def rect_mask(shape_hw: tuple[int, int], window_xyxy: Box) -> np.ndarray:
    """Rasterise an axis-aligned rectangle.

    Parameters
    ----------
    shape_hw : (H, W) of the mask.
    window_xyxy : (x0, y0, x1, y1) in pixel-edge coordinates; a pixel is inside
        when its centre is.

    Returns
    -------
    H x W uint8 mask in {0, 1}.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    out = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = window_xyxy
    c0, c1 = max(math.ceil(x0), 0), min(math.floor(x1), w - 1)
    r0, r1 = max(math.ceil(y0), 0), min(math.floor(y1), h - 1)
    if c1 >= c0 and r1 >= r0:
        out[r0:r1 + 1, c0:c1 + 1] = 1
    return out


def _fan_polygon(apex_xy, radius_min_px, radius_max_px, angle_min_deg, angle_max_deg) -> np.ndarray:
    """Outline of an annular sector as an N x 2 float polygon (inner arc, then the outer arc back)."""
    # Steps short enough that each chord stays within ~0.05 px of its arc.
    step_rad = 2.0 * math.sqrt(2.0 * 0.05 / max(radius_max_px, 1.0))
    n = max(2, int(math.ceil(math.radians(angle_max_deg - angle_min_deg) / step_rad)) + 1)
    th = np.radians(np.linspace(angle_min_deg, angle_max_deg, n))
    sin, cos = np.sin(th), np.cos(th)
    ax, ay = apex_xy
    outer = np.stack([ax + radius_max_px * sin, ay + radius_max_px * cos], 1)[::-1]
    if radius_min_px <= 0:
        inner = np.array([[ax, ay]], dtype=np.float64)
    else:
        inner = np.stack([ax + radius_min_px * sin, ay + radius_min_px * cos], 1)
    return np.concatenate([inner, outer])


def _fan_mask_fast(shape_hw, apex_xy, radius_min_px, radius_max_px, angle_min_deg, angle_max_deg,
                   window_xyxy) -> np.ndarray:
    """Fan mask drawn as a fine polygon: several times faster than the exact one, but up to
    half a pixel wide at the edges (OpenCV also fills pixels the outline touches).  For
    ranking candidates, where only differences count."""
    h, w = shape_hw
    out = np.zeros((h, w), np.uint8)
    if radius_max_px <= max(radius_min_px, 0.0) or angle_max_deg <= angle_min_deg:
        return out
    poly = _fan_polygon(apex_xy, radius_min_px, radius_max_px, angle_min_deg, angle_max_deg)
    lim = 8.0 * max(h, w)  # far vertices only need to stay outside; no fixed-point overflow
    pts = np.round(np.clip(poly, -lim, lim) * 16).astype(np.int32)
    cv2.fillPoly(out, [pts.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=4)
    return out & rect_mask((h, w), window_xyxy)


def _fill_row_spans(shape_hw, spans: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """uint8 mask with, per row, the pixels whose centre x lies in [lo, hi] of each span (NaN: none)."""
    h, w = shape_hw
    out = np.zeros((h, w), np.uint8)
    bounds = []
    for lo, hi in spans:
        c0 = np.clip(np.ceil(np.nan_to_num(lo, nan=w) - 1e-9), 0, w).astype(np.intp)
        c1 = np.clip(np.floor(np.nan_to_num(hi, nan=-1.0) + 1e-9) + 1, 0, w).astype(np.intp)
        bounds.append((c0.tolist(), c1.tolist()))
    # One slice assignment per row and span: faster here than full-frame comparisons.
    for (c0, c1) in bounds:
        for y in range(h):
            if c1[y] > c0[y]:
                out[y, c0[y]:c1[y]] = 1
    return out


def _wedge_span(dy: np.ndarray, angle_deg: float, lower: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the dx interval on the inner side of the edge ray at ``angle_deg`` (the half-plane).

    ``lower`` is True for the left (minimum-angle) edge: inside means
    sin(phi - angle) >= 0, i.e. dx * cos(a) - dy * sin(a) >= 0; for the right edge
    the sign flips.
    """
    a = math.radians(angle_deg)
    c, sn = math.cos(a), math.sin(a)
    sign = 1.0 if lower else -1.0
    # sign * (dx * c - dy * sn) >= 0
    inf = np.full(dy.shape, np.inf)
    if abs(c) < 1e-12:
        ok = sign * (-dy * sn) >= 0
        return np.where(ok, -inf, np.nan), np.where(ok, inf, np.nan)
    bound = dy * sn / c
    if sign * c > 0:
        return bound, inf
    return -inf, bound


def sector_mask_from_geometry(shape_hw: tuple[int, int], apex_xy: tuple[float, float], radius_min_px: float,
                              radius_max_px: float, angle_min_deg: float, angle_max_deg: float,
                              window_xyxy: Optional[Box] = None) -> np.ndarray:
    """Rasterise a convex-probe fan (an annular sector), optionally cut by a display window.

    Parameters
    ----------
    shape_hw : (H, W) of the mask.
    apex_xy : (x, y) of the fan apex in pixels (may lie outside the frame).
    radius_min_px, radius_max_px : radii of the near (top) and far (bottom) arcs.
    angle_min_deg, angle_max_deg : beam angles of the left and right edges, from
        the +y axis towards +x (a symmetric fan: ``-a, +a``).
    window_xyxy : (x0, y0, x1, y1) pixel-edge box the fan is cut by; ``None``: none.

    Returns
    -------
    H x W uint8 mask in {0, 1}: pixels whose centre lies inside (boundary
    included), computed exactly as one span per row and arc.

    Example
    -------
    >>> m = sector_mask_from_geometry((540, 800), (400, -300), 320, 900, -35, 35)
    >>> int(m[300, 400]), int(m[10, 5])
    (1, 0)
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if radius_max_px <= max(radius_min_px, 0.0) or angle_max_deg <= angle_min_deg:
        return np.zeros((h, w), np.uint8)
    ax, ay = float(apex_xy[0]), float(apex_xy[1])
    if angle_max_deg - angle_min_deg > 180.0:
        return _fan_mask_per_pixel((h, w), (ax, ay), radius_min_px, radius_max_px, angle_min_deg, angle_max_deg,
                                   window_xyxy)
    dy = np.arange(h, dtype=np.float64) - ay
    # Wedge: both half-planes (a sector under 180 deg is their intersection).
    lo0, hi0 = _wedge_span(dy, angle_min_deg, lower=True)
    lo1, hi1 = _wedge_span(dy, angle_max_deg, lower=False)
    valid = ~(np.isnan(lo0) | np.isnan(lo1))
    lo, hi = np.maximum(np.nan_to_num(lo0, nan=0.0), np.nan_to_num(lo1, nan=0.0)), \
        np.minimum(np.nan_to_num(hi0, nan=0.0), np.nan_to_num(hi1, nan=0.0))
    # Annulus: |dx| <= outer and |dx| >= inner.
    outer2 = radius_max_px ** 2 - dy * dy
    valid &= outer2 >= 0
    outer = np.sqrt(np.maximum(outer2, 0.0))
    inner = np.sqrt(np.maximum(radius_min_px ** 2 - dy * dy, 0.0))
    lo, hi = np.maximum(lo, -outer), np.minimum(hi, outer)
    if window_xyxy is not None:
        lo, hi = np.maximum(lo, window_xyxy[0] - ax), np.minimum(hi, window_xyxy[2] - ax)
    lo[~valid], hi[~valid] = np.nan, np.nan
    spans = [(ax + lo, ax + np.minimum(hi, -inner)), (ax + np.maximum(lo, inner), ax + hi)]
    out = _fill_row_spans((h, w), spans)
    if window_xyxy is not None:
        out[:max(0, min(h, math.ceil(window_xyxy[1])))] = 0
        out[max(0, math.floor(window_xyxy[3]) + 1):] = 0
    return out


def _fan_mask_per_pixel(shape_hw, apex_xy, radius_min_px, radius_max_px, angle_min_deg, angle_max_deg,
                        window_xyxy) -> np.ndarray:
    """Fan mask by testing every pixel centre (sectors wider than 180 deg)."""
    h, w = shape_hw
    dx = np.arange(w, dtype=np.float32)[None, :] - np.float32(apex_xy[0])
    dy = np.arange(h, dtype=np.float32)[:, None] - np.float32(apex_xy[1])
    r, th = np.hypot(dx, dy), np.degrees(np.arctan2(dx, dy))
    inside = (r >= radius_min_px) & (r <= radius_max_px) & (th >= angle_min_deg) & (th <= angle_max_deg)
    out = inside.astype(np.uint8)
    if window_xyxy is not None:
        out &= rect_mask((h, w), window_xyxy)
    return out


def mask_from_description(description: dict, shape_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Mask of a sector described by :meth:`Sector.as_dict` (or the same keys in a JSON file).

    Parameters
    ----------
    description : ``kind`` ("fan" or "rect"), ``shape_hw`` (the frame the geometry
        refers to), and the geometry: ``apex_xy``, ``radius_min_px``,
        ``radius_max_px``, ``angle_min_deg``, ``angle_max_deg`` and an optional
        ``window_xyxy`` for a fan; ``window_xyxy`` for a rect.
    shape_hw : size of the mask; default ``description["shape_hw"]``.  A frame
        resized by the same factor in x and y keeps a fan; other factors are
        handled by testing each new pixel centre in the original frame.

    Returns
    -------
    H x W uint8 mask in {0, 1}.
    """
    h0, w0 = (int(v) for v in description["shape_hw"])
    h, w = (h0, w0) if shape_hw is None else (int(shape_hw[0]), int(shape_hw[1]))
    sx, sy = w / w0, h / h0
    window = description.get("window_xyxy")
    if window is not None:
        window = (_scale_coord(window[0], sx), _scale_coord(window[1], sy),
                  _scale_coord(window[2], sx), _scale_coord(window[3], sy))
    kind = description["kind"]
    if kind == "rect":
        return rect_mask((h, w), window if window is not None else _frame_box((h, w)))
    if kind != "fan":
        raise ValueError(f"cannot redraw a sector of kind {kind!r} from its description")
    apex = description["apex_xy"]
    args = (description["radius_min_px"], description["radius_max_px"],
            description["angle_min_deg"], description["angle_max_deg"])
    if abs(sx - sy) <= 1e-3 * max(sx, sy):
        return sector_mask_from_geometry((h, w), (_scale_coord(apex[0], sx), _scale_coord(apex[1], sy)),
                                         args[0] * sx, args[1] * sx, args[2], args[3], window)
    # Anisotropic resize: the fan is no longer a fan; test each pixel in the original frame.
    xs = (np.arange(w, dtype=np.float32) + 0.5) / sx - 0.5
    ys = (np.arange(h, dtype=np.float32) + 0.5) / sy - 0.5
    dx, dy = xs[None, :] - np.float32(apex[0]), ys[:, None] - np.float32(apex[1])
    r, th = np.hypot(dx, dy), np.degrees(np.arctan2(dx, dy))
    inside = (r >= args[0]) & (r <= args[1]) & (th >= args[2]) & (th <= args[3])
    if window is not None:
        inside &= rect_mask((h, w), window).astype(bool)
    return inside.astype(np.uint8)


def draw_sector_overlay(image: np.ndarray, sector: Sector, color_bgr: tuple[int, int, int] = (80, 220, 80),
                        dim_outside: float = 0.5) -> np.ndarray:
    """BGR picture of a frame with the sector outlined and the outside darkened.

    Parameters
    ----------
    image : H x W grey or H x W x 3 BGR frame (resized frames get a redrawn mask).
    sector : result of :func:`detect_sector`.
    color_bgr : outline colour.
    dim_outside : brightness factor outside the sector (1: unchanged).

    Returns
    -------
    H x W x 3 uint8 BGR image.
    """
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[:, :, :3].copy()
    mask = sector.mask if sector.mask.shape == canvas.shape[:2] else sector.mask_at(canvas.shape[:2])
    outside = mask == 0
    canvas[outside] = (canvas[outside] * dim_outside).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color_bgr, max(1, canvas.shape[1] // 600), cv2.LINE_AA)
    text = f"{sector.kind}  fit IoU {sector.fit_iou:.3f}"
    scale = max(0.4, canvas.shape[1] / 1600)
    org = (8, canvas.shape[0] - 10)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color_bgr, 1, cv2.LINE_AA)
    return canvas


def crop_to_sector(image: np.ndarray, sector: Sector, fill: int = 0) -> np.ndarray:
    """The sector's bounding box of a frame, with everything outside the sector set to ``fill``."""
    x, y, w, h = sector.bbox_xywh
    out = image[y:y + h, x:x + w].copy()
    out[sector.mask[y:y + h, x:x + w] == 0] = fill
    return out


# --------------------------------------------------------------------------- the textured region


def _as_gray(image: np.ndarray, source: Optional[str]) -> np.ndarray:
    """H x W uint8 view of a grey or BGR(A) frame; InputError for anything else."""
    where = f"{source}: " if source else ""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"{where}expected an 8-bit image, got {a.dtype}; "
                         "read it with fetalkit.io.images.read_gray")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = cv2.cvtColor(a, cv2.COLOR_BGRA2GRAY if a.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise InputError(f"{where}expected an H x W (or H x W x 3) image, got shape {a.shape}")
    if min(a.shape) < 32:
        raise InputError(f"{where}image is smaller than 32 x 32 pixels; no ultrasound sector to find")
    return np.ascontiguousarray(a)


def _flat_graphics(small: np.ndarray, black: int) -> np.ndarray:
    """Flat user interface (header bands, grey-scale bars) on the working grid, as uint8 {0, 1}.

    Speckle practically never repeats one grey value ``_UI_RUN`` working pixels
    (~12 frame pixels) in a row; scanner graphics do, along x (bands) or y (bars).
    Saturated white is left out: it is bone as often as graphics.
    """
    k = _UI_RUN - 1
    ex = np.zeros(small.shape, np.uint8)
    ey = np.zeros(small.shape, np.uint8)
    ex[:, 1:] = small[:, 1:] == small[:, :-1]
    ey[1:, :] = small[1:, :] == small[:-1, :]
    runs = cv2.erode(ex, np.ones((1, k), np.uint8)) | cv2.erode(ey, np.ones((k, 1), np.uint8))
    runs &= ((small > black + 4) & (small < 250)).astype(np.uint8)
    # Isolated runs inside speckle are noise; graphics make dense patches.
    return (cv2.blur(runs.astype(np.float32), (5, 5)) > 0.3).astype(np.uint8)


def _background_level(gray: np.ndarray) -> int:
    """Grey level of the frame's background; pixels at or below it are black.

    Usually 0, but some exports lift the background (e.g. to 2) while other
    graphics stay at 0, and fluid inside the image can be nearly as dark.  The
    top corners of a frame lie outside a fan (its apex is above), so the
    background is their most common dark level; when they are not dark (a
    zoomed image fills the frame) it is the darkest level of the frame.
    """
    h, w = gray.shape
    c = max(8, int(0.04 * min(h, w)))
    lo = int(gray.min())
    corners = np.concatenate([gray[:c, :c].ravel(), gray[:c, -c:].ravel()])
    hist = np.bincount(corners, minlength=256)[lo:lo + 16]
    k = int(np.argmax(hist))
    return lo + k if hist[k] >= 0.3 * corners.size else lo


IMAGED_BOX_WIDTH_PX = 160     # imaged_box looks at about this many pixels across
IMAGED_BOX_MARGIN = 0.03      # and pads the box by this fraction of the frame's sides


def imaged_box(gray: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """The rectangle (x1, y1, x2, y2, frame pixels, exclusive ends) holding a frame's
    image, without the black surround and thin graphics (tick marks, lines, text) of a
    scanner screen; None when the frame holds no image (all black).

    A cheap per-frame estimate for cropping a frame before detection: non-black pixels
    on a grid about ``IMAGED_BOX_WIDTH_PX`` across, opened with a 5 x 5 square (graphics
    up to ~4 grid steps thick vanish), their bounding box padded by ``IMAGED_BOX_MARGIN``.
    """
    h, w = gray.shape
    step = max(1, -(-w // IMAGED_BOX_WIDTH_PX))  # every step-th pixel: no resampling cost
    nonblack = (gray[::step, ::step] > _background_level(gray) + 2).astype(np.uint8)
    nonblack = cv2.morphologyEx(nonblack, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    pts = cv2.findNonZero(nonblack)
    if pts is None:
        return None
    x, y, bw, bh = cv2.boundingRect(pts)
    mx, my = IMAGED_BOX_MARGIN * w, IMAGED_BOX_MARGIN * h
    return (max(0, int(np.floor(x * step - mx))), max(0, int(np.floor(y * step - my))),
            min(w, int(np.ceil((x + bw) * step + mx))), min(h, int(np.ceil((y + bh) * step + my))))


def image_region(gray: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The textured image region of a frame on the working grid, before any geometry.

    Parameters
    ----------
    gray : H x W uint8 frame.

    Returns
    -------
    (region, sx, sy) : ``region`` is an h x w uint8 {0, 1} mask about
    ``WORK_WIDTH_PX`` wide: the largest textured region, and other large ones
    (a fan can be split by black fluid), with holes filled; ``sx``, ``sy`` the
    working-grid size over the frame size (``x_work = (x + 0.5) * sx - 0.5``).
    """
    h, w = gray.shape
    s = min(1.0, WORK_WIDTH_PX / w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    # Fraction of non-black frame pixels per working pixel: ~1 inside the image
    # (fluid is dark but rarely exactly black), 0 outside, low on text.
    black = _background_level(gray)
    nonblack = cv2.resize(cv2.threshold(gray, black, 255, cv2.THRESH_BINARY)[1], size,
                          interpolation=cv2.INTER_AREA)
    density = cv2.blur(nonblack, (3, 3))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    region = ((density > 255 * _DENSITY_MIN) & (_flat_graphics(small, black) == 0)).astype(np.uint8)
    # Text, tick marks and thin lines are narrower than the opening.
    region = cv2.morphologyEx(region, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(region)
    if contours:
        areas = [cv2.contourArea(c) for c in contours]
        keep = [c for c, a in zip(contours, areas) if a >= max(0.1 * max(areas), 0.01 * region.size)]
        cv2.drawContours(filled, keep, -1, 1, thickness=-1)
    return filled, size[0] / w, size[1] / h


# --------------------------------------------------------------------------- boundary samples and robust fits


@dataclass(frozen=True)
class _Edges:
    """Boundary samples of the working region in working pixel coordinates.

    ``left``/``right``: (y, x) of each row's outer edge; ``top``/``bottom``: (x, y)
    of each column's.  Samples at the frame border are left out: there the
    frame, not the sector, ends.
    """

    left: np.ndarray
    right: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    region_top_y: float
    shape_hw: tuple[int, int]


def _edges(region: np.ndarray) -> _Edges:
    h, w = region.shape
    rows = np.flatnonzero(region.any(1))
    cols = np.flatnonzero(region.any(0))
    r = region[rows]
    x_first = r.argmax(1)
    x_last = w - 1 - r[:, ::-1].argmax(1)
    c = region[:, cols]
    y_first = c.argmax(0)
    y_last = h - 1 - c[::-1].argmax(0)
    # A region pixel's outer edge lies half a pixel beyond its centre.  One
    # pixel of margin: some exports have a 1 px black frame.
    left = np.stack([rows, x_first - 0.5], 1)[x_first > 1]
    right = np.stack([rows, x_last + 0.5], 1)[x_last < w - 2]
    top = np.stack([cols, y_first - 0.5], 1)[y_first > 1]
    bottom = np.stack([cols, y_last + 0.5], 1)[y_last < h - 2]
    return _Edges(left.astype(np.float64), right.astype(np.float64), top.astype(np.float64),
                  bottom.astype(np.float64), float(rows[0]) if len(rows) else 0.0, (h, w))


def _ransac_line(uv: np.ndarray, min_inliers: int, rng: np.random.Generator,
                 n_iter: int = 48) -> Optional[tuple[float, float, np.ndarray]]:
    """Fit v = a * u + b robustly; (a, b, inlier mask), or None when too few samples agree."""
    n = len(uv)
    if n < max(min_inliers, 2):
        return None
    u, v = uv[:, 0], uv[:, 1]
    i, j = rng.integers(0, n, (2, n_iter))
    du = u[j] - u[i]
    ok = np.abs(du) >= 3
    if not ok.any():
        return None
    a = (v[j] - v[i])[ok] / du[ok]
    b = v[i][ok] - a * u[i][ok]
    inl = np.abs(v[None, :] - (a[:, None] * u[None, :] + b[:, None])) <= _TOL_PX * np.hypot(1.0, a)[:, None]
    best = inl[int(np.argmax(inl.sum(1)))]
    for _ in range(2):  # least squares on the consensus set
        if best.sum() < max(min_inliers, 2):
            return None
        a1, b1 = _line_lsq(u[best], v[best])
        best = np.abs(v - (a1 * u + b1)) <= _TOL_PX * math.hypot(1.0, a1)
    if best.sum() < min_inliers:
        return None
    return float(a1), float(b1), best


def _ransac_circle(xy: np.ndarray, min_inliers: int, rng: np.random.Generator,
                   n_iter: int = 64) -> Optional[tuple[float, float, float]]:
    """Fit a circle robustly to (x, y) samples; (cx, cy, r) or None."""
    n = len(xy)
    if n < max(min_inliers, 3):
        return None
    p = xy[rng.integers(0, n, (n_iter, 3))]  # n_iter x 3 x 2
    # Circumcentre of each triple.
    a11, a12 = 2 * (p[:, 1, 0] - p[:, 0, 0]), 2 * (p[:, 1, 1] - p[:, 0, 1])
    a21, a22 = 2 * (p[:, 2, 0] - p[:, 0, 0]), 2 * (p[:, 2, 1] - p[:, 0, 1])
    sq = (p ** 2).sum(2)
    b1, b2 = sq[:, 1] - sq[:, 0], sq[:, 2] - sq[:, 0]
    det = a11 * a22 - a12 * a21
    ok = np.abs(det) > 1e-6
    if not ok.any():
        return None
    cx = (b1 * a22 - b2 * a12)[ok] / det[ok]
    cy = (a11 * b2 - a21 * b1)[ok] / det[ok]
    r = np.hypot(p[ok, 0, 0] - cx, p[ok, 0, 1] - cy)
    d = np.abs(np.hypot(xy[None, :, 0] - cx[:, None], xy[None, :, 1] - cy[:, None]) - r[:, None])
    best = d[int(np.argmax((d <= _TOL_PX).sum(1)))] <= _TOL_PX
    for _ in range(2):  # algebraic (Kasa) fit on the consensus set
        if best.sum() < max(min_inliers, 3):
            return None
        q = xy[best]
        sol = np.linalg.lstsq(np.column_stack([2 * q, np.ones(len(q))]), (q ** 2).sum(1), rcond=None)[0]
        c0, c1 = sol[0], sol[1]
        rr = math.sqrt(max(sol[2] + c0 * c0 + c1 * c1, 0.0))
        best = np.abs(np.hypot(xy[:, 0] - c0, xy[:, 1] - c1) - rr) <= _TOL_PX
    if best.sum() < min_inliers:
        return None
    return float(c0), float(c1), float(rr)


def _mode(values: np.ndarray) -> tuple[float, int]:
    """Best-supported value (densest window of width 2 * _TOL_PX, its mean) and its support; (nan, 0) if empty."""
    if len(values) == 0:
        return float("nan"), 0
    v = np.sort(values)
    hi = np.searchsorted(v, v + 2 * _TOL_PX, side="right")
    k = int(np.argmax(hi - np.arange(len(v))))
    centre = float(v[k:hi[k]].mean())
    return centre, int(np.count_nonzero(np.abs(values - centre) <= _TOL_PX))


def _line_lsq(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least-squares v = a * u + b."""
    um, vm = u.mean(), v.mean()
    du = u - um
    a = float((du * (v - vm)).sum() / max((du * du).sum(), 1e-12))
    return a, float(vm - a * um)


# --------------------------------------------------------------------------- candidate geometries


@dataclass(frozen=True)
class _Fan:
    """Fan geometry on the working grid (``window`` always finite: the frame when nothing is cut)."""

    apex_xy: tuple[float, float]
    radius_min_px: float
    radius_max_px: float
    angle_min_deg: float
    angle_max_deg: float
    window: Box
    penalty: float = 0.0  # subtracted from the score: prior against unusual fans

    def mask(self, shape_hw) -> np.ndarray:
        return _fan_mask_fast(shape_hw, self.apex_xy, self.radius_min_px, self.radius_max_px,
                              self.angle_min_deg, self.angle_max_deg, self.window)


@dataclass(frozen=True)
class _Rect:
    window: Box
    penalty: float = 0.0

    def mask(self, shape_hw) -> np.ndarray:
        return rect_mask(shape_hw, self.window)


class _Scorer:
    """IoU of candidate geometries with the region.

    Ranking tests many candidates at once on a sparse grid of sample points
    (vectorised membership, no drawing); the final score is drawn on the full
    working grid.
    """

    def __init__(self, region: np.ndarray):
        self.region = region.astype(bool)
        step = max(1, int(round(max(region.shape) / 48)))
        target = self.region[step // 2::step, step // 2::step]
        ys, xs = np.mgrid[0:target.shape[0], 0:target.shape[1]]
        self.x = (xs * step + step // 2).ravel().astype(np.float32)
        self.y = (ys * step + step // 2).ravel().astype(np.float32)
        self.target = target.ravel()
        self.n_target = int(self.target.sum())

    def _iou(self, inside: np.ndarray) -> np.ndarray:
        """IoU in which a black pixel inside costs _BLACK_INSIDE_WEIGHT of a textured pixel outside.

        Black inside a fan is common (fluid, shadows, anonymisation boxes);
        texture outside the true fan is not, so candidates that cut off texture
        along a dark stretch lose.
        """
        inter = (inside & self.target).sum(1)
        false_pos = inside.sum(1) - inter
        return inter / np.maximum(self.n_target + _BLACK_INSIDE_WEIGHT * false_pos, 1)

    def fans(self, fans: list[_Fan]) -> np.ndarray:
        """Sparse-grid IoU of each fan."""
        p = np.array([(f.apex_xy[0], f.apex_xy[1], f.radius_min_px, f.radius_max_px,
                       f.angle_min_deg, f.angle_max_deg) + tuple(f.window) for f in fans], np.float64)
        col = [c[:, None].astype(np.float32) for c in p.T]
        dx, dy = self.x - col[0], self.y - col[1]
        r2 = dx * dx + dy * dy
        inside = (r2 >= col[2] * col[2]) & (r2 <= col[3] * col[3])
        th0, th1 = np.radians(p[:, 4:5]), np.radians(p[:, 5:6])
        # phi >= th0 <=> sin(phi - th0) >= 0, phi <= th1 <=> sin(th1 - phi) >= 0 (spans under 180 deg).
        after_min = dx * np.cos(th0).astype(np.float32) - dy * np.sin(th0).astype(np.float32) >= 0
        before_max = dy * np.sin(th1).astype(np.float32) - dx * np.cos(th1).astype(np.float32) >= 0
        wide = (th1 - th0) > math.pi
        inside &= np.where(wide, after_min | before_max, after_min & before_max)
        inside &= (self.x >= col[6]) & (self.x <= col[8]) & (self.y >= col[7]) & (self.y <= col[9])
        return self._iou(inside) - np.array([f.penalty for f in fans])

    def fine(self, geometry) -> float:
        """Score on the full working grid: weighted IoU less the prior's penalty."""
        return self.stats(geometry)[0] - geometry.penalty

    def stats(self, geometry) -> tuple[float, float, float, float]:
        """(weighted IoU, IoU, coverage, fill) on the full working grid.

        Coverage is the part of the textured region inside the geometry, fill
        the textured part of the geometry.
        """
        m = geometry.mask(self.region.shape).view(bool)
        inter = np.count_nonzero(m & self.region)
        n_m, n_r = np.count_nonzero(m), np.count_nonzero(self.region)
        false_pos = n_m - inter
        return (inter / max(n_r + _BLACK_INSIDE_WEIGHT * false_pos, 1), inter / max(n_r + false_pos, 1),
                inter / max(n_r, 1), inter / max(n_m, 1))


def _side_lines(samples: np.ndarray, min_inliers: int, rng, sign: int) -> list[tuple[float, float]]:
    """Up to two straight-edge candidates x = a * y + b from (y, x) samples, best first.

    ``sign`` is -1 for the left edge, +1 for the right: a fan opening downwards
    widens downwards, so its left edge runs down-left and its right edge
    down-right (or straight down, for a rectangle).
    """
    out, pts = [], samples
    for _ in range(2):
        fit = _ransac_line(pts, min_inliers, rng)
        if fit is None:
            break
        a, b, inl = fit
        # Steeper than 20 deg from horizontal, and widening downwards.
        if abs(a) < 2.8 and sign * a > -0.15:
            out.append((a, b))
        pts = pts[~inl]
    return out


def _shallow_side_lines(top: np.ndarray, min_inliers: int, rng) -> tuple[list, list]:
    """Side edges of wide fans (10 to 50 deg from horizontal), seen in the top boundary.

    Returns (lefts, rights) as x = a * y + b; from (x, y) samples fitted as
    y = c * x + d, a left edge rises to the right (c < 0), a right edge falls.
    """
    lefts, rights, pts = [], [], top
    for _ in range(2):
        fit = _ransac_line(pts, min_inliers, rng)
        if fit is None:
            break
        c, d, inl = fit
        if 0.18 <= abs(c) <= 1.2:
            (lefts if c < 0 else rights).append((1.0 / c, -d / c))
        pts = pts[~inl]
    return lefts, rights


def _near_line(pts_xy: np.ndarray, line: Optional[tuple[float, float]]) -> np.ndarray:
    """(x, y) samples within 1.5 * _TOL_PX of the side line x = a * y + b."""
    if line is None or len(pts_xy) == 0:
        return np.zeros(len(pts_xy), bool)
    a, b = line
    return np.abs(pts_xy[:, 0] - (a * pts_xy[:, 1] + b)) <= 1.5 * _TOL_PX * math.hypot(1.0, a)


def _arc_variants(apex, left, right, edges: _Edges, flat_top: tuple[float, int], min_support: int
                  ) -> list[_Fan]:
    """Fans completing an apex and its side lines.

    A side without a line is taken to lie outside the frame.  The near arc is
    offered as found, as the horizontal window cut ``flat_top`` (y, support) of
    a header band or flat probe face, and as lying outside the frame; the far arc as found and as outside.  A few
    boundary samples of a dark patch can agree on a radius by chance: the
    caller keeps the variant that fits the region best.
    """
    ax, ay = apex
    h, w = edges.shape_hw
    frame = _frame_box((h, w))
    cx = np.array([frame[0], frame[2], frame[0], frame[2]])
    cy = np.array([frame[1], frame[1], frame[3], frame[3]])
    corner_deg = np.degrees(np.arctan2(cx - ax, cy - ay))
    angle_min = math.degrees(math.atan(left[0])) if left else float(corner_deg.min()) - 1.0
    angle_max = math.degrees(math.atan(right[0])) if right else float(corner_deg.max()) + 1.0
    angle_min, angle_max = max(angle_min, -179.0), min(angle_max, 179.0)
    if angle_max - angle_min < 5.0:
        return []
    top = edges.top[~(_near_line(edges.top, left) | _near_line(edges.top, right))]
    bottom = edges.bottom[~(_near_line(edges.bottom, left) | _near_line(edges.bottom, right))]

    # Distance from the apex to the frame: a near radius up to it cuts nothing.
    r_frame = math.hypot(max(frame[0] - ax, 0.0, ax - frame[2]), max(frame[1] - ay, 0.0, ay - frame[3]))
    tops = [(r_frame, frame[1])]  # (radius_min, window top)
    r_top, support = _mode(np.hypot(top[:, 0] - ax, top[:, 1] - ay))
    if support >= min_support:
        tops.append((r_top, frame[1]))
    y_top, support = flat_top
    if support >= min_support and y_top > ay:
        tops.append((max(r_frame, 0.0), y_top))
    bottoms = [float(np.hypot(cx - ax, cy - ay).max()) + 2.0]
    r_bottom, support = _mode(np.hypot(bottom[:, 0] - ax, bottom[:, 1] - ay))
    if support >= min_support:
        bottoms.append(r_bottom)
    # Convex probes scan symmetrically about the apex's vertical; steered or
    # narrowed sectors exist but are rare, so two seen edges pay for asymmetry.
    penalty = 0.0
    if left and right:
        penalty = _ASYMMETRY_PENALTY_PER_10DEG * max(0.0, abs(angle_min + angle_max) - 2.0) / 10.0
    return [_Fan((ax, ay), max(r0, 0.0), r1, angle_min, angle_max, (frame[0], y0, frame[2], frame[3]), penalty)
            for r0, y0 in tops for r1 in bottoms if r1 > r0 + 4]


def _symmetry_axes(edges: _Edges, circles, min_support: int) -> list[float]:
    """x of plausible vertical symmetry axes: arc centres and the middle of a flat top edge."""
    axes = [c[0] for c in circles if c is not None]
    y_top, support = _mode(edges.top[:, 1])
    if support >= min_support:
        xs = edges.top[np.abs(edges.top[:, 1] - y_top) <= _TOL_PX, 0]
        w = edges.shape_hw[1]
        if xs.min() > 2 and xs.max() < w - 3:  # both ends of the flat top visible
            axes.append(0.5 * (xs.min() + xs.max()))
    out: list[float] = []
    for a in axes:
        if all(abs(a - b) > 1.0 for b in out):
            out.append(a)
    return out


def _apex_configs(edges: _Edges, rng) -> list[tuple[tuple[float, float], object, object]]:
    """(apex, left line, right line) hypotheses; a line is (a, b) for x = a * y + b, or None."""
    h, w = edges.shape_hw
    min_line = max(10, int(0.06 * h))
    min_arc = max(8, int(0.04 * w))
    lefts = _side_lines(edges.left, min_line, rng, -1)
    rights = _side_lines(edges.right, min_line, rng, +1)
    shallow_lefts, shallow_rights = _shallow_side_lines(edges.top, min_line, rng)
    lefts, rights = lefts + shallow_lefts, rights + shallow_rights
    circles = [_ransac_circle(edges.top[::2], min_arc // 2, rng),
               _ransac_circle(edges.bottom[::2], min_arc // 2, rng)]
    axes = _symmetry_axes(edges, circles, min_arc)
    out = []
    for left in lefts + [None]:
        for right in rights + [None]:
            if left and right:
                da = right[0] - left[0]
                if da > 0.02:  # the edges diverge downwards
                    y = (left[1] - right[1]) / da
                    out.append(((left[0] * y + left[1], y), left, right))
            elif left or right:
                a, b = left or right
                for axis in axes:  # a symmetric fan about a vertical axis
                    if abs(a) > 0.02:
                        apex = (axis, (axis - b) / a)
                        mirrored = (-a, 2 * axis - b)
                        out.append((apex, left or mirrored, right or mirrored))
                        out.append((apex, left, right))
                for c in circles:  # the apex where the line passes closest to an arc centre
                    if c is not None:
                        t = ((c[0] - b) * a + c[1]) / (a * a + 1.0)
                        out.append(((b + a * t, t), left, right))
                # Nothing else visible: inside the frame only the line matters; put
                # the apex on it one frame height above the region.
                y = min(edges.region_top_y, 0.0) - h
                out.append(((a * y + b, y), left, right))
            else:
                out.extend(((c[0], c[1]), None, None) for c in circles if c is not None)
    # A fan opens downwards: its apex is not below the top of the region.
    kept: list = []
    for c in out:
        if not (np.isfinite(c[0]).all() and c[0][1] <= edges.region_top_y + 0.1 * h):
            continue
        if not any(c[1:] == k[1:] and math.dist(c[0], k[0]) < 0.5 for k in kept):
            kept.append(c)
    return kept


def _rect(edges: _Edges, min_support: int) -> _Rect:
    frame = _frame_box(edges.shape_hw)

    def side(samples, default):
        v, support = _mode(samples)
        return v if support >= min_support else default

    return _Rect((side(edges.left[:, 1], frame[0]), side(edges.top[:, 1], frame[1]),
                  side(edges.right[:, 1], frame[2]), side(edges.bottom[:, 1], frame[3])))


def _window_variants(fan: _Fan, rect: _Rect, frame: Box) -> list[_Fan]:
    """The fan cut by the straight left/right/bottom region edges (a scanner's display window).

    Each seen straight edge alone, and all of them together.
    """
    sides = [k for k in (0, 2, 3) if rect.window[k] != frame[k]]
    out = []
    for ks in [[k] for k in sides] + ([sides] if len(sides) > 1 else []):
        win = list(fan.window)
        for k in ks:
            win[k] = rect.window[k]
        out.append(replace(fan, window=tuple(win)))
    return out


def _top(candidates: list, scores: np.ndarray, n: int) -> list:
    return [candidates[k] for k in np.argsort(-scores, kind="stable")[:n]]


def _fit(region: np.ndarray):
    """Best geometry for a working-grid region and its IoU with the region; (None, IoU) when none fits.

    Every fan hypothesis is ranked on a sparse grid; the best few are tried
    with display-window cuts, re-ranked, and the best three scored exactly
    against each other and the rectangle.
    """
    edges = _edges(region)
    h, w = region.shape
    rng = np.random.default_rng(_RNG_SEED)
    scorer = _Scorer(region)
    min_arc = max(8, int(0.04 * w))
    rect = _rect(edges, min_arc)
    flat_top = _mode(edges.top[:, 1])
    fans = [f for apex, left, right in _apex_configs(edges, rng)
            for f in _arc_variants(apex, left, right, edges, flat_top, min_arc)]
    best, best_score = rect, scorer.fine(rect)
    if fans:
        fans = _top(fans, scorer.fans(fans), 6)
        fans += [v for f in fans for v in _window_variants(f, rect, _frame_box((h, w)))]
        for f in _top(fans, scorer.fans(fans), 3):
            score = scorer.fine(f)
            if score > best_score + 1e-4:  # a rectangle wins ties: it is the simpler model
                best, best_score = f, score
    _, iou, coverage, fill = scorer.stats(best)
    if coverage < _COVERAGE_MIN or fill < _FILL_MIN:
        return None, iou
    return best, iou


# --------------------------------------------------------------------------- public


def detect_sector(image: np.ndarray, source: Optional[str] = None) -> Sector:
    """Find the imaging sector (fan or rectangle) of one ultrasound frame.

    Parameters
    ----------
    image : H x W uint8 grey frame (H x W x 3 BGR is converted).
    source : name of the file the frame came from, for error messages.

    Returns
    -------
    Sector : mask (frame size), bounding box, kind, geometry in frame pixels and
    ``fit_iou``.  For a clip, detect on one frame (or a few, keeping the best
    ``fit_iou``) and reuse the result: the sector does not move.

    Raises
    ------
    InputError : no sector in the frame (blank, too dark, only text).

    Example
    -------
    >>> from fetalkit.synth.phantom import head_phantom
    >>> detect_sector(head_phantom(seed=1).image).kind
    'fan'
    """
    gray = _as_gray(image, source)
    region, sx, sy = image_region(gray)
    if region.sum() < _MIN_AREA_FRACTION * region.size:
        where = f"{source}: " if source else ""
        raise InputError(f"{where}no ultrasound sector found (the frame is blank, too dark or only text); "
                         "pass a B-mode frame")
    geometry, fit_iou = _fit(region)
    return _to_frame(geometry, fit_iou, region, gray.shape, sx, sy)


def detect_sector_in_frames(frames, max_frames: int = 16, source: Optional[str] = None) -> Sector:
    """Find the imaging sector of a clip from several of its frames.

    The per-pixel maximum of up to ``max_frames`` evenly spaced frames fills
    dark fluid and shadows that move between frames, while the static user
    interface stays as it is; the sector is then found on that one picture.

    Parameters
    ----------
    frames : sequence of H x W (or H x W x 3 BGR) uint8 frames of one clip.
    max_frames : how many frames to combine.
    source : name of the clip, for error messages.

    Returns
    -------
    Sector of the clip (valid for every frame).
    """
    n = len(frames)
    if n == 0:
        raise InputError(f"{source + ': ' if source else ''}no frames to find a sector in")
    picks = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    stack = np.max(np.stack([_as_gray(frames[k], source) for k in picks]), axis=0)
    return detect_sector(stack, source)


def _to_frame(geometry, fit_iou: float, region: np.ndarray, shape_hw, sx: float, sy: float) -> Sector:
    """Express the working-grid geometry in frame pixels and draw its mask."""
    def fx(v):
        return (v + 0.5) / sx - 0.5

    def fy(v):
        return (v + 0.5) / sy - 0.5

    fit_iou = round(float(fit_iou), 4)
    if geometry is None:
        hull = cv2.convexHull(cv2.findNonZero(region))
        small = np.zeros_like(region)
        cv2.fillConvexPoly(small, hull, 1)
        mask = cv2.resize(small, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_NEAREST)
        return Sector(mask, _bbox(mask), "other", fit_iou=fit_iou)
    frame = _frame_box(shape_hw)
    x0, y0, x1, y1 = geometry.window
    # Window sides at the working frame's border are the frame's border.
    window = (frame[0] if x0 <= -0.5 else fx(x0), frame[1] if y0 <= -0.5 else fy(y0),
              frame[2] if x1 >= region.shape[1] - 0.5 else fx(x1),
              frame[3] if y1 >= region.shape[0] - 0.5 else fy(y1))
    window = tuple(round(float(v), 2) for v in window)
    if isinstance(geometry, _Rect):
        mask = rect_mask(shape_hw, window)
        return Sector(mask, _bbox(mask), "rect", window_xyxy=window, fit_iou=fit_iou)
    s = 0.5 * (sx + sy)
    g = geometry
    apex = (round(float(fx(g.apex_xy[0])), 2), round(float(fy(g.apex_xy[1])), 2))
    r0, r1 = round(float(g.radius_min_px / s), 2), round(float(g.radius_max_px / s), 2)
    a0, a1 = round(float(g.angle_min_deg), 3), round(float(g.angle_max_deg), 3)
    mask = sector_mask_from_geometry(shape_hw, apex, r0, r1, a0, a1, window)
    return Sector(mask, _bbox(mask), "fan", apex_xy=apex, radius_min_px=r0, radius_max_px=r1,
                  angle_min_deg=a0, angle_max_deg=a1, window_xyxy=None if window == frame else window,
                  fit_iou=fit_iou)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(mask)
    return (int(x), int(y), int(w), int(h))
