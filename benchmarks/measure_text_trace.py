"""Readable traces of burned-in text: what a contrast stretch still shows where header text was.

On the SonoNet example frames (Voluson E8, 975 x 735: gestational age, settings,
date and time on grey bars above the sector) each frame is cleaned as
``fetalkit clean`` does it (:func:`fetalkit.preprocess.jobs.clean_frame`, the
sector found on the frame), once from the grey frame and once from the BGR
frame (colour input, as ``fetalkit deid`` may pass it), and
:func:`fetalkit.preprocess.text.band_trace_ratio` measures the header band:
the band contrast-stretched (min-max to 0..255, or CLAHE) on each frame on its
own, the Sobel edge energy summed over the header text pixels grown by 2 px,
cleaned / original.  0 = nothing left to read, 1 = as much as before.

The header text is found here, independently of the cleaner being measured:
bright strokes (17 x 17 top-hat above its Otsu threshold) outside the sector
whose top lies in the top 12 % of the frame, that sit on a grey bar (the
background around them is not black) with no sector pixel within 4 px.  The
band is the rows of that text grown by 3 px.

    python benchmarks/measure_text_trace.py [--data DIR] [--baseline-src /tmp/text_base/src]
                                            [--crop /tmp/header.png --crop-frame BRAIN-CB] [--ocr]

``--baseline-src`` cleans the same frames with another copy of fetalkit (e.g.
``git worktree add /tmp/text_base HEAD`` before a change; run in a subprocess
with that ``src`` first on ``PYTHONPATH``) and prints its ratios beside.
``--crop`` writes the stretched header band of one frame (original, baseline,
this code) to a PNG, to look at; keep it out of the repository (the data is
not ours).  ``--ocr`` also runs tesseract on the stretched bands (when installed).

When :mod:`fetalkit.audit` is there, the last column is the residual of its
audit (:func:`fetalkit.audit.pixels.residual_text`, worst text region, fine
detail only, the text found by this fetalkit's detector; OCR with ``--ocr``),
the measure behind ``fetalkit audit`` and deid's Burned In Annotation flag.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fetalkit.config import dataset_dir
from fetalkit.io.images import read_gray
from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.sector import detect_sector

HEADER_FRACTION = 0.12   # header text starts in the top 12 % of rows
BAND_MARGIN_PX = 3


def frames(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.glob("*.tif*"))
    if not paths:
        sys.exit(f"{folder}: no .tif/.tiff frames; set FETALKIT_DATA or pass --data")
    return paths


def header_text(gray: np.ndarray, sector: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(H x W bool text of the header bars, (first, end) rows of its band)."""
    outside = sector == 0
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17)))
    threshold = max(cv2.threshold(tophat[outside], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0], 24)
    text = ((tophat >= threshold) & outside).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(text, connectivity=8)
    keep = np.zeros(n, bool)
    h, w = gray.shape
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        if y >= HEADER_FRACTION * h:
            continue
        box = slice(max(y - 4, 0), min(y + bh + 4, h)), slice(max(x - 4, 0), min(x + bw + 4, w))
        on_bar = np.median(gray[box][text[box] == 0]) > 10
        keep[i] = on_bar and not sector[box].any()
    header = keep[labels]
    ys = np.nonzero(header.any(axis=1))[0]
    if ys.size == 0:
        return header, (0, 0)
    return header, (max(0, int(ys[0]) - BAND_MARGIN_PX), min(h, int(ys[-1]) + 1 + BAND_MARGIN_PX))


def clean_all(paths: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """{frame: {"grey": cleaned grey frame, "bgr": cleaned BGR frame}} with the fetalkit on sys.path."""
    out = {}
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        out[path.stem] = {"grey": clean_frame(read_gray(path))[0].image, "bgr": clean_frame(bgr)[0].image}
    return out


def clean_elsewhere(src: str, paths: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """:func:`clean_all` run with the fetalkit in ``src`` (a subprocess; frames passed through .npz files)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        cmd = [sys.executable, __file__, "--emit", tmp, "--paths", json.dumps([str(p) for p in paths])]
        subprocess.run(cmd, env=env, check=True)
        return {p.stem: dict(np.load(Path(tmp) / f"{p.stem}.npz")) for p in paths}


def stretched(band: np.ndarray) -> np.ndarray:
    return cv2.normalize(band, None, 0, 255, cv2.NORM_MINMAX)


def ocr(band: np.ndarray) -> str:
    """What tesseract reads in a stretched band (3x upscaled), one line."""
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "band.png"
        cv2.imwrite(str(png), cv2.resize(stretched(band), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC))
        run = subprocess.run(["tesseract", str(png), "stdout", "--psm", "6"], capture_output=True, text=True)
        return " ".join(run.stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of frames (default $FETALKIT_DATA/sononet_examples)")
    parser.add_argument("--baseline-src", default=None, help="src folder of another fetalkit to compare with")
    parser.add_argument("--crop", type=Path, default=None, help="write the stretched header band of one frame here")
    parser.add_argument("--crop-frame", default="BRAIN-CB")
    parser.add_argument("--ocr", action="store_true", help="also run tesseract on the stretched bands")
    parser.add_argument("--emit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.emit:  # the subprocess of --baseline-src: clean and hand the frames back
        for stem, images in clean_all([Path(p) for p in json.loads(args.paths)]).items():
            np.savez(Path(args.emit) / f"{stem}.npz", **images)
        return

    from fetalkit.audit.pixels import band_trace_ratio

    paths = frames(args.data or dataset_dir("sononet_examples"))
    ours = clean_all(paths)
    base = clean_elsewhere(args.baseline_src, paths) if args.baseline_src else None
    if args.ocr and not shutil.which("tesseract"):
        print("tesseract not found: --ocr skipped")
        args.ocr = False

    print("command: python benchmarks/measure_text_trace.py"
          + (f" --baseline-src {args.baseline_src}" if base else ""))
    print(f"{len(paths)} frames; ratio = edge energy of the stretched header band over the header text (+2 px), "
          "cleaned / original")
    try:
        from fetalkit.audit.pixels import residual_text
    except ImportError:  # a fetalkit without the audit package
        residual_text = None
    cols = ["min-max", "CLAHE", "+6 px", "BGR in"] + (["audit"] if residual_text else [])
    head = [f"before {c}" for c in cols] if base else []
    print(f"{'frame':20s} {'band rows':>10s} " + " ".join(f"{c:>16s}" for c in head + cols))
    table = []
    for path in paths:
        gray = read_gray(path)
        sector = detect_sector(gray).mask
        text, rows = header_text(gray, sector)
        row = []
        for images in ([base[path.stem]] if base else []) + [ours[path.stem]]:
            row += [band_trace_ratio(gray, images["grey"], text, rows),
                    band_trace_ratio(gray, images["grey"], text, rows, stretch="clahe"),
                    band_trace_ratio(gray, images["grey"], text, rows, region_px=6),
                    band_trace_ratio(gray, images["bgr"], text, rows)]
            if residual_text:
                row.append(residual_text(gray, images["grey"], sector, ocr=args.ocr).residual)
        table.append(row)
        print(f"{path.stem:20s} {f'{rows[0]}-{rows[1]}':>10s} " + " ".join(f"{v:16.4f}" for v in row))
        if args.ocr:
            band = slice(*rows)
            said = [("original", gray[band])] + ([("before", base[path.stem]["grey"][band])] if base else []) \
                + [("after", ours[path.stem]["grey"][band])]
            print("    tesseract: " + " | ".join(f"{name}: {ocr(b)!r}" for name, b in said))
        if args.crop and path.stem == args.crop_frame:
            band = slice(*rows)
            strips = [gray[band]] + ([base[path.stem]["grey"][band]] if base else []) + [ours[path.stem]["grey"][band]]
            cv2.imwrite(str(args.crop), np.vstack([stretched(s) for s in strips]))
            print(f"    stretched header band (original / {'before / ' if base else ''}after) written to {args.crop}")
    means = np.mean(table, axis=0)
    print(f"{'mean':20s} {'':>10s} " + " ".join(f"{v:16.4f}" for v in means))
    k = len(cols)  # this code's min-max ratio is the first of its columns
    print(f"target: mean min-max ratio <= 0.03: {'ok' if means[-k] <= 0.03 else 'MISSED'} ({means[-k]:.4f}); "
          f"worst {max(r[-k] for r in table):.4f}")


if __name__ == "__main__":
    main()
