"""Accuracy of burned-in text removal on real frames with known pasted overlays.

Text labels (Hershey fonts, several scales, grey 150-255, with and without
anti-aliasing; outside and inside the sector), caliper pairs (+ / x marks and a
dotted line) and arrows are pasted onto real HC18 and PSFHS images with
:func:`fetalkit.preprocess.text.draw_synthetic_overlays`, which knows the exact
overlay mask; :func:`remove_overlay` then cleans the frame.  Per image:

* recall: fraction of pasted overlay pixels that the detector flagged;
* altered: fraction of NON-overlay sector pixels whose grey level changed by
  more than 2 (anatomy touched);
* SSIM / PSNR of the restored region (the union of the overlays' bounding
  boxes) against the original frame without overlays (skimage.metrics).

Reported: mean and worst over the images, for fetalkit's confined method and,
beside it, for the paper's unconfined pipeline (top-hat 7x7, Otsu +
hysteresis, 3x3 dilation, inpaint everything) and for doing nothing.

    python benchmarks/measure_text_removal.py [--n-hc18 20] [--n-psfhs 20] [--seed 0] [--dense]

Overlays per frame: 4 outside labels, 2 inside labels, 2 caliper pairs and an
arrow per 800 x 540 frame, scaled with the frame area (a 256 x 256 PSFHS frame
gets one of each), so that the overlay density is comparable; ``--dense``
pastes the full set on every frame (a stress test for small frames).

Overlays are placed using the sector detected on the clean frame; fetalkit then
cleans the overlaid frame exactly as ``fetalkit clean`` does
(:func:`fetalkit.preprocess.jobs.clean_frame`: sector detected on the frame
with its overlays, then removal confined by it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fetalkit.config import dataset_dir
from fetalkit.errors import FetalkitError
from fetalkit.io.images import read_gray
from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.sector import detect_sector
from fetalkit.preprocess.text import TextRemovalParams, draw_synthetic_overlays, remove_overlay

ALTERED_GREY = 2


def sector_of(gray: np.ndarray) -> np.ndarray:
    """Sector mask (H x W uint8 {0, 1}) from fetalkit's detector; the whole frame when none is found."""
    try:
        return detect_sector(gray).mask
    except FetalkitError:
        return np.ones(gray.shape, np.uint8)


def pick_images(n_hc18: int, n_psfhs: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    chosen = []
    for folder, pattern, n in ((dataset_dir("hc18") / "training_set", "*_HC.png", n_hc18),
                               (dataset_dir("psfhs") / "image", "*.png", n_psfhs)):
        paths = sorted(folder.glob(pattern))
        if n and not paths:
            sys.exit(f"no images matching {folder / pattern}; set FETALKIT_DATA")
        chosen += [paths[i] for i in sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False))]
    return chosen


def overlay_counts(shape_hw: tuple[int, int], dense: bool) -> dict:
    """Numbers of pasted elements: 4 outside labels, 2 inside labels, 2 caliper pairs, 1 arrow
    per 800 x 540 frame, scaled with the frame area (at least 1 each) unless ``dense``."""
    k = 1.0 if dense else shape_hw[0] * shape_hw[1] / (800 * 540)
    return {"n_text_outside": max(1, round(4 * k)), "n_text_inside": max(1, round(2 * k)),
            "n_calipers": max(1, round(2 * k)), "n_arrows": 1}


def scores(original: np.ndarray, cleaned: np.ndarray, flagged: np.ndarray, truth: np.ndarray,
           sector: np.ndarray, boxes) -> dict:
    """Recall, altered fraction, SSIM and PSNR of the restored boxes for one image."""
    in_boxes = np.zeros(truth.shape, bool)
    for x0, y0, x1, y1 in boxes:
        in_boxes[y0:y1, x0:x1] = True
    non_overlay = (sector > 0) & ~truth
    changed = np.abs(cleaned.astype(np.int16) - original) > ALTERED_GREY
    _, ssim_map = structural_similarity(original, cleaned, data_range=255, full=True)
    return {
        "recall": float(flagged[truth].mean()),
        "altered_pct": 100.0 * float(changed[non_overlay].mean()),
        "ssim": float(ssim_map[in_boxes].mean()),
        "psnr_db": float(peak_signal_noise_ratio(original[in_boxes], cleaned[in_boxes], data_range=255)),
    }


METHODS = {
    "fetalkit": lambda im, sector: clean_frame(im)[0],  # finds the sector itself, as `fetalkit clean`
    "paper": lambda im, sector: remove_overlay(im, None, TextRemovalParams.paper_baseline()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-hc18", type=int, default=20)
    parser.add_argument("--n-psfhs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true",
                        help="paste the 800 x 540 number of overlays on every frame (stress test)")
    args = parser.parse_args()

    rows = {name: [] for name in (*METHODS, "none")}
    seconds = 0.0
    paths = pick_images(args.n_hc18, args.n_psfhs, args.seed)
    for i, path in enumerate(paths):
        original = read_gray(path)
        sector = sector_of(original)
        syn = draw_synthetic_overlays(original, sector, seed=args.seed * 1000 + i,
                                      **overlay_counts(original.shape, args.dense))
        truth = syn.overlay_mask > 0
        for name, method in METHODS.items():
            t0 = time.perf_counter()
            result = method(syn.image, sector)
            if name == "fetalkit":
                seconds += time.perf_counter() - t0
            rows[name].append(scores(original, result.image, result.overlay_mask > 0, truth, sector,
                                     syn.boxes) | {"image": path.name})
        rows["none"].append(scores(original, syn.image, np.zeros_like(truth), truth, sector, syn.boxes)
                            | {"image": path.name})

    print(f"command: python benchmarks/measure_text_removal.py --n-hc18 {args.n_hc18} "
          f"--n-psfhs {args.n_psfhs} --seed {args.seed}" + (" --dense" if args.dense else ""))
    print(f"{len(paths)} images ({args.n_hc18} HC18 + {args.n_psfhs} PSFHS), sector: fetalkit's "
          f"detector; "
          f"fetalkit {1000 * seconds / len(paths):.1f} ms/image")
    print(f"{'method':10s} {'subset':7s} {'recall':>15s} {'altered %':>15s} {'SSIM boxes':>15s} "
          f"{'PSNR boxes dB':>15s}   (mean / worst)")
    for name, table in rows.items():
        for subset in ("all", "hc18", "psfhs"):
            sel = [r for r in table
                   if subset == "all" or (subset == "hc18") == r["image"].endswith("_HC.png")]
            if not sel:
                continue
            cols = []
            for key, worst in (("recall", min), ("altered_pct", max), ("ssim", min), ("psnr_db", min)):
                values = [r[key] for r in sel]
                cols.append(f"{np.mean(values):7.3f} / {worst(values):6.3f}")
            print(f"{name:10s} {subset:7s} " + " ".join(f"{c:>15s}" for c in cols))
    worst = min(rows["fetalkit"], key=lambda r: r["recall"])
    print(f"lowest fetalkit recall: {worst['image']} ({worst['recall']:.3f})")
    targets = {"recall": (">=", 0.95), "altered_pct": ("<", 1.0), "ssim": (">=", 0.8)}
    ours = rows["fetalkit"]
    verdict = []
    for key, (op, limit) in targets.items():
        mean = float(np.mean([r[key] for r in ours]))
        ok = mean >= limit if op == ">=" else mean < limit
        verdict.append(f"{key} mean {mean:.3f} {op} {limit}: {'ok' if ok else 'MISSED'}")
    print("targets: " + "; ".join(verdict))


if __name__ == "__main__":
    main()
