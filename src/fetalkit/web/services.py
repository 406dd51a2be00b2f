"""What each page action runs: the same fetalkit functions as the CLI, on the request's folder.

* head biometry: :func:`fetalkit.biometry.head_job.measure_files` (``fetalkit biometry head``),
* angle of progression: :func:`fetalkit.biometry.labour.measure_aop_files` (``fetalkit biometry aop``),
* masking: :class:`~fetalkit.masking.pipeline.Masker` + :func:`~fetalkit.masking.pipeline.run_stream`
  with :class:`~fetalkit.masking.pipeline.MaskConfig` defaults (``fetalkit mask``),
* de-identification: :func:`fetalkit.deid.deidentify_file` with the text remover of
  ``fetalkit clean`` / ``fetalkit deid``, counted by :class:`~fetalkit.preprocess.burned_in.BurnedInTally`.

So a number the page shows is the number the CLI writes for the same file.  Nothing
here knows about HTTP: errors are FetalkitError (the app maps them to 4xx).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import typing
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from fetalkit.biometry.aop import CaudalEnd, Opening
from fetalkit.errors import InputError, RequestError
from fetalkit.io.images import check_image_content, read_still, write_image
from fetalkit.io.inputs import IMAGE_SUFFIXES, check_pixels, declared_image_size
from fetalkit.io.jobs import write_csv_rows
from fetalkit.io.video import FOURCC, FrameSource, open_source
from fetalkit.masking.pipeline import MaskConfig
from fetalkit.masking.render import STYLES
from fetalkit.web.jobs import Job
from fetalkit.web.upload import Upload

CAUDAL_ENDS = typing.get_args(CaudalEnd)
OPENINGS = typing.get_args(Opening)


class Models:
    """The bundled models, loaded once on first use and shared by every request (onnxruntime
    sessions may run from several threads at once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}

    def _get(self, key: str, load: Callable[[], object]):
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
            return self._loaded[key]

    def head(self):
        from fetalkit.biometry.head_job import HeadMeasurer
        return self._get("head-seg", lambda: HeadMeasurer(None, threads=2))   # as biometry head

    def psfhs(self):
        from fetalkit.biometry.labour import AopMeasurer
        return self._get("psfhs-seg", lambda: AopMeasurer(None, threads=2))  # as biometry aop

    def detector(self):
        from fetalkit.runtime.detector import OnnxDetector
        from fetalkit.runtime.registry import resolve_model
        return self._get("detector", lambda: OnnxDetector(resolve_model(None, "detector"), threads=1))  # as mask

    def detector_domain(self):
        """The detector's domain check (as ``fetalkit mask``), or None."""
        from fetalkit.runtime.domain import DomainCheck
        detector = self.detector()  # outside the lock: _get holds it while loading
        return self._get("detector-domain", lambda: DomainCheck.of(detector))


def png_data_url(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise InputError("cannot encode the picture as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


# Pixel sizes fetalkit measures with, in mm: scanners export 0.02 to 1 mm; outside this range a
# typo (1e308, 0.0000001) would give an infinite or meaningless HC rather than an error.
PIXEL_MM_RANGE = (0.001, 10.0)


def parse_number(text: Optional[str], field: str, low: float, high: float, unit: str = "",
                 example: str = "") -> Optional[float]:
    """A typed number in [low, high], None when left empty; RequestError naming the field and the
    range for text, nan, inf or anything outside it."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        hint = f" (e.g. {example})" if example else ""
        raise RequestError(f"{field} must be a number from {low:g} to {high:g}{unit}{hint}, got {text[:40]!r}")
    return value


def parse_pixel_mm(text: Optional[str]) -> Optional[float]:
    """The typed pixel size (mm), None when left empty; RequestError when it is not a plausible one."""
    return parse_number(text, "pixel_mm (pixel size)", *PIXEL_MM_RANGE, unit=" mm", example="0.12")


def check_file_pixel_mm(upload: Upload, pixel_mm: Optional[float]) -> Optional[float]:
    """A DICOM's own pixel size, refused when outside PIXEL_MM_RANGE (the page can type one instead)."""
    low, high = PIXEL_MM_RANGE
    if pixel_mm is not None and not (math.isfinite(pixel_mm) and low <= pixel_mm <= high):
        raise InputError(f"{upload.name}: the file's pixel size {pixel_mm:g} mm is outside {low:g} to {high:g} mm; "
                         "type the pixel size (pixel_mm) to measure it")
    return pixel_mm


# --------------------------------------------------------------------------- decoded size


def check_image_size(data: bytes, name: str) -> None:
    """Refuse an image before decoding when its header declares more pixels than fetalkit decodes
    (HTTP 413: a 1 MB PNG can declare 30000 x 30000), or when no size can be read from it (400):
    the decoder would otherwise allocate whatever the file declares."""
    try:
        size = declared_image_size(data, name) if data else None
        if size is not None:
            check_pixels(name, *size)
    except InputError as e:
        raise RequestError(str(e), 413) from None
    if size is None:
        raise InputError(f"{name}: not a readable image (expected PNG/JPEG/BMP/TIFF); check the file or "
                         "export it again")


def check_upload_size(upload: Upload) -> None:
    """An uploaded image's declared size, before anything decodes it (DICOMs: read_dicom checks its
    Rows x Columns x frames; videos: probe_video checks the frame size once opened)."""
    if upload.path.suffix.lower() in IMAGE_SUFFIXES:
        check_image_size(upload.path.read_bytes(), upload.name)


def _measurable(upload: Upload, work_dir: Path) -> tuple[Path, np.ndarray, Optional[float]]:
    """The image file to measure (a DICOM's frame written as PNG), its pixels and the file's pixel size."""
    check_upload_size(upload)
    image, file_pixel_mm = read_still(upload.path)
    check_image_content(upload.path, image)
    if upload.path.suffix.lower() in IMAGE_SUFFIXES:
        return upload.path, image, file_pixel_mm
    frame = write_image(work_dir / "frame" / f"{upload.path.stem}.png", image)
    return frame, image, file_pixel_mm


def _table(rows: list[dict], columns: list[str], upload: Upload, work_dir: Path) -> tuple[dict, str]:
    """The row (its filename the user's) and the csv the CLI would write for it."""
    row = {**rows[0], "filename": upload.name}
    csv_text = write_csv_rows(work_dir / "table.csv", [row], columns).read_text()
    return row, csv_text


def _overlay(out_dir: Path) -> Optional[str]:
    found = sorted(out_dir.glob("*_overlay.png"))
    return png_data_url(cv2.imread(str(found[0]), cv2.IMREAD_COLOR)) if found else None


def _refused_overlay(row: dict, image: np.ndarray) -> Optional[str]:
    """The image marked as not measured, with the reason, when the domain check refused it."""
    if row.get("plane_ok") == "false" and row.get("error"):
        from fetalkit.biometry.overlay import draw_refusal
        return png_data_url(draw_refusal(image, row["error"].split(": ", 1)[-1].replace("--force", "'measure anyway'")))
    return None


def measure_head(models: Models, upload: Upload, work_dir: Path, pixel_mm: Optional[float],
                 force: bool = False) -> dict:
    """HC / BPD / OFD of one image or single-frame DICOM, as ``fetalkit biometry head`` measures it.

    The pixel size is the typed one, else the DICOM's, else none (lengths in pixels).
    An image the domain check refuses comes back marked, with the reason; ``force``
    (the page's "measure anyway") measures it.
    """
    from fetalkit.biometry.head_job import COLUMNS, measure_files
    path, image, file_pixel_mm = _measurable(upload, work_dir)
    if pixel_mm is None:
        file_pixel_mm = check_file_pixel_mm(upload, file_pixel_mm)
    px = pixel_mm if pixel_mm is not None else file_pixel_mm
    source = "typed" if pixel_mm is not None else ("dicom" if file_pixel_mm is not None else None)
    rows = measure_files([path], work_dir / "out", pixel_mm=px, model=models.head(), force=force)
    row, csv_text = _table(rows, COLUMNS, upload, work_dir)
    return {"file": upload.name, "task": "head", "pixel_mm_source": source, "row": row, "columns": COLUMNS,
            "csv": csv_text, "overlay": _overlay(work_dir / "out") or _refused_overlay(row, image),
            "refused": row.get("plane_ok") == "false" and bool(row["error"]), "error": row["error"] or None}


def measure_aop(models: Models, upload: Upload, work_dir: Path, caudal_end: str, opening: str,
                force: bool = False) -> dict:
    """The angle of progression of one transperineal image, as ``fetalkit biometry aop`` measures it
    (the overlay is drawn even when the angle cannot be, to show which structure was missed)."""
    from fetalkit.biometry.labour import AOP_COLUMNS, measure_aop_files
    if caudal_end not in CAUDAL_ENDS:
        raise RequestError(f"caudal end must be one of {', '.join(CAUDAL_ENDS)}, got {caudal_end!r}")
    if opening not in OPENINGS:
        raise RequestError(f"opening must be one of {', '.join(OPENINGS)}, got {opening!r}")
    path, image, _ = _measurable(upload, work_dir)
    rows = measure_aop_files([path], work_dir / "out", model=models.psfhs(), caudal_end=caudal_end,
                             opening=opening, force=force)
    row, csv_text = _table(rows, AOP_COLUMNS, upload, work_dir)
    return {"file": upload.name, "task": "aop", "row": row, "columns": AOP_COLUMNS, "csv": csv_text,
            "overlay": _overlay(work_dir / "out") or _refused_overlay(row, image),
            "refused": row.get("plane_ok") == "false" and bool(row["error"]), "error": row["error"] or None}


# --------------------------------------------------------------------------- masking


def mask_config(classes: Optional[str], style: Optional[str], detector_classes: list[str]) -> MaskConfig:
    """``fetalkit mask``'s defaults with the page's two choices: classes to hide (comma-separated) and style."""
    if not isinstance(classes, (str, type(None))) or not isinstance(style, (str, type(None))):
        raise RequestError("classes and style must be text (classes comma-separated, e.g. \"fetal_head\")")
    # no field: every class; a field with no class (none ticked): nothing is hidden, and the result says so
    wanted = None if classes is None else [c for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted or [] if c not in detector_classes]
    if unknown:
        raise RequestError(f"classes {', '.join(unknown)}: not classes of the detector ({', '.join(detector_classes)})")
    style = style or "fill"
    if style not in STYLES:
        raise RequestError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    return MaskConfig(classes=wanted, style=style)


def probe_video(upload: Upload) -> dict:
    """Frames, rate and size of an uploaded video (InputError naming it when it cannot be read;
    RequestError 413 when its frames are larger than fetalkit decodes)."""
    check_upload_size(upload)
    source = open_source(str(upload.path))
    try:
        check_pixels(upload.name, *source.size_hw)
    except InputError as e:
        raise RequestError(str(e), 413) from None
    return {"kind": source.kind, "frames": source.count, "fps": source.fps,
            "height": source.size_hw[0], "width": source.size_hw[1]}


def masked_name(upload: Upload, source: FrameSource) -> str:
    """``<stem>_masked`` in the input's own form: the same video type, .dcm for DICOM, the image's type."""
    suffix = upload.path.suffix.lower()
    if source.kind == "dicom":
        suffix = ".dcm"
    elif source.kind == "video" and suffix not in FOURCC:
        suffix = ".avi"
    return f"{upload.path.stem}_masked{suffix}"


def _preview(output: Path, records: list[dict]) -> tuple[Optional[int], Optional[str]]:
    """The written frame with the largest masked area (as PNG): what the user downloads, shown."""
    areas = [sum(w * h for _, _, w, h in r["masks"]) for r in records]
    if not areas or max(areas) == 0:
        return None, None
    best = int(np.argmax(areas))
    for i, frame in open_source(str(output)):
        if i == best:
            return best, png_data_url(frame)
    return None, None


def mask_job(models: Models, job: Job, upload: Upload, cfg: MaskConfig) -> None:
    """Mask every frame of the upload into the job's folder, as ``fetalkit mask`` (the job's progress:
    frames written).  The file is opened here, not while the job waits, so a queue of cine DICOMs
    does not hold their frames in memory."""
    from fetalkit.masking.pipeline import Masker, run_stream
    source = open_source(str(upload.path))
    masker = Masker(models.detector(), cfg, domain=models.detector_domain())
    output, log = job.work_dir / masked_name(upload, source), job.work_dir / "frames.jsonl"
    job.progress(0, source.count)
    report = run_stream(source, output, masker, log, progress=job.progress)
    if report.error:
        raise InputError(f"{upload.name}: stopped at frame {report.failed_frame} ({report.error}); "
                         "nothing is returned, check or re-export the file")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    preview_frame, preview = _preview(output, records)
    job.output = output
    job.result = {"frames": report.frames, "fps": round(report.fps, 1), "rule": masker.rule.name,
                  "frames_masked": sum(bool(r["masks"]) for r in records),
                  "frames_held": sum(bool(r["held"]) for r in records),
                  "frames_fail_safe": sum(bool(r.get("fail_safe")) for r in records),
                  "preview_frame": preview_frame, "preview": preview,
                  "preview_masks": records[preview_frame]["masks"] if preview_frame is not None else [],
                  "output_name": output.name,
                  "frames_outside_domain": masker.outside_frames,
                  "notes": [n for n in (masker.domain_warning(report.frames),
                                        "no class chosen: nothing was hidden" if cfg.classes == [] else None) if n]}
    from fetalkit.audit.mask import audit_mask
    job.result["audit"] = verdict(audit_mask(upload.path, output, detector=models.detector()), output.name)


# --------------------------------------------------------------------------- de-identification


def check_dicom(upload: Upload) -> None:
    from fetalkit.preprocess.jobs import is_dicom
    if not is_dicom(upload.path):
        raise InputError(f"{upload.path}: not a DICOM file (no 'DICM' marker); drop a DICOM exported from the "
                         "scanner or PACS (images and videos: fetalkit deid on the command line)")


def deid_job(job: Job, upload: Upload) -> None:
    """De-identify a DICOM as ``fetalkit deid`` does (PS3.15 basic profile, new UIDs, burned-in
    text removed), listing the attributes and the burned-in text regions removed."""
    from fetalkit.deid import UidMap, deidentify_file
    from fetalkit.preprocess.burned_in import BurnedInTally
    tally = BurnedInTally()

    def clean(frame: np.ndarray) -> np.ndarray:
        cleaned = tally.clean(frame)
        job.progress(tally.frames)
        return cleaned

    output = job.work_dir / f"{upload.path.stem}_deid.dcm"
    report = deidentify_file(upload.path, output, UidMap(), clean_pixels=clean).as_dict()
    for server_path in ("source", "output"):
        report.pop(server_path, None)
    job.output = output
    job.result = {**report, "frames": tally.frames, "overlay_px_removed": tally.px,
                  "burned_in_regions": tally.regions(), "output_name": output.name}
    from fetalkit.audit.deid import audit_deid
    job.result["audit"] = verdict(audit_deid(upload.path, output), output.name)


def verdict(audit, output_name: str) -> dict:
    """What the page shows beside a download: the audit's verdict and its one line, naming no server path."""
    for field_name in ("output", "masked"):
        if hasattr(audit, field_name):
            setattr(audit, field_name, output_name)
    return {"clean": audit.clean, "summary": audit.summary()}
