"""File jobs for clinical clean-up: ``fetalkit sector``, ``fetalkit clean``, ``fetalkit deid``, ``fetalkit data dedup``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import atomic_write_bytes, check_min_size, read_colour, read_gray, write_image
from fetalkit.io.inputs import printable
from fetalkit.io.jobs import plan_job, write_csv_rows
from fetalkit.preprocess.sector import detect_sector, draw_sector_overlay
from fetalkit.preprocess.text import TextRemovalParams, remove_overlay

SECTOR_COLUMNS = ["filename", "kind", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "fit_iou", "error"]
CLEAN_COLUMNS = ["filename", "sector", "overlay_px", "inpainted_px", "filled_px", "error"]
# Above any uint8 chroma: remove_overlay's colour cue off (see clean_frame).
_NO_COLOUR_CUE = 256


def sector_files(inputs: list, out_dir: Path, progress=None) -> list[dict]:
    """Detect the imaging sector of each image: ``<stem>_sector.png`` (mask), ``<stem>_overlay.png``, ``sectors.csv/json``."""
    job = plan_job(inputs, out_dir, lambda stem: [f"{stem}_sector.png", f"{stem}_overlay.png"],
                   summary=["sectors.csv", "sectors.json"])
    stems, geometry = job.stems, {}

    def measure(path: Path, row: dict, write) -> None:
        image = read_gray(path)
        s = detect_sector(image, source=str(path))
        x, y, w, h = s.bbox_xywh
        row.update(kind=s.kind, bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h, fit_iou=f"{s.fit_iou:.4f}")
        geometry[printable(path)] = s.as_dict()
        write(out_dir / f"{stems[path]}_sector.png", lambda: s.mask * 255)
        write(out_dir / f"{stems[path]}_overlay.png", lambda: draw_sector_overlay(image, s))

    rows = job.run(SECTOR_COLUMNS, measure, progress)
    write_csv_rows(out_dir / "sectors.csv", rows, SECTOR_COLUMNS)
    atomic_write_bytes(out_dir / "sectors.json", json.dumps(geometry, indent=2).encode())
    return rows


def clean_frame(image: np.ndarray, params: TextRemovalParams = TextRemovalParams()):
    """Remove burned-in text from one frame, confined by its detected sector (whole frame when none is found).

    ``image`` is H x W grey or H x W x 3 BGR; the result has its shape and colour.  The
    sector, the overlay detection and its model see the grey frame (BT.601 luma), so a
    colour frame gets exactly the overlay mask its grey frame gets; only the replacement
    (background fill outside the sector, inpainting inside) is done in colour, so that a
    glyph on a coloured header bar takes the bar's colour, not a grey that still shows it.
    The colour cue of ``remove_overlay`` stays off: it takes colour Doppler flow for
    coloured marks (7 % of the frame's chroma, the Doppler flow, on pydicom's examples_rgb_color.dcm).
    """
    from fetalkit.io.video import to_gray
    gray = to_gray(image)
    try:
        sector_mask = detect_sector(gray).mask
        kind = "found"
    except FetalkitError:
        sector_mask, kind = None, "none (whole frame treated as inside)"
    if image.ndim == 3:
        params = dataclasses.replace(params, colour_min_chroma=_NO_COLOUR_CUE)
    return remove_overlay(image, sector_mask, params), kind


def clean_files(inputs: list, out_dir: Path, params: TextRemovalParams = TextRemovalParams(),
                progress=None) -> list[dict]:
    """Remove burned-in text/annotations: ``<stem>.png`` cleaned (in the input's colour), ``<stem>_removed.png``
    (mask), ``cleaning.csv``."""
    job = plan_job(inputs, out_dir, lambda stem: [f"{stem}.png", f"{stem}_removed.png"], summary=["cleaning.csv"])
    stems = job.stems

    def measure(path: Path, row: dict, write) -> None:
        image = read_colour(path)  # a colour scan gives a colour PNG; the detection sees its grey
        check_min_size(path, image)
        result, kind = clean_frame(image, params)
        row.update(sector=kind, overlay_px=int(result.overlay_mask.sum()), inpainted_px=result.inpainted_px,
                   filled_px=result.filled_px)
        write(out_dir / f"{stems[path]}.png", lambda: result.image)
        write(out_dir / f"{stems[path]}_removed.png", lambda: result.overlay_mask * 255)

    rows = job.run(CLEAN_COLUMNS, measure, progress)
    write_csv_rows(out_dir / "cleaning.csv", rows, CLEAN_COLUMNS)
    return rows


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def deidentify_path(src: Path, dst: Path, uid_map=None, clean: bool = True, shift_dates: bool = False,
                    keep: tuple = ()) -> dict:
    """De-identify a DICOM file, a video or an image.

    DICOM goes through the PS3.15 basic profile and fetalkit's attribute allow-list
    (``shift_dates`` and ``keep`` as in :func:`fetalkit.deid.deidentify_dataset`; images
    and videos carry no attributes, so they ignore them); videos and images are re-encoded from
    their pixels only (no container tags, EXIF or PNG text survive) with burned-in text
    removed. Returns a JSON-serialisable report.  ``dst`` may be an existing folder: the
    output is then written into it under the input's name.  An output that is (or links
    to) the input is refused before anything is written.
    """
    from fetalkit.io.inputs import decode_image, printable, read_bytes, refuse_overwrite
    from fetalkit.io.video import VIDEO_SUFFIXES
    from fetalkit.deid import keep_tags
    keep_tags(keep)  # a mistyped --keep fails before any file is read
    _check_deid_source(src)
    if dst.is_dir():
        dst = dst / src.name
    refuse_overwrite([src], [dst])
    cleaner: Optional[Callable[[np.ndarray], np.ndarray]] = (lambda f: clean_frame(f)[0].image) if clean else None
    if is_dicom(src) or src.suffix.lower() == ".dcm":
        from fetalkit.deid import UidMap, deidentify_file
        report = deidentify_file(src, dst, uid_map if uid_map is not None else UidMap(), clean_pixels=cleaner,
                                 shift_dates=shift_dates, keep=keep)
        return report.as_dict()
    if src.suffix.lower() in VIDEO_SUFFIXES:
        return deidentify_video(src, dst, clean)
    if dst.suffix.lower() not in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
        raise InputError(f"{printable(dst)}: output of an image must be an image file (.png)")
    image = decode_image(read_bytes(src), src, keep_colour=True)  # declared size checked before decoding
    result, kind = clean_frame(image)  # colour kept; the detection sees the grey frame
    write_image(dst, result.image)
    return {"source": printable(src), "output": printable(dst), "kind": "image",
            "metadata": "dropped (pixels re-encoded)", "pixels_cleaned": True,
            "overlay_px_removed": int(result.overlay_mask.sum()), "sector": kind}


def _check_deid_source(src: Path) -> None:
    """One line for an input deid cannot take: a folder (batch takes those), nothing, a pipe."""
    from fetalkit.io.inputs import printable
    if src.is_dir():
        raise InputError(f"{printable(src)}: is a folder; `fetalkit batch deid {printable(src)} --out OUT` "
                         "de-identifies folders")
    if not src.is_file():
        problem = "file not found" if not src.exists() else "not a regular file (a pipe or device)"
        raise InputError(f"{printable(src)}: {problem}; give a DICOM file, a video or an image")


def deidentify_video(src: Path, dst: Path, clean: bool = True) -> dict:
    """Re-encode a video frame by frame with burned-in text removed from every frame.

    The output is written to a temporary file and renamed at the end, so a failure
    leaves nothing behind; only pixels, size and frame rate are carried over (the
    writer copies no container metadata). Colour frames stay colour.  Undecodable
    frames are skipped; when the output holds fewer frames than the input declares
    it is still written (complete and valid) and FramesLost says which were lost.
    """
    from fetalkit.io.inputs import printable
    from fetalkit.io.video import FOURCC, FramesLost, VideoSink, describe_lost, open_source
    if dst.suffix.lower() not in FOURCC:
        raise InputError(f"{printable(dst)}: output of a video must be a video file ({', '.join(sorted(FOURCC))})")
    source = open_source(str(src))
    sink, n_frames, removed_px, no_sector = None, 0, 0, 0
    try:
        for _, frame in source:
            if clean:
                result, kind = clean_frame(frame)
                frame, removed_px = result.image, removed_px + int(result.overlay_mask.sum())
                no_sector += kind != "found"
            if sink is None:
                sink = VideoSink(dst, source.output_fps, source.size_hw, is_color=frame.ndim == 3)
            sink.write(frame)
            n_frames += 1
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is None:
        raise InputError(f"{printable(src)}: the video holds no readable frames")
    sink.close()
    missing = source.missing()
    if missing:
        raise FramesLost(describe_lost(src, source.count, missing, dst))
    return {"source": printable(src), "output": printable(dst), "kind": "video", "frames": n_frames,
            "fps": source.output_fps, "fps_assumed": source.output_fps if source.fps_assumed else None,
            "metadata": "dropped (frames re-encoded, no container tags copied)", "pixels_cleaned": clean,
            "overlay_px_removed": removed_px, "frames_without_sector": no_sector}
