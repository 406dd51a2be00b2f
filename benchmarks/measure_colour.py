"""Colour kept by ``fetalkit deid``, ``fetalkit mask`` and ``fetalkit clean`` on real colour ultrasound files.

The files are the ultrasound DICOMs shipped inside pydicom's wheel
(``pydicom.data.get_testdata_file``): a Philips OB exam in PALETTE COLOR, a GE
power-Doppler lymph node in RGB and in JPEG 2000 (YBR_RCT), a SonoSite cardiac
YBR_FULL_422 JPEG cine of 30 frames.  Each is run through the commands as a user
runs them (subprocesses, default options):

    fetalkit deid SRC -o DIR/NAME_deid.dcm
    fetalkit mask SRC -o DIR/NAME_mask.dcm --log DIR/NAME_mask.jsonl
    fetalkit clean DIR/rgb_color.png --out DIR/clean      (frame of the RGB file as a colour PNG)

and source and output are compared outside the redacted pixels (deid: the
cleaning's overlay mask, recomputed with ``clean_frame`` on the source frames;
mask: the boxes of the log; clean: ``<stem>_removed.png``):

* chroma ratio: sum of (max - min over channels) of the output / of the source
  (target >= 0.8; a grey output scores 0);
* mean |change| in grey levels over those pixels and the three channels (target <= 6);
* the chroma ratio over the whole frame, redacted pixels included (how much
  colour the redaction itself took).

    python benchmarks/measure_colour.py [--out DIR] [--measure-only]

``--measure-only`` measures the outputs already in DIR (e.g. written by another
version of fetalkit under the same names) instead of running the commands.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from fetalkit.io.dicom import read_dicom
from fetalkit.io.images import read_colour, read_gray, write_image
from fetalkit.preprocess.jobs import clean_frame

EXAMPLES = ("palette", "rgb_color", "ybr_color", "jpeg2k")


def fetalkit(*args) -> None:
    res = subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"fetalkit {' '.join(map(str, args))} failed: {res.stderr}")


def as_bgr(frames: np.ndarray) -> np.ndarray:
    """N x H x W x 3 (a grey output repeated over the channels)."""
    return frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)


def chroma(frames: np.ndarray) -> np.ndarray:
    return frames.max(axis=-1).astype(np.int64) - frames.min(axis=-1)


def compare(src: np.ndarray, out: np.ndarray, redacted: np.ndarray) -> dict:
    """Chroma ratio and mean |change| outside ``redacted`` (N x H x W bool), chroma ratio overall."""
    src, out = as_bgr(src), as_bgr(out)
    keep = ~redacted
    c_src, c_out = chroma(src), chroma(out)
    # None: no colour outside the redaction to keep (a box over every coloured pixel)
    return {"chroma_ratio": float(c_out[keep].sum() / c_src[keep].sum()) if c_src[keep].any() else None,
            "mean_abs_change": float(np.abs(out.astype(np.int16) - src)[keep].mean()),
            "chroma_ratio_whole": float(c_out.sum() / max(c_src.sum(), 1)),
            "redacted_fraction": float(redacted.mean())}


def mask_boxes(log: Path, shape: tuple) -> np.ndarray:
    redacted = np.zeros(shape, bool)
    for line in log.read_text().splitlines():
        record = json.loads(line)
        for x, y, w, h in record["masks"]:
            redacted[record["frame"], y:y + h, x:x + w] = True
    return redacted


def header(path: Path, source: pydicom.Dataset) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    same = (ds.Rows, ds.Columns, ds.get("NumberOfFrames", 1)) == (source.Rows, source.Columns,
                                                                  source.get("NumberOfFrames", 1))
    return f"{ds.PhotometricInterpretation:<11} size/frames {'same' if same else 'CHANGED'}  " \
           f"BurnedIn {ds.get('BurnedInAnnotation', '-'):<3} lossy {ds.get('LossyImageCompression', '-')}"


def line(name: str, command: str, head: str, m: dict) -> str:
    ratio = "n/a  " if m["chroma_ratio"] is None else f"{m['chroma_ratio']:.3f}"
    return (f"{name:<10} {command:<5} {head}  chroma ratio {ratio}  mean |change| "
            f"{m['mean_abs_change']:.2f}  whole-frame chroma ratio {m['chroma_ratio_whole']:.3f}  "
            f"redacted {100 * m['redacted_fraction']:.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--measure-only", action="store_true")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fetalkit-colour-"))
    out.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLES:
        path = Path(get_testdata_file(f"examples_{name}.dcm"))
        source = pydicom.dcmread(path, stop_before_pixels=True)
        src = read_dicom(path, colour=True).frames
        deid, masked, log = out / f"{name}_deid.dcm", out / f"{name}_mask.dcm", out / f"{name}_mask.jsonl"
        if not args.measure_only:
            fetalkit("deid", path, "-o", deid)
            fetalkit("mask", path, "-o", masked, "--log", log)
        removed = np.stack([clean_frame(f)[0].overlay_mask > 0 for f in src])
        print(f"{name:<10} source {source.PhotometricInterpretation} "
              f"({pydicom.uid.UID(source.file_meta.TransferSyntaxUID).name})")
        print(line(name, "deid", header(deid, source), compare(src, read_dicom(deid, colour=True).frames, removed)))
        print(line(name, "mask", header(masked, source),
                   compare(src, read_dicom(masked, colour=True).frames, mask_boxes(log, src.shape[:3]))))
    png = out / "rgb_color.png"
    if not args.measure_only:
        write_image(png, read_dicom(get_testdata_file("examples_rgb_color.dcm"), colour=True).frames[0])
        fetalkit("clean", png, "--out", out / "clean")
    cleaned = read_colour(out / "clean" / "rgb_color.png")
    m = compare(read_colour(png)[None], cleaned[None], read_gray(out / "clean" / "rgb_color_removed.png")[None] > 0)
    print(line("rgb_color", "clean", f"{'BGR PNG' if cleaned.ndim == 3 else 'GREY PNG':<11} size same "
               f"{cleaned.shape[:2] == read_colour(png).shape[:2]}", m))
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
