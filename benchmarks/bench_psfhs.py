"""Speed of PSFHS segmentation + angle of progression on 256 x 256 inputs: onnxruntime vs torch eager.

Both paths: normalise -> model -> argmax label map -> AoP geometry. The torch path
runs the same architecture in eager mode (its weights do not change its speed).

    python benchmarks/bench_psfhs.py [--n 100] [--repeat 5] [--threads 2] [--model NAME_OR_PATH]

Prints images/s for each and the ratio against torch eager, measured in the same run.
Real PSFHS images are used when $FETALKIT_DATA/psfhs exists, phantom crops otherwise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fetalkit.biometry.aop import angle_of_progression
from fetalkit.biometry.labour import LabourBiometry, labels_from_probabilities
from fetalkit.config import dataset_dir
from fetalkit.errors import FetalkitError
from fetalkit.io.images import read_gray


def load_images(n: int) -> list[np.ndarray]:
    folder = dataset_dir("psfhs") / "image"
    if folder.is_dir():
        paths = sorted(folder.glob("*.png"))[:n]
        return [read_gray(p) for p in paths]
    import cv2
    from fetalkit.synth.phantom import head_phantom
    return [cv2.resize(head_phantom(seed=i).image, (256, 256)) for i in range(n)]


def rate(fn, images, repeat: int, warmup=3) -> float:
    """Median images/s over ``repeat`` passes (single passes vary by about 10 % on a shared VM)."""
    for im in images[:warmup]:
        fn(im)
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for im in images:
            fn(im)
        rates.append(len(images) / (time.perf_counter() - t0))
    return float(np.median(rates))


def measure_or_none(labels):
    try:
        return angle_of_progression(labels)
    except FetalkitError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="Passes over the images; the median rate is reported.")
    ap.add_argument("--model", default=None)
    ap.add_argument("--update-card", action="store_true", help="Store the measured speed in the model card.")
    args = ap.parse_args()
    images = load_images(args.n)
    lb = LabourBiometry(args.model, threads=args.threads)
    seg_rate = rate(lb.segment, images, args.repeat)
    full_rate = rate(lambda im: measure_or_none(lb.segment(im)), images, args.repeat)

    import torch
    from fetalkit.training.models import build_segmenter
    torch.set_num_threads(args.threads)
    net = build_segmenter(lb.model.card.get("arch", "unet-mobilenet_v2"), 3, init="random").eval()

    def torch_measure(im):
        with torch.inference_mode():
            probs = net(torch.from_numpy(lb.model.prepare([im]))).softmax(1).numpy()[0]
        return measure_or_none(labels_from_probabilities(probs, im.shape[:2]))
    torch_rate = rate(torch_measure, images, max(1, args.repeat // 2))
    print(f"model {lb.model.path.name}, input {lb.model.card['input_hw']}, {len(images)} images x {args.repeat} passes (median), {args.threads} threads")
    print(f"{'path':40s} {'images/s':>9s} {'vs torch':>9s}")
    print(f"{'torch eager (segment + AoP)':40s} {torch_rate:9.1f} {1.0:9.2f}")
    print(f"{'onnxruntime (segment only)':40s} {seg_rate:9.1f} {seg_rate / torch_rate:9.2f}")
    print(f"{'onnxruntime (segment + AoP)':40s} {full_rate:9.1f} {full_rate / torch_rate:9.2f}")
    if args.update_card:
        import os
        from fetalkit.training.export import update_card
        update_card(lb.model.path, "speed", {
            "images_per_s_onnxruntime_segment": round(seg_rate, 1), "images_per_s_onnxruntime_with_aop": round(full_rate, 1),
            "images_per_s_torch_eager": round(torch_rate, 1), "threads": args.threads, "cpu_cores": os.cpu_count(),
            "input": "256x256", "command": "python benchmarks/bench_psfhs.py --update-card"})


if __name__ == "__main__":
    main()
