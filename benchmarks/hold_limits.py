"""How far can a hold rule go?  The default BBoxHoldSim against versions of it with its two
ways of letting a box go switched off, on the sequences of ``fetalkit bench video``.

BBoxHoldSim drops a held box when the SSIM to the box's frame falls below the threshold
(the view changed) or when a new detection replaces it (IoU >= 0.5).  Replaying the same
detections with either or both switched off shows which of the two leaves the misses a
rule could still cover, and what keeping the boxes would cost in false-masked frames and
area (the boxes' areas summed per frame, overlaps counted twice).  With both off, on
sequences shorter than the 150-frame cap, the rule masks every box detected so far: its
misses are the ``fn_unreachable`` count of ``bench video``.

    python benchmarks/hold_limits.py --data /work/det/psfhs_coco --split test --draws 3

Same sequences as ``fetalkit bench video --data D --split S --sequences 200 --draws N``
(seeds 0 .. N-1, bundled detector at its operating point, ``--roi auto``, margin 0.15).
"""

from __future__ import annotations

import argparse

from fetalkit.datasets.splits import select_split
from fetalkit.detection.formats import read_detection_set
from fetalkit.detection.region import parse_roi
from fetalkit.evaluation.video import build_sequences, detect_sequences, replay, summarise, unreachable_misses
from fetalkit.masking.hold import HoldRule
from fetalkit.masking.pipeline import MaskConfig
from fetalkit.runtime.detector import OnnxDetector
from fetalkit.runtime.registry import resolve_model


class NeverReplaced(HoldRule):
    """BBoxHoldSim whose held boxes no detection replaces (each stays until the SSIM lets go)."""

    MATCH_IOU = 1.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default=None)
    ap.add_argument("--category", default="pubic_symphysis")
    ap.add_argument("--sequences", type=int, default=200)
    ap.add_argument("--draws", type=int, default=1)
    args = ap.parse_args()
    ds = read_detection_set(args.data)
    ds = ds.subset(select_split(ds.groups(), args.split, 0))
    det = OnnxDetector(resolve_model(args.model, "detector"))
    seqs = [s for draw in range(args.draws) for s in build_sequences(ds, args.category, args.sequences, 60, draw)]
    dets = detect_sequences(seqs, det, args.category, roi=parse_roi("auto"))
    margin = MaskConfig.margin
    settings = [
        ("detector alone", HoldRule, {"rule": "none"}),
        ("BBoxHoldSim (default)", HoldRule, {"rule": "ssim"}),
        ("never replaced", NeverReplaced, {"rule": "ssim"}),
        ("no SSIM release (150-frame cap)", HoldRule, {"rule": "ssim", "ssim_threshold": -1.0}),
        ("neither (150-frame cap)", NeverReplaced, {"rule": "ssim", "ssim_threshold": -1.0}),
    ]
    unreachable = sum(unreachable_misses(s, d, margin) for s, d in zip(seqs, dets))
    print(f"{len(seqs)} sequences ({args.split}, {args.draws} draws), {det.path.name}, margin {margin:g}; "
          f"misses no box detected so far covers: {unreachable}")
    print(f"{'rule':34s} {'FN frames':>9s} {'removed':>8s} {'false-masked':>12s} {'+pp':>7s} {'box area':>9s}")
    results = [(name, summarise([replay(s, d, cls(**kwargs), margin) for s, d in zip(seqs, dets)]))
               for name, cls, kwargs in settings]
    base = results[0][1]  # the detector alone
    for name, counts in results:
        removed = 1 - counts["fn_frames"] / max(base["fn_frames"], 1)
        pp = 100 * (counts["false_masked_rate"] - base["false_masked_rate"])
        print(f"{name:34s} {counts['fn_frames']:9d} {100 * removed:7.1f} % {100 * counts['false_masked_rate']:10.2f} % "
              f"{pp:+7.2f} {100 * counts['mean_masked_area']:8.2f} %")


if __name__ == "__main__":
    main()
