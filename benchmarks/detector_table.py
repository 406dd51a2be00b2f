"""Architecture comparison (like Table 3 of the privacy-masking paper): AP[.5:.95], AP50, label P / R / F1,
parameters and ms/image for trained detector runs, on the held-out split.

Every run is scored the same way with torch (torchvision's own postprocessing, NMS 0.6):
AP on the test part; the confidence for P / R / F1 is chosen on the val part (best mean
label F1), then applied to test. When the set has derived images (PSFHS negatives),
AP / P / R / F1 are those of the source images and FPPI that of the derived ones, as in
``fetalkit eval detector``.  ms/image is single-image torch eager on 2 threads;
``--onnx RUN=FILE`` adds onnxruntime timings for runs that were exported.

    python benchmarks/detector_table.py --data COCO_DIR --runs runs/det_fcos runs/det_frcnn \
        [--onnx runs/det_fcos=model.onnx] [--threads 2] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fetalkit.detection.formats import read_detection_set
from fetalkit.evaluation.detection import SWEEP_CONFS, by_origin, coco_ap, label_metrics, sweep_operating_points
from fetalkit.training.detect import load_detector_checkpoint, load_letterboxed, predict_torch, split_indices
from fetalkit.training.models import count_parameters


def ms_per_image(fn, images, warmup=5) -> float:
    for im in images[:warmup]:
        fn(im)
    t = []
    for im in images:
        t0 = time.perf_counter()
        fn(im)
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--onnx", nargs="*", default=[], help="RUN=FILE.onnx pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-timing", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = read_detection_set(args.data)
    _, val_idx, test_idx = split_indices(ds, args.seed)
    onnx = dict(kv.split("=", 1) for kv in args.onnx)
    rows = []
    for run in args.runs:
        model, cfg, ck = load_detector_checkpoint(Path(run) / "best.pt")
        data = load_letterboxed(ds, cfg.size)
        val_set, test_set = ds.subset(val_idx), ds.subset(test_idx)
        val_dets = predict_torch(model, data, val_idx, torch.device("cpu"))
        best = sweep_operating_points(val_set, {0.6: val_dets}, SWEEP_CONFS)["best"]
        test_dets = predict_torch(model, data, test_idx, torch.device("cpu"))
        apm = coco_ap(test_set, test_dets)
        lm = label_metrics(test_set, test_dets, best["conf"])
        parts = by_origin(test_set, test_dets, test_dets, best["conf"])
        if parts:  # AP / P / R / F1 of the source scans, FPPI of the derived negatives (as eval detector)
            src, der = parts["source_images"], parts["derived_images"]
            apm = {k: v for k, v in src.items() if k.startswith("ap")}
            lm = {k: v for k, v in src.items() if not k.startswith(("fppi", "negatives"))} | \
                {k: v for k, v in der.items() if k.startswith("fppi")}
        images = [torch.from_numpy(data.images[i].astype(np.float32) / 255.0)[None] for i in test_idx[: args.n_timing]]
        with torch.inference_mode():
            ms_torch = ms_per_image(lambda x: model([x]), images)
        row = {"run": run, "arch": cfg.arch, "epochs": cfg.epochs, "best_epoch": ck["epoch"],
               "params_M": round(count_parameters(model) / 1e6, 2), "conf_from_val": best["conf"],
               "ms_torch": round(ms_torch, 2), **{k: round(v, 4) for k, v in apm.items()},
               **{k: round(float(v), 4) for k, v in lm.items() if k.split("_")[0] in ("precision", "recall", "f1", "fppi")}}
        if run in onnx:
            from fetalkit.io.images import read_gray
            from fetalkit.runtime.detector import OnnxDetector
            det = OnnxDetector(onnx[run], threads=args.threads)
            raw = [read_gray(ds.samples[i].image_path) for i in test_idx[: args.n_timing]]
            row["ms_onnxruntime"] = round(ms_per_image(det.detect, raw), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    cats = ds.categories
    head = ["arch", "params (M)", "epochs"] + [f"AP {c}" for c in cats] + [f"AP50 {c}" for c in cats] + \
        ["P", "R", "F1"] + [f"F1 {c}" for c in cats] + ["FPPI", "ms torch", "ms ORT"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        vals = [r["arch"], r["params_M"], r["epochs"]] + [r[f"ap_{c}"] for c in cats] + [r[f"ap50_{c}"] for c in cats] + \
            [r["precision"], r["recall"], r["f1"]] + [r[f"f1_{c}"] for c in cats] + [r["fppi"], r["ms_torch"],
                                                                                   r.get("ms_onnxruntime", "")]
        print("| " + " | ".join(str(v) for v in vals) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
