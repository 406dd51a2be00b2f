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

:func:`all_sources_set` joins every public source for the detector of ``fetalkit mask``:
PSFHS (symphysis + head, derived negatives), HC18 (head boxes from the ellipses, no
symphysis) and the fetal images that are neither (FeEcho4D heart frames, the other
FETAL_PLANES_DB and SonoNet planes) as negatives for both classes. Groups are
``source::group``, so each source is split apart and PSFHS keeps its own test part
(:func:`fetalkit.datasets.splits.by_source`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL, list_psfhs, psfhs_groups
from fetalkit.datasets.splits import SOURCE_SEP
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


NEGATIVE_VIEW_CLASSES = ("fetal_heart", "other_fetal_plane")  # fetal images holding neither class


def view_negatives_set(data_root: str | Path, progress=None) -> tuple[DetSet, dict[str, np.ndarray]]:
    """The public fetal images that are neither head planes nor transperineal scans (FeEcho4D
    frames, the other FETAL_PLANES_DB and SonoNet planes), as negatives of both classes."""
    from fetalkit.datasets.views import planes_db_items, read_view_image, sononet_items
    root = Path(data_root)
    items = []
    if (root / "feecho4d").is_dir():
        from fetalkit.datasets.views import public_view_items
        items += [it for src in public_view_items(root) for it in src if it.origin == "feecho4d"]
    if (root / "fetal_planes_db").is_dir():
        items += planes_db_items(root / "fetal_planes_db")
    if (root / "sononet_examples").is_dir():
        items += sononet_items(root / "sononet_examples")
    items = [it for it in items if it.label in NEGATIVE_VIEW_CLASSES]
    samples, pixels = [], {}
    for i, it in enumerate(items):
        image = read_view_image(it)
        h, w = image.shape
        stem = it.source.stem if it.frame is None else f"{it.source.stem}_{it.frame:03d}"
        name = f"{it.origin}/{stem}.png"
        pixels[name] = image
        samples.append(DetSample(name, Path(name), w, h, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                 it.group, {"view": it.label}))
        if progress:
            progress(i + 1, len(items))
    return DetSet(list(PSFHS_CATEGORIES), samples), pixels


def all_sources_set(data_root: str | Path, square: bool = False, both_negatives: bool = False,
                    progress=None) -> tuple[DetSet, dict[str, np.ndarray]]:
    """PSFHS + HC18 + the other fetal images as one set (categories pubic_symphysis, fetal_head);
    file names ``<source>/<name>``, groups ``<source>::<group>``."""
    root = Path(data_root)
    parts: list[tuple[str, DetSet, dict]] = []
    if (root / "psfhs").is_dir():
        ds, px = psfhs_detection_set(root / "psfhs", True, square, progress, both_negatives)
        parts.append(("psfhs", ds, px))
    if (root / "hc18").is_dir():
        parts.append(("hc18", hc18_detection_set(root / "hc18", square, progress), {}))
    negatives, px = view_negatives_set(root, progress)
    if negatives.samples:
        parts.append(("negatives", negatives, px))
    if not parts:
        from fetalkit.errors import DataError
        raise DataError(f"{root}: none of psfhs/, hc18/, feecho4d/, fetal_planes_db/, sononet_examples/ found")
    samples, pixels = [], {}
    for name, ds, px in parts:
        remap = np.array([PSFHS_CATEGORIES.index(c) for c in ds.categories], np.int64)
        for smp in ds.samples:
            file_name = smp.file_name if smp.file_name.startswith(name + "/") else f"{name}/{smp.file_name}"
            if smp.file_name in px:
                pixels[file_name] = px[smp.file_name]
            samples.append(DetSample(file_name, smp.image_path, smp.width, smp.height, smp.boxes_xyxy,
                                     remap[smp.labels] if len(smp.labels) else smp.labels,
                                     f"{name}{SOURCE_SEP}{smp.group or smp.file_name}", {**smp.tags, "source": name}))
    return DetSet(list(PSFHS_CATEGORIES), samples), pixels


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
