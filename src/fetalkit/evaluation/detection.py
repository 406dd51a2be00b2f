"""Detection metrics: COCO AP (faster-coco-eval), label precision / recall / F1 at an operating
point, false positives per image on negatives, and the (confidence, NMS IoU) sweep.

Label-level counting follows the paper's Section 5: at a confidence threshold, a
prediction is a true positive when it overlaps an unmatched ground-truth box of its
class with IoU >= 0.5 (highest scores matched first), otherwise a false positive;
an unmatched ground-truth box is a false negative.  FPPI for a class counts its
false positives on the images that hold no box of that class (its negatives).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from fetalkit.detection.boxes import DetSet, box_iou
from fetalkit.detection.formats import coco_dict
from fetalkit.errors import DataError
from fetalkit.types import ImageDetections

MATCH_IOU = 0.5


def coco_results(dets: list[ImageDetections]) -> list[dict]:
    """COCO results records (image ids 1..N in set order, category ids 1..K)."""
    out = []
    for i, d in enumerate(dets, start=1):
        for (x1, y1, x2, y2), s, k in zip(d.boxes_xyxy, d.scores, d.labels):
            out.append({"image_id": i, "category_id": int(k) + 1, "score": float(s),
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    return out


def coco_ap(ds: DetSet, dets: list[ImageDetections]) -> dict[str, float]:
    """AP[.5:.95] and AP50, overall (mean over classes) and per class, with faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster
    results = coco_results(dets)
    metrics: dict[str, float] = {}
    if not results:
        metrics.update({"ap": 0.0, "ap50": 0.0})
        for name in ds.categories:
            metrics[f"ap_{name}"] = metrics[f"ap50_{name}"] = 0.0
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(coco_dict(ds))
        dt = gt.loadRes(results)
        ev = COCOeval_faster(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # T x R x K x A x M; -1 where a class has no ground truth
    per_ap, per_ap50 = [], []
    for k, name in enumerate(ds.categories):
        p = precision[:, :, k, 0, -1]
        ap = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        p50 = precision[0, :, k, 0, -1]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else float("nan")
        metrics[f"ap_{name}"], metrics[f"ap50_{name}"] = ap, ap50
        per_ap.append(ap)
        per_ap50.append(ap50)
    metrics["ap"] = float(np.nanmean(per_ap))
    metrics["ap50"] = float(np.nanmean(per_ap50))
    return metrics


def label_counts(ds: DetSet, dets: list[ImageDetections], conf: float) -> dict[str, dict[str, int]]:
    """Per class: tp, fp, fn, fp_on_negatives, negatives (images without that class)."""
    out = {c: {"tp": 0, "fp": 0, "fn": 0, "fp_on_negatives": 0, "negatives": 0} for c in ds.categories}
    for sample, d in zip(ds.samples, dets):
        d = d.above(conf)
        for k, name in enumerate(ds.categories):
            gt = sample.boxes_xyxy[sample.labels == k]
            mine = d.labels == k
            pred, scores = d.boxes_xyxy[mine], d.scores[mine]
            c = out[name]
            if not len(gt):
                c["negatives"] += 1
                c["fp_on_negatives"] += len(pred)
                c["fp"] += len(pred)
                continue
            iou = box_iou(pred, gt) if len(pred) else np.zeros((0, len(gt)))
            used = np.zeros(len(gt), bool)
            for j in np.argsort(-scores, kind="stable"):
                cand = np.where(~used & (iou[j] >= MATCH_IOU))[0]
                if len(cand):
                    used[cand[np.argmax(iou[j, cand])]] = True
                    c["tp"] += 1
                else:
                    c["fp"] += 1
            c["fn"] += int((~used).sum())
    return out


def prf(counts: dict[str, int]) -> dict[str, float]:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "fppi": counts["fp_on_negatives"] / counts["negatives"] if counts["negatives"] else float("nan")}


def label_metrics(ds: DetSet, dets: list[ImageDetections], conf: float) -> dict[str, float]:
    """Precision, recall, F1 and FPPI per class (``f1_<class>`` ...) and overall (pooled counts)."""
    counts = label_counts(ds, dets, conf)
    out: dict[str, float] = {}
    total = {"tp": 0, "fp": 0, "fn": 0, "fp_on_negatives": 0, "negatives": 0}
    for name, c in counts.items():
        for key, value in prf(c).items():
            out[f"{key}_{name}"] = value
        out[f"negatives_{name}"] = c["negatives"]
        for key in total:
            total[key] += c[key]
    out.update(prf(total))
    return out


def sweep_operating_points(ds: DetSet, dets_by_iou: dict[float, list[ImageDetections]],
                           confs: np.ndarray) -> dict:
    """F1 (mean over classes) for every (confidence, NMS IoU) pair; the best pair and its curves.

    ``dets_by_iou`` holds the same predictions after NMS at each IoU, kept at a low
    confidence so that raising the threshold is a filter.
    """
    table = []
    for iou, dets in dets_by_iou.items():
        for conf in confs:
            m = label_metrics(ds, dets, float(conf))
            f1s = [m[f"f1_{c}"] for c in ds.categories]
            table.append({"conf": float(conf), "iou": float(iou), "f1_mean": float(np.mean(f1s)),
                          **{f"f1_{c}": m[f"f1_{c}"] for c in ds.categories}})
    # Highest mean F1; ties go to the higher confidence (fewer false positives on unseen negatives).
    best = max(table, key=lambda r: (round(r["f1_mean"], 6), r["conf"]))
    return {"best": best, "table": table}


def plot_f1_curves(sweep: dict, categories: list[str], png_path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    best = sweep["best"]
    rows = [r for r in sweep["table"] if r["iou"] == best["iou"]]
    conf = [r["conf"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for c in categories:
        ax.plot(conf, [r[f"f1_{c}"] for r in rows], label=c)
    ax.plot(conf, [r["f1_mean"] for r in rows], "k--", label="mean")
    ax.axvline(best["conf"], color="gray", lw=0.8)
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("label F1")
    ax.set_title(f"F1 vs confidence (NMS IoU {best['iou']:.2f}); best {best['f1_mean']:.3f} at {best['conf']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


SWEEP_IOUS = (0.4, 0.5, 0.6, 0.7)
SWEEP_CONFS = np.round(np.arange(0.05, 0.951, 0.01), 3)
AP_CONF = 0.001  # the full ranking for AP


def model_label_map(model_classes: list[str], categories: list[str], where: str) -> np.ndarray:
    """Model class index -> set category index (-1: a model class the set does not label)."""
    index = {c: i for i, c in enumerate(categories)}
    unknown = [c for c in categories if c not in model_classes]
    if unknown:
        raise DataError(f"{where}: label classes {unknown} are not classes of the model ({model_classes}); "
                        "evaluate with a model trained on these classes")
    return np.array([index.get(c, -1) for c in model_classes], np.int64)


def by_origin(ds: DetSet, ap_dets: list[ImageDetections], op_dets: list[ImageDetections], conf: float) -> dict:
    """The same metrics on the source images and on the derived ones, when the set has both.

    Derived images (``tags["derived"]``, e.g. PSFHS scans with one structure blanked out,
    see :mod:`fetalkit.detection.sources`) exist to provide negatives; their remaining
    boxes are cut at the blanked edge, which no real scan shows. AP and label F1 of the
    real task are those of the source images (``source_images``); FPPI comes from the
    negatives, most of which are derived (``derived_images``).
    """
    derived = np.array(["derived" in s.tags for s in ds.samples], bool)
    if not derived.any() or derived.all():
        return {}
    out = {}
    for name, mask in (("source_images", ~derived), ("derived_images", derived)):
        idx = np.flatnonzero(mask)
        sub = ds.subset(idx)
        out[name] = {"n_images": int(len(idx)), "n_negative_images": sum(s.is_negative for s in sub.samples),
                     **coco_ap(sub, [ap_dets[i] for i in idx]), **label_metrics(sub, [op_dets[i] for i in idx], conf)}
    return out


def evaluate_detector(ds: DetSet, detector, conf: float | None = None, iou: float | None = None,
                      sweep: bool = False, progress=None) -> dict:
    """COCO AP, label P / R / F1 / FPPI at the operating point, and optionally the sweep.

    ``detector`` is a :class:`fetalkit.runtime.detector.OnnxDetector`.  Candidates are
    computed once per image; NMS and thresholds are then applied per setting.
    """
    from fetalkit.io.images import read_gray
    from fetalkit.runtime.detector import nms_per_class
    remap = model_label_map(detector.classes, ds.categories, str(detector.path))
    cands = []
    for i, s in enumerate(ds.samples):
        cands.append(detector.candidates(read_gray(s.image_path)))
        if progress:
            progress(i + 1, len(ds.samples))

    def run(c: float, u: float) -> list[ImageDetections]:
        out = []
        for boxes, scores in cands:
            d = nms_per_class(boxes, scores, c, u)
            lab = remap[d.labels]
            keep = lab >= 0
            out.append(ImageDetections(d.boxes_xyxy[keep], d.scores[keep], lab[keep]))
        return out

    op = dict(detector.operating_point)
    conf = op["conf"] if conf is None else conf
    iou = op["iou"] if iou is None else iou
    summary: dict = {"n_images": len(ds.samples), "n_negative_images": sum(s.is_negative for s in ds.samples),
                     "conf": conf, "iou": iou}
    ap_dets, op_dets = run(AP_CONF, iou), run(conf, iou)
    summary.update(coco_ap(ds, ap_dets))
    summary.update(label_metrics(ds, op_dets, conf))
    summary.update(by_origin(ds, ap_dets, op_dets, conf))
    if sweep:
        result = sweep_operating_points(ds, {u: run(float(SWEEP_CONFS[0]), u) for u in SWEEP_IOUS}, SWEEP_CONFS)
        summary["sweep_best"] = result["best"]
        summary["_sweep"] = result
    summary["_detections"] = op_dets
    return summary
