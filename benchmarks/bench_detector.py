"""Detector speed and accuracy side by side: torch eager vs onnxruntime FP32 vs onnxruntime INT8.

All three paths do letterbox -> network -> per-class NMS on one image at a time; the
torch path runs the same trained network (the checkpoint) in eager mode.

    python benchmarks/bench_detector.py --model M.onnx [--int8 M-int8.onnx] [--checkpoint best.pt]
        [--peer OTHER.onnx] [--arch fcos-mnv2-s32 ...] [--data COCO_DIR --split test] [--n 200] [--threads 2] [--rounds 5] [--update-card]

The paths take turns over ``--rounds`` passes; prints median ms/image, images/s and the
ratio against torch eager (and INT8 against FP32),
and, with --data, AP[.5:.95] per class of FP32 and INT8 on the same images.
``--peer`` times another ONNX detector the runtime accepts (e.g. a YOLO11n exported by
Ultralytics) in the same run: letterbox + network + box decoding, without NMS, for it
and for the models above (an untrained export has the trained one's speed, but its
random scores would make NMS time meaningless).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fetalkit.io.images import read_gray
from fetalkit.runtime.detector import OnnxDetector, nms_per_class


def timed(fns: dict, images, rounds: int, warmup=5) -> dict:
    """Per path: (median ms per image, median images/s over the rounds).

    The paths take turns, one pass over the images each per round, so a slow spell of
    this shared machine hits them all alike and the ratios stay comparable."""
    for fn in fns.values():
        for im in images[:warmup]:
            fn(im)
    times = {name: [] for name in fns}
    rates = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for im in images:
                t = time.perf_counter()
                fn(im)
                times[name].append(time.perf_counter() - t)
            rates[name].append(len(images) / (time.perf_counter() - t0))
    return {name: (float(np.median(times[name]) * 1000), float(np.median(rates[name]))) for name in fns}


def untrained_onnx(arch: str, like: OnnxDetector, out_dir: Path) -> Path:
    """An untrained ``arch`` with ``like``'s classes and input size, exported as a run would be
    (its speed is a trained one's; its scores are random, so it is timed without NMS)."""
    from dataclasses import asdict

    import torch
    from fetalkit.training.detect import DetTrainConfig
    from fetalkit.training.detectors import build_detector
    from fetalkit.training.export import export_detector
    cfg = DetTrainConfig(arch=arch, size=like.spec.size, categories=list(like.classes), init="random")
    model = build_detector(arch, len(cfg.categories), cfg.size, "random")
    checkpoint = out_dir / f"{arch}.pt"
    torch.save({"config": asdict(cfg), "model": model.state_dict(), "epoch": 0}, checkpoint)
    export_detector(checkpoint, out_dir / f"{arch}.onnx")
    return out_dir / f"{arch}.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="FP32 detector (.onnx or bundled name)")
    ap.add_argument("--int8", default=None, help="INT8 detector (.onnx or bundled name)")
    ap.add_argument("--checkpoint", default=None, help="The run's best.pt, for the torch eager path")
    ap.add_argument("--peer", default=None, help="Another ONNX detector (e.g. YOLO11n), timed without NMS")
    ap.add_argument("--arch", action="append", default=[],
                    help="Also time an untrained copy of this architecture (fetalkit.training.detectors.DET_ARCHS; "
                         "repeatable) at the model's input size, network only: a candidate's cost before training it")
    ap.add_argument("--data", default=None, help="Label set for images and AP (default: PSFHS images)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved passes per path (medians reported)")
    ap.add_argument("--update-card", action="store_true", help="Store speed (and INT8 AP) in the model cards.")
    args = ap.parse_args()

    from fetalkit.runtime.registry import resolve_model
    fp32 = OnnxDetector(resolve_model(args.model, "detector"), threads=args.threads)
    int8 = OnnxDetector(resolve_model(args.int8, "detector"), threads=args.threads) if args.int8 else None
    ds = None
    if args.data:
        from fetalkit.datasets.splits import select_split
        from fetalkit.detection.formats import read_detection_set
        ds = read_detection_set(args.data)
        if args.split != "all":
            ds = ds.subset(select_split(ds.groups(), args.split, args.seed))
        paths = [s.image_path for s in ds.samples]
    else:
        from fetalkit.config import dataset_dir
        paths = sorted((dataset_dir("psfhs") / "image").glob("*.png"))
    images = [read_gray(p) for p in paths[: args.n]]
    op = fp32.operating_point
    fns = {}

    if args.checkpoint:
        import torch
        from fetalkit.training.detect import load_detector_checkpoint
        from fetalkit.training.detectors import DenseDetectorExport
        torch.set_num_threads(args.threads)
        model, cfg, _ = load_detector_checkpoint(args.checkpoint)
        net = DenseDetectorExport(model, cfg.size).eval()

        def torch_detect(im):
            x, scale, _ = fp32.prepare(im)
            with torch.inference_mode():
                b, s = net(torch.from_numpy(x))
            return nms_per_class(b[0].numpy() / scale, s[0].numpy(), op["conf"], op["iou"])
        fns["torch eager"] = torch_detect
    fns["onnxruntime FP32"] = fp32.detect
    if int8:
        fns["onnxruntime INT8"] = int8.detect
    rows = [(name, *v) for name, v in timed(fns, images, args.rounds).items()]

    base = rows[0][2]
    fp32_rate = next(r[2] for r in rows if r[0] == "onnxruntime FP32")
    print(f"{fp32.path.name}: input {fp32.spec.size}x{fp32.spec.size}, {len(images)} images x {args.rounds} rounds, "
          f"{args.threads} threads, "
          f"conf {op['conf']}, NMS IoU {op['iou']}")
    print(f"{'path':20s} {'ms/image':>9s} {'images/s':>9s} {'vs ' + rows[0][0]:>18s} {'vs FP32':>8s}")
    for name, ms, r in rows:
        print(f"{name:20s} {ms:9.2f} {r:9.1f} {r / base:18.2f} {r / fp32_rate:8.2f}")

    if args.peer or args.arch:
        nets = [(fp32.path.name, fp32), *([(int8.path.name, int8)] if int8 else [])]
        peer = OnnxDetector(args.peer, threads=args.threads) if args.peer else None
        if peer:
            nets.append((peer.path.name + " (peer)", peer))
        tmp = tempfile.TemporaryDirectory()
        for arch in args.arch:
            nets.append((f"{arch} (untrained)", OnnxDetector(untrained_onnx(arch, fp32, Path(tmp.name)), threads=args.threads)))
        net_rows = [(name, *v) for name, v in timed({n: d.candidates for n, d in nets}, images, args.rounds).items()]
        tmp.cleanup()
        peer_rate = next((r for n, _, r in net_rows if n.endswith(" (peer)")), None)
        print(f"letterbox + network + box decoding (no NMS), {args.threads} threads"
              + (f"; peer {peer.path.name}: input {peer.spec.size}x{peer.spec.size}, layout {peer.spec.layout}" if peer else ""))
        print(f"{'model':40s} {'ms/image':>9s} {'images/s':>9s} {'vs FP32':>8s}" + (f" {'vs peer':>8s}" if peer else ""))
        for name, ms, r in net_rows:
            print(f"{name:40s} {ms:9.2f} {r:9.1f} {r / net_rows[0][2]:8.2f}" + (f" {r / peer_rate:8.2f}" if peer else ""))

    aps = {}
    if ds is not None:
        from fetalkit.evaluation.detection import evaluate_detector
        sub = ds.subset(range(len(images)))
        for name, det in (("fp32", fp32), ("int8", int8)):
            if det is not None:
                s = evaluate_detector(sub, det)
                aps[name] = {k: round(float(v), 4) for k, v in s.items() if k.startswith("ap") and "50" not in k}
                print(f"AP[.5:.95] {name}: " + "  ".join(f"{k[3:] or 'mean'} {v:.4f}" for k, v in aps[name].items()))
        if len(aps) == 2:
            print("INT8 - FP32: " + "  ".join(f"{k[3:] or 'mean'} {aps['int8'][k] - v:+.4f}" for k, v in aps["fp32"].items()))

    if args.update_card:
        from fetalkit.training.export import update_card
        by = {n: (ms, r) for n, ms, r in rows}
        common = {"threads": args.threads, "cpu_cores": os.cpu_count(), "images": len(images),
                  "command": "python benchmarks/bench_detector.py " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False, True))
                  + " --update-card"}
        update_card(fp32.path, "speed", {"ms_per_image_onnxruntime": round(by["onnxruntime FP32"][0], 2),
                                         "images_per_s_onnxruntime": round(by["onnxruntime FP32"][1], 1),
                                         **({"images_per_s_torch_eager": round(by["torch eager"][1], 1)}
                                            if "torch eager" in by else {}), **common})
        if int8:
            update_card(int8.path, "speed", {"ms_per_image_onnxruntime": round(by["onnxruntime INT8"][0], 2),
                                             "images_per_s_onnxruntime": round(by["onnxruntime INT8"][1], 1),
                                             "speedup_vs_fp32": round(by["onnxruntime INT8"][1] / fp32_rate, 2), **common})
            if aps:
                # own keys: these are AP on the benchmark's images, not eval's test_* figures
                update_card(int8.path, "metrics", {f"bench_{k}": v for k, v in aps["int8"].items()}
                            | {"bench_ap_change_vs_fp32": round(aps["int8"]["ap"] - aps["fp32"]["ap"], 4),
                               "bench_ap_images": f"first {len(images)} of the {args.split} split"})


if __name__ == "__main__":
    main()
