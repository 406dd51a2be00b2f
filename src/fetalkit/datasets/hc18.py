"""HC18 reader (van den Heuvel et al. 2018): fetal head images with ellipse outlines.

Layout::

    hc18/training_set/NNN_HC.png, NNN_HC_Annotation.png   (also NNN_2HC.png ...)
    hc18/training_set_pixel_size_and_HC.csv   filename,pixel size(mm),head circumference (mm)
    hc18/test_set/NNN_HC.png + test_set_pixel_size.csv     (no ground truth)

The annotation is an ellipse OUTLINE, not a filled region, and it may touch the
image border or have small gaps, so a flood fill of it is fragile.  We fit an
ellipse to the outline pixels (least squares) and rasterise it filled; the HC of
that ellipse agrees with the csv (see tests).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from fetalkit.biometry.ellipse import ellipse_mask, fit_ellipse_to_points
from fetalkit.errors import DataError, InputError
from fetalkit.io.images import read_gray
from fetalkit.types import Ellipse, HeadSample

_NAME = re.compile(r"^(\d+)_(\d*)HC$")


def subject_of(image_id: str) -> str:
    """Subject id of an HC18 image id: ``010_HC`` and ``010_2HC`` are both subject ``010``."""
    m = _NAME.match(image_id)
    if not m:
        raise DataError(f"{image_id}: not an HC18 image name (expected NNN_HC or NNN_kHC)")
    return m.group(1)


def read_pixel_csv(path: str | Path) -> dict[str, tuple[float, Optional[float]]]:
    """Read an HC18 csv (``filename,pixel size(mm)[,head circumference (mm)]``).

    Returns ``{filename: (pixel_mm, hc_mm or None)}``.  Raises InputError naming the
    file and line for a missing or non-numeric value.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: pixel-size csv not found")
    out: dict[str, tuple[float, Optional[float]]] = {}
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows[0]) < 2:
        raise InputError(f"{p}: expected a header 'filename,pixel size(mm)[,head circumference (mm)]'")
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise InputError(f"{p}:{line_no}: expected 'filename,pixel size(mm)', got {','.join(row)!r}")
        try:
            pixel_mm = float(row[1])
            hc_mm = float(row[2]) if len(row) > 2 and row[2].strip() else None
        except ValueError:
            raise InputError(f"{p}:{line_no}: non-numeric value in {','.join(row)!r}") from None
        out[row[0].strip()] = (pixel_mm, hc_mm)
    return out


def outline_to_ellipse(outline: np.ndarray) -> Ellipse:
    """Fit the annotated head ellipse to the non-zero pixels of an outline image."""
    ys, xs = np.nonzero(outline)
    return fit_ellipse_to_points(np.stack([xs, ys], axis=1))


def outline_to_mask(outline: np.ndarray) -> np.ndarray:
    """Filled head mask (uint8 0/1) from an ellipse outline: fitted ellipse, filled, plus the outline."""
    mask = ellipse_mask(outline_to_ellipse(outline), outline.shape[:2])
    mask[outline > 0] = 1
    return mask


@dataclass(frozen=True)
class HC18Item:
    """Paths and metadata of one HC18 image (the pixels are read on demand)."""

    image_id: str
    subject_id: str
    image_path: Path
    annotation_path: Optional[Path]
    pixel_mm: float
    hc_mm: Optional[float]

    def load(self) -> HeadSample:
        image = read_gray(self.image_path)
        if self.annotation_path is None:
            raise DataError(f"{self.image_path}: no annotation (test images have no ground truth)")
        outline = read_gray(self.annotation_path)
        ellipse = outline_to_ellipse(outline)
        mask = ellipse_mask(ellipse, outline.shape[:2])
        mask[outline > 0] = 1
        return HeadSample(self.image_id, self.subject_id, image, mask, ellipse, self.pixel_mm, self.hc_mm)


def list_hc18(root: str | Path, split: str = "training_set") -> list[HC18Item]:
    """List the images of an HC18 folder (``root`` holds ``training_set/`` and the csv files).

    ``root`` may also be the ``training_set`` folder itself, with the csv beside it.
    """
    root = Path(root)
    folder = root / split
    if not folder.is_dir() and root.name == split:
        folder, root = root, root.parent
    if not folder.is_dir():
        raise DataError(f"{root}: no '{split}/' folder; expected the HC18 layout (training_set/NNN_HC.png ...)")
    csv_name = "training_set_pixel_size_and_HC.csv" if split == "training_set" else "test_set_pixel_size.csv"
    table = read_pixel_csv(root / csv_name)
    items = []
    for fname, (pixel_mm, hc_mm) in sorted(table.items()):
        image_path = folder / fname
        if not image_path.is_file():
            continue
        image_id = Path(fname).stem
        ann = folder / f"{image_id}_Annotation.png"
        items.append(HC18Item(image_id, subject_of(image_id), image_path,
                              ann if ann.is_file() else None, pixel_mm, hc_mm))
    if not items:
        raise DataError(f"{folder}: no images listed in {csv_name} were found")
    return items


def iter_hc18(root: str | Path, split: str = "training_set") -> Iterator[HeadSample]:
    """Yield loaded :class:`HeadSample` records."""
    for item in list_hc18(root, split):
        yield item.load()
