"""``fetalkit biometry head``: many inputs -> measurements.csv + overlays, never stopping on one bad input."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fetalkit.biometry.head import HeadBiometry
from fetalkit.biometry.overlay import draw_head_overlay
from fetalkit.datasets.hc18 import read_pixel_csv
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import expand_inputs, read_gray, write_image

COLUMNS = ["filename", "hc_mm", "bpd_mm", "ofd_mm", "center_x_px", "center_y_px", "semi_axis_a_px",
           "semi_axis_b_px", "angle_deg", "hc_px", "bpd_px", "ofd_px", "pixel_mm", "units", "error"]


def check_image_content(path: Path, image: np.ndarray) -> None:
    if image.size == 0 or min(image.shape[:2]) < 32:
        raise InputError(f"{path}: image is empty or smaller than 32 x 32 pixels")
    if int(image.max()) == int(image.min()):
        raise InputError(f"{path}: image is constant (value {int(image.min())}); nothing to measure")
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi - lo < 16:
        # Near-black or near-flat frames make segmenters hallucinate; refuse them instead.
        raise InputError(f"{path}: image has almost no contrast (grey levels {lo:.0f}..{hi:.0f}); "
                         "check the export/window settings")


def pixel_size_for(path: Path, pixel_mm: Optional[float], table: Optional[dict]) -> Optional[float]:
    if table is not None:
        if path.name not in table:
            raise InputError(f"{path}: no row for {path.name} in the pixel-size csv; add one or use --pixel-mm")
        pixel_mm = table[path.name][0]
    if pixel_mm is not None and not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise InputError(f"{path}: pixel size must be a positive number of mm, got {pixel_mm}")
    return pixel_mm


def _fmt(v: Optional[float], nd: int = 3) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def measure_files(inputs: list[str | Path], out_dir: Path, pixel_mm: Optional[float] = None,
                  pixel_csv: Optional[Path] = None, model=None, overlays: bool = True, threads: int = 2,
                  progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Measure every input; returns one row per input (``error`` filled on failure).

    Overlays are written by a background thread so encoding overlaps inference;
    ``measurements.csv`` is written atomically at the end.
    """
    if pixel_mm is not None and pixel_csv is not None:
        raise InputError("give either --pixel-mm or --pixel-csv, not both")
    table = read_pixel_csv(pixel_csv) if pixel_csv is not None else None
    if pixel_mm is not None and not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise InputError(f"--pixel-mm must be a positive number of mm, got {pixel_mm}")
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError(f"no input images found in {', '.join(map(str, inputs))}")
    biometry = HeadBiometry(model, threads=threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, used_stems = [], set()
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for k, path in enumerate(paths):
            row = {c: "" for c in COLUMNS}
            row["filename"] = str(path)
            try:
                image = read_gray(path)
                check_image_content(path, image)
                px = pixel_size_for(path, pixel_mm, table)
                m, _ = biometry.measure(image, px)
                e = m.ellipse
                row.update(center_x_px=_fmt(e.center_x_px, 2), center_y_px=_fmt(e.center_y_px, 2),
                           semi_axis_a_px=_fmt(e.semi_axis_a_px, 2), semi_axis_b_px=_fmt(e.semi_axis_b_px, 2),
                           angle_deg=_fmt(e.angle_deg, 2), units=m.units, pixel_mm=_fmt(px, 6))
                scale = px if px is not None else 1.0
                row.update(hc_px=_fmt(m.hc / scale, 2), bpd_px=_fmt(m.bpd / scale, 2), ofd_px=_fmt(m.ofd / scale, 2))
                if px is not None:
                    row.update(hc_mm=_fmt(m.hc, 2), bpd_mm=_fmt(m.bpd, 2), ofd_mm=_fmt(m.ofd, 2))
                if overlays:
                    stem = path.stem
                    while stem in used_stems:
                        stem += "_"
                    used_stems.add(stem)
                    pending.append(writer.submit(lambda im=image, mm=m, s=stem: write_image(
                        out_dir / f"{s}_overlay.png", draw_head_overlay(im, mm))))
            except FetalkitError as err:
                row["error"] = str(err).replace("\n", " ")
            rows.append(row)
            if progress:
                progress(k + 1, len(paths))
        for f in pending:
            f.result()
    write_rows_csv(out_dir / "measurements.csv", rows, COLUMNS)
    return rows


def write_rows_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """Write a csv atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
