"""``fetalkit eval psfhs-seg``: per-class Dice / HD95 / ASD (MONAI), |delta AoP| and the PSFHS challenge score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional


from fetalkit.biometry.aop import angle_of_progression
from fetalkit.io.jobs import write_csv_rows
from fetalkit.biometry.labour import LabourBiometry
from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL, list_psfhs, psfhs_groups
from fetalkit.datasets.splits import select_split
from fetalkit.errors import FetalkitError
from fetalkit.evaluation.segmentation import surface_metrics
from fetalkit.evaluation.tables import finite_mean, finite_median, n_nonfinite

CLASSES = {"ps": PS_LABEL, "fh": FH_LABEL}
COLUMNS = ["image_id", "dice_ps", "hd95_ps", "asd_ps", "dice_fh", "hd95_fh", "asd_fh",
           "aop_truth_deg", "aop_pred_deg", "aop_abs_diff_deg", "error"]


def challenge_score(mean_dice: float, mean_hd: float, mean_asd: float, mean_abs_daop_deg: float) -> float:
    """PSFHS challenge score: 0.25 Dice + 0.25 [0.5 (1 - HD/100) + 0.5 (1 - ASD/100)] + 0.5 (1 - |dAoP|/180)."""
    return (0.25 * mean_dice + 0.25 * (0.5 * (1 - mean_hd / 100) + 0.5 * (1 - mean_asd / 100))
            + 0.5 * (1 - mean_abs_daop_deg / 180))


def evaluate_psfhs(root: Path, model=None, split: str = "test", seed: int = 0, out_dir: Optional[Path] = None,
                   limit: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Score a psfhs-seg ONNX model on an id-block split of PSFHS (distances in pixels: PSFHS has no mm scale)."""
    items = list_psfhs(root)
    idx = select_split(psfhs_groups([it.image_id for it in items]), split, seed)
    if limit:
        idx = idx[:limit]
    lb = LabourBiometry(model)
    rows = []
    for k, i in enumerate(idx):
        image, truth = items[i].load()
        pred = lb.segment(image)
        row = {c: "" for c in COLUMNS}
        row["image_id"] = items[i].image_id
        for name, label in CLASSES.items():
            m = surface_metrics(pred == label, truth == label)
            row.update({f"dice_{name}": f"{m['dice']:.5f}", f"hd95_{name}": f"{m['hd95']:.4f}",
                        f"asd_{name}": f"{m['asd']:.4f}"})
        try:
            a_truth = angle_of_progression(truth).aop_deg
            row["aop_truth_deg"] = f"{a_truth:.3f}"
            try:
                a_pred = angle_of_progression(pred).aop_deg
                row.update(aop_pred_deg=f"{a_pred:.3f}", aop_abs_diff_deg=f"{abs(a_pred - a_truth):.3f}")
            except FetalkitError as e:
                row["error"] = f"prediction: {e}"
                row["aop_abs_diff_deg"] = "180"  # no angle from the prediction: the worst error
        except FetalkitError as e:
            row["error"] = f"ground truth: {e}"  # AoP undefined on the truth: not scored for AoP
        rows.append(row)
        if progress:
            progress(k + 1, len(idx))

    s = {"model": str(lb.model.path), "split": split, "seed": seed, "n_images": len(rows),
         "n_errors": sum(1 for r in rows if r["error"])}
    for name in CLASSES:
        for m in ("dice", "hd95", "asd"):
            s[f"{m}_{name}_mean"] = finite_mean(rows, f"{m}_{name}")
        s[f"n_empty_{name}"] = n_nonfinite(rows, f"hd95_{name}")  # empty prediction: no distance
    s["aop_abs_diff_deg_mean"] = finite_mean(rows, "aop_abs_diff_deg")
    s["aop_abs_diff_deg_median"] = finite_median(rows, "aop_abs_diff_deg")
    s["challenge_score"] = challenge_score((s["dice_ps_mean"] + s["dice_fh_mean"]) / 2,
                                           (s["hd95_ps_mean"] + s["hd95_fh_mean"]) / 2,
                                           (s["asd_ps_mean"] + s["asd_fh_mean"]) / 2, s["aop_abs_diff_deg_mean"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv_rows(out_dir / "per_image.csv", rows, COLUMNS)
        (out_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return s
