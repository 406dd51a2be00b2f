"""The domain check on real files: masking and biometry with and without it.

Inputs no model was trained or calibrated on: the four ultrasound DICOMs that ship in
pydicom's wheel (a Philips OB exam, a GE power-Doppler lymph node in RGB and in
JPEG 2000, a SonoSite cardiac YBR cine).  Inputs of the public sets the view classifier
did see in part (its train / val / test split is printed per image): the FeEcho4D clip,
the FETAL_PLANES_DB and SonoNet images.

For each input: frames masked by the bundled detector as ``fetalkit mask`` runs it (the
domain gate on: frames outside the detector's domain pass), and as it ran before the gate
(``--outside-domain mask``, the baseline beside it); on how many of its frames
``biometry head`` and ``biometry aop`` refuse to measure.  The PSFHS figures of the masking benchmark with
and without the gate come from ``fetalkit bench video --domain / --no-domain``.

    python benchmarks/domain_real_files.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fetalkit.config import data_root
from fetalkit.datasets.views import planes_db_items, read_view_image, sononet_items, split_view_items
from fetalkit.io.dicom import read_dicom
from fetalkit.io.video import open_source
from fetalkit.masking.pipeline import MaskConfig, Masker
from fetalkit.runtime.detector import OnnxDetector
from fetalkit.runtime.domain import DomainCheck
from fetalkit.runtime.registry import load_model, resolve_model

PYDICOM_US = ("examples_palette.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm", "examples_ybr_color.dcm")


def masked_frames(frames: list[np.ndarray], detector, domain, outside: str) -> int:
    masker = Masker(detector, MaskConfig(outside_domain=outside), domain=domain)
    return sum(bool(masker.step(i, f).record["masks"]) for i, f in enumerate(frames))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    root = args.data or data_root()
    detector = OnnxDetector(resolve_model(None, "detector"), threads=1)
    mask_domain = DomainCheck.of(detector)
    head = DomainCheck.of(load_model(None, "head-seg"))
    aop = DomainCheck.of(load_model(None, "psfhs-seg"))
    print(f"thresholds: detector {mask_domain.threshold:.3f} ({mask_domain.made_for}), head {head.threshold:.3f}, "
          f"aop {aop.threshold:.3f}")
    print(f"{'input':42s} {'frames':>6s} {'masked (gate)':>14s} {'masked (no gate)':>17s} "
          f"{'head score':>10s} {'aop score':>9s}  biometry (scores: medians over the frames)")

    def report(name: str, frames: list[np.ndarray]) -> None:
        with_gate = masked_frames(frames, detector, mask_domain, "pass")
        without = masked_frames(frames, detector, mask_domain, "mask")
        hs, as_ = head.scores(frames), aop.scores(frames)
        verdict = (f"head refused on {int((hs < head.threshold).sum())}, aop refused on "
                   f"{int((as_ < aop.threshold).sum())} of {len(frames)} frames")
        print(f"{name:42s} {len(frames):6d} {with_gate:6d} ({100 * with_gate / len(frames):5.1f} %) "
              f"{without:7d} ({100 * without / len(frames):5.1f} %) {np.median(hs):10.3f} {np.median(as_):9.3f}  {verdict}")

    from pydicom.data import get_testdata_file
    for name in PYDICOM_US:
        report(f"pydicom {name}", list(read_dicom(get_testdata_file(name)).frames))
    clip = root / "feecho4d" / "video" / "time1.avi"
    if clip.is_file():
        report("feecho4d video/time1.avi", [f for _, f in open_source(str(clip))])
    parts = {}
    sources = [s for s in (planes_db_items(root / "fetal_planes_db") if (root / "fetal_planes_db").is_dir() else [],
                           sononet_items(root / "sononet_examples") if (root / "sononet_examples").is_dir() else [])
               if s]
    items = [it for s in sources for it in s]
    for part in ("train", "val", "test"):  # each source split apart, as the classifier's training did
        for it in split_view_items(sources, part):
            parts[str(it.source)] = part
    by_class: dict[str, list] = {}
    for it in items:
        g = read_view_image(it)
        h = head.judge(g)  # its anatomy is the classifier's answer
        by_class.setdefault(it.label, []).append((h.ok, aop.judge(g).ok, parts.get(str(it.source), "?"),
                                                   mask_domain.judge(g).ok, h.anatomy == it.label))
    print("\nFETAL_PLANES_DB + SonoNet images by anatomy class (most were in the classifier's train / val part):")
    for label, rows in sorted(by_class.items()):
        n = len(rows)
        held = [r for r in rows if r[2] == "test"]
        print(f"  {label:20s} {n:3d} images: classified as {label} {sum(r[4] for r in rows):3d}, head measured "
              f"{sum(r[0] for r in rows):3d}, aop measured {sum(r[1] for r in rows):3d}, detector in domain "
              f"{sum(r[3] for r in rows):3d}; of the {len(held)} test-part images: classified right "
              f"{sum(r[4] for r in held)}, head measured {sum(r[0] for r in held)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
