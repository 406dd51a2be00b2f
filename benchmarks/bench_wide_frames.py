"""Detector accuracy on wide scanner frames: the whole frame against the imaged area.

    python benchmarks/bench_wide_frames.py --data /work/det/psfhs_coco --split val
        [--aspect 1.811] [--models psfhs-fcos-mnv2 psfhs-fcos-mnv2-int8 M.onnx ...]

A scanner shows its image in a wide frame with black sides (the FeEcho4D clip is
1112 x 614, aspect 1.811).  Each image of the split is put in the centre of such a frame
and detected four ways: the image as it is (the baseline), the image as it is with
``--roi auto``, the whole wide frame letterboxed into the network, and only the frame's imaged area
(``--roi auto`` of ``fetalkit mask`` and ``fetalkit detect``: fetalkit.detection.region).
COCO AP and label F1 (at the model's operating point) per class, the network's input
size, and the AP ratio against the baseline are printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fetalkit.datasets.splits import select_split  # noqa: E402
from fetalkit.detection.formats import read_detection_set  # noqa: E402
from fetalkit.evaluation.detection import evaluate_detector  # noqa: E402
from fetalkit.detection.region import crop, detection_region  # noqa: E402
from fetalkit.runtime.detector import OnnxDetector  # noqa: E402
from fetalkit.runtime.registry import resolve_model  # noqa: E402
from fetalkit.synth.sequences import on_wide_screen  # noqa: E402


class WideFrames:
    """A detector seen through :func:`on_wide_screen` (``aspect`` None: the image as it is);
    boxes come back in the image's pixels."""

    def __init__(self, detector: OnnxDetector, aspect: float | None, crop: bool = False):
        self.detector, self.aspect, self.crop = detector, aspect, crop
        self.path, self.classes, self.operating_point = detector.path, detector.classes, detector.operating_point
        self.input_hw: tuple[int, int] | None = None

    def candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frame, ox = on_wide_screen(image, self.aspect) if self.aspect else (image, 0)
        region = detection_region(frame, "auto" if self.crop else "full", min_side_px=self.detector.spec.size)
        x1, y1 = region[:2] if region else (0, 0)
        m = self.detector.model_input(crop(frame, region))
        self.input_hw = m.x.shape[2:]
        boxes, scores = self.detector.candidates(m)
        boxes = boxes + np.array([x1 - ox, y1, x1 - ox, y1], np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.shape[1])
        return boxes, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aspect", type=float, default=1112 / 614)
    ap.add_argument("--models", nargs="+", default=["psfhs-fcos-mnv2", "psfhs-fcos-mnv2-int8"])
    args = ap.parse_args()
    ds = read_detection_set(args.data)
    if args.split != "all":
        ds = ds.subset(select_split(ds.groups(), args.split, args.seed))
    print(f"{args.data} ({args.split}): {len(ds.samples)} images; wide frames of aspect {args.aspect:.3f}")
    head = f"{'model':34s} {'frames':10s} {'input':>8s}"
    for c in ds.categories:
        head += f"  {'AP ' + c[:12]:>16s} {'F1':>6s}"
    print(head + f"  {'AP vs as-is':>11s}")
    for spec in args.models:
        det = OnnxDetector(resolve_model(spec, "detector"), threads=2)
        for frames, aspect, crop in (("as-is", None, False), ("as-is+crop", None, True),
                                     ("wide", args.aspect, False), ("wide+crop", args.aspect, True)):
            runner = WideFrames(det, aspect, crop)
            s = evaluate_detector(ds, runner)
            hw = runner.input_hw  # of the last image
            baseline = s["ap"] if frames == "as-is" else baseline
            row = f"{spec[-34:]:34s} {frames:10s} {hw[0]:>3d}x{hw[1]:<4d}"
            for c in ds.categories:
                row += f"  {s[f'ap_{c}']:16.4f} {s[f'f1_{c}']:6.4f}"
            print(row + f"  {s['ap'] / baseline:11.3f}", flush=True)


if __name__ == "__main__":
    main()
