"""Detection sets derived from segmentation labels (PSFHS, HC18), with negatives.

PSFHS holds a pubic symphysis (PS) and a fetal head (FH) in every image, so negatives
are derived from the images themselves, at native scale (no zoom that a detector
could learn to recognise):

* ``_nops`` (even ids): rows from the top down to 3 px below the PS are blanked (as
  outside the imaging sector), so no PS pixel is left; the FH box is clipped to what
  stays visible.  A negative for ``pubic_symphysis``.
* ``_nofh`` (odd ids): rows from 3 px above the FH top down are blanked; the PS box is
  clipped likewise.  A negative for ``fetal_head``.

With ``both_negatives`` every image gives both, which doubles the negatives an FPPI
is measured on (one false box in 99 negatives is already FPPI 0.0101).

Each derived image keeps the split group of its source, so it never crosses a split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL, list_psfhs, psfhs_groups
from fetalkit.detection.boxes import DetSample, DetSet, boxes_from_label_map, square_boxes

PSFHS_CATEGORIES = ["pubic_symphysis", "fetal_head"]
NEGATIVE_MARGIN_PX = 3
MIN_VISIBLE_PX = 8


def _blank_rows(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rows: slice) -> tuple:
    out = image.copy()
    out[rows] = 0
    start = rows.start or 0
    stop = out.shape[0] if rows.stop is None else rows.stop
    keep_b, keep_l = [], []
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = box
        if start == 0:
            y1 = max(y1, stop)
        else:
            y2 = min(y2, start)
        if y2 - y1 >= MIN_VISIBLE_PX:
            keep_b.append([x1, y1, x2, y2])
            keep_l.append(label)
    return out, np.asarray(keep_b, np.float32).reshape(-1, 4), np.asarray(keep_l, np.int64)


def psfhs_negative(image: np.ndarray, label: np.ndarray, remove: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image without the structure ``remove`` (PS_LABEL or FH_LABEL), and its remaining boxes."""
    boxes, labels = boxes_from_label_map(label, {PS_LABEL: 0, FH_LABEL: 1})
    ys = np.nonzero((label == remove).any(axis=1))[0]
    if not len(ys):
        return image.copy(), boxes, labels
    if remove == PS_LABEL:
        rows = slice(0, min(image.shape[0], int(ys.max()) + 1 + NEGATIVE_MARGIN_PX))
    else:
        rows = slice(max(0, int(ys.min()) - NEGATIVE_MARGIN_PX), None)
    keep = labels != (0 if remove == PS_LABEL else 1)
    return _blank_rows(image, boxes[keep], labels[keep], rows)


def psfhs_detection_set(root: str | Path, negatives: bool = True, square: bool = False,
                        progress=None, both_negatives: bool = False) -> tuple[DetSet, dict[str, np.ndarray]]:
    """PSFHS as a detection set (boxes from the label maps) plus the pixels of derived negatives."""
    items = list_psfhs(root)
    groups = psfhs_groups([it.image_id for it in items])
    samples, pixels = [], {}
    for i, (it, group) in enumerate(zip(items, groups)):
        image, label = it.load()
        h, w = image.shape
        boxes, labels = boxes_from_label_map(label, {PS_LABEL: 0, FH_LABEL: 1})
        if square:
            boxes = square_boxes(boxes, w, h)
        samples.append(DetSample(f"{it.image_id}.png", it.image_path, w, h, boxes, labels, str(group)))
        if not negatives:
            kinds = []
        elif both_negatives:
            kinds = [(PS_LABEL, "nops"), (FH_LABEL, "nofh")]
        else:
            kinds = [(PS_LABEL, "nops") if int(it.image_id) % 2 == 0 else (FH_LABEL, "nofh")]
        for remove, tag in kinds:
            neg, nb, nl = psfhs_negative(image, label, remove)
            if square:
                nb = square_boxes(nb, w, h)
            name = f"{it.image_id}_{tag}.png"
            pixels[name] = neg
            samples.append(DetSample(name, Path(name), w, h, nb, nl, str(group), {"derived": tag}))
        if progress:
            progress(i + 1, len(items))
    return DetSet(list(PSFHS_CATEGORIES), samples), pixels


def hc18_detection_set(root: str | Path, square: bool = False, progress=None) -> DetSet:
    """HC18 training images with one ``fetal_head`` box each: the extent of the filled head ellipse."""
    from fetalkit.datasets.hc18 import list_hc18
    items = list_hc18(root)
    samples = []
    for i, it in enumerate(items):
        head = it.load()
        h, w = head.mask.shape
        boxes, labels = boxes_from_label_map(head.mask.astype(np.uint8), {1: 0})
        if square:
            boxes = square_boxes(boxes, w, h)
        samples.append(DetSample(it.image_path.name, it.image_path, w, h, boxes, labels, it.subject_id))
        if progress:
            progress(i + 1, len(items))
    return DetSet(["fetal_head"], samples)


def source_set(src: str | Path, square: bool = False, negatives: bool = True,
               progress=None, both_negatives: bool = False) -> tuple[DetSet, dict[str, np.ndarray]]:
    """Any detection source: a PSFHS or HC18 folder (boxes from their labels), or a COCO / YOLO /
    CVAT label set.  Returns the set and the pixels of images made in memory."""
    from fetalkit.detection.formats import read_detection_set
    p = Path(src)
    if (p / "label").is_dir() or (p / "label_mha").is_dir():
        return psfhs_detection_set(p, negatives, square, progress, both_negatives)
    if (p / "training_set").is_dir() or p.name == "training_set":
        return hc18_detection_set(p, square, progress), {}
    ds = read_detection_set(p)
    if square:
        for s in ds.samples:
            s.boxes_xyxy = square_boxes(s.boxes_xyxy, s.width, s.height)
    return ds, {}
