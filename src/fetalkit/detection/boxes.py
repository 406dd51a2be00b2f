"""Detection records and box geometry (boxes are ``x1, y1, x2, y2`` in image pixels).

A :class:`DetSet` is what every label format reads into and writes from: the
category names (the order fixes the class index) and one :class:`DetSample` per
image.  An image without boxes is a *negative*, a first-class member of a set:
false positives per image (FPPI) are measured on negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fetalkit.errors import DataError


@dataclass
class DetSample:
    """One image and its boxes."""

    file_name: str                 # path relative to the set's image root (as written in the label file)
    image_path: Path               # where the pixels are
    width: int
    height: int
    boxes_xyxy: np.ndarray         # N x 4 float32, image pixels
    labels: np.ndarray             # N int64, index into DetSet.categories
    group: str = ""                # split unit (subject / id block); defaults to the image itself
    tags: dict = field(default_factory=dict)

    @property
    def is_negative(self) -> bool:
        return len(self.labels) == 0


@dataclass
class DetSet:
    categories: list[str]
    samples: list[DetSample]

    def groups(self) -> list[str]:
        return [s.group or s.file_name for s in self.samples]

    def subset(self, indices) -> "DetSet":
        return DetSet(list(self.categories), [self.samples[int(i)] for i in indices])

    def counts(self) -> dict[str, int]:
        """Boxes per category and negative images (an image with none of the categories)."""
        out = {c: 0 for c in self.categories}
        for s in self.samples:
            for k in s.labels:
                out[self.categories[int(k)]] += 1
        out["negative_images"] = sum(s.is_negative for s in self.samples)
        out["images"] = len(self.samples)
        return out


def empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def square_boxes(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side), shifted to stay
    inside the image where it fits: box shape then says nothing about the object's shape."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
    if not len(b):
        return b
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    side = np.minimum(side, min(width, height))
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        centre = (b[:, lo] + b[:, hi]) / 2
        start = np.clip(centre - side / 2, 0, limit - side)
        b[:, lo], b[:, hi] = start, start + side
    return b


def check_boxes(boxes_xyxy: np.ndarray, width: int, height: int, where: str, tolerance_px: float = 1.0) -> np.ndarray:
    """Boxes that are finite, non-empty and inside the image (up to ``tolerance_px``, then clipped)."""
    b = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    for row in b:
        x1, y1, x2, y2 = (float(v) for v in row)
        if not np.all(np.isfinite(row)):
            raise DataError(f"{where}: box {row.tolist()} has a non-numeric value; fix the label")
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: box {row.tolist()} has no area (x2 <= x1 or y2 <= y1); fix the label")
        if x1 < -tolerance_px or y1 < -tolerance_px or x2 > width + tolerance_px or y2 > height + tolerance_px:
            raise DataError(f"{where}: box {row.tolist()} lies outside the {width}x{height} image; fix the label")
    if len(b):
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def boxes_from_label_map(label: np.ndarray, values: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One box per label value present (the extent of all its pixels): ``values`` maps a label-map
    value to a category index.  Box edges are pixel edges, so a 1-pixel object is 1 x 1."""
    boxes, labels = [], []
    for value, category in values.items():
        ys, xs = np.nonzero(label == value)
        if len(xs):
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(category)
    if not boxes:
        return empty_boxes()
    return np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def _pairwise_intersection(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas ``len(a) x len(b)`` and the areas of a (column) and b (row)."""
    a = np.asarray(a_xyxy, np.float32).reshape(-1, 4)[:, None]
    b = np.asarray(b_xyxy, np.float32).reshape(-1, 4)[None]
    iw = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    ih = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return iw * ih, area_a, area_b


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU, ``len(a) x len(b)``."""
    inter, area_a, area_b = _pairwise_intersection(a_xyxy, b_xyxy)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def box_coverage(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise share of each box of b covered by each box of a, ``len(a) x len(b)``."""
    inter, _, area_b = _pairwise_intersection(a_xyxy, b_xyxy)
    return inter / np.maximum(area_b, 1e-9)
