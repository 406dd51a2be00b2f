"""The jobs ``fetalkit batch`` runs, one registry entry each.

A job is built once per worker process (models load once), then called once per
input file: ``run(src, stage, name)`` reads ``src``, writes its outputs into the
empty folder ``stage`` under names made from ``name`` (the input's file name),
and returns the input's row of ``results.csv``.  The runner moves the outputs
into place only when the call returns, so a failed or killed call leaves nothing
behind.  User errors are ``FetalkitError``; the runner records them per input.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from fetalkit.errors import InputError
from fetalkit.io.images import read_still, write_image
from fetalkit.io.inputs import printable
from fetalkit.io.video import FOURCC

FileRun = Callable[[Path, Path, str], dict]


@dataclass(frozen=True)
class BatchOptions:
    """Options of a batch job; everything but ``threads`` and ``uid_key`` must match on a resumed run."""

    model: Optional[str] = None        # bundled name or .onnx path (default: the job's bundled model)
    pixel_mm: Optional[float] = None   # biometry-head: one pixel size for every input
    pixel_csv: Optional[str] = None    # biometry-head: HC18-style csv, looked up by file name
    overlays: bool = True              # biometry-head, aop, detect: write overlay PNGs
    threads: int = 1                   # onnxruntime threads per worker
    uid_key: Optional[str] = None      # deid: the batch's secret UID key (see fetalkit.deid.UidMap)
    shift_dates: bool = False          # deid: shift each patient's dates (keyed by uid_key) instead of removing them
    keep: tuple[str, ...] = ()         # deid: attributes kept as they are (keywords or tags)
    audit: bool = False                # mask, deid: audit every output; one that leaks is not published
    force: bool = False                # biometry-head, aop: measure inputs outside the model's domain too

    def fingerprint(self) -> dict:
        """The options that decide the outputs (a resumed run must repeat them)."""
        d = asdict(self)
        d.pop("threads"), d.pop("uid_key")
        for name in ("shift_dates", "keep", "audit", "force"):  # absent when unused: batches recorded before them still resume
            if not d[name]:
                d.pop(name)
        if "keep" in d:
            d["keep"] = sorted(d["keep"])  # as json.load gives it back
        return d


@dataclass(frozen=True)
class BatchJob:
    name: str
    summary: str
    kinds: frozenset[str]              # input kinds it takes: image, video, dicom
    columns: tuple[str, ...]           # results.csv columns after ``input``
    build: Callable[[BatchOptions], FileRun]


def same_form_name(name: str, kind: str) -> str:
    """Output name of a job that writes the input back in its own form (mask, deid)."""
    suffix = Path(name).suffix.lower()
    if kind == "video" and suffix not in FOURCC:
        return name + ".avi"
    if kind == "dicom" and suffix not in (".dcm", ".dicom"):
        return name + ".dcm"
    return name


def _kind_of(path: Path) -> str:
    from fetalkit.batch.inputs import kind_of
    return kind_of(path) or "other"


# --------------------------------------------------------------------------- mask


def _build_mask(options: BatchOptions) -> FileRun:
    from fetalkit.io.video import open_source
    from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.registry import resolve_model
    from fetalkit.runtime.domain import DomainCheck
    detector = OnnxDetector(resolve_model(options.model, "detector"), threads=options.threads)
    domain = DomainCheck.of(detector)  # as fetalkit mask: frames outside the domain pass unmasked

    def run(src: Path, stage: Path, name: str) -> dict:
        source = open_source(str(src))
        masker = Masker(detector, MaskConfig(), domain=domain)  # a new hold state for every clip
        log = stage / (name + ".masklog.jsonl")
        output = stage / same_form_name(name, source.kind)
        report = run_stream(source, output, masker, log)
        if report.error:
            raise InputError(f"{printable(src)}: stopped at frame {report.failed_frame} ({report.error}); "
                             "nothing written")
        masked = sum(bool(json.loads(line)["masks"]) for line in log.read_text().splitlines())
        row = {"frames": report.frames, "frames_masked": masked, "fps": f"{report.fps:.1f}",
               "frames_outside_domain": masker.outside_frames}
        if options.audit:
            from fetalkit.audit.mask import audit_mask
            row.update(_audited(src, stage, name, audit_mask(src, output, detector=detector)))
        return row
    return run


def _audited(src: Path, stage: Path, name: str, audit) -> dict:
    """Write ``<name>.audit.json`` beside the output; an output that leaks is refused (never published)."""
    from fetalkit.io.images import atomic_write_bytes
    for field_name in ("output", "masked"):  # name the output as published, not its staging path
        if hasattr(audit, field_name):
            setattr(audit, field_name, printable(name))
    if not audit.clean:
        raise InputError(f"{printable(src)}: the output was not published, its audit found a leak: {audit.summary()}")
    atomic_write_bytes(stage / (name + ".audit.json"), json.dumps(audit.as_dict(), indent=1, default=str).encode())
    return {"audit": "clean"}


# --------------------------------------------------------------------------- deid


def _build_deid(options: BatchOptions) -> FileRun:
    from fetalkit.deid import UidMap, keep_tags
    from fetalkit.preprocess.jobs import deidentify_path
    if options.uid_key is None:
        raise ValueError("deid needs the batch's uid_key")
    keep_tags(options.keep)  # a mistyped keep fails once, not once per file
    uids = UidMap(key=options.uid_key)  # same key in every worker: one study keeps one new StudyInstanceUID

    def run(src: Path, stage: Path, name: str) -> dict:
        report = deidentify_path(src, stage / same_form_name(name, _kind_of(src)), uid_map=uids, clean=True,
                                 shift_dates=options.shift_dates, keep=options.keep)
        uids.mapping.clear()  # keyed: nothing to remember, and the map would only grow
        row = {"kind": report.get("kind", "dicom"), "attributes_removed": len(report.get("removed", [])),
               "attributes_emptied": len(report.get("emptied", [])),
               "uids_remapped": report.get("uids_remapped", ""),
               "burned_in_px_removed": report.get("overlay_px_removed", "")}
        if options.audit:
            from fetalkit.audit.deid import audit_deid
            output = stage / same_form_name(name, _kind_of(src))
            row.update(_audited(src, stage, name, audit_deid(src, output)))
        return row
    return run


# --------------------------------------------------------------------------- biometry-head


def _pixel_mm_for(src: Path, options: BatchOptions, table: Optional[dict], from_file: Optional[float]
                  ) -> Optional[float]:
    if options.pixel_mm is not None:
        return options.pixel_mm
    if table is not None:
        if src.name not in table:
            raise InputError(f"{printable(src)}: no row for {printable(src.name)} in {options.pixel_csv}; "
                             "add one or use --pixel-mm")
        return table[src.name][0]
    return from_file


def _build_head(options: BatchOptions) -> FileRun:
    from fetalkit.biometry.head_job import HeadMeasurer
    from fetalkit.biometry.overlay import draw_head_overlay
    from fetalkit.datasets.hc18 import read_pixel_csv
    from fetalkit.io.images import check_image_content
    if options.pixel_mm is not None and not (options.pixel_mm > 0 and math.isfinite(options.pixel_mm)):
        raise InputError(f"--pixel-mm must be a positive number of mm, got {options.pixel_mm}")
    table = read_pixel_csv(Path(options.pixel_csv)) if options.pixel_csv else None
    measurer = HeadMeasurer(options.model, threads=options.threads)

    def run(src: Path, stage: Path, name: str) -> dict:
        image, file_mm = read_still(src)
        check_image_content(src, image)
        row, m = measurer.measure(src, image, _pixel_mm_for(src, options, table, file_mm), options.force)
        if options.overlays:
            write_image(stage / (name + ".overlay.png"), draw_head_overlay(image, m))
        return row
    return run


# --------------------------------------------------------------------------- aop


def _build_aop(options: BatchOptions) -> FileRun:
    from fetalkit.biometry.labour import AopMeasurer, draw_aop_overlay
    from fetalkit.errors import MeasurementError
    from fetalkit.io.images import check_image_content
    measurer = AopMeasurer(options.model, threads=options.threads)

    def run(src: Path, stage: Path, name: str) -> dict:
        image, _ = read_still(src)
        check_image_content(src, image)
        row, labels, aop, error = measurer.measure(src, image, force=options.force)
        if error:
            raise MeasurementError(error)
        write_image(stage / (name + ".labels.png"), labels)
        if options.overlays:
            write_image(stage / (name + ".overlay.png"), draw_aop_overlay(image, labels, aop))
        return row
    return run


# --------------------------------------------------------------------------- detect


def _build_detect(options: BatchOptions) -> FileRun:
    from fetalkit.detection.jobs import draw_detections
    from fetalkit.detection.region import crop, detection_region, to_frame
    from fetalkit.io.images import atomic_write_bytes
    from fetalkit.runtime.detector import OnnxDetector, detections_json
    from fetalkit.runtime.registry import resolve_model
    detector = OnnxDetector(resolve_model(options.model, "detector"), threads=options.threads)

    def run(src: Path, stage: Path, name: str) -> dict:
        image, _ = read_still(src)
        region = detection_region(image, "auto", min_side_px=detector.spec.size)
        dets = to_frame(detector.detect(crop(image, region)), region)
        records = detections_json(name, dets, detector.classes)
        atomic_write_bytes(stage / (name + ".detections.json"), json.dumps(records, indent=1).encode())
        if options.overlays:
            write_image(stage / (name + ".overlay.png"), draw_detections(image, dets, detector.classes))
        found = sorted({r["category"] for r in records})
        return {"n_detections": len(records), "categories": " ".join(found)}
    return run


_HEAD_COLUMNS = ("hc_mm", "bpd_mm", "ofd_mm", "hc_px", "bpd_px", "ofd_px", "pixel_mm", "units", "center_x_px",
                 "center_y_px", "semi_axis_a_px", "semi_axis_b_px", "angle_deg", "plane_score", "plane_ok")
_AOP_COLUMNS = ("aop_deg", "ps_caudal_x_px", "ps_caudal_y_px", "ps_cranial_x_px", "ps_cranial_y_px",
                "tangent_x_px", "tangent_y_px", "plane_score", "plane_ok")
_ALL = frozenset({"image", "video", "dicom"})
_STILLS = frozenset({"image", "dicom"})

JOBS: dict[str, BatchJob] = {j.name: j for j in (
    BatchJob("mask", "hide regions of interest in every frame (as fetalkit mask, default rule)", _ALL,
             ("frames", "frames_masked", "fps", "frames_outside_domain", "audit"), _build_mask),
    BatchJob("deid", "de-identify DICOM (PS3.15 basic profile, one UID key per batch), videos and images, "
             "burned-in text removed", _ALL,
             ("kind", "attributes_removed", "attributes_emptied", "uids_remapped", "burned_in_px_removed", "audit"),
             _build_deid),
    BatchJob("biometry-head", "HC / BPD / OFD of still images and single-frame DICOM", _STILLS, _HEAD_COLUMNS,
             _build_head),
    BatchJob("aop", "angle of progression of transperineal stills", _STILLS, _AOP_COLUMNS, _build_aop),
    BatchJob("detect", "detections per still (COCO-style json per input)", _STILLS,
             ("n_detections", "categories"), _build_detect),
)}

__all__ = ["BatchJob", "BatchOptions", "JOBS", "same_form_name"]
