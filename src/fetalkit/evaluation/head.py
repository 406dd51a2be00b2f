"""``fetalkit eval head-seg``: Dice, Hausdorff (mm) and HC error on HC18, per image and mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional


from fetalkit.biometry.head import HeadBiometry, measure_head_mask
from fetalkit.io.jobs import write_csv_rows
from fetalkit.datasets.hc18 import list_hc18
from fetalkit.datasets.splits import select_split
from fetalkit.errors import FetalkitError
from fetalkit.evaluation.segmentation import dice_and_hausdorff_mm
from fetalkit.evaluation.tables import finite_mean, finite_median, n_nonfinite
from fetalkit.runtime.domain import DomainCheck

COLUMNS = ["image_id", "split", "dice", "hd_mm", "hc_ref_mm", "hc_pred_mm", "hc_abs_diff_mm", "hc_abs_diff_pct",
           "plane_score", "plane_ok", "error"]


def evaluate_head(root: Path, model=None, split: str = "test", seed: int = 0, out_dir: Optional[Path] = None,
                  limit: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Score a head-seg ONNX model on a split of HC18 (the model runs through the runtime, like users run it).

    Every image is scored; the domain check of the model's card (as ``biometry head``
    applies it) marks the images it would refuse, and the summary gives the share
    measured and the HC error over those alone."""
    items = list_hc18(root)
    idx = select_split([it.subject_id for it in items], split, seed)
    if limit:
        idx = idx[:limit]
    biometry = HeadBiometry(model)
    domain = DomainCheck.of(biometry.model)
    rows = []
    for k, i in enumerate(idx):
        item = items[i]
        sample = item.load()
        row = {c: "" for c in COLUMNS}
        row.update(image_id=item.image_id, split=split, hc_ref_mm=f"{item.hc_mm:.2f}")
        if domain is not None:
            row.update(domain.judge(sample.image).as_fields())
        pred = biometry.segment(sample.image)
        dice, hd = dice_and_hausdorff_mm(pred, sample.mask, item.pixel_mm)
        row.update(dice=f"{dice:.5f}", hd_mm=f"{hd:.3f}")
        try:
            hc = measure_head_mask(pred, item.pixel_mm).hc
            diff = abs(hc - item.hc_mm)
            row.update(hc_pred_mm=f"{hc:.2f}", hc_abs_diff_mm=f"{diff:.3f}", hc_abs_diff_pct=f"{100 * diff / item.hc_mm:.3f}")
        except FetalkitError as e:
            row["error"] = str(e)
        rows.append(row)
        if progress:
            progress(k + 1, len(idx))

    summary = {"model": str(biometry.model.path), "split": split, "seed": seed, "n_images": len(rows),
               "n_failed": sum(1 for r in rows if r["error"]),
               "dice_mean": finite_mean(rows, "dice"), "hd_mm_mean": finite_mean(rows, "hd_mm"),
               "n_hd_infinite": n_nonfinite(rows, "hd_mm"),
               "hc_abs_diff_mm_mean": finite_mean(rows, "hc_abs_diff_mm"),
               "hc_abs_diff_pct_mean": finite_mean(rows, "hc_abs_diff_pct"),
               "hc_abs_diff_mm_median": finite_median(rows, "hc_abs_diff_mm")}
    if domain is not None:
        measured = [r for r in rows if r["plane_ok"] == "true"]
        summary.update(n_refused=len(rows) - len(measured), measured_share=round(len(measured) / max(1, len(rows)), 4),
                       hc_abs_diff_mm_mean_measured=finite_mean(measured, "hc_abs_diff_mm"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv_rows(out_dir / "per_image.csv", rows, COLUMNS)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
