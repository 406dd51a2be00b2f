"""Before / after pictures of burned-in text removal on real scans (README, clinical files).

The pictures derive from the shared datasets, whose images may not be committed, so
they are rendered locally into ``docs/figures/`` (ignored by git):

    python docs/make_clean_figures.py [--n-planes 6] [--out docs/figures]

For each frame: the scan as stored | ``fetalkit clean`` output | the removed pixels in
red on the stored scan. Frames: every SonoNet example and ``--n-planes`` FETAL_PLANES_DB
images (evenly spaced in file order), read from ``$FETALKIT_DATA``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from fetalkit.config import dataset_dir
from fetalkit.io.images import read_gray, write_image
from fetalkit.preprocess.jobs import clean_frame

PANEL_H = 360


def panel(image: np.ndarray, cleaned: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Three BGR views side by side, scaled to ``PANEL_H`` rows."""
    shown = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    marked = shown.copy()
    marked[removed > 0] = (0, 0, 255)
    row = np.hstack([shown, np.full((image.shape[0], 6, 3), 255, np.uint8),
                     cv2.cvtColor(cleaned, cv2.COLOR_GRAY2BGR), np.full((image.shape[0], 6, 3), 255, np.uint8),
                     marked])
    scale = PANEL_H / row.shape[0]
    return cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def frames(n_planes: int) -> list[Path]:
    sononet = sorted(p for p in (dataset_dir("sononet_examples")).glob("*.tif*"))
    planes = sorted((dataset_dir("fetal_planes_db") / "Images").glob("*.png"))
    picked = [planes[i] for i in np.linspace(0, len(planes) - 1, n_planes).astype(int)] if planes and n_planes else []
    return sononet + picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-planes", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = ap.parse_args()
    paths = frames(args.n_planes)
    if not paths:
        sys.exit("no SonoNet or FETAL_PLANES_DB images found; set FETALKIT_DATA to the shared data folder")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        image = read_gray(path)
        result, kind = clean_frame(image)
        write_image(args.out / f"clean_{path.parent.name}_{path.stem}.png",
                    panel(image, result.image, result.overlay_mask))
        print(f"{path.name}: {int(result.overlay_mask.sum())} px removed (sector {kind})")
    print(f"wrote {len(paths)} pictures to {args.out}")


if __name__ == "__main__":
    main()
