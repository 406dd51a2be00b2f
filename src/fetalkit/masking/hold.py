"""Temporal rules that keep a region masked when the detector misses it for a few frames.

A missed frame (false negative) shows what must stay hidden, so the rules of the
privacy-masking paper (Section 7.1) sit between the detector and the renderer:

* ``none``: mask exactly the current detections.
* ``frames`` (BBoxHold): when a box is no longer detected, keep it for up to
  ``hold_frames`` frames.
* ``ssim`` (BBoxHoldSim): when a box is no longer detected, keep it while the
  structural similarity between the current frame and the last frame in which it
  was detected stays >= ``ssim_threshold`` (the view has not changed, so the
  structure is still where it was); ``max_hold_frames`` caps the hold.  With
  ``ssim_gain`` both frames are first scaled to one mean brightness
  (:func:`match_gain`), so a fade (lost contact, a turned gain knob) does not read
  as a change of view, and two dark frames do not look alike merely for being dark;
  with ``ssim_imaged_only`` the SSIM is averaged over the imaged area only (:func:`ssim`).

Rules work per class and per box on numpy arrays; they never draw.  Example::

    rule = make_rule("ssim", ssim_threshold=0.5)
    for frame, dets in stream:
        step = rule.update(frame, dets)     # step.masks: boxes to render this frame
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fetalkit.masking import defaults
from fetalkit.types import ImageDetections

SSIM_WIDTH_PX = 96       # SSIM runs on a frame downscaled to this width (speed; speckle averages out)
SSIM_WIN = 7             # scikit-image's default window
RULES = ("none", "frames", "ssim")


def downscale_gray(frame: np.ndarray, width_px: int = SSIM_WIDTH_PX) -> np.ndarray:
    """The frame at ``width_px`` wide (aspect kept), float64, for SSIM."""
    h, w = frame.shape[:2]
    height = max(SSIM_WIN, round(h * width_px / w))
    return cv2.resize(frame, (width_px, height), interpolation=cv2.INTER_AREA).astype(np.float64)


GAIN_MEAN = 64.0          # gray level a frame's mean is scaled to before a gain-matched SSIM


def match_gain(small: np.ndarray, mean: float = GAIN_MEAN) -> np.ndarray:
    """The frame scaled so that its mean is ``mean`` (a blank frame is left as it is)."""
    m = float(small.mean())
    return small * (mean / m) if m > 1.0 else small


BLACK_LEVEL = 4.0         # local mean below this in both frames: outside the imaging sector


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, imaged_only: bool = False) -> float:
    """Mean structural similarity of two equal-size gray images.

    The same computation as ``skimage.metrics.structural_similarity(a, b,
    data_range=data_range)`` with its defaults (7 x 7 uniform window, K1 0.01,
    K2 0.03, sample covariance, border of 3 px excluded), written with OpenCV box
    filters so the runtime needs no scikit-image; a test checks agreement to 1e-6.
    ``imaged_only`` averages only over windows that are not black in both images:
    the black surround of an ultrasound sector is identical in any two frames and
    would otherwise make different views look similar.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    x, y = a.astype(np.float64), b.astype(np.float64)
    k = (SSIM_WIN, SSIM_WIN)
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1)

    def box(img):
        return cv2.blur(img, k, borderType=cv2.BORDER_REFLECT)

    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (SSIM_WIN - 1) // 2
    s = s[pad:-pad, pad:-pad]
    if imaged_only:
        valid = ((ux > BLACK_LEVEL) | (uy > BLACK_LEVEL))[pad:-pad, pad:-pad]
        return float(s[valid].mean(dtype=np.float64)) if valid.any() else 1.0
    return float(s.mean(dtype=np.float64))


@dataclass
class HoldStep:
    """What a rule decided for one frame."""

    masks: ImageDetections            # boxes to render (detections + held boxes)
    held: list[dict]                  # [{"box": [x, y, w, h], "class": k, "rule": name, "age": frames}]
    ssim: dict[int, float] = field(default_factory=dict)   # class -> SSIM vs its reference (when computed)


class _Frame:
    """A frame whose downscaled copy is made only when an SSIM needs it: while the
    detector keeps finding a box, no frame is ever downscaled."""

    def __init__(self, gray: np.ndarray, gain: bool = False):
        self.gray, self.gain = gray, gain
        self._small: np.ndarray | None = None

    @property
    def small(self) -> np.ndarray:
        if self._small is None:
            self._small = downscale_gray(self.gray)
            if self.gain:
                self._small = match_gain(self._small)
        return self._small


@dataclass
class _Track:
    box_xyxy: np.ndarray
    score: float
    reference: _Frame | None          # the frame of the box's last detection (ssim rule)
    age: int = 0                      # frames since the last detection


class HoldRule:
    """Hold of the last detected boxes, per class and per box (``rule`` in :data:`RULES`).

    Each detected box starts a track.  A track is superseded when a detection of its
    class nearly repeats it (IoU >= ``MATCH_IOU``); otherwise it is kept while the rule
    allows, even if the detector fires elsewhere in the frame or on a box that only
    partly overlaps it (neither means the structure was found where it was: both are
    then masked).
    """

    MATCH_IOU = 0.5

    def __init__(self, rule: str = defaults.RULE, hold_frames: int = defaults.HOLD_FRAMES,
                 ssim_threshold: float = defaults.SSIM_THRESHOLD, max_hold_frames: int = defaults.MAX_HOLD_FRAMES,
                 ssim_imaged_only: bool = defaults.SSIM_IMAGED_ONLY, ssim_gain: bool = defaults.SSIM_GAIN):
        if rule not in RULES:
            raise ValueError(f"unknown hold rule {rule!r}; use one of {', '.join(RULES)}")
        if hold_frames < 0 or max_hold_frames < 0:
            raise ValueError("hold frames must be >= 0")
        self.rule, self.hold_frames = rule, int(hold_frames)
        self.ssim_threshold, self.max_hold_frames = float(ssim_threshold), int(max_hold_frames)
        self.ssim_imaged_only, self.ssim_gain = bool(ssim_imaged_only), bool(ssim_gain)
        self.tracks: dict[int, list[_Track]] = {}

    @property
    def name(self) -> str:
        return {"none": "none", "frames": "BBoxHold", "ssim": "BBoxHoldSim"}[self.rule]

    def reset(self) -> None:
        self.tracks.clear()

    def _keep(self, track: _Track, current: _Frame, memo: dict) -> tuple[bool, float | None]:
        if self.rule == "frames":
            return track.age <= self.hold_frames, None
        if self.rule == "ssim" and track.age <= self.max_hold_frames:
            key = id(track.reference)
            if key not in memo:  # tracks detected on one frame share its SSIM
                cur, ref = current.small, track.reference.small
                if ref.shape != cur.shape:  # the frame or the region detected in changed size
                    ref = cv2.resize(ref, cur.shape[::-1], interpolation=cv2.INTER_AREA)
                memo[key] = ssim(cur, ref, imaged_only=self.ssim_imaged_only)
            return memo[key] >= self.ssim_threshold, memo[key]
        return False, None

    def update(self, frame: np.ndarray, detections: ImageDetections) -> HoldStep:
        """Feed one frame (H x W uint8) and its detections; get the boxes to mask."""
        from fetalkit.detection.boxes import box_iou
        current = _Frame(frame, self.ssim_gain) if self.rule == "ssim" else None
        boxes, scores, labels, held, sims, memo = [], [], [], [], {}, {}
        classes = set(self.tracks) | {int(k) for k in detections.labels}
        for k in sorted(classes):
            mine = detections.labels == k
            found, found_scores = detections.boxes_xyxy[mine], detections.scores[mine]
            tracks = [_Track(b.copy(), float(s), current) for b, s in zip(found, found_scores)]
            for t in self.tracks.get(k, []):
                if len(found) and box_iou(t.box_xyxy[None], found).max() >= self.MATCH_IOU:
                    continue  # superseded by the new detection
                t.age += 1
                keep, value = self._keep(t, current, memo)
                if value is not None:
                    sims.setdefault(k, value)
                if keep:
                    tracks.append(t)
                    held.append({"box": _xywh(t.box_xyxy), "class": k, "rule": self.name, "age": t.age})
            if self.rule == "none":
                tracks = [t for t in tracks if t.age == 0]
            if tracks:
                self.tracks[k] = tracks
            else:
                self.tracks.pop(k, None)
            for t in tracks:
                boxes.append(t.box_xyxy)
                scores.append(t.score)
                labels.append(k)
        masks = ImageDetections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                                np.asarray(labels, np.int64))
        return HoldStep(masks, held, sims)


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)]


def make_rule(rule: str = "ssim", **kwargs) -> HoldRule:
    return HoldRule(rule, **kwargs)
