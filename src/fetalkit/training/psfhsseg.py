"""Pubic symphysis + fetal head segmentation on PSFHS: data, validation metric, training entry point."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.biometry.aop import angle_of_progression
from fetalkit.biometry.labour import labels_from_probabilities
from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL, list_psfhs, psfhs_groups
from fetalkit.datasets.splits import SPLIT_PARTS, select_split
from fetalkit.errors import FetalkitError
from fetalkit.runtime.preprocess import resize_gray
from fetalkit.training.headseg import cache_dir
from fetalkit.training.segment import SegData, TrainConfig, fit


@dataclass
class PsfhsSet:
    data: SegData            # images + label maps at model size
    image_ids: list[str]
    groups: list[str]
    labels_full: np.ndarray  # N x H x W label maps at the original size


def load_psfhs_set(root: Path, input_hw: tuple[int, int], progress=None) -> PsfhsSet:
    """PSFHS in memory at ``input_hw`` (cached as .npz; derived data, never committed)."""
    items = list_psfhs(root)
    key = hashlib.sha1(f"{Path(root).resolve()}|{input_hw}|{len(items)}|v1".encode()).hexdigest()[:12]
    cache = cache_dir() / f"psfhs_{input_hw[0]}x{input_hw[1]}_{key}.npz"
    ids = [it.image_id for it in items]
    if cache.is_file():
        z = np.load(cache)
        return PsfhsSet(SegData(z["images"], z["targets"], 3), ids, psfhs_groups(ids), z["labels_full"])
    h, w = input_hw
    images, targets, full = [], [], []
    for i, it in enumerate(items):
        image, label = it.load()
        images.append(resize_gray(image, input_hw))
        targets.append(cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))
        full.append(label)
        if progress:
            progress(i + 1, len(items))
    ps = PsfhsSet(SegData(np.stack(images), np.stack(targets), 3), ids, psfhs_groups(ids), np.stack(full))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=ps.data.images, targets=ps.data.targets, labels_full=ps.labels_full)
    tmp.replace(cache)
    return ps


def split_psfhs_set(ps: PsfhsSet, seed: int = 0):
    """Train / val / test by id block (70 / 15 / 15 % of blocks); test is never used for tuning."""
    return tuple(select_split(ps.groups, part, seed) for part in SPLIT_PARTS)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks: the cheap per-epoch monitor (reported figures come from MONAI)."""
    s = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def score_psfhs_probabilities(ps: PsfhsSet, probs: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    d_ps, d_fh, d_aop = [], [], []
    for p, i in zip(probs, idx):
        truth = ps.labels_full[i]
        pred = labels_from_probabilities(p, truth.shape)
        d_ps.append(dice(pred == PS_LABEL, truth == PS_LABEL))
        d_fh.append(dice(pred == FH_LABEL, truth == FH_LABEL))
        try:
            d_aop.append(abs(angle_of_progression(pred).aop_deg - angle_of_progression(truth).aop_deg))
        except FetalkitError:
            d_aop.append(180.0)  # a failed measurement counts as the worst error
    return {"val_dice_ps": float(np.mean(d_ps)), "val_dice_fh": float(np.mean(d_fh)),
            "val_aop_mae_deg": float(np.mean(d_aop)),
            # selection score: half mean Dice, half AoP agreement (the challenge's weights without HD/ASD)
            "val_score": float(0.5 * (np.mean(d_ps) + np.mean(d_fh)) / 2 + 0.5 * np.mean(1 - np.asarray(d_aop) / 180))}


def train_psfhs_seg(root: Path, out_dir: Path, cfg: TrainConfig, resume: bool = True, progress=None,
                    load_progress=None, stop_after_epoch: Optional[int] = None) -> dict:
    ps = load_psfhs_set(root, tuple(cfg.input_hw), load_progress)
    tr, va, te = split_psfhs_set(ps, cfg.data_split_seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "split.txt").write_text(
        "".join(f"{ps.image_ids[i]},{part}\n" for part, ids in (("train", tr), ("val", va), ("test", te)) for i in ids))
    return fit(ps.data, tr, va, cfg, out_dir,
               val_metrics=lambda probs, idx: score_psfhs_probabilities(ps, probs, idx),
               select_key="val_score", select_mode="max", resume=resume, progress=progress,
               stop_after_epoch=stop_after_epoch)
