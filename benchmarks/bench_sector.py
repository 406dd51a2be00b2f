"""Speed of imaging-sector detection on 800 x 540 frames, and of duplicate search on a folder.

    python benchmarks/bench_sector.py [--n 200] [--dedup-dir DIR]

Sector: frames/s of ``detect_sector`` (wall and single-core CPU time) next to a
naive baseline measured in the same run (threshold > 0, largest component,
convex hull, all at full resolution; no geometry), and the ratio between them.
Real HC18 frames are used when $FETALKIT_DATA/hc18 exists, phantoms otherwise.

Dedup: images/s for hashing and the time of the all-pairs search, on
``--dedup-dir`` (default $FETALKIT_DATA/psfhs/image when present).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from fetalkit.config import dataset_dir
from fetalkit.io.images import expand_inputs, read_gray
from fetalkit.preprocess.dedup import find_duplicate_pairs, hash_images
from fetalkit.preprocess.sector import detect_sector


def load_frames(n: int) -> tuple[list[np.ndarray], str]:
    folder = dataset_dir("hc18") / "training_set"
    if folder.is_dir():
        frames = [read_gray(p) for p in sorted(folder.glob("*_HC.png"))[: 2 * n]]
        frames = [f for f in frames if f.shape == (540, 800)][:n]
        return frames, "HC18"
    from fetalkit.synth.phantom import head_phantom
    return [head_phantom(seed=i).image for i in range(min(n, 20))], "phantom"


def naive_hull(gray: np.ndarray) -> np.ndarray:
    """Baseline: threshold, closing, largest component, convex hull."""
    fg = cv2.morphologyEx((gray > 0).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if n > 1 else 0
    hull = cv2.convexHull(cv2.findNonZero((labels == big).astype(np.uint8)))
    out = np.zeros_like(gray)
    cv2.fillConvexPoly(out, hull, 1)
    return out


def rate(fn, frames, warmup=3) -> tuple[float, float]:
    """(frames/s by wall clock, frames/s by this process's CPU time)."""
    for f in frames[:warmup]:
        fn(f)
    t0, c0 = time.perf_counter(), time.process_time()
    for f in frames:
        fn(f)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(frames) / wall, len(frames) / max(cpu, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--dedup-dir", default=None)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core, as in a per-frame cleaning pipeline

    frames, source = load_frames(args.n)
    base_wall, base_cpu = rate(naive_hull, frames)
    wall, cpu = rate(detect_sector, frames)
    print(f"sector on {len(frames)} {source} frames 800x540 (1 thread):")
    print(f"  detect_sector   {wall:7.1f} frames/s wall  {cpu:7.1f} frames/s CPU  ({1000 / cpu:.1f} ms/frame)")
    print(f"  naive hull      {base_wall:7.1f} frames/s wall  {base_cpu:7.1f} frames/s CPU")
    print(f"  ratio detect/naive (CPU): {cpu / base_cpu:.2f}")

    folder = args.dedup_dir or dataset_dir("psfhs") / "image"
    paths = expand_inputs([folder]) if (args.dedup_dir or dataset_dir("psfhs").is_dir()) else []
    if paths:
        t0 = time.perf_counter()
        hashes, failures = hash_images(paths)
        t1 = time.perf_counter()
        pairs = find_duplicate_pairs(hashes)
        t2 = time.perf_counter()
        n_exact = sum(p.kind == "exact" for p in pairs)
        print(f"dedup on {len(paths)} images in {folder}:")
        print(f"  hashing {len(paths) / (t1 - t0):7.1f} images/s ({t1 - t0:.2f} s), pair search {t2 - t1:.3f} s "
              f"({len(hashes) * (len(hashes) - 1) // 2} pairs)")
        print(f"  {n_exact} exact pairs, {len(pairs) - n_exact} near pairs, {len(failures)} unreadable")


if __name__ == "__main__":
    main()
