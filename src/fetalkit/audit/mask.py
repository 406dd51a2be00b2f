"""``fetalkit audit mask ORIGINAL MASKED``: does the masked output still show what was to be hidden?

A detector (the bundled one by default, through the detection step of
``fetalkit mask``) runs on every frame of the original; each region it finds is
looked at in the masked frame:

* **covered** when at least :data:`~fetalkit.evaluation.video.COVER_FRACTION` (90 %)
  of its pixels are hidden, or when the detector does not find it again in the
  masked frame and its content does not survive there;
* **leaked** otherwise: the detector finds it again in the masked frame (IoU >=
  :data:`REFIND_IOU` with the original's box), or its content survives (Pearson
  correlation of the box's pixels between original and masked > :data:`SURVIVE_CORR`).

A pixel is **hidden** when the masked frame no longer shows the original's local
structure there (9 x 9 windows): the masked window is flat (its standard deviation
at most a quarter of the original's plus half a grey level: a fill, a blur, a
block of a pixelation) or it does not correlate with the original (normalised
cross-correlation < 0.5).  So any masking style and lossy re-encoding are judged
alike; a pixel that is flat in both (black surround) shows nothing and counts
as hidden.  ``masked_share`` is the share of a frame's visible image (pixels not
flat-black in the original) that is hidden.

With ``truth`` (per-frame boxes, see :func:`read_truth`) each truth box is
*uncovered* when less than 90 % of its pixels are hidden: the rule of
``fetalkit bench video`` (``fetalkit.evaluation.video.replay``), so on the same
masked output the two count the same missed target frames.  ``miss_rate`` is the
share of all truth-box pixels left visible.

A frame is leaked when one of its regions leaked or one of its truth boxes is
uncovered.  The audit is clean when at most ``max_leaked`` frames leaked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.errors import InputError
from fetalkit.evaluation.video import COVER_FRACTION
from fetalkit.io.inputs import printable

__all__ = ["REFIND_IOU", "SURVIVE_CORR", "MaskAudit", "hidden_map", "read_truth", "audit_mask", "longest_run"]

REFIND_IOU = 0.3        # a detection in the masked frame this close to the original's box: found again
SURVIVE_CORR = 0.9      # the box's pixels correlate this much between original and masked: content survives
WINDOW_PX = 9           # local windows of the hidden-pixel test
NCC_MIN = 0.5           # below: the masked window no longer follows the original
FLAT_RATIO = 0.25       # a masked window flatter than this share of the original's spread (+ FLAT_FLOOR) is blanked
FLAT_FLOOR_GREY = 0.5
BLACK_GREY = 8          # original pixels at most this bright and flat are the black surround, not image
SAME_MIN_GREY = 3       # a pixel within this (or SAME_NOISE_FACTOR x the frame's median codec difference) is unchanged
SAME_NOISE_FACTOR = 3.0
SAME_PATCH_PX = 5       # ... and shown when most of the lit pixels of its 5 x 5 patch are unchanged too
                        # (a blur's chance matches are not)
SAME_PATCH_SHARE = 0.6


# --------------------------------------------------------------------------- pixels


def _local_stats(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windowed means, standard deviations and covariance of two grey frames (float32)."""
    k = (WINDOW_PX, WINDOW_PX)
    a, b = a.astype(np.float32), b.astype(np.float32)
    ma, mb = cv2.blur(a, k), cv2.blur(b, k)
    va = np.maximum(cv2.blur(a * a, k) - ma * ma, 0.0)
    vb = np.maximum(cv2.blur(b * b, k) - mb * mb, 0.0)
    cov = cv2.blur(a * b, k) - ma * mb
    return ma, np.sqrt(va), np.sqrt(vb), cov


def hidden_map(original: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """H x W bool: pixels whose original local structure the masked frame no longer shows.

    The windowed test (flat, or not correlated) decides, for every window holding
    the pixel; then pixels that lie in a patch shown unchanged (within the codec's
    noise, and not black) are visible again, so a mask's edge is found to the pixel
    (exactly on lossless outputs) and not 4 px to either side of it.  A dark pixel
    (as dark as the tolerance) looks alike masked or not: it takes the state of the
    nearest pixel that is not dark.

    Parameters
    ----------
    original, masked : H x W uint8 grey frames of the same size.
    """
    _, s_o, s_m, cov = _local_stats(original, masked)
    flat = s_m <= FLAT_RATIO * s_o + FLAT_FLOOR_GREY
    ncc = cov / np.maximum(s_o * s_m, 1e-6)
    # a pixel just inside a mask's edge has a window reaching outside, where the image shows: it counts
    # hidden when any window holding it is hidden; pixels shown unchanged are given back below
    centred = (flat | (ncc < NCC_MIN)).view(np.uint8)
    hidden = cv2.dilate(centred, np.ones((WINDOW_PX, WINDOW_PX), np.uint8)).astype(bool)
    diff = cv2.absdiff(original, masked)
    shown = ~centred.astype(bool) & (original > BLACK_GREY)
    # what a lossless copy differs by is 0; a lossy one, a few grey levels: the tolerance follows it
    tol = max(SAME_MIN_GREY, SAME_NOISE_FACTOR * float(np.median(diff[shown]))) if shown.any() else SAME_MIN_GREY
    dark = original <= tol
    same = ((diff <= tol) & ~dark).astype(np.float32)
    k = (SAME_PATCH_PX, SAME_PATCH_PX)
    patch = cv2.blur(same, k) >= SAME_PATCH_SHARE * cv2.blur((~dark).astype(np.float32), k)
    # given back only where the windows were unsure: near a window that shows the image
    rim = cv2.dilate(1 - centred, np.ones((WINDOW_PX, WINDOW_PX), np.uint8)).astype(bool)
    hidden &= ~((same > 0) & patch & rim)
    # a dark pixel looks the same masked or not: it goes with the nearest pixel that shows something
    if dark.any() and not dark.all():
        _, nearest = cv2.distanceTransformWithLabels(dark.view(np.uint8), cv2.DIST_L2, 5,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
        of_label = np.zeros(int(nearest.max()) + 1, bool)
        of_label[nearest[~dark]] = hidden[~dark]
        hidden[dark] = of_label[nearest[dark]]
    return hidden


def _imaged(original: np.ndarray) -> np.ndarray:
    """Pixels that show something in the original (not the flat black surround)."""
    mean, s_o, _, _ = _local_stats(original, original)
    return (mean > BLACK_GREY) | (s_o > FLAT_FLOOR_GREY)


def _whole_pixels(box_xyxy, shape_hw) -> tuple[int, int, int, int]:
    """A box rounded outwards to whole pixels and clipped to the frame (as ``covered_fraction``)."""
    x1, y1 = int(np.floor(box_xyxy[0])), int(np.floor(box_xyxy[1]))
    x2, y2 = int(np.ceil(box_xyxy[2])), int(np.ceil(box_xyxy[3]))
    h, w = shape_hw
    return max(0, x1), max(0, y1), min(w, x2), min(h, y2)


def hidden_fraction(hidden: np.ndarray, box_xyxy) -> float:
    """Share of a box's pixels that are hidden (1.0 for an empty box, as ``covered_fraction``)."""
    x1, y1, x2, y2 = _whole_pixels(box_xyxy, hidden.shape)
    if x2 <= x1 or y2 <= y1:
        return 1.0
    return float(hidden[y1:y2, x1:x2].mean())


def box_correlation(original: np.ndarray, masked: np.ndarray, box_xyxy) -> float:
    """Pearson correlation of the box's pixels between original and masked (0 when either is flat)."""
    x1, y1, x2, y2 = _whole_pixels(box_xyxy, original.shape)
    a = original[y1:y2, x1:x2].astype(np.float64).ravel()
    b = masked[y1:y2, x1:x2].astype(np.float64).ravel()
    if a.size < 2 or a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def longest_run(frames: list[int]) -> int:
    """Longest run of consecutive frame indices in a sorted list (``[3, 4, 5, 9]`` -> 3)."""
    best = run = 0
    previous = None
    for i in frames:
        run = run + 1 if previous is not None and i == previous + 1 else 1
        best, previous = max(best, run), i
    return best


# --------------------------------------------------------------------------- truth


def read_truth(path: str | Path) -> dict[int, list[tuple[np.ndarray, Optional[str]]]]:
    """Per-frame truth boxes from a JSON file: frame index -> [(x1 y1 x2 y2, category)].

    Format: a list of ``{"frame": i, "bbox": [x, y, w, h], "category": c}`` (frame
    indices from 0, boxes in frame pixels, ``category`` optional), or a COCO-style
    object holding that list under ``"annotations"`` (``"image_id"`` may stand for
    ``"frame"``).  Frames without a record hold no target.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{printable(p)}: cannot read the truth boxes ({e}); give a JSON list of "
                         '{"frame": i, "bbox": [x, y, w, h], "category": c}') from None
    records = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise InputError(f"{printable(p)}: truth boxes must be a JSON list of "
                         '{"frame": i, "bbox": [x, y, w, h], "category": c} (or a COCO object with "annotations")')
    truth: dict[int, list[tuple[np.ndarray, Optional[str]]]] = {}
    for k, r in enumerate(records):
        try:
            frame = int(r["frame"] if "frame" in r else r["image_id"])
            x, y, w, h = (float(v) for v in r["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{printable(p)}: record {k} is not "
                             '{"frame": i, "bbox": [x, y, w, h], "category": c}; fix or remove it') from None
        if w <= 0 or h <= 0 or frame < 0:
            raise InputError(f"{printable(p)}: record {k} has an empty box or a negative frame index")
        category = r.get("category", r.get("category_id"))
        truth.setdefault(frame, []).append((np.array([x, y, x + w, y + h], np.float32),
                                            None if category is None else str(category)))
    return truth


# --------------------------------------------------------------------------- audit


@dataclass
class MaskAudit:
    """The result of :func:`audit_mask`.

    ``frames`` holds one record per compared frame: ``frame``, ``found`` (regions the
    detector found in the original, each with ``box`` [x, y, w, h], ``class``,
    ``hidden`` share, ``correlation``, ``found_again`` and ``outcome``), ``truth``
    (each truth box with its hidden share and ``covered``), ``masked_share`` and
    ``leaked``.
    """

    original: str
    masked: str
    model: str
    classes: list
    frames_original: Optional[int] = None
    frames_masked: Optional[int] = None
    frames_compared: int = 0
    regions_found: int = 0
    regions_covered: int = 0
    regions_leaked: int = 0
    leaked_frames: list = field(default_factory=list)
    longest_leaked_run: int = 0
    truth_file: Optional[str] = None
    truth_target_frames: int = 0
    truth_uncovered_frames: list = field(default_factory=list)
    miss_rate: Optional[float] = None
    mean_masked_share: float = 0.0
    max_leaked: int = 0
    frames: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return len(self.leaked_frames) <= self.max_leaked

    def as_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean, "summary": self.summary()}

    def summary(self) -> str:
        from fetalkit.io.video import frame_list
        n = len(self.leaked_frames)
        head = f"audit mask {self.masked}: " + ("clean: " if self.clean else "LEAK: ")
        parts = [f"{n} of {self.frames_compared} frames leaked" + (f" ({frame_list(self.leaked_frames)}; "
                                                                     f"longest run {self.longest_leaked_run})" if n else ""),
                 f"{self.regions_covered} of {self.regions_found} regions found in the original covered"]
        if self.truth_file is not None:
            parts.append(f"{len(self.truth_uncovered_frames)} of {self.truth_target_frames} target frames uncovered, "
                         f"miss rate {100 * (self.miss_rate or 0.0):.2f} % of target pixels")
        parts.append(f"masked share {100 * self.mean_masked_share:.1f} % of the image")
        if n and self.max_leaked:
            parts.append(f"max {self.max_leaked} leaked")
        return head + "; ".join(parts + self.notes)


def _frame_pairs(original_path, masked_path):
    from fetalkit.io.video import open_source, to_gray
    src, dst = open_source(str(original_path)), open_source(str(masked_path))
    if tuple(src.size_hw) != tuple(dst.size_hw):
        raise InputError(f"{printable(masked_path)}: frames are {dst.size_hw[1]} x {dst.size_hw[0]}, the original's "
                         f"{src.size_hw[1]} x {src.size_hw[0]}; the audit compares pixel by pixel, give the output "
                         "masked from this original")
    pairs = ((i, (to_gray(a), to_gray(b))) for (i, a), (_, b) in zip(src, dst))
    return src, dst, pairs


def audit_mask(original_path: str | Path, masked_path: str | Path, *, truth: Optional[str | Path | dict] = None,
               model: Optional[str] = None, classes: Optional[list[str]] = None, max_leaked: int = 0,
               conf: Optional[float] = None, threads: int = 2, detector=None) -> MaskAudit:
    """Audit a masked image, folder of frames, video or DICOM against its original, frame by frame.

    Parameters
    ----------
    original_path, masked_path : what ``fetalkit.io.video.open_source`` opens; same frame size.
    truth : per-frame truth boxes: a JSON file (:func:`read_truth`) or its parsed dict.
    model : detector, bundled name or .onnx (default: the bundled detector).
    classes : classes to look for (default: all of the model's; truth boxes of other
        categories are ignored).
    max_leaked : the audit is clean with at most this many leaked frames.
    conf : detector confidence (default: the model's operating point).
    detector : an already loaded detector (tests, batch use); ``model`` is then ignored.

    Returns
    -------
    MaskAudit
    """
    from fetalkit.masking.pipeline import MaskConfig, Masker
    if detector is None:
        from fetalkit.runtime.detector import OnnxDetector
        from fetalkit.runtime.registry import resolve_model
        detector = OnnxDetector(resolve_model(model, "detector"), threads=threads)
    on_original = Masker(detector, MaskConfig(classes=classes, conf=conf))
    on_masked = Masker(detector, MaskConfig(classes=classes, conf=conf))
    names = detector.classes
    wanted = list(classes or names)
    boxes_truth = truth if isinstance(truth, dict) or truth is None else read_truth(truth)
    audit = MaskAudit(original=printable(original_path), masked=printable(masked_path),
                      model=getattr(detector.path, "name", str(detector.path)), classes=wanted, max_leaked=max_leaked,
                      truth_file=None if truth is None else (printable(truth) if not isinstance(truth, dict) else "given"))
    src, dst, pairs = _frame_pairs(original_path, masked_path)
    audit.frames_original, audit.frames_masked = src.count, dst.count
    truth_px = truth_visible_px = 0
    share_sum = 0.0
    for i, (o, m) in pairs:
        if o.shape != m.shape:
            raise InputError(f"{printable(masked_path)}: frame {i} is {m.shape[1]} x {m.shape[0]}, the original's "
                             f"{o.shape[1]} x {o.shape[0]}")
        hidden = hidden_map(o, m)
        imaged = _imaged(o)
        share = float(hidden[imaged].mean()) if imaged.any() else 1.0
        share_sum += share
        record = {"frame": i, "found": [], "truth": [], "masked_share": round(share, 4), "leaked": False}
        found = on_original.detect(on_original.prepare(o))
        again = None
        for box, label in zip(found.boxes_xyxy, found.labels):
            frac = hidden_fraction(hidden, box)
            corr = box_correlation(o, m, box)
            refound = False
            if frac < COVER_FRACTION:
                if again is None:  # the masked frame is searched only when something may show
                    again = on_masked.detect(on_masked.prepare(m))
                same = again.boxes_xyxy[again.labels == label]
                refound = bool(len(same)) and float(_iou(box, same).max()) >= REFIND_IOU
            outcome = "covered" if frac >= COVER_FRACTION else \
                "leaked: found again" if refound else "leaked: content survives" if corr > SURVIVE_CORR else \
                "covered: not found again"
            audit.regions_found += 1
            leaked = outcome.startswith("leaked")
            audit.regions_leaked += leaked
            audit.regions_covered += not leaked
            record["leaked"] |= leaked
            x1, y1, x2, y2 = (round(float(v), 1) for v in box)
            record["found"].append({"class": names[int(label)], "box": [x1, y1, round(x2 - x1, 1), round(y2 - y1, 1)],
                                    "hidden": round(frac, 4), "correlation": round(corr, 4), "found_again": refound,
                                    "outcome": outcome})
        for box, category in (boxes_truth or {}).get(i, []):
            if classes and category is not None and category not in classes:
                continue
            frac = hidden_fraction(hidden, box)
            x1, y1, x2, y2 = _whole_pixels(box, o.shape)
            n_px = max(0, x2 - x1) * max(0, y2 - y1)
            truth_px += n_px
            truth_visible_px += n_px - int(hidden[y1:y2, x1:x2].sum()) if n_px else 0
            covered = frac >= COVER_FRACTION
            record["truth"].append({"box": [float(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                                    "category": category, "hidden": round(frac, 4), "covered": covered})
        if record["truth"]:
            audit.truth_target_frames += 1
            if not all(t["covered"] for t in record["truth"]):
                audit.truth_uncovered_frames.append(i)
                record["leaked"] = True
        if record["leaked"]:
            audit.leaked_frames.append(i)
        audit.frames.append(record)
        audit.frames_compared += 1
    if audit.frames_compared == 0:
        raise InputError(f"{printable(masked_path)}: no frame could be compared with {printable(original_path)}")
    audit.longest_leaked_run = longest_run(audit.leaked_frames)
    audit.mean_masked_share = round(share_sum / audit.frames_compared, 4)
    if boxes_truth is not None:
        audit.miss_rate = round(truth_visible_px / truth_px, 5) if truth_px else 0.0
    if src.count and dst.count and src.count != dst.count:
        audit.notes.append(f"frame count differs ({src.count} original, {dst.count} masked): "
                           f"{audit.frames_compared} compared")
    return audit


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    from fetalkit.detection.boxes import box_iou
    return box_iou(np.asarray(box, np.float32).reshape(1, 4), np.asarray(boxes, np.float32).reshape(-1, 4))[0]
