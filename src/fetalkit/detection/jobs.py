"""``fetalkit detect``: a detector over image files, one result per input, outputs written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.detection.region import RoiOption, crop, detection_region, to_frame
from fetalkit.io.images import atomic_write_bytes, check_min_size, read_gray
from fetalkit.io.inputs import printable
from fetalkit.io.jobs import plan_job
from fetalkit.runtime.detector import OnnxDetector, detections_json
from fetalkit.runtime.registry import resolve_model

COLUMNS = ["filename", "n_detections", "error"]
_COLOURS = [(0, 0, 255), (0, 200, 0), (255, 128, 0), (0, 200, 255), (255, 0, 255)]


def draw_detections(image: np.ndarray, dets, classes: list[str]) -> np.ndarray:
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for (x1, y1, x2, y2), s, k in zip(dets.boxes_xyxy, dets.scores, dets.labels):
        colour = _COLOURS[int(k) % len(_COLOURS)]
        cv2.rectangle(out, (int(x1), int(y1)), (int(round(x2)) - 1, int(round(y2)) - 1), colour, 1)
        cv2.putText(out, f"{classes[int(k)]} {s:.2f}", (int(x1), max(10, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, colour, 1, cv2.LINE_AA)
    return out


def detect_files(inputs: list[Path], model: Optional[str], conf: Optional[float], iou: Optional[float],
                 out_dir: Path, overlay: bool = False, class_names: Optional[list[str]] = None,
                 roi: RoiOption = "auto") -> list[dict]:
    """Detect on every input (in the region ``roi`` of each, see fetalkit.detection.region);
    ``out_dir/detections.json`` holds the detections of all readable inputs, in image pixels."""
    job = plan_job(inputs, out_dir, lambda stem: [f"overlays/{stem}.png"] if overlay else [],
                   summary=["detections.json"])
    det = OnnxDetector(resolve_model(model, "detector"), class_names=class_names)
    stems = job.stems
    records: list[dict] = []

    def measure(path: Path, row: dict, write) -> None:
        image = read_gray(path)
        check_min_size(path, image)
        region = detection_region(image, roi, min_side_px=det.spec.size)
        dets = to_frame(det.detect(crop(image, region), conf, iou), region)
        records.extend(detections_json(printable(path), dets, det.classes))
        row["n_detections"] = len(dets.scores)
        if overlay:
            write(out_dir / "overlays" / f"{stems[path]}.png", lambda: draw_detections(image, dets, det.classes))

    rows = job.run(COLUMNS, measure)
    atomic_write_bytes(out_dir / "detections.json", json.dumps(records, indent=1).encode())
    return rows
