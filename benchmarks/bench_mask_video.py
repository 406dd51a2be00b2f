"""End-to-end masking speed on a real clip: decode -> detect -> hold -> render -> encode.

    python benchmarks/bench_mask_video.py [--clip $FETALKIT_DATA/feecho4d/video/time1.avi] [--model NAME]
        [--int8 NAME] [--passes 6] [--threads 1] [--pace 100]

In one run, on the same frames (the clip read ``--passes`` times in a row):
decode alone, MJPG encode alone, the bare detector (in-memory frames), a sequential
decode -> detect -> hold -> render -> encode loop, and the streamed pipeline of
``fetalkit mask`` (stages overlapped).  The pipeline is also run with frames released at
``--pace`` frames/s, as from a live source, to measure frame latency (release -> written),
and with the domain check of ``fetalkit mask`` on every frame (``--outside-domain mask``, so
the detector still runs on every frame: the clip lies outside the detector's domain).
Ratios are against the bare detector.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from fetalkit.config import dataset_dir
from fetalkit.io.video import FrameSource, VideoSink, open_source, to_gray
from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
from fetalkit.runtime.detector import OnnxDetector
from fetalkit.runtime.domain import DomainCheck
from fetalkit.runtime.registry import resolve_model


def looped(clip: str, passes: int) -> FrameSource:
    first = open_source(clip)
    frames = itertools.chain.from_iterable(
        (f for _, f in (first if p == 0 else open_source(clip))) for p in range(passes))
    return FrameSource("video", clip, first.fps, first.size_hw, None, frames)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=str(dataset_dir("feecho4d") / "video" / "time1.avi"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--int8", default=None)
    ap.add_argument("--passes", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (fetalkit mask uses 1)")
    ap.add_argument("--pace", type=float, default=100.0)
    args = ap.parse_args()

    t = time.perf_counter()
    frames = [f for _, f in looped(args.clip, args.passes)]
    decode = rate(len(frames), time.perf_counter() - t)
    h, w = frames[0].shape[:2]
    color = frames[0].ndim == 3
    grays = [to_gray(f) for f in frames]
    tmp = Path(tempfile.mkdtemp())
    sink = VideoSink(tmp / "enc.avi", 25.0, (h, w), color)
    t = time.perf_counter()
    for f in frames:
        sink.write(f)
    sink.close()
    encode = rate(len(frames), time.perf_counter() - t)
    print(f"clip {Path(args.clip).name}: {w}x{h}, {len(frames)} frames ({args.passes} passes), "
          f"{args.threads} threads")
    print(f"{'stage / path':44s} {'frames/s':>9s} {'vs detector':>12s} {'p50 ms':>7s} {'p99 ms':>7s}")
    print(f"{'decode alone':44s} {decode:9.1f}")
    print(f"{'MJPG encode alone':44s} {encode:9.1f}")

    for label, name in (("FP32", args.model), ("INT8", args.int8)):
        if label == "INT8" and not name:
            continue
        det = OnnxDetector(resolve_model(name, "detector"), threads=args.threads)
        for g in grays[:5]:
            det.detect(g)
        t = time.perf_counter()
        for g in grays:
            det.detect(g)
        bare = rate(len(grays), time.perf_counter() - t)
        print(f"{'bare detector ' + label + ' (' + det.path.name + ')':44s} {bare:9.1f} {1.0:12.2f}   "
              f"input {'x'.join(map(str, det.prepare(grays[0])[0].shape[2:]))}")

        masker = Masker(det, MaskConfig())
        sink = VideoSink(tmp / "seq.avi", 25.0, (h, w), color)
        t = time.perf_counter()
        n = 0
        for i, f in looped(args.clip, args.passes):
            sink.write(masker.step(n, f).frame)
            n += 1
        sink.close()
        seq = rate(n, time.perf_counter() - t)
        print(f"{'sequential decode-detect-mask-encode ' + label:44s} {seq:9.1f} {seq / bare:12.2f}")

        report = run_stream(looped(args.clip, args.passes), tmp / "pipe.avi", Masker(det, MaskConfig()),
                            tmp / "log.jsonl")
        lat = np.percentile(report.latency_ms, [50, 99])
        print(f"{'fetalkit mask pipeline ' + label + ' (unpaced)':44s} {report.fps:9.1f} {report.fps / bare:12.2f} "
              f"{lat[0]:7.1f} {lat[1]:7.1f}")
        check = DomainCheck.of(det)
        if check is not None:  # as fetalkit mask runs it; "mask" so the detector runs on every frame too
            gated = run_stream(looped(args.clip, args.passes), tmp / "gated.avi",
                               Masker(det, MaskConfig(outside_domain="mask"), domain=check), tmp / "log_gated.jsonl")
            glat = np.percentile(gated.latency_ms, [50, 99])
            print(f"{'  + domain check on every frame':44s} {gated.fps:9.1f} {gated.fps / bare:12.2f} "
                  f"{glat[0]:7.1f} {glat[1]:7.1f}   ({gated.fps / report.fps:.2f}x the pipeline without it)")
        paced = run_stream(looped(args.clip, args.passes), tmp / "paced.avi", Masker(det, MaskConfig()),
                           tmp / "log_paced.jsonl", pace_fps=args.pace)
        lat = np.percentile(paced.latency_ms, [50, 99])
        print(f"{'fetalkit mask pipeline ' + label + f' (live, {args.pace:g} fps in)':44s} {paced.fps:9.1f} "
              f"{paced.fps / bare:12.2f} {lat[0]:7.1f} {lat[1]:7.1f}")
        import json
        recs = [json.loads(x) for x in (tmp / "log.jsonl").read_text().splitlines()]
        split = {k: np.mean([r["ms"].get(k, 0.0) for r in recs]) for k in ("detect", "hold", "render")}
        split["encode"] = float(np.mean(report.encode_ms))
        print("  per-stage mean ms (pipeline): " + ", ".join(f"{k} {v:.2f}" for k, v in split.items())
              + f"; decode {1000 / decode:.2f} (alone)")


if __name__ == "__main__":
    main()
