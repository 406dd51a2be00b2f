"""Fetal head segmentation on HC18: data preparation, validation metric, training entry point."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from fetalkit.biometry.ellipse import ellipse_mask
from fetalkit.biometry.head import head_mask_from_probability, measure_head_mask
from fetalkit.datasets.hc18 import list_hc18
from fetalkit.datasets.splits import SPLIT_PARTS, select_split
from fetalkit.errors import FetalkitError
from fetalkit.runtime.preprocess import resize_gray
from fetalkit.training.segment import SegData, TrainConfig, fit
from fetalkit.types import Ellipse


@dataclass
class HeadSet:
    """HC18 in memory at model size, with what is needed to score at full size."""

    data: SegData
    image_ids: list[str]
    subjects: list[str]
    shapes_hw: np.ndarray      # N x 2 original sizes
    ellipses: np.ndarray       # N x 5 ground-truth ellipses (cx, cy, a, b, angle_deg)
    pixel_mm: np.ndarray
    hc_mm: np.ndarray          # reference HC from the csv


def cache_dir() -> Path:
    return Path(os.environ.get("FETALKIT_CACHE", Path.home() / ".cache" / "fetalkit"))


def load_head_set(root: Path, input_hw: tuple[int, int],
                  progress: Optional[Callable[[int, int], None]] = None) -> HeadSet:
    """Read HC18 (training_set) into memory at ``input_hw``; cached as .npz (derived data, never committed)."""
    items = list_hc18(root)
    key = hashlib.sha1(f"{Path(root).resolve()}|{input_hw}|{len(items)}|v1".encode()).hexdigest()[:12]
    cache = cache_dir() / f"hc18_{input_hw[0]}x{input_hw[1]}_{key}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return HeadSet(SegData(z["images"], z["targets"], 1), z["image_ids"].tolist(), z["subjects"].tolist(),
                       z["shapes_hw"], z["ellipses"], z["pixel_mm"], z["hc_mm"])
    h, w = input_hw
    images = np.zeros((len(items), h, w), np.uint8)
    targets = np.zeros((len(items), h, w), np.uint8)
    shapes, ellipses = [], []
    for i, item in enumerate(items):
        s = item.load()
        images[i] = resize_gray(s.image, input_hw)
        # Soft target: fraction of each model pixel inside the head (area resize of the full mask).
        targets[i] = np.round(cv2.resize(s.mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) * 255)
        shapes.append(s.image.shape[:2])
        e = s.ellipse
        ellipses.append([e.center_x_px, e.center_y_px, e.semi_axis_a_px, e.semi_axis_b_px, e.angle_deg])
        if progress:
            progress(i + 1, len(items))
    hs = HeadSet(SegData(images, targets, 1), [it.image_id for it in items], [it.subject_id for it in items],
                 np.array(shapes), np.array(ellipses), np.array([it.pixel_mm for it in items]),
                 np.array([it.hc_mm if it.hc_mm is not None else np.nan for it in items]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, targets=targets, image_ids=np.array(hs.image_ids), subjects=np.array(hs.subjects),
             shapes_hw=hs.shapes_hw, ellipses=hs.ellipses, pixel_mm=hs.pixel_mm, hc_mm=hs.hc_mm)
    tmp.replace(cache)
    return hs


def split_head_set(hs: HeadSet, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject-level train / val / test (70 / 15 / 15 % of subjects); test is never used for tuning."""
    return tuple(select_split(hs.subjects, part, seed) for part in SPLIT_PARTS)


def score_head_probabilities(hs: HeadSet, probs: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """Dice of the full-size head mask and |HC error| (mm), averaged; failures count as Dice 0 / HC error = HC."""
    dices, hc_err = [], []
    for p, i in zip(probs, idx):
        shape = tuple(int(v) for v in hs.shapes_hw[i])
        gt = ellipse_mask(Ellipse(*hs.ellipses[i]), shape)
        pred = head_mask_from_probability(p, shape)
        inter = float((pred & gt).sum())
        dices.append(2 * inter / max(float(pred.sum() + gt.sum()), 1.0))
        try:
            hc = measure_head_mask(pred, float(hs.pixel_mm[i])).hc
        except FetalkitError:
            hc = 0.0
        hc_err.append(abs(hc - hs.hc_mm[i]))
    return {"val_dice": float(np.mean(dices)), "val_hc_mae_mm": float(np.mean(hc_err))}


def train_head_seg(root: Path, out_dir: Path, cfg: TrainConfig, resume: bool = True,
                   progress=None, load_progress=None) -> dict:
    hs = load_head_set(root, tuple(cfg.input_hw), load_progress)
    tr, va, te = split_head_set(hs, cfg.data_split_seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "split.txt").write_text(
        "".join(f"{hs.image_ids[i]},{part}\n" for part, ids in (("train", tr), ("val", va), ("test", te)) for i in ids))
    return fit(hs.data, tr, va, cfg, out_dir,
               val_metrics=lambda probs, idx: score_head_probabilities(hs, probs, idx),
               select_key="val_hc_mae_mm", select_mode="min", resume=resume, progress=progress)
