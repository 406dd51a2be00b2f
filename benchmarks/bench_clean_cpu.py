"""CPU time of burned-in text removal per frame, this fetalkit against another copy, alternating.

Wall-clock frames/s (``benchmarks/bench_clean.py``) swing by a factor of two
when other jobs share the machine; CPU time of one single-threaded process
(OpenCV and onnxruntime on one thread) swings much less.  The same frames as
``bench_clean.py`` (40 HC18 frames of 800 x 540 with pasted overlays) are
cleaned as ``fetalkit clean`` does it (sector found on each frame) and with
the sector known, best of ``--repeat`` passes; with ``--baseline-src`` the
other copy runs in turns with this one (``--rounds`` each, in subprocesses),
and the best of all its rounds is kept for each.

    python benchmarks/bench_clean_cpu.py [--baseline-src /tmp/text_base/src] [--rounds 3] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure(repeat: int) -> dict:
    """{"clean": ms, "sector_known": ms}: best CPU ms per frame over ``repeat`` passes."""
    import cv2
    cv2.setNumThreads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_clean
    from fetalkit.preprocess.jobs import clean_frame
    from fetalkit.preprocess.text import remove_overlay
    frames, _ = bench_clean.load_frames(40)
    for frame, _ in frames[:3]:
        clean_frame(frame)
    best = {"clean": float("inf"), "sector_known": float("inf")}
    for _ in range(repeat):
        t = time.process_time()
        for frame, _ in frames:
            clean_frame(frame)
        best["clean"] = min(best["clean"], 1000 * (time.process_time() - t) / len(frames))
        t = time.process_time()
        for frame, sector in frames:
            remove_overlay(frame, sector)
        best["sector_known"] = min(best["sector_known"], 1000 * (time.process_time() - t) / len(frames))
    return best


def run(src: str | None, repeat: int) -> dict:
    """:func:`measure` in a fresh single-threaded process, with ``src`` first on the path when given."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "--emit", "--repeat", str(repeat)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", default=None, help="src folder of another fetalkit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        print(json.dumps(measure(args.repeat)))
        return
    names = ["this"] + (["baseline"] if args.baseline_src else [])
    best = {name: {"clean": float("inf"), "sector_known": float("inf")} for name in names}
    for _ in range(args.rounds):
        for name in names:
            got = run(args.baseline_src if name == "baseline" else None, args.repeat)
            best[name] = {k: min(best[name][k], got[k]) for k in got}
    print("command: python benchmarks/bench_clean_cpu.py"
          + (f" --baseline-src {args.baseline_src}" if args.baseline_src else "")
          + f" --rounds {args.rounds} --repeat {args.repeat}")
    print("40 HC18 frames of 800 x 540 with pasted overlays; one thread; best CPU ms per frame")
    for name in names:
        b = best[name]
        print(f"{name:9s} fetalkit clean {b['clean']:6.1f} ms ({1000 / b['clean']:5.1f} frames/s of one core)   "
              f"sector known {b['sector_known']:6.1f} ms ({1000 / b['sector_known']:5.1f} frames/s)")
    if args.baseline_src:
        for key in ("clean", "sector_known"):
            print(f"{key}: this / baseline = x{best['this'][key] / best['baseline'][key]:.2f} CPU time")


if __name__ == "__main__":
    main()
