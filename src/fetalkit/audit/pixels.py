"""What the pixels of a de-identified output still show: residual burned-in text, and what else changed.

The masking paper's sonographer test, by machine.  A person given the cleaned
frame and a contrast knob reads text that OCR misses: text removal that takes
the bright glyph strokes and leaves their dark outlines (the shadow scanners
draw around header text) leaves every word legible after a contrast stretch.
Two measures, on the text regions found on the **original**:

* **Residual structure** (``residual``): the edge energy of the output on the
  glyph contours of the text regions over the original's, ``E(output) /
  E(original)``.  Edge energy is the summed Sobel gradient magnitude of the
  frame's *fine detail*, the frame minus its 9 x 9 median: glyph strokes and
  their outlines are thinner than 4 px and are detail, while the shading of a
  header bar (a ramp) and the long straight border of a bar are kept by the
  median and are not.  It is summed on the *contours*: the pixels within
  :data:`HALO_PX` of the text whose original edge is at least
  :data:`CONTOUR_SHARE` of the region's strong edges (the glyphs' edges and their
  outlines' edges), so the edge of a box painted over the text a few pixels away
  does not count.  A bar cleaned to its plain shading or blanked scores 0-0.01,
  the original 1, outlines left by text removal 0.04-0.2.  A ratio needs no
  contrast stretch: a stretch multiplies both energies alike.
  It is taken per text region (one line of text) and the worst region counts;
  regions that are not text of 3+ characters (fewer than :data:`MIN_REGION_TEXT_PX`
  pixels, or fewer than 3 strokes and not a line: depth ticks, a logo, the tip of
  a fan cut by the detected sector) only count in the overall ratio.
* **OCR** of the output's text regions, each contrast-stretched on its own
  (1st-99th percentile to 0-255), stacked into one picture and read by Tesseract
  (:mod:`fetalkit.audit.ocr`): words of 3+ letters or digits read with confidence
  >= 50 are leaks.

Text regions: the pixels :func:`fetalkit.preprocess.text.detect_overlay` finds
outside the imaging sector (the whole frame when no sector is found), and the
boxes of the words OCR reads on the original outside the sector (dark text on a
light bar, which the top-hat of ``detect_overlay`` does not see), each grown by
:data:`HALO_PX` to take in the glyph outlines.  Text inside the sector (calipers,
labels over anatomy) is not measured: the anatomy's own edges would swamp the
ratio there.

The frames are also compared (:class:`PixelAudit`): frame count, size, colour (an
RGB or palette input written grey is "colour lost") and how much the image changed
outside the text regions.

Example
-------
>>> r = residual_text(original_frame, cleaned_frame)           # doctest: +SKIP
>>> r.residual, r.leak, r.location                               # doctest: +SKIP
(0.2, True, 'header band')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from fetalkit.audit import ocr as _ocr
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.inputs import printable

__all__ = ["MAX_RESIDUAL", "TextRegion", "ResidualText", "PixelAudit", "detail_edges", "edge_energy",
           "text_mask", "text_regions", "residual_text", "audit_pixels"]

MAX_RESIDUAL = 0.03          # default leak threshold of the residual (the issue's: outlines keep 5-20 %)
DETAIL_KERNEL_PX = 9         # median window: strokes thinner than ~4 px are detail, ramps and long edges are not
HALO_PX = 3                  # around every text pixel: the dark outline / drop shadow of scanner glyphs
JOIN_HW = (3, 9)             # letters of one line are joined into one region before boxing (rows, columns)
MIN_REGION_TEXT_PX = 30      # smaller regions (ticks, dots) are judged only in the overall ratio
MIN_GLYPHS = 3               # ... as are regions of fewer separate strokes (a logo, a fan tip) ...
MIN_LINE_ASPECT = 2.5        # ... unless they are a line this many times as wide as high (joined letters)
MIN_TEXT_HEIGHT_PX = 6       # and at least this high (a rule or an underline is no line of text)
CONTOUR_SHARE = 0.1          # the glyph contours: halo pixels whose original edge is this share of the region's
                             # 95th percentile edge or more (the outer edge of a dark outline on a mid-grey bar is
                             # about a fifth of a white glyph's edge: it must count)
MIN_TEXT_ENERGY = 1000.0     # below this the original holds no text worth the name: residual 0
STRETCH_MIN_RANGE_GREY = 8   # a region varying less than this in the output is flat, not stretched into noise
CHANGE_GREY = 8              # a pixel differing by more than this counts as changed (lossy codecs stay below)
OUTSIDE_GAP_PX = 7           # pixels this close to a text region are left out of the "outside" comparison
OCR_FRAMES = 2               # frames of a clip read by OCR: the first and the one with the worst residual
CHROMA_GREY = 4              # a pixel with max - min over its channels above this is coloured (a codec's
                             # rounding on a grey frame stays below; a B-mode tint is above)
COLOUR_SHARE = 0.01          # a frame with at least this share of coloured pixels is in colour


# --------------------------------------------------------------------------- measures


def _as_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return frame


def detail_edges(gray: np.ndarray) -> np.ndarray:
    """H x W float32 gradient magnitude (Sobel 3 x 3) of the fine detail ``gray - median9(gray)``."""
    g = _as_gray(gray)
    detail = g.astype(np.float32) - cv2.medianBlur(g, DETAIL_KERNEL_PX).astype(np.float32)
    gx = cv2.Sobel(detail, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(detail, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def edge_energy(gray: np.ndarray, mask: np.ndarray) -> float:
    """Summed :func:`detail_edges` of ``gray`` over ``mask`` (H x W, non-zero = counted)."""
    return float(detail_edges(gray)[mask.astype(bool)].sum())


def _sector_of(gray: np.ndarray) -> Optional[np.ndarray]:
    from fetalkit.preprocess.sector import detect_sector
    try:
        return detect_sector(gray).mask
    except FetalkitError:
        return None


def text_mask(original: np.ndarray, sector_mask: Optional[np.ndarray] = None,
              words: Optional[list] = None) -> tuple[np.ndarray, np.ndarray]:
    """(text pixels, text regions) of an original frame, both H x W bool.

    Text pixels: :func:`~fetalkit.preprocess.text.detect_overlay` outside the sector
    (everywhere when ``sector_mask`` is None) plus the boxes of OCR ``words``
    (:class:`~fetalkit.audit.ocr.OcrWord`) outside the sector.  Regions: the text
    pixels grown by :data:`HALO_PX`, outside the sector.
    """
    from fetalkit.preprocess.text import detect_overlay
    gray = _as_gray(original)
    outside = np.ones(gray.shape, bool) if sector_mask is None else ~sector_mask.astype(bool)
    found = detect_overlay(gray, sector_mask).astype(bool)
    for word in words or []:
        x, y, w, h = word.box_xywh
        found[y:y + h, x:x + w] = True
    text = found & outside
    halo = cv2.dilate(text.view(np.uint8), np.ones((2 * HALO_PX + 1,) * 2, np.uint8)).astype(bool)
    return text, halo & outside


@dataclass
class TextRegion:
    """One region of text (about one line) found on the original, in frame pixels.

    ``residual`` is its own E(output) / E(original), None when it is not text of 3+
    characters (too small, or a lone mark: judged only in the overall ratio);
    ``location`` names where it lies: header band, footer band, left / right
    margin, sector surround (outside the fan but within its bounding box).
    """

    x: int
    y: int
    w: int
    h: int
    location: str
    text_px: int
    residual: Optional[float] = None

    @property
    def box_xywh(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


def _location(box: tuple[int, int, int, int], shape_hw: tuple[int, int],
              sector_mask: Optional[np.ndarray]) -> str:
    """Where a region lies relative to the sector's bounding box (or the frame without one)."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    height, width = shape_hw
    if sector_mask is not None and sector_mask.any():
        ys, xs = np.nonzero(sector_mask)
        top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    else:
        top, bottom, left, right = 0.2 * height, 0.8 * height, width / 2, width / 2
    if cy < top:
        return "header band"
    if cy > bottom:
        return "footer band"
    if cx < left:
        return "left margin"
    if cx > right:
        return "right margin"
    return "sector surround" if sector_mask is not None else ("left margin" if cx < width / 2 else "right margin")


def _joined(text: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Text pixels joined into lines: (count + 1, labels, stats) of the joined components."""
    joined = cv2.dilate(text.view(np.uint8), np.ones(JOIN_HW, np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    return n, labels, stats


def text_regions(text: np.ndarray, sector_mask: Optional[np.ndarray] = None) -> list[TextRegion]:
    """Text pixels (H x W bool) joined into line regions, top to bottom."""
    n, labels, stats = _joined(text)
    px = np.bincount(labels[text], minlength=n)
    regions = [TextRegion(int(x), int(y), int(w), int(h), _location((x, y, w, h), text.shape, sector_mask),
                          int(px[k])) for k, (x, y, w, h, _) in enumerate(stats) if k > 0 and px[k] > 0]
    return sorted(regions, key=lambda r: (r.y, r.x))


@dataclass
class _FrameResidual:
    """Edge energies of one frame pair: per region and in all."""

    regions: list[TextRegion]
    original_energy: float
    output_energy: float
    by_location: dict[str, tuple[float, float]]  # location -> (original, output) energy

    @property
    def overall(self) -> float:
        return self.output_energy / self.original_energy if self.original_energy >= MIN_TEXT_ENERGY else 0.0

    @property
    def worst(self) -> tuple[float, Optional[str]]:
        judged = [r for r in self.regions if r.residual is not None]
        if not judged:
            return self.overall, (self.regions[0].location if self.regions and self.overall > 0 else None)
        r = max(judged, key=lambda r: r.residual)
        return r.residual, r.location


def _is_text_line(region: TextRegion, strokes: np.ndarray, words: list) -> bool:
    """Whether a region holds text of 3+ characters, worth judging on its own: OCR read a word in
    it on the original, or it has enough pixels and 3+ separate strokes (glyphs), or 2+ strokes in
    a line at least 2.5 times as wide as high and 6 px high.  A lone mark (a logo, a depth tick, a
    rule, the tip of a fan cut by the sector's edge) only counts in the overall ratio."""
    for w in words:
        cx, cy = w.box_xywh[0] + w.box_xywh[2] / 2, w.box_xywh[1] + w.box_xywh[3] / 2
        if region.x <= cx < region.x + region.w and region.y <= cy < region.y + region.h:
            return True
    if region.text_px < MIN_REGION_TEXT_PX:
        return False
    glyphs = cv2.connectedComponents(strokes, connectivity=8)[0] - 1
    line = region.w >= MIN_LINE_ASPECT * region.h and region.h >= MIN_TEXT_HEIGHT_PX
    return glyphs >= MIN_GLYPHS or (line and glyphs >= 2)


def _frame_residual(original: np.ndarray, output: np.ndarray, text: np.ndarray, halo: np.ndarray,
                    sector_mask: Optional[np.ndarray], words: Optional[list] = None) -> _FrameResidual:
    """E(output) / E(original) on the glyph contours of every line region of ``text``, and over all of them.

    The contours are the pixels of the region's halo where the original's edges are
    strong (at least :data:`CONTOUR_SHARE` of their 95th percentile there): the
    glyphs' edges and their outlines.  What text removal leaves of the glyphs lies on
    them; the straight edge of a box painted over the text lies beyond them.
    """
    n, labels, stats = _joined(text)
    if n <= 1:
        return _FrameResidual([], 0.0, 0.0, {})
    e_orig, e_out = detail_edges(original), detail_edges(output)
    px = np.bincount(labels[text], minlength=n)
    grow = np.ones((2 * HALO_PX + 1,) * 2, np.uint8)
    h, w = halo.shape
    regions, by_location = [], {}
    total_orig = total_out = 0.0
    for k in range(1, n):
        if px[k] == 0:
            continue
        x, y, bw, bh = (int(v) for v in stats[k][:4])
        r = TextRegion(x, y, bw, bh, _location((x, y, bw, bh), (h, w), sector_mask), int(px[k]))
        x0, y0 = max(0, x - HALO_PX), max(0, y - HALO_PX)
        x1, y1 = min(w, x + bw + HALO_PX), min(h, y + bh + HALO_PX)
        strokes = (labels[y0:y1, x0:x1] == k).view(np.uint8) & text[y0:y1, x0:x1].view(np.uint8)
        # this line's text grown by the halo: the outlines of its glyphs, not its neighbours'
        m = (cv2.dilate(strokes, grow) > 0) & halo[y0:y1, x0:x1]
        eo_crop, ex_crop = e_orig[y0:y1, x0:x1], e_out[y0:y1, x0:x1]
        if not m.any():
            continue
        contour = m & (eo_crop >= CONTOUR_SHARE * np.percentile(eo_crop[m], 95))
        eo, ex = float(eo_crop[contour].sum()), float(ex_crop[contour].sum())
        if _is_text_line(r, strokes, words or []) and eo >= MIN_TEXT_ENERGY:
            r.residual = round(ex / eo, 4)
        o, xx = by_location.get(r.location, (0.0, 0.0))
        by_location[r.location] = (o + eo, xx + ex)
        total_orig, total_out = total_orig + eo, total_out + ex
        regions.append(r)
    regions.sort(key=lambda r: (r.y, r.x))
    return _FrameResidual(regions, total_orig, total_out, by_location)


def _stretch(crop: np.ndarray) -> np.ndarray:
    """1st-99th percentile to 0-255; a crop flatter than STRETCH_MIN_RANGE_GREY becomes plain white."""
    lo, hi = np.percentile(crop, (1, 99))
    if hi - lo < STRETCH_MIN_RANGE_GREY:
        return np.full(crop.shape, 255, np.uint8)
    return np.clip((crop.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def ocr_canvas(gray: np.ndarray, regions: list[TextRegion], pad_px: int = 4, gap_px: int = 12) -> np.ndarray:
    """The regions of ``gray``, each contrast-stretched on its own, stacked into one picture for OCR."""
    h, w = gray.shape
    crops = []
    for r in regions:
        x0, y0 = max(0, r.x - pad_px), max(0, r.y - pad_px)
        x1, y1 = min(w, r.x + r.w + pad_px), min(h, r.y + r.h + pad_px)
        crops.append(_stretch(gray[y0:y1, x0:x1]))
    if not crops:
        return np.full((1, 1), 255, np.uint8)
    width = max(c.shape[1] for c in crops) + 2 * gap_px
    rows = [np.full((gap_px, width), 255, np.uint8)]
    for c in crops:
        line = np.full((c.shape[0], width), 255, np.uint8)
        line[:, gap_px:gap_px + c.shape[1]] = c
        rows += [line, np.full((gap_px, width), 255, np.uint8)]
    return np.vstack(rows)


def _ocr_tokens(gray: np.ndarray, regions: list[TextRegion]) -> list[str]:
    """Words of 3+ letters or digits OCR reads in the contrast-stretched regions of ``gray``."""
    if not regions:
        return []
    return [w.text for w in _ocr.read_words(ocr_canvas(gray, regions), upscale=3, page_mode=6)]


def _original_words(gray: np.ndarray, sector_mask: Optional[np.ndarray]) -> list:
    """OCR words of the original outside the sector (the sector is blacked out before reading)."""
    if not _ocr.ocr_available():
        return []
    g = gray.copy()
    if sector_mask is not None:
        g[sector_mask.astype(bool)] = 0
    return _ocr.read_words(g, upscale=2, min_chars=2)


# --------------------------------------------------------------------------- one frame


@dataclass
class ResidualText:
    """Residual burned-in text in one output frame (see the module docstring).

    Attributes
    ----------
    residual : worst region's E(output) / E(original) (0: nothing left, 1: untouched).
    residual_overall : the same over all regions together.
    ocr_tokens : words OCR reads in the output's contrast-stretched text regions.
    ocr_available : False when Tesseract could not be used (ocr_tokens is then empty).
    regions : the text regions found on the original, with their own residuals.
    leak : residual > max_residual, or OCR read a word.
    location : where the worst region lies (header band, footer band, ...); None without text.
    max_residual : the threshold used.
    original_words : how many words OCR read on the original outside the sector.
    """

    residual: float
    residual_overall: float
    ocr_tokens: list[str]
    ocr_available: bool
    regions: list[TextRegion]
    leak: bool
    location: Optional[str] = None
    max_residual: float = MAX_RESIDUAL
    original_words: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _stretched(band: np.ndarray, stretch: str) -> np.ndarray:
    """A band's contrast stretched to 0..255 (float32): min-max, or CLAHE (8 x 8 tiles, clip 4)."""
    if stretch == "clahe":
        return cv2.createCLAHE(clipLimit=4.0, tileGridSize=(8, 8)).apply(band).astype(np.float32)
    lo, hi = float(band.min()), float(band.max())
    return (band.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))


def _edge_energy(band: np.ndarray, region: np.ndarray) -> float:
    gx = cv2.Sobel(band, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(band, cv2.CV_32F, 0, 1)
    return float(np.sqrt(gx * gx + gy * gy)[region].sum())


def band_trace_ratio(original: np.ndarray, cleaned: np.ndarray, text_mask: np.ndarray,
                     rows: Optional[tuple[int, int]] = None, region_px: int = 2,
                     stretch: str = "minmax") -> float:
    """What a contrast stretch still shows where text was: edge energy left, cleaned / original.

    The band of rows holding the text is contrast-stretched on each frame on
    its own (``"minmax"`` to 0..255, or ``"clahe"``), as a person trying to
    read a trace would, and the Sobel gradient magnitude is summed over the
    text pixels grown by ``region_px`` (the letters, their rims and outlines).
    0 means nothing is left to read there; 1 means as much as before.  OCR is
    no judge: it reads nothing in an outline a person still reads.

    Parameters
    ----------
    original, cleaned : H x W uint8 grey (or BGR) frames before and after cleaning.
    text_mask : H x W, non-zero on the original's text pixels.
    rows : (first, end) rows of the band; by default the text's rows grown by ``region_px`` + 1.
    region_px : how far around the text pixels the energy counts.
    stretch : ``"minmax"`` or ``"clahe"``.

    Returns
    -------
    The ratio (0 when the original has no edge energy there).

    Example
    -------
    >>> band = np.full((20, 60), 40, np.uint8)
    >>> text = cv2.putText(band.copy(), "20.05", (2, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255)
    >>> band_trace_ratio(text, band, text != band)
    0.0
    """
    if stretch not in ("minmax", "clahe"):
        raise ValueError(f"stretch must be 'minmax' or 'clahe', got {stretch!r}")
    before, after = _as_gray(original), _as_gray(cleaned)
    text = np.asarray(text_mask) > 0
    if not text.any():
        return 0.0
    if rows is None:
        ys = np.nonzero(text.any(axis=1))[0]
        rows = (max(0, int(ys[0]) - region_px - 1), min(text.shape[0], int(ys[-1]) + region_px + 2))
    band = slice(*rows)
    region = cv2.dilate(text.view(np.uint8), np.ones((2 * region_px + 1, 2 * region_px + 1), np.uint8))[band] > 0
    energy_before = _edge_energy(_stretched(before[band], stretch), region)
    return _edge_energy(_stretched(after[band], stretch), region) / energy_before if energy_before else 0.0


def residual_text(original: np.ndarray, output: np.ndarray, sector_mask: Optional[np.ndarray] = None, *,
                  max_residual: float = MAX_RESIDUAL, ocr: bool = True) -> ResidualText:
    """Measure the burned-in text an output frame still shows.

    Parameters
    ----------
    original : H x W uint8 grey (or H x W x 3 BGR) frame before de-identification.
    output : the same frame after it, same size.
    sector_mask : H x W imaging sector of the original (non-zero inside); found with
        :func:`~fetalkit.preprocess.sector.detect_sector` when None (the whole frame
        is searched for text when none is found).
    max_residual : a residual above this is a leak.
    ocr : also read the original and the output with Tesseract (when installed).

    Returns
    -------
    ResidualText

    Example
    -------
    >>> r = residual_text(frame_with_text, frame_blanked)    # doctest: +SKIP
    >>> r.residual, r.leak                                    # doctest: +SKIP
    (0.0, False)
    """
    orig, out = _as_gray(original), _as_gray(output)
    if orig.shape != out.shape:
        raise InputError(f"output frame is {out.shape[1]} x {out.shape[0]}, the original {orig.shape[1]} x "
                         f"{orig.shape[0]}: residual text compares pixel by pixel; give same-size frames")
    if sector_mask is None:
        sector_mask = _sector_of(orig)
    use_ocr = ocr and _ocr.ocr_available()
    words = _original_words(orig, sector_mask) if use_ocr else []
    text, halo = text_mask(orig, sector_mask, words)
    fr = _frame_residual(orig, out, text, halo, sector_mask, words)
    worst, location = fr.worst
    tokens = _ocr_tokens(out, fr.regions) if use_ocr else []
    return ResidualText(residual=round(worst, 4), residual_overall=round(fr.overall, 4), ocr_tokens=tokens,
                        ocr_available=use_ocr, regions=fr.regions, leak=worst > max_residual or bool(tokens),
                        location=location, max_residual=max_residual, original_words=len(words))


# --------------------------------------------------------------------------- files


@dataclass
class _Frames:
    """The frames of one file, as grey, with what is known of its colour."""

    path: Path
    kind: str
    count: Optional[int]
    size_hw: tuple[int, int]
    colour: str                # "grey", "colour", or a DICOM photometric interpretation
    is_colour: bool
    frames: Iterator[np.ndarray]


def _chroma_colour(frame: np.ndarray) -> bool:
    if frame.ndim != 3:
        return False
    chroma = frame.max(axis=2).astype(np.int16) - frame.min(axis=2)
    return float((chroma > CHROMA_GREY).mean()) >= COLOUR_SHARE


def open_frames(path: str | Path) -> _Frames:
    """Grey frames of an image, a folder of frames, a video or a DICOM (``fetalkit.io.video.open_source``)."""
    from fetalkit.io.video import open_source
    source = open_source(str(path))
    it = iter(source)
    first = next(it, None)
    if first is None:
        raise InputError(f"{printable(path)}: no readable frame; give an image, a video or a DICOM with pixels")
    if source.kind == "dicom":
        ds = source.dicom.dataset
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        colour, is_colour = photometric, not photometric.startswith("MONOCHROME")
    else:
        is_colour = _chroma_colour(first[1])
        colour = "colour" if is_colour else "grey"

    def frames() -> Iterator[np.ndarray]:
        yield _as_gray(first[1])
        for _, f in it:
            yield _as_gray(f)

    return _Frames(Path(path), source.kind, source.count, tuple(source.size_hw), colour, is_colour, frames())


@dataclass
class PixelAudit:
    """The pixel part of ``fetalkit audit deid``: residual text over every frame, and what else changed.

    ``residual`` is the worst frame's (see :class:`ResidualText`), ``residual_overall``
    all frames' regions together; ``residual_by_location`` the overall ratio per
    location.  ``changed_share`` / ``mean_abs_change_grey`` compare the frames outside
    the text regions (pixels changed by more than :data:`CHANGE_GREY`, mean absolute
    difference).  ``comparable`` is False when the frame sizes differ (nothing is
    measured then).  ``findings`` are the lines the summary prints.
    """

    original: str
    output: str
    frames_original: Optional[int]
    frames_output: Optional[int]
    frames_compared: int
    size_original: tuple[int, int]
    size_output: tuple[int, int]
    colour_original: str
    colour_output: str
    colour_lost: bool
    comparable: bool
    residual: float = 0.0
    residual_overall: float = 0.0
    residual_by_location: dict = field(default_factory=dict)
    location: Optional[str] = None
    worst_frame: Optional[int] = None
    regions: list = field(default_factory=list)
    ocr_available: bool = False
    ocr_note: str = ""
    ocr_tokens: list = field(default_factory=list)
    ocr_frames: list = field(default_factory=list)
    original_words: int = 0
    changed_share: float = 0.0
    mean_abs_change_grey: float = 0.0
    max_residual: float = MAX_RESIDUAL
    leak: bool = False
    findings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def audit_pixels(original_path: str | Path, output_path: str | Path, *, max_residual: float = MAX_RESIDUAL,
                 ocr: bool = True) -> PixelAudit:
    """Compare the frames of an original and its de-identified output (any image, video or DICOM).

    The sector is found once on the original's first frames; text regions per
    original frame (OCR words of the first frame are taken for every frame: scanner
    headers do not move); OCR reads the output's regions of the first frame and of
    the frame with the worst residual.
    """
    from fetalkit.preprocess.sector import detect_sector_in_frames
    src, dst = open_frames(original_path), open_frames(output_path)
    available, why = _ocr.ocr_status()
    use_ocr = ocr and available
    audit = PixelAudit(original=printable(original_path), output=printable(output_path),
                       frames_original=src.count, frames_output=dst.count, frames_compared=0,
                       size_original=src.size_hw, size_output=dst.size_hw, colour_original=src.colour,
                       colour_output=dst.colour, colour_lost=src.is_colour and not dst.is_colour,
                       comparable=src.size_hw == dst.size_hw, ocr_available=use_ocr,
                       ocr_note="" if use_ocr else (why if not available else "OCR not asked for"),
                       max_residual=max_residual)
    if not audit.comparable:
        audit.leak = True
        audit.findings.append(f"pixels not compared: the output is {dst.size_hw[1]} x {dst.size_hw[0]}, "
                              f"the original {src.size_hw[1]} x {src.size_hw[0]}")
        return audit
    # the sector from up to 16 first frames (a clip's dark fluid moves; its user interface does not)
    head = [f for _, f in zip(range(16), src.frames)]
    try:
        sector = detect_sector_in_frames(head).mask
    except FetalkitError:
        sector = None
    words = _original_words(head[0], sector) if use_ocr else []
    audit.original_words = len(words)

    def original_frames() -> Iterator[np.ndarray]:
        yield from head
        yield from src.frames

    total_orig = total_out = 0.0
    by_location: dict[str, list[float]] = {}
    changed = outside_px = 0
    abs_change = 0.0
    worst = (-1.0, None, None, None, None)  # residual, index, location, frame pair, regions
    first = None
    for i, (o, x) in enumerate(zip(original_frames(), dst.frames)):
        if o.shape != x.shape:
            audit.comparable, audit.leak = False, True
            audit.findings.append(f"pixels not compared from frame {i}: sizes differ")
            break
        text, halo = text_mask(o, sector, words)
        fr = _frame_residual(o, x, text, halo, sector, words)
        total_orig += fr.original_energy
        total_out += fr.output_energy
        for loc, (eo, ex) in fr.by_location.items():
            acc = by_location.setdefault(loc, [0.0, 0.0])
            acc[0] += eo
            acc[1] += ex
        value, loc = fr.worst
        if first is None:
            first = (o.copy(), x.copy(), fr.regions)
        if value > worst[0]:
            worst = (value, i, loc, (o.copy(), x.copy()), fr.regions)
        away = ~cv2.dilate(halo.view(np.uint8), np.ones((2 * OUTSIDE_GAP_PX + 1,) * 2, np.uint8)).astype(bool)
        diff = cv2.absdiff(o, x)[away]
        changed += int((diff > CHANGE_GREY).sum())
        abs_change += float(diff.sum())
        outside_px += int(away.sum())
        audit.frames_compared += 1
    audit.frames_output = audit.frames_output or audit.frames_compared
    if audit.frames_compared == 0:
        audit.leak = True
        audit.findings.append("no frame of the output could be compared")
        return audit
    audit.residual = round(max(worst[0], 0.0), 4)
    audit.residual_overall = round(total_out / total_orig, 4) if total_orig >= MIN_TEXT_ENERGY else 0.0
    audit.residual_by_location = {k: round(v[1] / v[0], 4) for k, v in by_location.items() if v[0] >= MIN_TEXT_ENERGY}
    audit.location, audit.worst_frame = worst[2], worst[1]
    audit.regions = [asdict(r) for r in (worst[4] or first[2])]
    audit.changed_share = round(changed / max(outside_px, 1), 5)
    audit.mean_abs_change_grey = round(abs_change / max(outside_px, 1), 3)
    if use_ocr:
        picks = [(0, first[1], first[2])]
        if worst[1] not in (None, 0):
            picks.append((worst[1], worst[3][1], worst[4]))
        for index, frame, regions in picks[:OCR_FRAMES]:
            tokens = _ocr_tokens(frame, regions)
            audit.ocr_frames.append(index)
            audit.ocr_tokens += [t for t in tokens if t not in audit.ocr_tokens]
    _judge(audit, src.count, dst.count)
    return audit


def _judge(audit: PixelAudit, n_original: Optional[int], n_output: Optional[int]) -> None:
    """Set ``leak`` and the summary ``findings`` of a pixel audit."""
    if audit.residual > audit.max_residual:
        audit.leak = True
        audit.findings.append(f"residual text {audit.residual:.3f} in the {audit.location or 'text regions'}"
                              + (f" (frame {audit.worst_frame})" if (n_original or 1) > 1 else ""))
    if audit.ocr_tokens:
        audit.leak = True
        audit.findings.append(f"OCR reads {len(audit.ocr_tokens)} word{'s' if len(audit.ocr_tokens) > 1 else ''} "
                              "in the text regions")
    if audit.ocr_note.startswith("OCR unavailable"):
        audit.findings.append(audit.ocr_note)
    if audit.colour_lost:
        audit.findings.append(f"colour lost ({audit.colour_original} -> {audit.colour_output})")
    if n_original and n_output and n_original != n_output:
        audit.findings.append(f"frame count changed ({n_original} -> {n_output})")
