"""Intrapartum biometry at run time: PS + FH segmentation (ONNX) and the angle of progression."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from fetalkit.biometry.aop import AngleOfProgression, angle_of_progression
from fetalkit.errors import FetalkitError
from fetalkit.io.images import check_image_content, read_gray
from fetalkit.io.inputs import printable
from fetalkit.io.jobs import plan_job, write_csv_rows
from fetalkit.runtime.domain import DomainCheck

PS_COLOUR = (60, 200, 255)   # BGR: amber
FH_COLOUR = (255, 160, 60)   # BGR: blue


def labels_from_probabilities(probs: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """C x h x w class probabilities -> H x W uint8 label map at the original size (bilinear, then argmax)."""
    h, w = shape_hw
    if probs.shape[1:] == (h, w):
        return probs.argmax(0).astype(np.uint8)
    up = np.stack([cv2.resize(p.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for p in probs])
    return up.argmax(0).astype(np.uint8)


class LabourBiometry:
    """Segment the pubic symphysis (1) and fetal head (2) with an ONNX model and measure the AoP."""

    def __init__(self, model=None, threads: int = 2, caudal_end: str = "right", opening: str = "counterclockwise"):
        from fetalkit.runtime.registry import load_model
        self.model = model if hasattr(model, "predict") else load_model(model, "psfhs-seg", threads=threads)
        self.caudal_end, self.opening = caudal_end, opening

    def segment(self, image: np.ndarray) -> np.ndarray:
        return labels_from_probabilities(self.model.predict([image])[0], image.shape[:2])

    def measure(self, image: np.ndarray) -> tuple[AngleOfProgression, np.ndarray]:
        labels = self.segment(image)
        return angle_of_progression(labels, caudal_end=self.caudal_end, opening=self.opening), labels


def draw_aop_overlay(image: np.ndarray, labels: np.ndarray, aop: Optional[AngleOfProgression]) -> np.ndarray:
    """BGR picture: PS and FH outlines, the PS axis, the tangent line and the angle."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for label, colour in ((1, PS_COLOUR), (2, FH_COLOUR)):
        contours, _ = cv2.findContours((labels == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 1, cv2.LINE_AA)
    if aop is not None:
        s = 16
        pt = lambda xy: (int(round(xy[0] * s)), int(round(xy[1] * s)))  # noqa: E731
        caudal, cranial, tangent = np.array(aop.ps_caudal_xy), np.array(aop.ps_cranial_xy), np.array(aop.tangent_xy)
        far = caudal + 1.4 * (tangent - caudal)  # extend the tangent line past the skull
        cv2.line(canvas, pt(cranial), pt(caudal), (80, 220, 80), 1, cv2.LINE_AA, 4)
        cv2.line(canvas, pt(caudal), pt(far), (80, 220, 80), 1, cv2.LINE_AA, 4)
        a0 = math.degrees(math.atan2(*(cranial - caudal)[::-1]))
        a1 = math.degrees(math.atan2(*(tangent - caudal)[::-1]))
        r = int(0.12 * max(image.shape) * s)
        start, end = (a1, a0) if aop.opening == "counterclockwise" else (a0, a1)
        while end < start:
            end += 360
        cv2.ellipse(canvas, pt(caudal), (r, r), 0, start, end, (80, 220, 80), 1, cv2.LINE_AA, 4)
        scale = max(0.4, image.shape[1] / 700)
        cv2.putText(canvas, f"AoP {aop.aop_deg:.1f} deg", (6, int(22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (80, 220, 80), 1, cv2.LINE_AA)
    return canvas


AOP_COLUMNS = ["filename", "aop_deg", "ps_caudal_x_px", "ps_caudal_y_px", "ps_cranial_x_px", "ps_cranial_y_px",
               "tangent_x_px", "tangent_y_px", "plane_score", "plane_ok", "error"]


def aop_row(aop: AngleOfProgression) -> dict:
    """The csv columns of one angle (``AOP_COLUMNS`` less filename and error), as text."""
    return dict(aop_deg=f"{aop.aop_deg:.2f}",
                ps_caudal_x_px=f"{aop.ps_caudal_xy[0]:.2f}", ps_caudal_y_px=f"{aop.ps_caudal_xy[1]:.2f}",
                ps_cranial_x_px=f"{aop.ps_cranial_xy[0]:.2f}", ps_cranial_y_px=f"{aop.ps_cranial_xy[1]:.2f}",
                tangent_x_px=f"{aop.tangent_xy[0]:.2f}", tangent_y_px=f"{aop.tangent_xy[1]:.2f}")


class AopMeasurer:
    """One image -> its measurements.csv columns, label map and angle: the domain check, the
    segmentation, the angle.  The one per-image path of ``fetalkit biometry aop``, ``fetalkit
    batch aop`` and the web page.

    An image that is not an intrapartum transperineal scan (by the view classifier,
    :mod:`fetalkit.runtime.domain`) raises :class:`OutOfDomainError` naming the file, the
    score and ``--force``; with ``force`` it is measured and its ``plane_ok`` stays false.
    """

    def __init__(self, model=None, threads: int = 2):
        self.labour = LabourBiometry(model, threads=threads)
        self.domain = DomainCheck.for_card(self.labour.model.card, threads=1)

    def measure(self, path: Path, image: np.ndarray, caudal_end: str = "right", opening: str = "counterclockwise",
                force: bool = False) -> tuple[dict, np.ndarray, Optional[AngleOfProgression], Optional[str]]:
        """(columns, label map, angle or None, why there is no angle or None)."""
        fields = {} if self.domain is None else self.domain.require(
            path, image, "not an intrapartum transperineal scan", "AoP", force)
        labels = self.labour.segment(image)
        try:
            aop = angle_of_progression(labels, caudal_end=caudal_end, opening=opening)
        except FetalkitError as err:
            return fields, labels, None, f"{printable(path)}: {printable(err)}"
        return {**aop_row(aop), **fields}, labels, aop, None


def measure_aop_files(inputs: list, out_dir: Path, model=None, threads: int = 2, overlays: bool = True,
                      caudal_end: str = "right", opening: str = "counterclockwise",
                      progress: Optional[Callable[[int, int], None]] = None, force: bool = False) -> list[dict]:
    """``fetalkit biometry aop``: label maps in ``masks/``, overlays, one csv row per input (errors included).

    The label map is written even when the angle cannot be measured, so a user can
    see which structure the model missed.
    """
    job = plan_job(inputs, out_dir, lambda stem: [f"masks/{stem}.png"] + ([f"{stem}_overlay.png"] if overlays else []),
                   summary=["measurements.csv"])
    measurer = model if isinstance(model, AopMeasurer) else AopMeasurer(model, threads)
    stems = job.stems

    def measure(path: Path, row: dict, write) -> None:
        image = read_gray(path)
        check_image_content(path, image)
        fields, labels, aop, error = measurer.measure(path, image, caudal_end, opening, force)
        row.update(fields)
        if error:
            row["error"] = error
        write(out_dir / "masks" / f"{stems[path]}.png", lambda: labels)
        if overlays:
            write(out_dir / f"{stems[path]}_overlay.png", lambda: draw_aop_overlay(image, labels, aop))

    rows = job.run(AOP_COLUMNS, measure, progress)
    write_csv_rows(out_dir / "measurements.csv", rows, AOP_COLUMNS)
    return rows
