"""Temporal rules that keep a region masked when the detector misses it for a few frames.

A missed frame (false negative) shows what must stay hidden, so the rules of the
privacy-masking paper (Section 7.1) sit between the detector and the renderer:

* ``none``: mask exactly the current detections.
* ``frames`` (BBoxHold): when a class has no detection, keep its last boxes for up
  to ``hold_frames`` frames.
* ``ssim`` (BBoxHoldSim): when a class has no detection, keep its last boxes while
  the structural similarity between the current frame and the last frame in which
  that class was detected stays >= ``ssim_threshold`` (the view has not changed, so
  the structure is still where it was); ``max_hold_frames`` caps the hold.

Rules work per class and on numpy arrays; they never draw.  Example::

    rule = make_rule("ssim", ssim_threshold=0.6)
    for frame, dets in stream:
        step = rule.update(frame, dets)     # step.masks: boxes to render this frame
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fetalkit.types import ImageDetections

SSIM_WIDTH_PX = 96       # SSIM runs on a frame downscaled to this width (speed; speckle averages out)
SSIM_WIN = 7             # scikit-image's default window
RULES = ("none", "frames", "ssim")


def downscale_gray(frame: np.ndarray, width_px: int = SSIM_WIDTH_PX) -> np.ndarray:
    """The frame at ``width_px`` wide (aspect kept), float64, for SSIM."""
    h, w = frame.shape[:2]
    height = max(SSIM_WIN, round(h * width_px / w))
    return cv2.resize(frame, (width_px, height), interpolation=cv2.INTER_AREA).astype(np.float64)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two equal-size gray images.

    The same computation as ``skimage.metrics.structural_similarity(a, b,
    data_range=data_range)`` with its defaults (7 x 7 uniform window, K1 0.01,
    K2 0.03, sample covariance, border of 3 px excluded), written with OpenCV box
    filters so the runtime needs no scikit-image; a test checks agreement to 1e-6.
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
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


@dataclass
class HoldStep:
    """What a rule decided for one frame."""

    masks: ImageDetections            # boxes to render (detections + held boxes)
    held: list[dict]                  # [{"box": [x, y, w, h], "class": k, "rule": name, "age": frames}]
    ssim: dict[int, float] = field(default_factory=dict)   # class -> SSIM vs its reference (when computed)


@dataclass
class _Track:
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    reference: np.ndarray | None      # downscaled frame of the last detection (ssim rule)
    age: int = 0                      # frames since the last detection


class HoldRule:
    """Per-class hold of the last detected boxes (``rule`` in :data:`RULES`)."""

    def __init__(self, rule: str = "ssim", hold_frames: int = 10, ssim_threshold: float = 0.6,
                 max_hold_frames: int = 150):
        if rule not in RULES:
            raise ValueError(f"unknown hold rule {rule!r}; use one of {', '.join(RULES)}")
        if hold_frames < 0 or max_hold_frames < 0:
            raise ValueError("hold frames must be >= 0")
        self.rule, self.hold_frames = rule, int(hold_frames)
        self.ssim_threshold, self.max_hold_frames = float(ssim_threshold), int(max_hold_frames)
        self.tracks: dict[int, _Track] = {}

    @property
    def name(self) -> str:
        return {"none": "none", "frames": "BBoxHold", "ssim": "BBoxHoldSim"}[self.rule]

    def reset(self) -> None:
        self.tracks.clear()

    def update(self, frame: np.ndarray, detections: ImageDetections) -> HoldStep:
        """Feed one frame (H x W uint8) and its detections; get the boxes to mask."""
        small = downscale_gray(frame) if self.rule == "ssim" else None
        boxes, scores, labels, held, sims = [detections.boxes_xyxy], [detections.scores], [detections.labels], [], {}
        found = set(int(k) for k in detections.labels)
        for k in found:
            mine = detections.labels == k
            self.tracks[k] = _Track(detections.boxes_xyxy[mine].copy(), detections.scores[mine].copy(), small)
        for k, track in list(self.tracks.items()):
            if k in found:
                continue
            track.age += 1
            keep = False
            if self.rule == "frames":
                keep = track.age <= self.hold_frames
            elif self.rule == "ssim" and track.age <= self.max_hold_frames:
                sims[k] = ssim(small, track.reference)
                keep = sims[k] >= self.ssim_threshold
            if not keep:
                del self.tracks[k]
                continue
            boxes.append(track.boxes_xyxy)
            scores.append(track.scores)
            labels.append(np.full(len(track.boxes_xyxy), k, np.int64))
            for b in track.boxes_xyxy:
                held.append({"box": _xywh(b), "class": k, "rule": self.name, "age": track.age})
        masks = ImageDetections(np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
                                np.concatenate(scores).astype(np.float32), np.concatenate(labels).astype(np.int64))
        return HoldStep(masks, held, sims)


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)]


def make_rule(rule: str = "ssim", **kwargs) -> HoldRule:
    return HoldRule(rule, **kwargs)
