"""Scoring burned-in text removal on frames with known pasted overlays.

:func:`fetalkit.preprocess.text.draw_synthetic_overlays` pastes text, calipers
and arrows with an exactly known mask; a cleaning method then runs on the
overlaid frame.  Per frame:

* recall: fraction of pasted overlay pixels the method flagged;
* altered: fraction of NON-overlay sector pixels whose grey level changed by
  more than ``ALTERED_GREY`` (anatomy touched);
* SSIM / PSNR of the restored region (the union of the overlays' boxes)
  against the frame without overlays (scikit-image).

Used by ``benchmarks/measure_text_removal.py`` and by the overlay-model trainer
to choose its operating point on validation frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fetalkit.errors import FetalkitError
from fetalkit.io.images import read_gray
from fetalkit.preprocess.sector import detect_sector
from fetalkit.preprocess.text import CleanResult, draw_synthetic_overlays

ALTERED_GREY = 2
Cleaner = Callable[[np.ndarray, np.ndarray], CleanResult]


def sector_or_frame(gray: np.ndarray) -> np.ndarray:
    """Sector mask (H x W uint8 {0, 1}) from fetalkit's detector; the whole frame when none is found."""
    try:
        return detect_sector(gray).mask
    except FetalkitError:
        return np.ones(gray.shape, np.uint8)


def overlay_counts(shape_hw: tuple[int, int], dense: bool = False) -> dict:
    """Pasted elements: 4 outside labels, 2 inside labels, 2 caliper pairs, 1 arrow per
    800 x 540 frame, scaled with the frame area (at least 1 each) unless ``dense``."""
    k = 1.0 if dense else shape_hw[0] * shape_hw[1] / (800 * 540)
    return {"n_text_outside": max(1, round(4 * k)), "n_text_inside": max(1, round(2 * k)),
            "n_calipers": max(1, round(2 * k)), "n_arrows": 1}


def overlay_scores(original: np.ndarray, cleaned: np.ndarray, flagged: np.ndarray, truth: np.ndarray,
                   sector: np.ndarray, boxes) -> dict:
    """Recall, altered fraction (%), SSIM and PSNR of the restored boxes for one frame."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    in_boxes = np.zeros(truth.shape, bool)
    for x0, y0, x1, y1 in boxes:
        in_boxes[y0:y1, x0:x1] = True
    non_overlay = (sector > 0) & ~truth
    changed = np.abs(cleaned.astype(np.int16) - original) > ALTERED_GREY
    _, ssim_map = structural_similarity(original, cleaned, data_range=255, full=True)
    return {
        "recall": float(flagged[truth].mean()),
        "altered_pct": 100.0 * float(changed[non_overlay].mean()),
        "ssim": float(ssim_map[in_boxes].mean()),
        "psnr_db": float(peak_signal_noise_ratio(original[in_boxes], cleaned[in_boxes], data_range=255)),
    }


def score_cleaners(paths: Sequence[Path], cleaners: dict[str, Cleaner], seed: int = 0,
                   dense: bool = False) -> dict[str, list[dict]]:
    """Paste overlays on each frame (seed ``seed * 1000 + i``) and score every cleaner on it.

    Overlays are placed using the sector detected on the clean frame; each
    cleaner gets the overlaid frame and that sector (it may ignore the sector and
    find its own, as ``fetalkit clean`` does).  Returns one row list per cleaner
    (plus ``"none"``: doing nothing), each row with the frame's ``image`` name.
    """
    rows: dict[str, list[dict]] = {name: [] for name in (*cleaners, "none")}
    for i, path in enumerate(paths):
        original = read_gray(path)
        sector = sector_or_frame(original)
        syn = draw_synthetic_overlays(original, sector, seed=seed * 1000 + i,
                                      **overlay_counts(original.shape, dense))
        truth = syn.overlay_mask > 0
        for name, clean in cleaners.items():
            result = clean(syn.image, sector)
            rows[name].append(overlay_scores(original, result.image, result.overlay_mask > 0, truth, sector,
                                             syn.boxes) | {"image": path.name})
        rows["none"].append(overlay_scores(original, syn.image, np.zeros_like(truth), truth, sector, syn.boxes)
                            | {"image": path.name})
    return rows


def mean_of(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))
