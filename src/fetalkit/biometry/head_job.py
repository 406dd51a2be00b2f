"""``fetalkit biometry head``: many inputs -> measurements.csv + overlays, never stopping on one bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional


from fetalkit.biometry.head import HeadBiometry
from fetalkit.biometry.overlay import draw_head_overlay
from fetalkit.datasets.hc18 import read_pixel_csv
from fetalkit.errors import InputError
from fetalkit.io.images import check_image_content, read_still
from fetalkit.io.inputs import printable
from fetalkit.io.jobs import plan_job, write_csv_rows
from fetalkit.runtime.domain import DomainCheck
from fetalkit.types import HeadMeasurement

COLUMNS = ["filename", "hc_mm", "bpd_mm", "ofd_mm", "center_x_px", "center_y_px", "semi_axis_a_px",
           "semi_axis_b_px", "angle_deg", "hc_px", "bpd_px", "ofd_px", "pixel_mm", "units", "plane_score", "plane_ok",
           "error"]


def pixel_size_for(path: Path, pixel_mm: Optional[float], table: Optional[dict],
                   file_pixel_mm: Optional[float] = None) -> Optional[float]:
    """The pixel size of one input: the csv's row, else --pixel-mm, else what the file says (DICOM)."""
    if table is not None:
        if path.name not in table:
            raise InputError(f"{printable(path)}: no row for {printable(path.name)} in the pixel-size csv; "
                             "add one or use --pixel-mm")
        pixel_mm = table[path.name][0]
    if pixel_mm is None:
        pixel_mm = file_pixel_mm
    if pixel_mm is not None and not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise InputError(f"{printable(path)}: pixel size must be a positive number of mm, got {pixel_mm}")
    return pixel_mm


def _fmt(v: Optional[float], nd: int = 3) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def head_row(m: HeadMeasurement) -> dict:
    """The csv columns of one measurement (``COLUMNS`` less filename and error), as text."""
    e, px = m.ellipse, m.pixel_mm
    scale = px if px is not None else 1.0
    row = dict(center_x_px=_fmt(e.center_x_px, 2), center_y_px=_fmt(e.center_y_px, 2),
               semi_axis_a_px=_fmt(e.semi_axis_a_px, 2), semi_axis_b_px=_fmt(e.semi_axis_b_px, 2),
               angle_deg=_fmt(e.angle_deg, 2), units=m.units, pixel_mm=_fmt(px, 6),
               hc_px=_fmt(m.hc / scale, 2), bpd_px=_fmt(m.bpd / scale, 2), ofd_px=_fmt(m.ofd / scale, 2),
               hc_mm="", bpd_mm="", ofd_mm="")
    if px is not None:
        row.update(hc_mm=_fmt(m.hc, 2), bpd_mm=_fmt(m.bpd, 2), ofd_mm=_fmt(m.ofd, 2))
    return row


class HeadMeasurer:
    """One image -> its measurements.csv columns: the domain check, then the segmentation and the
    ellipse.  The one per-image path of ``fetalkit biometry head``, ``fetalkit batch biometry-head``
    and the web page.

    An image outside the model's domain (not a fetal head plane, by the view classifier,
    :mod:`fetalkit.runtime.domain`) raises :class:`OutOfDomainError` naming the file, the
    score and ``--force``; with ``force`` it is measured and its ``plane_ok`` stays false.
    """

    def __init__(self, model=None, threads: int = 2):
        self.biometry = HeadBiometry(model, threads=threads)
        self.domain = DomainCheck.for_card(self.biometry.model.card, threads=1)

    def measure(self, path: Path, image, pixel_mm: Optional[float], force: bool = False
                ) -> tuple[dict, HeadMeasurement]:
        fields = {} if self.domain is None else self.domain.require(path, image, "not a fetal head plane", "HC", force)
        m, _ = self.biometry.measure(image, pixel_mm)
        return {**head_row(m), **fields}, m


def measure_files(inputs: list[str | Path], out_dir: Path, pixel_mm: Optional[float] = None,
                  pixel_csv: Optional[Path] = None, model=None, overlays: bool = True, threads: int = 2,
                  progress: Optional[Callable[[int, int], None]] = None, force: bool = False) -> list[dict]:
    """Measure every input; returns one row per input (``error`` filled on failure).

    ``measurements.csv`` and the overlays are written atomically; overlays are
    encoded on a background thread while the next image is measured.  ``model`` may
    be a :class:`HeadMeasurer` (the page keeps one loaded).
    """
    if pixel_mm is not None and pixel_csv is not None:
        raise InputError("give either --pixel-mm or --pixel-csv, not both")
    table = read_pixel_csv(pixel_csv) if pixel_csv is not None else None
    if pixel_mm is not None and not (pixel_mm > 0 and math.isfinite(pixel_mm)):
        raise InputError(f"--pixel-mm must be a positive number of mm, got {pixel_mm}")
    job = plan_job(inputs, out_dir, lambda stem: [f"{stem}_overlay.png"] if overlays else [],
                   summary=["measurements.csv"])
    measurer = model if isinstance(model, HeadMeasurer) else HeadMeasurer(model, threads=threads)

    def measure(path: Path, row: dict, write) -> None:
        image, file_pixel_mm = read_still(path)
        check_image_content(path, image)
        px = pixel_size_for(path, pixel_mm, table, file_pixel_mm)
        fields, m = measurer.measure(path, image, px, force)
        row.update(fields)
        if overlays:
            write(out_dir / f"{job.stems[path]}_overlay.png", lambda: draw_head_overlay(image, m))

    rows = job.run(COLUMNS, measure, progress)
    write_csv_rows(out_dir / "measurements.csv", rows, COLUMNS)
    return rows
