"""Accuracy of burned-in text removal on real frames with known pasted overlays.

Text labels (Hershey fonts, several scales, grey 150-255, with and without
anti-aliasing; outside and inside the sector), caliper pairs (+ / x marks and a
dotted line) and arrows are pasted onto real HC18 and PSFHS frames with
:func:`fetalkit.preprocess.text.draw_synthetic_overlays`, which knows the exact
overlay mask; each method then cleans the frame and
:mod:`fetalkit.evaluation.text` scores it (overlay-pixel recall, fraction of
other sector pixels altered, SSIM / PSNR of the restored boxes).

Frames come from the held-out TEST part of each dataset's own split (HC18 by
subject, PSFHS by id block; split seed 0, the split the bundled overlay model
was trained and tuned without).

Methods: fetalkit's default (``fetalkit clean``: sector found on the overlaid
frame, learned overlay-pixel model inside it, its INT8 file), the same with the
FP32 model (``overlay-fcn``), with the rule-based inside path
(``inside_method="rules"``), the paper's unconfined pipeline (top-hat 7x7, Otsu +
hysteresis, 3x3 dilation, inpaint everything) and doing nothing.

    python benchmarks/measure_text_removal.py [--n-hc18 20] [--n-psfhs 20] [--seed 0] [--dense] [--update-card]

``--update-card`` stores the figures of each bundled overlay model (INT8 and
FP32) in its card (``metrics``; needs the training extra).

Overlays per frame: 4 outside labels, 2 inside labels, 2 caliper pairs and an
arrow per 800 x 540 frame, scaled with the frame area (a 256 x 256 PSFHS frame
gets one of each), so that the overlay density is comparable; ``--dense``
pastes the full set on every frame (a stress test for small frames).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from fetalkit.config import dataset_dir
from fetalkit.datasets.frames import split_frames
from fetalkit.evaluation.text import mean_of, score_cleaners
from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.text import TextRemovalParams, remove_overlay

SPLIT_SEED = 0
FP32_MODEL = "overlay-fcn"


def pick_frames(n_hc18: int, n_psfhs: int, seed: int) -> tuple[list, list[str]]:
    """Test-split frames and the dataset of each."""
    rng = np.random.default_rng(seed)
    chosen, names = [], []
    for name, n in (("hc18", n_hc18), ("psfhs", n_psfhs)):
        if not n:
            continue
        root = dataset_dir(name)
        if not root.is_dir():
            sys.exit(f"{root}: not found; set FETALKIT_DATA")
        paths = split_frames("test", SPLIT_SEED, **{name: root})
        picked = [paths[i] for i in sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False))]
        chosen += picked
        names += [name] * len(picked)
    return chosen, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-hc18", type=int, default=20)
    parser.add_argument("--n-psfhs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense", action="store_true",
                        help="paste the 800 x 540 number of overlays on every frame (stress test)")
    parser.add_argument("--update-card", action="store_true",
                        help="store fetalkit's test figures in the bundled overlay model's card")
    args = parser.parse_args()

    timing = {"seconds": 0.0}

    def fetalkit_default(image, sector):
        t0 = time.perf_counter()
        result = clean_frame(image)[0]  # finds the sector itself, as `fetalkit clean`
        timing["seconds"] += time.perf_counter() - t0
        return result

    cleaners = {
        "fetalkit": fetalkit_default,
        "fp32": lambda im, sector: clean_frame(im, TextRemovalParams(overlay_model=FP32_MODEL))[0],
        "rules": lambda im, sector: clean_frame(im, TextRemovalParams(inside_method="rules"))[0],
        "paper": lambda im, sector: remove_overlay(im, None, TextRemovalParams.paper_baseline()),
    }
    paths, datasets = pick_frames(args.n_hc18, args.n_psfhs, args.seed)
    rows = score_cleaners(paths, cleaners, seed=args.seed, dense=args.dense)
    for table in rows.values():  # rows come in the order of the paths
        for row, name in zip(table, datasets):
            row["dataset"] = name

    print(f"command: python benchmarks/measure_text_removal.py --n-hc18 {args.n_hc18} "
          f"--n-psfhs {args.n_psfhs} --seed {args.seed}" + (" --dense" if args.dense else ""))
    print(f"{len(paths)} test-split frames ({args.n_hc18} HC18 + {args.n_psfhs} PSFHS), sector: fetalkit's "
          f"detector; fetalkit {1000 * timing['seconds'] / max(len(paths), 1):.1f} ms/frame")
    print(f"{'method':10s} {'subset':7s} {'recall':>15s} {'altered %':>15s} {'SSIM boxes':>15s} "
          f"{'PSNR boxes dB':>15s}   (mean / worst)")
    for name, table in rows.items():
        for subset in ("all", "hc18", "psfhs"):
            sel = [r for r in table if subset in ("all", r["dataset"])]
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
    for subset in ("hc18", "psfhs"):
        sel = [r for r in rows["fetalkit"] if r["dataset"] == subset]
        if not sel:
            continue
        verdict = []
        for key, (op, limit) in targets.items():
            mean = mean_of(sel, key)
            ok = mean >= limit if op == ">=" else mean < limit
            verdict.append(f"{key} {mean:.3f} {op} {limit}: {'ok' if ok else 'MISSED'}")
        print(f"targets ({subset}): " + "; ".join(verdict))
    if args.update_card:
        from fetalkit.runtime.registry import resolve_model
        from fetalkit.training.export import update_card
        command = (f"python benchmarks/measure_text_removal.py --n-hc18 {args.n_hc18} --n-psfhs {args.n_psfhs} "
                   f"--seed {args.seed}" + (" --dense" if args.dense else ""))
        for method, model in (("fetalkit", TextRemovalParams().overlay_model), ("fp32", FP32_MODEL)):
            figures = {"command": command}
            for subset in ("hc18", "psfhs"):
                sel = [r for r in rows[method] if r["dataset"] == subset]
                if sel:
                    figures |= {f"test_{subset}_{key}": round(mean_of(sel, key), 4)
                                for key in ("recall", "altered_pct", "ssim", "psnr_db")} | {f"test_{subset}_n": len(sel)}
            path = resolve_model(model, "overlay-seg")
            update_card(path, "metrics", figures)
            print(f"figures of {method} stored in {path.with_suffix('.json')}")

if __name__ == "__main__":
    main()
