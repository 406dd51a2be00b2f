"""Speed of fetal head biometry on 800 x 540 inputs: onnxruntime (the runtime) vs torch eager.

Both paths do the same work per image: resize + normalise -> model -> upsample the
probability -> largest region -> ellipse fit -> HC/BPD/OFD.  The torch path runs
the same architecture in eager mode (its weights do not change its speed).
A third line times the whole ``fetalkit biometry head`` job (PNG read, overlays
written, csv) on files.

    python benchmarks/bench_head_biometry.py [--n 60] [--threads 2] [--model NAME_OR_PATH]

Prints images/s for each and the ratios against torch eager, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from fetalkit.biometry.head import HeadBiometry, head_mask_from_probability, measure_head_mask
from fetalkit.biometry.head_job import measure_files
from fetalkit.io.images import write_image
from fetalkit.synth.phantom import head_phantom


def steady_rate(fn, images, warmup=3) -> float:
    for im in images[:warmup]:
        fn(im)
    t0 = time.perf_counter()
    for im in images:
        fn(im)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    ap.add_argument("--update-card", action="store_true", help="Store the measured speed in the model card.")
    args = ap.parse_args()

    images = [head_phantom(seed=i, shape_hw=(540, 800)).image for i in range(min(args.n, 12))]
    images = (images * (args.n // len(images) + 1))[: args.n]
    hb = HeadBiometry(args.model, threads=args.threads)
    ort_rate = steady_rate(lambda im: hb.measure(im, 0.1), images)

    import torch
    from fetalkit.training.models import build_segmenter
    torch.set_num_threads(args.threads)
    card = hb.model.card
    net = build_segmenter(card.get("arch", "unet-mobilenet_v2"), 1, init="random").eval()

    def torch_measure(im):
        with torch.inference_mode():
            prob = torch.sigmoid(net(torch.from_numpy(hb.model.prepare([im])))).numpy()[0, 0]
        return measure_head_mask(head_mask_from_probability(prob, im.shape[:2]), 0.1)
    torch_rate = steady_rate(torch_measure, images)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        for i, im in enumerate(images):
            write_image(folder / f"img_{i:04d}.png", im)
        measure_files([folder], Path(tmp) / "warm", pixel_mm=0.1, model=hb.model, threads=args.threads)
        t0 = time.perf_counter()
        measure_files([folder], Path(tmp) / "out", pixel_mm=0.1, model=hb.model, threads=args.threads)
        job_rate = len(images) / (time.perf_counter() - t0)

    print(f"model {hb.model.path.name}, input {card['input_hw']}, {args.n} images 800x540, {args.threads} threads")
    print(f"{'path':38s} {'images/s':>9s} {'vs torch':>9s}")
    print(f"{'torch eager (model + measurement)':38s} {torch_rate:9.1f} {1.0:9.2f}")
    print(f"{'onnxruntime (model + measurement)':38s} {ort_rate:9.1f} {ort_rate / torch_rate:9.2f}")
    print(f"{'biometry head job (files, overlays)':38s} {job_rate:9.1f} {job_rate / torch_rate:9.2f}")
    if args.update_card:
        import os
        from fetalkit.training.export import update_card
        update_card(hb.model.path, "speed", {
            "images_per_s_onnxruntime": round(ort_rate, 1), "images_per_s_biometry_job": round(job_rate, 1),
            "images_per_s_torch_eager": round(torch_rate, 1), "threads": args.threads, "cpu_cores": os.cpu_count(),
            "input": "800x540", "command": "python benchmarks/bench_head_biometry.py --update-card"})


if __name__ == "__main__":
    main()
