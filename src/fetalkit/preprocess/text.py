"""Burned-in text and annotation removal.

Real frames carry burned-in patient names, dates, scanner settings, calipers
(``+`` / ``x`` marks and dotted lines), arrows and measurement labels: mostly
outside the imaging sector, but calipers, arrows and labels also inside it.

Method (after the preprocessing of Section 3.2 of the genital-tubercle paper:
top-hat with a 7 x 7 rectangle, Otsu + hysteresis thresholding, 3 x 3 dilation,
OpenCV inpainting), confined so that anatomy survives:

1. **Top-hat.**  ``grey - opening(grey, 7 x 7 rectangle)`` keeps bright
   structures too thin to hold a 7 x 7 square: glyph strokes, marks, dots.
2. **Otsu + hysteresis.**  The Otsu threshold of the top-hat image, floored at
   ``min_contrast_grey`` (on a frame without text Otsu only splits speckle),
   sets the high threshold; pixels above the low one are kept when connected
   to a pixel above the high one.  Inside the sector a candidate pixel must
   also be bright (``inside_low_grey``), and a seed near-saturated
   (``inside_min_grey``), so that a stroke on tissue does not merge with it.
3. **Confinement.**  A component lying (almost) entirely outside the sector
   counts whole: there is no anatomy there.  Inside the sector, by default
   (``inside_method="learned"``), the overlay-pixel model decides pixel by
   pixel on crops around the seed pixels: a small fully convolutional network
   trained on clean HC18 / PSFHS frames with pasted overlays
   (:mod:`fetalkit.training.overlayseg`), so a caliper dot touching a bright
   echo is taken and the echo left.  With ``inside_method="rules"`` a
   component inside counts only
   when it looks *drawn*, not scanned: thin (``inside_max_stroke_px``), not
   long or large (``inside_max_size_px``, ``inside_max_area_px``), with some
   flat top (``inside_min_plateau``)
   and a drawn-score of at least ``inside_min_score``.  The score adds three
   standardised cues: *sharpness* (graphics are drawn at pixel resolution, so
   a stroke pixel drops to the background within one pixel, while echoes are
   blurred by the point-spread function: bright skull echoes can be thin but
   are not sharp), *excess* over the brightest thick tissue within 4 px
   (overlays stand above their surroundings, speckle peaks barely do) and
   *plateau* (overlays are drawn in one colour, so many of their pixels share
   the maximum grey level).  Components that fail only the brightness of the
   seed are accepted when they pass the shape tests and lie within
   ``link_px`` of an accepted one (the dim, anti-aliased pieces of a glyph).
4. **Dilation** (3 x 3) recovers the anti-aliased rims of the strokes (not
   of the model's pixels: it was trained on the footprint, rims included).
5. **Wide, grey and dark text** (``wide_kernel_px``, 17 px): strokes wider
   than the 7 x 7 kernel (bold or large text), of any grey level, bright
   (top-hat) or dark on a flat label (black-hat), are found as *drawn
   plateaus*: one grey level filling the stroke, at its extreme, dropping to
   the background within a 1-2 px rim, which clipped echoes (flat but fading
   over many pixels) and dark fluid (not on a flat label) are not.  Only crops
   around 3 x 3-flat strong pixels are examined.  The label around dark
   letters is background: its grey is kept out of the bright candidates.
6. **Boxes.**  Letters a few pixels apart are grouped into words and lines;
   outside the sector each group's bounding box, grown by ``blank_margin_px``,
   is removed whole, so the halo and dark outline around the letters (which
   the strokes' mask misses and a contrast stretch would bring back) go too.
   Inside the sector a group is boxed only where it sits on a flat, not black
   bar or label (a UI element the sector fit took in).
7. **Removal.**  Inside the sector the mask is inpainted with ``cv2.inpaint``
   on small crops around each group of components (inpainting cost grows with
   the crop, so the frame is never inpainted as a whole).  Outside the sector
   (and in the boxes on a bar inside it) text is *blanked, not inpainted*:
   each box is set to one flat value, the median of the background in and
   beside it (the bar it sits on), so no gradient is left for a contrast
   stretch to show.  :func:`fetalkit.audit.pixels.band_trace_ratio` measures what is left.

All functions take H x W uint8 grayscale arrays (an H x W x 3 BGR frame is also
accepted: strongly coloured pixels, such as yellow or green calipers, then
count as overlay candidates that skip the brightness and drawn-score tests).
Inputs are never modified in place.

Limits: inside the sector, thin (1-2 px) overlays that are dim (<
``inside_min_grey``), darker than their surroundings or barely brighter (text
on bright tissue), dark text not on a flat label, filled shapes wider than
``wide_kernel_px`` (a solid logo, a colour bar), blurred (resized,
JPEG-compressed) overlays and long solid lines (> ``inside_max_size_px``) are
kept; inpainting there restores smooth texture, not the dark outline some
scanners draw around letters, which blanking removes only on bars and labels.  On low-resolution
frames whose speckle is as sharp as a glyph stroke (e.g. 256 x 256 PSFHS)
isolated bright speckle peaks inside the sector are sometimes taken for dots.
Inpainting restores smooth texture, not speckle.

Example
-------
>>> import cv2
>>> from fetalkit.synth.phantom import head_phantom
>>> p = head_phantom(0)
>>> framed = cv2.putText(p.image.copy(), "HC 172.4 mm", (300, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255)
>>> result = remove_overlay(framed, p.sector)
>>> bool(result.overlay_mask[190:202, 300:400].any()), bool((framed != p.image).any())
(True, True)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from fetalkit.errors import InputError
from fetalkit.runtime.preprocess import normalise

__all__ = [
    "TextRemovalParams",
    "CleanResult",
    "SyntheticOverlays",
    "detect_overlay",
    "overlay_seeds",
    "remove_overlay",
    "draw_synthetic_overlays",
]

# Drawn-score: each cue is centred between typical echo and overlay values and
# scaled by its spread (measured on HC18 / PSFHS frames with pasted overlays).
_SHARPNESS_MID, _SHARPNESS_SCALE = 0.6, 0.2    # echoes ~0.45-0.8, strokes ~0.85-1.05
_EXCESS_MID_GREY, _EXCESS_SCALE_GREY = 100.0, 50.0
_PLATEAU_MID, _PLATEAU_SCALE = 0.1, 0.3        # echoes ~0.01-0.1, strokes ~0.2-1
_PLATEAU_TOLERANCE_GREY = 2
_BACKGROUND_WINDOW_PX = 9                      # "thick tissue nearby" for the excess cue


@dataclass(frozen=True)
class TextRemovalParams:
    """Settings of :func:`detect_overlay` and :func:`remove_overlay`.

    Paper defaults (Section 3.2): ``tophat_kernel_px=7`` (rectangle), Otsu +
    hysteresis, ``dilation_px=3`` (rectangle), OpenCV inpainting.
    :meth:`paper_baseline` gives that pipeline without the confinement.

    Parameters
    ----------
    tophat_kernel_px : side of the square top-hat structuring element; bright
        structures thinner than this are candidates.
    high_fraction, low_fraction : hysteresis thresholds as fractions of the
        (floored) Otsu threshold of the top-hat image.
    min_contrast_grey : floor of the Otsu threshold, in grey levels of top-hat
        response: an overlay must stand this much above its surroundings.
    dilation_px : side of the square dilation of the detected strokes (recovers
        anti-aliased rims); 1 disables it.
    inpaint_radius_px : ``inpaintRadius`` of ``cv2.inpaint``.
    inpaint_method : ``cv2.INPAINT_TELEA`` or ``cv2.INPAINT_NS``.
    min_component_px : smaller components are ignored (1 keeps one-pixel dots).
    outside_max_inside_fraction : a component with at most this fraction of its
        pixels inside the sector is judged as outside (text touching the fan edge).
    inside_min_grey : inside the sector a component needs a seed pixel at least
        this bright (overlays are drawn near white).
    inside_low_grey : inside the sector, darker pixels are never candidates.
    inside_max_stroke_px : widest stroke (2 x distance-transform maximum - 1)
        accepted inside the sector.
    inside_max_size_px : longest bounding-box side accepted inside the sector.
    inside_max_area_px : largest component (pixels) accepted inside the sector
        (a label is a few hundred pixels; a saturated echo band is more).
    inside_min_plateau : least fraction of a component's pixels within 2 grey
        levels of its maximum (large saturated echoes have almost none).
    inside_min_score : least drawn-score (sharpness + excess + plateau, each
        standardised) of a component inside the sector.
    link_px : unseeded components passing the shape tests within this distance
        of an accepted component are accepted too; 0 disables it.
    colour_min_chroma : for BGR input, pixels with max - min over the channels
        at least this are colour-overlay candidates (B-mode is grey; scanner
        tints stay below about 25).
    fill_outside : ``"background"`` blanks text outside the sector: each word
        or line box (``blank_margin_px``) is set to one value, the median of
        the background in and beside it (the bar it sits on), so no outline
        survives a contrast stretch; ``"inpaint"`` inpaints the same pixels.
    inside_method : how grey overlays inside the sector are told from anatomy:
        ``"learned"`` (default) asks the overlay-pixel model (:data:`OVERLAY_MODEL`,
        a small fully convolutional network trained on pasted overlays, see
        ``fetalkit train overlay-seg``) about every pixel near a seed;
        ``"rules"`` uses the drawn-stroke gates (``inside_*``, ``link_px``).
    overlay_model : bundled name or ``.onnx`` path of the overlay-pixel model
        (``overlay-fcn-int8``, its static INT8 version, by default; ``overlay-fcn`` is the FP32 one).
    learned_threshold : probability above which a pixel may count as overlay
        (the low threshold of a hysteresis); ``None`` takes the operating point
        stored in the model's card.
    learned_high_threshold : a group of such pixels (8-connected) counts only
        when one of its pixels reaches this probability, so that faint rims of a
        confident stroke are kept and lone speckle at the low threshold is not;
        ``None`` takes the card's (the low threshold when the card has none).
    learned_halo_px : context around the seeds given to the model (beyond it
        the model sees zero padding).
    wide_kernel_px : side of the square top-hat / black-hat of the *drawn
        plateau* path, which finds strokes up to this wide (bold and large
        text), of any grey level, bright or dark on a flat label; 0 disables it.
    plateau_min_px : least number of pixels at a component's plateau value
        (drawn text is filled with one grey level).
    plateau_min_fraction : least fraction of a component's pixels near its
        plateau that lie on it (the rest is a 1-2 px anti-aliased rim).
    plateau_min_steep : least fraction of the pixels 2 px outside the plateau
        that differ from it by half its contrast or more (drawn text drops to
        the background within its rim; clipped echoes fade over many pixels).
    level_block_px : the *drawn level* path finds thin (1-2 px) text dimmer
        than ``inside_min_grey`` inside the sector: in each block of this side
        (and in a grid offset by half a block) the pixels standing out of the
        7 x 7 top-hat are counted per grey level; 0 disables the path.
    level_min_px : least number of such pixels at one level in a block (a drawn
        stroke's core is one grey level; speckle spreads over many).
    level_spike : that count must be this many times the mean count of the two
        levels on either side (levels the frame does not use are skipped, so a
        stretched frame's comb histogram is not a spike).
    level_min_group_px : least number of spike pixels, each with an 8-neighbour
        at its own level, in a group of letters (joined 3 rows x 9 columns).
    label_max_std_grey : dark strokes count only on a flat label: the spread of
        the label value (grey closing) around them, at most this.
    blank_margin_px : text outside the sector (or on a bar inside it) is
        blanked in boxes, one per word or line, grown by this margin beyond the
        detected pixels (the anti-aliased halo and dark outline scanners draw
        around letters).
    blank_max_height_px : taller groups (lines, bars, fan edges) are not boxed,
        only their detected pixels are blanked.
    """

    tophat_kernel_px: int = 7
    high_fraction: float = 1.0
    low_fraction: float = 0.5
    min_contrast_grey: float = 24.0
    dilation_px: int = 3
    inpaint_radius_px: float = 3.0
    inpaint_method: int = cv2.INPAINT_TELEA
    min_component_px: int = 1
    outside_max_inside_fraction: float = 0.1
    inside_min_grey: int = 160
    inside_low_grey: int = 140
    inside_max_stroke_px: float = 6.0
    inside_max_size_px: int = 128
    inside_max_area_px: int = 400
    inside_min_plateau: float = 0.02
    inside_min_score: float = 2.0
    link_px: int = 2
    colour_min_chroma: int = 60
    fill_outside: str = "background"
    inside_method: str = "learned"
    overlay_model: str = "overlay-fcn-int8"
    learned_threshold: Optional[float] = None
    learned_high_threshold: Optional[float] = None
    learned_halo_px: int = 8
    wide_kernel_px: int = 17
    plateau_min_px: int = 12
    plateau_min_fraction: float = 0.4
    plateau_min_steep: float = 0.75
    level_block_px: int = 32
    level_min_px: int = 10
    level_spike: float = 5.0
    level_min_group_px: int = 20
    label_max_std_grey: float = 2.0
    blank_margin_px: int = 3
    blank_max_height_px: int = 128

    @classmethod
    def paper_baseline(cls) -> "TextRemovalParams":
        """The unconfined pipeline of the paper: every top-hat component counts, all is inpainted.

        Use it with ``sector_mask=None``; it erases thin bright anatomy too.
        """
        return cls(inside_min_grey=0, inside_low_grey=0, inside_max_stroke_px=float("inf"),
                   inside_max_size_px=2 ** 30, inside_max_area_px=2 ** 62, inside_min_plateau=0.0,
                   inside_min_score=-float("inf"), link_px=0, fill_outside="inpaint",
                   inside_method="rules", wide_kernel_px=0)

    def __post_init__(self) -> None:
        for name in ("tophat_kernel_px", "dilation_px"):
            value = getattr(self, name)
            if int(value) != value or value < 1 or value % 2 == 0:
                raise ValueError(f"{name} must be an odd positive integer, got {value!r}")
        if not 0.0 < self.low_fraction <= self.high_fraction:
            raise ValueError(f"need 0 < low_fraction <= high_fraction, got {self.low_fraction}, "
                             f"{self.high_fraction}")
        if self.inpaint_method not in (cv2.INPAINT_TELEA, cv2.INPAINT_NS):
            raise ValueError("inpaint_method must be cv2.INPAINT_TELEA or cv2.INPAINT_NS")
        if self.inpaint_radius_px <= 0:
            raise ValueError(f"inpaint_radius_px must be positive, got {self.inpaint_radius_px}")
        if not 0.0 <= self.outside_max_inside_fraction < 1.0:
            raise ValueError("outside_max_inside_fraction must be in [0, 1)")
        if self.min_component_px < 1 or self.link_px < 0:
            raise ValueError("min_component_px must be >= 1 and link_px >= 0")
        if self.fill_outside not in ("background", "inpaint"):
            raise ValueError(f"fill_outside must be 'background' or 'inpaint', got {self.fill_outside!r}")
        if self.inside_method not in ("learned", "rules"):
            raise ValueError(f"inside_method must be 'learned' or 'rules', got {self.inside_method!r}")
        for name in ("learned_threshold", "learned_high_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.learned_halo_px < 0:
            raise ValueError(f"learned_halo_px must be >= 0, got {self.learned_halo_px}")
        if self.wide_kernel_px and (self.wide_kernel_px < 3 or self.wide_kernel_px % 2 == 0):
            raise ValueError(f"wide_kernel_px must be 0 or an odd integer >= 3, got {self.wide_kernel_px}")
        if self.level_block_px and (self.level_block_px < 8 or self.level_min_px < 2 or self.level_spike < 1
                                    or self.level_min_group_px < 1):
            raise ValueError("level_block_px must be 0 or >= 8, level_min_px >= 2, level_spike >= 1 and "
                             "level_min_group_px >= 1")
        if self.blank_margin_px < 0 or self.blank_max_height_px < 1 or self.plateau_min_px < 1:
            raise ValueError("blank_margin_px must be >= 0, blank_max_height_px and plateau_min_px >= 1")


@dataclass(frozen=True)
class CleanResult:
    """Output of :func:`remove_overlay`.

    ``image`` is the cleaned frame (same shape and dtype as the input);
    ``overlay_mask`` H x W uint8 in {0, 1}, the pixels that were replaced;
    ``inpainted_px`` of them were inpainted (inside the sector), ``filled_px``
    blanked to the local background (outside it, or on a bar or label inside
    it); ``n_regions`` crops were inpainted.
    """

    image: np.ndarray
    overlay_mask: np.ndarray
    inpainted_px: int
    filled_px: int
    n_regions: int


# --------------------------------------------------------------------------- detection


def _as_gray(image: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Grey frame and, for BGR input, the per-pixel chroma (max - min over channels)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InputError(f"expected a uint8 numpy image, got {getattr(image, 'dtype', type(image))}")
    if image.ndim == 2:
        return image, None
    if image.ndim == 3 and image.shape[2] == 3:
        chroma = cv2.subtract(image.max(axis=2), image.min(axis=2))
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), chroma
    raise InputError(f"expected an H x W grey or H x W x 3 BGR image, got shape {image.shape}")


def _inside_mask(sector_mask: Optional[np.ndarray], shape_hw: tuple[int, int]) -> np.ndarray:
    """Boolean sector; ``None`` means the whole frame is inside (the conservative choice)."""
    if sector_mask is None:
        return np.ones(shape_hw, dtype=bool)
    if sector_mask.shape[:2] != tuple(shape_hw):
        raise ValueError(f"sector_mask shape {sector_mask.shape} does not match the image {shape_hw}")
    return sector_mask.astype(bool)


def _square(side_px: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_RECT, (int(side_px), int(side_px)))


def _hysteresis_thresholds(tophat: np.ndarray, params: TextRemovalParams) -> tuple[float, float]:
    """(low, high) top-hat thresholds from Otsu, floored at ``min_contrast_grey``."""
    otsu, _ = cv2.threshold(tophat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    base = max(float(otsu), params.min_contrast_grey)
    return params.low_fraction * base, params.high_fraction * base


@dataclass(frozen=True)
class _Components:
    """Candidate components and the features the gates use (index 0 = background)."""

    labels: np.ndarray          # H x W int32
    area_px: np.ndarray
    size_px: np.ndarray         # longest bounding-box side
    seeded: np.ndarray          # holds a seed pixel
    inside: np.ndarray          # judged by the inside rules
    stroke_px: np.ndarray       # 2 x max distance to the background - 1
    sharpness: np.ndarray       # mean of (grey - 3x3 erosion) / top-hat
    excess_grey: np.ndarray     # max of grey - brightest nearby opening
    plateau: np.ndarray         # fraction of pixels within 2 grey of the maximum

    def score(self) -> np.ndarray:
        """Drawn-score: standardised sharpness + excess + plateau."""
        return ((self.sharpness - _SHARPNESS_MID) / _SHARPNESS_SCALE
                + (self.excess_grey - _EXCESS_MID_GREY) / _EXCESS_SCALE_GREY
                + (self.plateau - _PLATEAU_MID) / _PLATEAU_SCALE)


def _label_boxes(labels: np.ndarray, foreground: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-label bounding boxes (x0, y0, x1, y1), end-exclusive; label 0 spans the frame.

    ``foreground`` is the uint8 mask that was labelled.  numpy over its pixels
    only: ``cv2.connectedComponentsWithStats`` costs about 5 ms on a 800 x 540
    frame, labelling alone about 1 ms.
    """
    points = cv2.findNonZero(foreground)
    points = np.zeros((0, 2), np.int32) if points is None else points.reshape(-1, 2)
    xs, ys = points[:, 0], points[:, 1]
    lab = labels[ys, xs]
    h, w = labels.shape
    # same dtypes everywhere: ufunc.at takes a slow path when it has to cast
    x0, y0 = np.full(n, w, np.int32), np.full(n, h, np.int32)
    x1, y1 = np.zeros(n, np.int32), np.zeros(n, np.int32)
    np.minimum.at(x0, lab, xs)
    np.minimum.at(y0, lab, ys)
    np.maximum.at(x1, lab, xs + np.int32(1))
    np.maximum.at(y1, lab, ys + np.int32(1))
    x0[0], y0[0], x1[0], y1[0] = 0, 0, w, h
    return x0, y0, x1, y1


def _per_label_max(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(out, labels, values)
    return out


def _per_label_mean(labels: np.ndarray, values: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.bincount(labels, weights=values, minlength=count.size) / np.maximum(count, 1)


def _grey_candidates(gray: np.ndarray, tophat: np.ndarray, inside: np.ndarray,
                     params: TextRemovalParams) -> tuple[np.ndarray, np.ndarray]:
    """(candidate, seed) pixel masks of the top-hat hysteresis; brighter ones inside the sector."""
    low, high = _hysteresis_thresholds(tophat, params)
    outside = ~inside
    candidate = (tophat >= low) & (outside | (gray >= params.inside_low_grey))
    seed = (tophat >= high) & (outside | (gray >= params.inside_min_grey))
    return candidate, seed


def _components(gray: np.ndarray, tophat: np.ndarray, candidate: np.ndarray, seed: np.ndarray,
                inside: np.ndarray, params: TextRemovalParams) -> _Components:
    """Label ``candidate`` (8-connected) and measure what the gates need."""
    cand_u8 = candidate.view(np.uint8)
    n, labels = cv2.connectedComponents(cand_u8, connectivity=8)
    on = labels > 0
    lab = labels[on]
    area = np.bincount(lab, minlength=n)
    x0, y0, x1, y1 = _label_boxes(labels, cand_u8, n)
    seeded = np.bincount(labels[seed & on], minlength=n) > 0
    n_inside = np.bincount(labels[inside & on], minlength=n)

    dist = cv2.distanceTransform(cand_u8, cv2.DIST_L2, 3)
    stroke = 2.0 * _per_label_max(lab, dist[on], n) - 1.0
    grey_on = gray[on].astype(np.float32)
    top_on = tophat[on].astype(np.float32)
    drop = (gray - cv2.erode(gray, _square(3)))[on].astype(np.float32)  # never negative
    sharpness = _per_label_mean(lab, np.minimum(drop / np.maximum(top_on, 1.0), 1.5), area)
    opening = cv2.subtract(gray, tophat)
    nearby_tissue = cv2.dilate(opening, _square(_BACKGROUND_WINDOW_PX))[on].astype(np.float32)
    excess = _per_label_max(lab, grey_on - nearby_tissue, n)
    peak = _per_label_max(lab, grey_on, n)
    plateau = _per_label_mean(lab, (grey_on >= peak[lab] - _PLATEAU_TOLERANCE_GREY).astype(np.float32), area)
    return _Components(
        labels=labels, area_px=area, size_px=np.maximum(x1 - x0, y1 - y0), seeded=seeded,
        inside=n_inside > params.outside_max_inside_fraction * area,
        stroke_px=stroke, sharpness=sharpness, excess_grey=excess, plateau=plateau)


def _accepted(c: _Components, params: TextRemovalParams, coloured: bool = False) -> np.ndarray:
    """Per-component verdict (module docstring, step 3); colour components skip the drawn-score."""
    drawn = ((c.stroke_px <= params.inside_max_stroke_px) & (c.size_px <= params.inside_max_size_px)
             & (c.area_px <= params.inside_max_area_px))
    if not coloured:
        drawn &= (c.plateau >= params.inside_min_plateau) & (c.score() >= params.inside_min_score)
    eligible = (c.area_px >= params.min_component_px) & (~c.inside | drawn)
    eligible[0] = False
    return _seeded_and_linked(c.labels, eligible, c.seeded, params.link_px)


def _seeded_and_linked(labels: np.ndarray, eligible: np.ndarray, seeded: np.ndarray, link_px: int) -> np.ndarray:
    """Eligible components holding a seed, then (hysteresis at the component level) eligible
    dim pieces within ``link_px`` of them; per-label bool."""
    keep = eligible & seeded
    if link_px > 0 and keep.any():
        near = cv2.dilate(np.take(keep.view(np.uint8), labels), _square(2 * link_px + 1))
        keep |= eligible & (np.bincount(labels[near > 0], minlength=keep.size) > 0)
    return keep


def _outside_accepted(candidate: np.ndarray, seed: np.ndarray, params: TextRemovalParams
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, per-label verdict) for candidates outside the sector, where no anatomy is:
    every seeded component counts (the verdict of :func:`_accepted` there, without
    measuring the shape features it does not use)."""
    n, labels = cv2.connectedComponents(candidate.view(np.uint8), connectivity=8)
    if params.min_component_px > 1:
        eligible = np.bincount(labels.ravel(), minlength=n) >= params.min_component_px
    else:
        eligible = np.ones(n, bool)
    eligible[0] = False
    seeded = np.bincount(labels[seed & candidate], minlength=n) > 0
    return labels, _seeded_and_linked(labels, eligible, seeded, params.link_px)


# --------------------------------------------------------------------------- wide, grey and dark text: drawn plateaus

_LABEL_FLAT_GREY = 2        # a label pixel is within this of the label value
_CORE_BLOCK_PX = 8          # plateau cores are grouped into crops on blocks this big


@dataclass(frozen=True)
class _Plateaus:
    """Plateaus found in a top-hat / black-hat and their verdicts (index 0 = background)."""

    labels: np.ndarray          # H x W int32: each pixel within 2 px of a plateau, by its plateau
    accepted: np.ndarray        # per plateau: drawn
    label_value: np.ndarray     # per plateau: grey closing on it (the label under dark text)


def _plateaus(gray: np.ndarray, resp: np.ndarray, allowed: np.ndarray, low: float, high: float,
              bright: bool, params: TextRemovalParams, closing: Optional[np.ndarray] = None) -> _Plateaus:
    """Plateaus of the components of ``resp >= low`` (seeded by ``resp >= high``) that look drawn, not scanned.

    Drawn text is filled with one grey level: a component's *plateau* is the
    most common level of its strong pixels, and each connected run of pixels
    at that level is judged on its own (a letter touching an echo stays a
    letter).  It must be the brightest level within 2 px (the darkest for
    ``bright=False``) and drop to the background within a 1-2 px rim: most
    pixels 2 px outside it differ from it by half the contrast.  Echoes
    clipped at the scanner's maximum are flat too, but fade over many pixels;
    dark fluid fades sharply, so dark plateaus (``closing`` given) must also
    sit on a flat label: the grey closing on them varies by at most
    ``label_max_std_grey`` and most of their ring is at its value.
    """
    cand = ((resp >= low) & allowed).view(np.uint8)
    n, components = cv2.connectedComponents(cand, connectivity=8)
    on = components > 0
    comp, g = components[on], gray[on].astype(np.int64)
    strong = resp[on] >= high
    # per-component histogram of the strong pixels' grey levels: the plateau level is its mode
    hist = np.bincount(comp[strong] * 256 + g[strong], minlength=n * 256).reshape(n, 256)
    level = np.where(hist.sum(axis=1) > 0, hist.argmax(axis=1), -1)
    plateau = np.zeros(gray.shape, bool)
    plateau[on] = g == level[comp]
    plateau_u8 = plateau.view(np.uint8)
    m, labels = cv2.connectedComponents(plateau_u8, connectivity=8)
    value = np.zeros(m, np.int64)
    value[labels[plateau]] = gray[plateau]
    plateau_n = np.bincount(labels[plateau], minlength=m)
    contrast = np.bincount(labels[plateau], weights=resp[plateau], minlength=m) / np.maximum(plateau_n, 1)
    # pixels within 2 px of a plateau belong to it (the larger label where two are that close)
    owner = cv2.dilate(labels.astype(np.float32), _square(5)).astype(np.int64)
    near = (owner > 0) & on
    near_n = np.bincount(owner[near], minlength=m)
    beyond = np.zeros(m, np.float64)  # the most any pixel within 2 px passes the plateau level
    np.maximum.at(beyond, owner[near], (gray[near] - value[owner[near]]) * (1 if bright else -1))
    # the ring 2 px outside each plateau, beyond a 1 px rim
    ring = (owner > 0) & (cv2.dilate(plateau_u8, _square(3)) == 0)
    ring_owner, ring_grey = owner[ring], gray[ring].astype(np.float64)
    ring_n = np.maximum(np.bincount(ring_owner, minlength=m), 1)
    drop = np.abs(ring_grey - value[ring_owner]) >= 0.5 * contrast[ring_owner]
    steep = np.bincount(ring_owner, weights=drop, minlength=m) / ring_n
    # a stroke 3 px wide or more (thinner ones are the top-hat path's): a pixel with its 3 x 3 on the plateau
    cored = np.bincount(labels[cv2.erode(plateau_u8, _square(3)) > 0], minlength=m) > 0
    accepted = ((beyond <= 2) & cored & (plateau_n >= params.plateau_min_px) & (contrast >= high)
                & (plateau_n >= params.plateau_min_fraction * near_n) & (steep >= params.plateau_min_steep))
    label_value = np.zeros(m)
    if closing is not None:  # dark strokes: only on a flat label
        c = closing[plateau].astype(np.float64)
        mean = np.bincount(labels[plateau], weights=c, minlength=m) / np.maximum(plateau_n, 1)
        var = np.bincount(labels[plateau], weights=c * c, minlength=m) / np.maximum(plateau_n, 1) - mean ** 2
        flat = np.abs(ring_grey - mean[ring_owner]) <= _LABEL_FLAT_GREY
        on_label = np.bincount(ring_owner, weights=flat, minlength=m) / ring_n
        accepted &= (np.sqrt(np.maximum(var, 0.0)) <= params.label_max_std_grey) & (on_label >= 0.5)
        label_value = mean
    accepted[0] = False
    return _Plateaus(labels=np.where(near, owner, 0), accepted=accepted, label_value=label_value)


def _core_crops(cores: np.ndarray, margin_px: int):
    """(rows, cols) slices around groups of ``cores``: cores in touching 8 x 8 blocks share a
    crop, grown by ``margin_px`` (grouped on the 64 times smaller block map, which costs
    nothing next to labelling the frame)."""
    h, w = cores.shape
    b = _CORE_BLOCK_PX
    points = cv2.findNonZero(cores.view(np.uint8))
    if points is None:
        return
    points = points.reshape(-1, 2) // b
    blocks = np.zeros((-(-h // b), -(-w // b)), np.uint8)
    blocks[points[:, 1], points[:, 0]] = 1
    n, groups = cv2.connectedComponents(blocks, connectivity=8)
    x0, y0, x1, y1 = _label_boxes(groups, blocks, n)
    for i in range(1, n):
        yield (slice(max(0, b * y0[i] - margin_px), min(h, b * y1[i] + margin_px)),
               slice(max(0, b * x0[i] - margin_px), min(w, b * x1[i] + margin_px)))


def _flat3(gray: np.ndarray) -> np.ndarray:
    """H x W bool: the 3 x 3 neighbourhood is one grey level (inside a stroke 3 px wide or more)."""
    return cv2.dilate(gray, _square(3)) == cv2.erode(gray, _square(3))


def _dark_text(gray: np.ndarray, flat: np.ndarray, low: float, high: float, params: TextRemovalParams
               ) -> tuple[np.ndarray, np.ndarray]:
    """(text, label) H x W bool: dark drawn plateaus on a flat label (black-hat), and the label.

    The label around the letters (pixels at its grey within one kernel) is
    background, not text: its bright gaps between the letters are kept out of
    the bright candidates.  Only crops around *cores* are examined: strong
    pixels whose 3 x 3 neighbourhood is one grey level, near a label body (a
    5 x 5 patch of one grey level that is its own closing).
    """
    text = np.zeros(gray.shape, bool)
    label = np.zeros(gray.shape, bool)
    kernel = _square(params.wide_kernel_px)
    closing = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, kernel)
    blackhat = cv2.subtract(closing, gray)
    strong = int(np.ceil(high))  # an integer: uint8 compared with it stays uint8 (a float upcasts the frame)
    cores = (blackhat >= strong) & flat
    if not cores.any():
        return text, label
    body = (cv2.dilate(gray, _square(5)) == cv2.erode(gray, _square(5))) & (gray == closing) & (gray >= strong)
    if not body.any():
        return text, label
    cores &= cv2.dilate(body.view(np.uint8), kernel) > 0
    if not cores.any():
        return text, label
    for crop in _core_crops(cores, params.wide_kernel_px):
        dark = _plateaus(gray[crop], blackhat[crop], np.ones(gray[crop].shape, bool), low, high,
                         bright=False, params=params, closing=closing[crop])
        dark_text = np.take(dark.accepted, dark.labels)
        if dark_text.any():
            value = np.where(dark_text, np.take(dark.label_value, dark.labels), 0.0).astype(np.float32)
            spread = cv2.dilate(value, kernel)
            label[crop] |= (spread > 0) & (np.abs(gray[crop] - spread) <= _LABEL_FLAT_GREY) & ~dark_text
            text[crop] |= dark_text
    return text, label


def _light_text(gray: np.ndarray, flat: np.ndarray, low: float, high: float, params: TextRemovalParams,
                allowed: np.ndarray, look: np.ndarray) -> np.ndarray:
    """H x W bool: bright drawn plateaus of any grey level and width up to ``wide_kernel_px`` (top-hat).

    Candidates lie in ``allowed``; only crops around *cores* in ``look`` are
    examined: strong pixels whose 3 x 3 neighbourhood is one grey level
    (``flat``, :func:`_flat3`) and that lose half the contrast within 3 px (a
    drawn edge; a clipped echo fades slower).
    """
    text = np.zeros(gray.shape, bool)
    kernel = _square(params.wide_kernel_px)
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, kernel)
    cores = (tophat >= int(np.ceil(high))) & allowed & look
    if not cores.any():
        return text
    drop = cv2.subtract(gray, cv2.erode(gray, _square(7)))
    cores &= flat & (drop >= tophat // 2)
    for crop in _core_crops(cores, params.wide_kernel_px):
        light = _plateaus(gray[crop], tophat[crop], allowed[crop], low, high, bright=True, params=params)
        text[crop] |= np.take(light.accepted, light.labels)
    return text


def _level_text(gray: np.ndarray, tophat: np.ndarray, allowed: np.ndarray, params: TextRemovalParams
                ) -> np.ndarray:
    """H x W bool: thin drawn strokes of one grey level below ``inside_min_grey`` (the *drawn level* path).

    Text drawn in grey (value 80-159) with 1-2 px strokes has no flat 3 x 3
    core for the plateau path and no seed for the bright paths, but its stroke
    centres share one exact grey level, which speckle does not: per block, a
    level holding many strong top-hat pixels (``level_min_px``) and far more
    than its neighbouring used levels (``level_spike``) is a drawn level; its
    pixels count when an 8-neighbour has the same level (strokes, not scattered
    dots) and enough of them lie together (``level_min_group_px``).  The
    footprint is those cores and the strong top-hat pixels within 2 px of them
    (the anti-aliased rim).
    """
    h, w = gray.shape
    out = np.zeros((h, w), bool)
    block = params.level_block_px
    strong = int(np.ceil(params.min_contrast_grey))
    ys, xs = np.nonzero((tophat >= strong) & allowed & (gray < params.inside_min_grey))
    if ys.size < params.level_min_group_px:
        return out
    used = cv2.calcHist([gray], [0], allowed.view(np.uint8), [256], [0, 256]).ravel() > 0
    rank = np.cumsum(used) - 1  # the frame's used levels, gaps of a stretched histogram closed
    levels = rank[gray[ys, xs]]
    spike = np.zeros(ys.size, bool)
    for offset in (0, block // 2):
        key = (((ys + offset) // block) * (w // block + 2) + (xs + offset) // block) * 256 + levels
        count = np.bincount(key, minlength=int(key.max()) + 3).astype(np.float32)
        padded = np.concatenate([[0.0, 0.0], count, [0.0, 0.0]])
        beside = (padded[:-4] + padded[1:-3] + padded[3:-1] + padded[4:]) / 4
        hot = (count >= params.level_min_px) & (count >= params.level_spike * np.maximum(beside, 1.0))
        spike |= hot[key]
    if spike.sum() < params.level_min_group_px:
        return out
    # point-wise from here on: a few hundred pixels, not the frame
    ys, xs = ys[spike], xs[spike]
    level = np.full((h + 2, w + 2), -1, np.int16)
    level[ys + 1, xs + 1] = gray[ys, xs]
    own = level[ys + 1, xs + 1]
    stroke = np.zeros(ys.size, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                stroke |= level[ys + 1 + dy, xs + 1 + dx] == own
    ys, xs = ys[stroke], xs[stroke]
    if ys.size < params.level_min_group_px:
        return out
    points = np.zeros((h, w), np.uint8)
    points[ys, xs] = 1
    n, words = cv2.connectedComponents(cv2.dilate(points, np.ones(_JOIN_HW, np.uint8)), connectivity=8)
    word = words[ys, xs]
    kept = (np.bincount(word, minlength=n) >= params.level_min_group_px)[word]
    if not kept.any():
        return out
    ys, xs, word = ys[kept], xs[kept], word[kept]
    # grown, within the word's box (the joined letters, 3 px beyond), through pixels that stand out
    # and are no brighter than the drawn level (anti-aliasing blends it with what lies below; bone
    # is brighter): the stroke ends whose centres missed the level
    grow_y, grow_x = _JOIN_HW[0] // 2 + 3, _JOIN_HW[1] // 2 + 3
    y0, x0 = np.full(n, h, np.int32), np.full(n, w, np.int32)
    y1, x1, top = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int16)
    np.minimum.at(y0, word, ys.astype(np.int32))
    np.minimum.at(x0, word, xs.astype(np.int32))
    np.maximum.at(y1, word, ys.astype(np.int32) + 1)
    np.maximum.at(x1, word, xs.astype(np.int32) + 1)
    np.maximum.at(top, word, gray[ys, xs].astype(np.int16))
    y0, x0 = np.maximum(y0 - grow_y, 0), np.maximum(x0 - grow_x, 0)
    y1, x1 = np.minimum(y1 + grow_y, h), np.minimum(x1 + grow_x, w)
    cy, cx = int(y0.min()), int(x0.min())
    crop = slice(cy, int(y1.max())), slice(cx, int(x1.max()))
    box = np.full(gray[crop].shape, -1, np.int16)
    for i in np.flatnonzero(np.bincount(word, minlength=n)):
        box[y0[i] - cy:y1[i] - cy, x0[i] - cx:x1[i] - cx] = top[i]
    candidate = (allowed[crop] & (tophat[crop] >= strong // 2) & (gray[crop] <= box)).view(np.uint8)
    grown = np.zeros(box.shape, np.uint8)
    grown[ys - cy, xs - cx] = 1
    for _ in range(3):  # 3 px along what stands out: a stroke's ends, not the tissue beside it
        grown = cv2.dilate(grown, _square(3)) & (candidate | grown)
    out[crop] = grown > 0
    return out


def overlay_seeds(image: np.ndarray, inside: np.ndarray, params: TextRemovalParams = TextRemovalParams()
                  ) -> np.ndarray:
    """Seed pixels of the hysteresis (bright top-hat peaks; inside ``inside`` also near white), H x W bool."""
    gray, _ = _as_gray(image)
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, _square(params.tophat_kernel_px))
    return _grey_candidates(gray, tophat, inside.astype(bool), params)[1]


def detect_overlay(image: np.ndarray, sector_mask: Optional[np.ndarray] = None,
                   params: TextRemovalParams = TextRemovalParams()) -> np.ndarray:
    """Find burned-in text, calipers, arrows and other drawn overlays.

    Parameters
    ----------
    image : H x W uint8 grey frame (or H x W x 3 BGR; colour then counts as a cue).
    sector_mask : H x W mask of the imaging sector (non-zero inside), or ``None``
        to treat the whole frame as inside (only drawn-looking strokes are found).
    params : thresholds and kernels, see :class:`TextRemovalParams`.

    Returns
    -------
    H x W uint8 mask in {0, 1} of overlay pixels, dilated by ``params.dilation_px``.
    """
    gray, chroma = _as_gray(image)
    inside = _inside_mask(sector_mask, gray.shape)
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, _square(params.tophat_kernel_px))
    return _detect(gray, tophat, chroma, inside, params)


def _detect(gray: np.ndarray, tophat: np.ndarray, chroma: Optional[np.ndarray], inside: np.ndarray,
            params: TextRemovalParams) -> np.ndarray:
    """Overlay pixels, H x W uint8 {0, 1}: the strokes and the boxes of their words (:func:`_text_boxes`)."""
    strokes = _detect_strokes(gray, tophat, chroma, inside, params)
    return strokes | _text_boxes(gray, strokes, inside, params)


def _detect_strokes(gray: np.ndarray, tophat: np.ndarray, chroma: Optional[np.ndarray], inside: np.ndarray,
                    params: TextRemovalParams) -> np.ndarray:
    candidate, seed = _grey_candidates(gray, tophat, inside, params)
    wide = label = None
    if params.wide_kernel_px:
        low, high = _hysteresis_thresholds(tophat, params)
        flat = _flat3(gray)
        wide, label = _dark_text(gray, flat, low, high, params)
        # a label's own grey between dark letters is background, not a bright stroke
        candidate &= ~label
        seed &= ~label
    colour = None if chroma is None else chroma >= params.colour_min_chroma
    if colour is not None:
        # coloured marks are labelled on their own, so that a caliper dot touching
        # a bright echo does not carry the echo along
        candidate &= ~colour
    learned = params.inside_method == "learned"
    if learned:
        # the rules judge only what lies outside the sector; inside it the model decides
        # pixel by pixel, so a label over a bright echo does not carry the echo along
        labels, keep = _outside_accepted(candidate & ~inside, seed, params)
    else:
        comps = _components(gray, tophat, candidate, seed, inside, params)
        labels, keep = comps.labels, _accepted(comps, params)
    mask = np.take(keep, labels)
    if colour is not None and colour.any():
        colour_comps = _components(gray, tophat, colour, colour, inside, params)
        mask |= np.take(_accepted(colour_comps, params, coloured=True), colour_comps.labels)
    mask = mask.view(np.uint8)
    if params.dilation_px > 1:
        mask = cv2.dilate(mask, _square(params.dilation_px))
    if learned:
        # not dilated: the model was trained on the exact footprint, anti-aliased rims included
        mask |= _learned_mask(gray, (seed & inside).view(np.uint8), params)
    if wide is not None:
        # wide, grey and bright plateaus, looked for only where the thin paths took nothing
        wide |= _light_text(gray, flat, low, high, params, ~label, mask == 0)
    if params.level_block_px:
        # thin text dimmer than the bright paths' seeds, again only where nothing was taken
        level = _level_text(gray, tophat, inside & (mask == 0), params)
        wide = level if wide is None else wide | level
    if wide is not None and wide.any():
        mask |= _missed(wide, mask, params.dilation_px)
    _fill_small_holes(mask, gray, params.inside_low_grey)
    return mask


_HOLE_MAX_PX = 16  # enclosed gaps of the overlay mask up to this area may be overlay too


def _fill_small_holes(mask: np.ndarray, gray: np.ndarray, min_grey: int) -> None:
    """Add to a uint8 {0, 1} mask (in place) the bright pixels (``>= min_grey``) of the small gaps it encloses.

    A few label pixels left between detected letters would be spread by the
    inpainting into a bright smudge around them; tissue seen through a letter's
    counter (the hole of an "0") is left to be read by the inpainting.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return
    holes = [c for c, (_, _, _, parent) in zip(contours, hierarchy[0])
             if parent >= 0 and cv2.contourArea(c) <= _HOLE_MAX_PX]
    if holes:
        filled = np.zeros_like(mask)
        cv2.drawContours(filled, holes, -1, 1, cv2.FILLED)
        mask |= filled & (gray >= min_grey)


def _missed(wide: np.ndarray, found: np.ndarray, dilation_px: int) -> np.ndarray:
    """Components of ``wide`` mostly (> 10 %) outside ``found``, dilated like the strokes (uint8 {0, 1}).

    Thin text the top-hat path or the model already took keeps their tighter
    footprint (the plateau path's reaches 2 px around each plateau); bold,
    large, grey and dark text is what it adds.
    """
    out = np.zeros(wide.shape, np.uint8)
    x, y, w, h = cv2.boundingRect(wide.view(np.uint8))  # labelled there only: a few crops of the frame
    if w == 0:
        return out
    r = max(dilation_px // 2, 0)
    crop = slice(max(0, y - r), y + h + r), slice(max(0, x - r), x + w + r)
    n, labels = cv2.connectedComponents(wide[crop].view(np.uint8), connectivity=8)
    total = np.bincount(labels.ravel(), minlength=n)
    covered = np.bincount(labels[found[crop] > 0], minlength=n)
    keep = covered < 0.9 * total
    keep[0] = False
    kept = np.take(keep, labels).view(np.uint8)
    out[crop] = cv2.dilate(kept, _square(dilation_px)) if dilation_px > 1 else kept
    return out


# Letters of one word or line are a few pixels apart: joined before boxing (rows, columns).
_JOIN_HW = (3, 9)
_FLAT_MIN_FRACTION = 0.6    # a row of a box is flat when this much of its background is at its mode
_FLAT_MIN_GREY = 16         # and the mode is not black (inpainting from black leaves nothing to read);
_FLAT_MIN_PX = 64           # a box is on a bar when its flat rows hold this many pixels at their modes


def _flat_rows(gray: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Where a box sits on a bar or label, H x W bool: in each flat row, the span
    from its first to its last background pixel at the row's mode.

    A row is flat when at least ``_FLAT_MIN_FRACTION`` of its ``background``
    pixels share its most common grey level, which is at least
    ``_FLAT_MIN_GREY``: scanner bars and labels are drawn one level along a
    row (bars are often shaded top to bottom); speckle is not, and smooth
    tissue varies by a level or two.  Fewer than ``_FLAT_MIN_PX`` such pixels
    in all make no bar (a caliper dot's small box on smooth tissue).
    """
    h, w = gray.shape
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    hist = np.bincount(rows[background] * 256 + gray[background], minlength=h * 256).reshape(h, 256)
    mode = hist.argmax(axis=1)
    count = hist[np.arange(h), mode]
    flat = (count >= _FLAT_MIN_FRACTION * hist.sum(axis=1)) & (count > 0) & (mode >= _FLAT_MIN_GREY)
    if count[flat].sum() < _FLAT_MIN_PX:
        return np.zeros((h, w), bool)
    on = background & (gray == mode[:, None]) & flat[:, None]
    first = np.where(on.any(axis=1), on.argmax(axis=1), w)
    last = w - 1 - on[:, ::-1].argmax(axis=1)
    cols = np.arange(w)[None, :]
    return (cols >= first[:, None]) & (cols <= last[:, None])


def _text_boxes(gray: np.ndarray, strokes: np.ndarray, inside: np.ndarray, params: TextRemovalParams
                ) -> np.ndarray:
    """Boxes to blank (H x W uint8 {0, 1}): words and lines of text outside the sector or on a bar or label.

    Each group of strokes a few pixels apart gets its bounding box grown by
    ``blank_margin_px``, so the halo and dark outline around the letters, and
    the gaps between them, are blanked with the letters: a box reveals where a
    line of text was, not its shape.  Outside the sector every group is boxed.
    A group inside it is boxed where it sits on a flat, not black background
    (a UI bar or label the sector fit took in, see :func:`_flat_rows`), and
    only there, when that covers most of its box: there is no anatomy to keep
    there, while inpainting would keep the dark outline scanners draw around
    letters (on black it is invisible anyway).  Groups taller than
    ``blank_max_height_px`` (a scale bar, a fan edge, a long caliper trace) are
    not boxed.
    """
    boxes = np.zeros(strokes.shape, np.uint8)
    text = strokes > 0
    if not text.any():
        return boxes
    text_u8 = text.view(np.uint8)
    n, groups = cv2.connectedComponents(cv2.dilate(text_u8, np.ones(_JOIN_HW, np.uint8)), connectivity=8)
    x0, y0, x1, y1 = _label_boxes(groups, text_u8, n)
    points = cv2.findNonZero(text_u8).reshape(-1, 2)
    px_inside = np.bincount(groups[points[:, 1], points[:, 0]][inside[points[:, 1], points[:, 0]]], minlength=n)
    h, w = strokes.shape
    m = params.blank_margin_px
    runs = None
    for i in np.nonzero(y1[1:] - y0[1:] <= params.blank_max_height_px)[0] + 1:
        box = slice(max(0, y0[i] - m), min(h, y1[i] + m)), slice(max(0, x0[i] - m), min(w, x1[i] + m))
        boxes[box] |= ~inside[box]
        if px_inside[i] == 0 or (box[0].stop - box[0].start) * (box[1].stop - box[1].start) < 2 * _FLAT_MIN_PX:
            continue  # no bar to find in a box this small (a caliper dot's)
        if runs is None:  # one grey level over 5 px along the row, not black: a cheap first look
            run = np.ones((1, 5), np.uint8)
            runs = (cv2.dilate(gray, run) == cv2.erode(gray, run)) & (gray >= _FLAT_MIN_GREY)
        if np.count_nonzero(runs[box]) < _FLAT_MIN_PX:
            continue
        flat = _flat_rows(gray[box], cv2.dilate(text_u8[box], _square(3)) == 0)
        if flat.mean() >= _FLAT_MIN_FRACTION:
            boxes[box] |= flat
    return boxes


# --------------------------------------------------------------------------- learned inside-sector path

OVERLAY_TASK = "overlay-seg"


def _overlay_model(name_or_path: str):
    """The loaded model, kept while its files are unchanged (a retrained model is reloaded)."""
    from fetalkit.runtime.card import card_path_for
    from fetalkit.runtime.registry import resolve_model
    path = resolve_model(name_or_path, OVERLAY_TASK)
    card = card_path_for(path)
    stamp = (path.stat().st_mtime_ns, card.stat().st_mtime_ns if card.is_file() else 0)
    return _load_overlay_model(str(path), stamp)


@functools.lru_cache(maxsize=4)
def _load_overlay_model(path: str, stamp: tuple[int, int]):
    from fetalkit.runtime.registry import load_model
    return load_model(path, OVERLAY_TASK)


def overlay_thresholds(params: TextRemovalParams) -> tuple[float, float]:
    """(low, high) probability thresholds in use: the params' or the card's operating point.

    The high threshold is never below the low one (equal: a plain threshold).
    """
    op = {} if None not in (params.learned_threshold, params.learned_high_threshold) else \
        _overlay_model(params.overlay_model).card["operating_point"]
    low = float(op["threshold"] if params.learned_threshold is None else params.learned_threshold)
    high = params.learned_high_threshold
    if high is None:
        high = op.get("high_threshold", low)
    return low, max(float(high), low)


def hysteresis_mask(candidate: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """8-connected components of ``candidate`` that hold a ``seed`` pixel, H x W uint8 {0, 1}."""
    out = np.zeros(candidate.shape, np.uint8)
    # labelled within the candidates' bounding box only: they lie in a few crops of the frame
    x, y, w, h = cv2.boundingRect(candidate.view(np.uint8))
    if w == 0:
        return out
    cand = candidate[y:y + h, x:x + w]
    n, labels = cv2.connectedComponents(cand.view(np.uint8), connectivity=8)
    keep = np.bincount(labels[seed[y:y + h, x:x + w] & cand], minlength=n) > 0
    keep[0] = False
    out[y:y + h, x:x + w] = np.take(keep, labels)
    return out


def overlay_crops(seeds: np.ndarray, halo_px: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) crops, end-exclusive, around groups of seed pixels, each padded by ``halo_px``.

    Seeds closer than two halos share a crop, so the model runs on a few percent
    of an 800 x 540 frame instead of all of it.
    """
    grouped = cv2.dilate(seeds, _square(2 * halo_px + 1)) if halo_px else seeds
    n, groups = cv2.connectedComponents(grouped, connectivity=8)
    x0, y0, x1, y1 = _label_boxes(groups, grouped, n)
    return [(int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])) for i in range(1, n)]


def overlay_probability(gray: np.ndarray, crops, params: TextRemovalParams) -> np.ndarray:
    """H x W float32 overlay probability from the overlay-pixel model on ``crops`` (0 elsewhere)."""
    model = _overlay_model(params.overlay_model)
    prob = np.zeros(gray.shape, np.float32)
    for x0, y0, x1, y1 in crops:
        batch = normalise(gray[None, None, y0:y1, x0:x1], model.mean, model.std)
        np.maximum(prob[y0:y1, x0:x1], model.run(batch)[0, 0], out=prob[y0:y1, x0:x1])
    return prob


def _learned_mask(gray: np.ndarray, seeds: np.ndarray, params: TextRemovalParams) -> np.ndarray:
    """Overlay pixels near the seeds, as judged by the overlay-pixel model."""
    if not seeds.any():
        return np.zeros_like(seeds)
    prob = overlay_probability(gray, overlay_crops(seeds, params.learned_halo_px), params)
    low, high = overlay_thresholds(params)
    if high <= low:
        return (prob >= low).view(np.uint8)
    return hysteresis_mask(prob >= low, prob >= high)


# --------------------------------------------------------------------------- removal


def _inpaint_crops(out: np.ndarray, mask: np.ndarray, params: TextRemovalParams) -> int:
    """Inpaint ``mask`` in ``out`` (in place), one crop per group of nearby components.

    Components closer than about two inpainting radii share a crop, so each
    crop holds all the known pixels the inpainting of its holes reads.
    Returns the number of crops.
    """
    margin_px = int(np.ceil(params.inpaint_radius_px)) + 2
    grouped = cv2.dilate(mask, _square(2 * margin_px + 1))
    n, groups = cv2.connectedComponents(grouped, connectivity=8)
    h, w = mask.shape
    boxes = _label_boxes(groups, grouped, n)
    for i in range(1, n):
        # the dilated group already spans the margin; one more pixel of context
        x0, y0 = max(0, int(boxes[0][i]) - 1), max(0, int(boxes[1][i]) - 1)
        x1, y1 = min(w, int(boxes[2][i]) + 1), min(h, int(boxes[3][i]) + 1)
        crop_mask = mask[y0:y1, x0:x1]
        crop = out[y0:y1, x0:x1]
        filled = cv2.inpaint(crop, crop_mask, params.inpaint_radius_px, params.inpaint_method)
        hole = crop_mask > 0
        crop[hole] = filled[hole]
    return n - 1


_BESIDE_PX = 4  # background is sampled this far beside each blanked region, in its rows


def _blank(out: np.ndarray, fill: np.ndarray, strokes: np.ndarray, background: np.ndarray) -> None:
    """Set each connected region of ``fill`` in ``out`` (in place) to one flat value.

    The value is the median of the local background: pixels within the region
    and up to ``_BESIDE_PX`` beside it along its rows that are not text (nor
    within 1 px of it) and may serve as ``background`` (outside the sector or
    in a box), i.e. the bar the text sits on.  A flat region has no gradient
    left for a contrast stretch to bring out (on a shaded bar even a faithful
    row-by-row background keeps the bar's own gradient there, and its median
    row noise).  Regions without such pixels keep what ``out`` holds.
    """
    fill_u8 = fill.view(np.uint8)
    n, regions = cv2.connectedComponents(fill_u8, connectivity=8)
    x0, y0, x1, y1 = _label_boxes(regions, fill_u8, n)
    beside = np.ones((1, 2 * _BESIDE_PX + 1), np.uint8)
    w = fill.shape[1]
    for i in range(1, n):
        crop = slice(y0[i], y1[i]), slice(max(0, x0[i] - _BESIDE_PX), min(w, x1[i] + _BESIDE_PX))
        region = regions[crop] == i
        text = cv2.dilate(strokes[crop], _square(3)) > 0
        sample = (cv2.dilate(region.view(np.uint8), beside) > 0) & ~text & background[crop]
        if sample.any():
            values = out[crop][sample]
            out[crop][region] = np.median(values, axis=0).round().astype(out.dtype)


def remove_overlay(image: np.ndarray, sector_mask: Optional[np.ndarray] = None,
                   params: TextRemovalParams = TextRemovalParams()) -> CleanResult:
    """Detect burned-in overlays and replace them.

    Inside the sector the detected pixels are inpainted (``cv2.inpaint`` on
    small crops); outside it, and on a bar or label inside it, each word or
    line box is blanked to the median of the background it sits on, unless
    ``params.fill_outside == "inpaint"``.  No other pixel changes.

    Parameters
    ----------
    image : H x W uint8 grey frame, or H x W x 3 BGR (the result is then BGR).
    sector_mask : H x W mask of the imaging sector, or ``None`` (whole frame inside).
    params : see :class:`TextRemovalParams`.

    Returns
    -------
    CleanResult with the cleaned copy and the mask of replaced pixels.
    """
    gray, chroma = _as_gray(image)
    inside = _inside_mask(sector_mask, gray.shape)
    kernel = _square(params.tophat_kernel_px)
    opening = cv2.morphologyEx(image, cv2.MORPH_OPEN, kernel)
    opening_gray = opening if image.ndim == 2 else cv2.morphologyEx(gray, cv2.MORPH_OPEN, kernel)
    tophat = cv2.subtract(gray, opening_gray)
    strokes = _detect_strokes(gray, tophat, chroma, inside, params)
    boxes = _text_boxes(gray, strokes, inside, params)
    mask = strokes | boxes

    out = image.copy()
    if params.fill_outside == "background":
        fill = (boxes > 0) | ((strokes > 0) & ~inside)
        out[fill] = opening[fill]  # kept only where no background lies beside a region
        _blank(out, fill, strokes, ~inside | (boxes > 0))
        to_inpaint = (mask > 0) & ~fill
    else:
        fill = np.zeros_like(inside)
        to_inpaint = mask > 0
    n_regions = _inpaint_crops(out, to_inpaint.view(np.uint8), params) if to_inpaint.any() else 0
    return CleanResult(image=out, overlay_mask=mask, inpainted_px=int(to_inpaint.sum()),
                       filled_px=int(fill.sum()), n_regions=n_regions)


# --------------------------------------------------------------------------- synthetic overlays


@dataclass(frozen=True)
class SyntheticOverlays:
    """A frame with known overlays pasted on it, for tests and measurements.

    ``image`` H x W uint8 with the overlays; ``overlay_mask`` H x W uint8 in
    {0, 1}, the pixels the overlays changed by more than 2 grey levels;
    ``boxes`` (x0, y0, x1, y1), end-exclusive, one per pasted element, padded by
    2 px; ``inside`` whether each element was placed inside the sector.
    """

    image: np.ndarray
    overlay_mask: np.ndarray
    boxes: tuple[tuple[int, int, int, int], ...]
    inside: tuple[bool, ...]


_LABELS = ("HC 172.4 mm", "BPD 4.52cm", "GA 21w3d", "12.03.2021", "10:42:17", "MI 0.8", "TIs 0.1",
           "Gn -1", "Pwr 89 %", "C6 / M7", "ANON^PATIENT", "ID 0012345", "35Hz", "L", "R", "A", "1",
           "2", "AC", "FL 3.1cm", "OFD", "CRL 45mm", "+1", "x2")
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
          cv2.FONT_HERSHEY_COMPLEX)


def _composite(image: np.ndarray, stamp: np.ndarray, grey: int) -> None:
    """Alpha-blend a drawn 0-255 coverage ``stamp`` of colour ``grey`` into ``image`` (in place)."""
    alpha = stamp.astype(np.float32) / 255.0
    blended = image.astype(np.float32) * (1.0 - alpha) + np.float32(grey) * alpha
    np.copyto(image, np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _text_style(rng, scale: float) -> tuple[str, int, float, int, int]:
    """(text, font, font scale, thickness, line type) of one random label."""
    text = _LABELS[rng.integers(len(_LABELS))]
    font = _FONTS[rng.integers(len(_FONTS))]
    font_scale = float(rng.uniform(0.35, 0.7) * scale * (1.6 if font == cv2.FONT_HERSHEY_PLAIN else 1.0))
    thickness = 2 if rng.uniform() < 0.25 else 1
    line = cv2.LINE_AA if rng.uniform() < 0.5 else cv2.LINE_8
    return text, font, font_scale, thickness, line


def _place_text(rng, region: np.ndarray, size_wh: tuple[int, int], baseline_px: int,
                n_tries: int = 30) -> Optional[tuple[int, int]]:
    """Bottom-left origin of a text box lying at least 90 % in ``region``; ``None`` if none found."""
    h, w = region.shape
    tw, th = size_wh
    if tw + 4 >= w or th + baseline_px + 4 >= h:
        return None
    for _ in range(n_tries):
        x = int(rng.integers(2, w - tw - 2))
        y = int(rng.integers(th + 2, h - baseline_px - 2))
        if region[y - th:y + baseline_px, x:x + tw].mean() >= 0.9:
            return x, y
    return None


def _draw_caliper(rng, stamp, xy, scale, partner=None):
    kind = cv2.MARKER_CROSS if rng.uniform() < 0.5 else cv2.MARKER_TILTED_CROSS
    size = int(round(rng.uniform(8, 16) * scale))
    line = cv2.LINE_AA if rng.uniform() < 0.5 else cv2.LINE_8
    cv2.drawMarker(stamp, xy, 255, kind, max(size, 5), 1, line)
    if partner is not None:  # dotted line between two calipers
        p0, p1 = np.array(xy, float), np.array(partner, float)
        cv2.drawMarker(stamp, tuple(int(v) for v in partner), 255, kind, max(size, 5), 1, line)
        radius = int(rng.integers(0, 2))  # 1 x 1 or 3 x 3 dots
        gap_px = max(rng.uniform(5, 9) * scale, 3.0 * (2 * radius + 1))  # dots never touch
        n_dots = int(np.linalg.norm(p1 - p0) / gap_px)
        for t in np.linspace(0, 1, n_dots + 1)[1:-1]:
            x, y = (p0 + t * (p1 - p0)).round().astype(int)
            cv2.rectangle(stamp, (x - radius, y - radius), (x + radius, y + radius), 255, -1)


def _draw_arrow(rng, stamp, xy, scale):
    length = rng.uniform(20, 45) * scale
    angle = rng.uniform(0, 2 * np.pi)
    tip = (int(xy[0] + length * np.cos(angle)), int(xy[1] + length * np.sin(angle)))
    line = cv2.LINE_AA if rng.uniform() < 0.5 else cv2.LINE_8
    cv2.arrowedLine(stamp, xy, tip, 255, 1, line, tipLength=0.3)


def _draw_trace(rng, stamp, xy, scale):
    """A measurement trace: an ellipse (solid or dotted, as HC / AC calipers draw it) or a line."""
    line = cv2.LINE_AA if rng.uniform() < 0.5 else cv2.LINE_8
    if rng.uniform() < 0.5:
        length = rng.uniform(20, 100) * scale
        angle = rng.uniform(0, np.pi)
        cv2.line(stamp, xy, (int(xy[0] + length * np.cos(angle)), int(xy[1] + length * np.sin(angle))),
                 255, 1, line)
        return
    axes = (int(rng.uniform(15, 120) * scale), int(rng.uniform(10, 90) * scale))
    tilt = float(rng.uniform(0, 180))
    if rng.uniform() < 0.5:
        cv2.ellipse(stamp, xy, axes, tilt, 0, 360, 255, 1, line)
    else:
        step = rng.uniform(6, 14)
        for start in np.arange(0, 360, step):
            cv2.ellipse(stamp, xy, axes, tilt, start, start + 2, 255, 1, line)


def _random_point(rng, where: np.ndarray, margin_px: int) -> Optional[tuple[int, int]]:
    h, w = where.shape
    inner = np.zeros_like(where)
    inner[margin_px:h - margin_px, margin_px:w - margin_px] = where[margin_px:h - margin_px,
                                                                    margin_px:w - margin_px]
    ys, xs = np.nonzero(inner)
    if ys.size == 0:
        return None
    i = rng.integers(ys.size)
    return int(xs[i]), int(ys[i])


def draw_synthetic_overlays(image: np.ndarray, sector_mask: Optional[np.ndarray] = None, seed: int = 0,
                            n_text_outside: int = 4, n_text_inside: int = 2, n_calipers: int = 2,
                            n_arrows: int = 1, n_traces: int = 0) -> SyntheticOverlays:
    """Paste text, calipers (with dotted lines) and arrows with an exactly known mask.

    Text uses the Hershey fonts at scales proportional to the frame width, grey
    levels 200-255 inside the sector and 150-255 outside, with or without
    anti-aliasing; calipers are ``+`` or ``x`` marks joined by a dotted line.
    Outside elements are placed where the sector is not (in the top corners
    when the frame has no room outside the sector).

    Parameters
    ----------
    image : H x W uint8 grey frame (not modified).
    sector_mask : H x W sector mask, or ``None`` (everything is inside).
    seed : random seed; the result is a deterministic function of the arguments.
    n_text_outside, n_text_inside : text labels outside / inside the sector.
    n_calipers : caliper pairs (two marks and a dotted line) inside the sector.
    n_arrows : arrows inside the sector.
    n_traces : measurement traces inside the sector (ellipses, solid or dotted,
        and lines; clipped to the sector).

    Returns
    -------
    SyntheticOverlays.
    """
    gray, _ = _as_gray(image)
    rng = np.random.default_rng(seed)
    h, w = gray.shape
    inside = _inside_mask(sector_mask, (h, w))
    scale = max(w / 800.0, 0.5)
    out = gray.copy()
    boxes, where = [], []
    plan = ["text_out"] * n_text_outside + ["text_in"] * n_text_inside + ["caliper"] * n_calipers \
        + ["arrow"] * n_arrows + ["trace"] * n_traces
    for kind in plan:
        stamp = np.zeros((h, w), np.uint8)
        if kind.startswith("text"):
            _stamp_text(rng, stamp, ~inside if kind == "text_out" else inside, scale)
        else:
            _stamp_mark(rng, stamp, inside, scale, kind)
            if kind == "trace":
                stamp[~inside] = 0
        drawn = stamp > 0
        if not drawn.any():
            continue
        is_inside = bool(inside[drawn].mean() >= 0.5)
        # overlays inside the sector are drawn near white; scanner text outside may be dimmer
        grey = int(rng.integers(200 if is_inside else 150, 256))
        _composite(out, stamp, grey)
        ys, xs = np.nonzero(drawn)
        boxes.append((max(0, int(xs.min()) - 2), max(0, int(ys.min()) - 2),
                      min(w, int(xs.max()) + 3), min(h, int(ys.max()) + 3)))
        where.append(is_inside)
    mask = (np.abs(out.astype(np.int16) - gray) > 2).astype(np.uint8)
    return SyntheticOverlays(image=out, overlay_mask=mask, boxes=tuple(boxes), inside=tuple(where))


def _stamp_text(rng, stamp: np.ndarray, region: np.ndarray, scale: float) -> None:
    """Draw one random label lying at least 90 % in ``region`` (top-left corner when it cannot)."""
    h, w = stamp.shape
    text, font, font_scale, thickness, line = _text_style(rng, scale)
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
    xy = _place_text(rng, region, (tw, th), base + thickness)
    if xy is None:  # no room: scanner text sits in the top-left corner
        xy = (int(rng.integers(2, max(3, w // 8))), th + 2 + int(rng.integers(0, max(1, h // 10))))
    cv2.putText(stamp, text, xy, font, font_scale, 255, thickness, line)


def _stamp_mark(rng, stamp: np.ndarray, inside: np.ndarray, scale: float, kind: str) -> None:
    """Draw a caliper pair with its dotted line, an arrow or a trace, inside the sector."""
    h, w = stamp.shape
    margin_px = int(round(0.06 * w))
    xy = _random_point(rng, inside, margin_px)
    if xy is None:
        return
    if kind == "arrow":
        _draw_arrow(rng, stamp, xy, scale)
        return
    if kind == "trace":
        _draw_trace(rng, stamp, xy, scale)
        return
    partner = _random_point(rng, inside, margin_px)
    d = np.subtract(partner, xy)
    limit_px = w / 3.0  # keep the two marks at most a third of the frame apart
    if np.hypot(*d) > limit_px:  # (still inside: the sector is convex)
        partner = tuple((np.asarray(xy) + d * limit_px / np.hypot(*d)).astype(int))
    _draw_caliper(rng, stamp, xy, scale, partner)
