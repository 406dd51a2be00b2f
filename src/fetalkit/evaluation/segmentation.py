"""Segmentation metrics through MONAI (never re-derived by hand)."""

from __future__ import annotations

import numpy as np


def _as_batch(mask: np.ndarray):
    import torch
    return torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[None, None]


def dice_and_hausdorff_mm(pred: np.ndarray, truth: np.ndarray, pixel_mm: float,
                          percentile: float | None = None) -> tuple[float, float]:
    """Dice and (symmetric) Hausdorff distance in mm of two binary H x W masks, via MONAI.

    ``percentile=95`` gives HD95. An empty prediction has Dice 0 and an infinite distance.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    p, t = _as_batch(pred), _as_batch(truth)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    if float(p.sum()) == 0:
        return float(dice.item()), float("inf")
    hd = HausdorffDistanceMetric(include_background=True, percentile=percentile, reduction="none")(
        p, t, spacing=float(pixel_mm))
    return float(dice.item()), float(hd.item())


def surface_metrics(pred: np.ndarray, truth: np.ndarray, spacing: float = 1.0) -> dict[str, float]:
    """Dice, HD95 and average (symmetric) surface distance of two binary masks, via MONAI.

    Distances are in units of ``spacing`` (pixels when 1). An empty prediction or
    truth gives infinite distances (and Dice 0 unless both are empty).
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
    p, t = _as_batch(pred), _as_batch(truth)
    dice = float(DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t).item())
    if float(p.sum()) == 0 or float(t.sum()) == 0:
        return {"dice": dice, "hd95": float("inf"), "asd": float("inf")}
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, t, spacing=spacing)
    asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(p, t, spacing=spacing)
    return {"dice": dice, "hd95": float(hd95.item()), "asd": float(asd.item())}
