"""File jobs for clinical clean-up: ``fetalkit sector``, ``fetalkit clean``, ``fetalkit deid``, ``fetalkit data dedup``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import atomic_write_bytes, expand_inputs, read_gray, write_image
from fetalkit.io.jobs import process_files, unique_stems, write_csv_rows
from fetalkit.preprocess.sector import detect_sector, draw_sector_overlay
from fetalkit.preprocess.text import TextRemovalParams, remove_overlay

SECTOR_COLUMNS = ["filename", "kind", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "fit_iou", "error"]
CLEAN_COLUMNS = ["filename", "sector", "overlay_px", "inpainted_px", "filled_px", "error"]


def _paths(inputs: list) -> list[Path]:
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError(f"no input images found in {', '.join(map(str, inputs))}")
    return paths


def sector_files(inputs: list, out_dir: Path, progress=None) -> list[dict]:
    """Detect the imaging sector of each image: ``<stem>_sector.png`` (mask), ``<stem>_overlay.png``, ``sectors.csv/json``."""
    paths = _paths(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems, geometry = unique_stems(paths), {}

    def measure(path: Path, row: dict, write) -> None:
        image = read_gray(path)
        s = detect_sector(image, source=str(path))
        x, y, w, h = s.bbox_xywh
        row.update(kind=s.kind, bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h, fit_iou=f"{s.fit_iou:.4f}")
        geometry[str(path)] = s.as_dict()
        write(out_dir / f"{stems[path]}_sector.png", lambda: s.mask * 255)
        write(out_dir / f"{stems[path]}_overlay.png", lambda: draw_sector_overlay(image, s))

    rows = process_files(paths, SECTOR_COLUMNS, measure, progress)
    write_csv_rows(out_dir / "sectors.csv", rows, SECTOR_COLUMNS)
    atomic_write_bytes(out_dir / "sectors.json", json.dumps(geometry, indent=2).encode())
    return rows


def clean_frame(image: np.ndarray, params: TextRemovalParams = TextRemovalParams()):
    """Remove burned-in text from one grey frame, confined by its detected sector (whole frame when none is found)."""
    try:
        sector_mask = detect_sector(image).mask
        kind = "found"
    except FetalkitError:
        sector_mask, kind = None, "none (whole frame treated as inside)"
    return remove_overlay(image, sector_mask, params), kind


def clean_files(inputs: list, out_dir: Path, params: TextRemovalParams = TextRemovalParams(),
                progress=None) -> list[dict]:
    """Remove burned-in text/annotations: ``<stem>.png`` cleaned, ``<stem>_removed.png`` (mask), ``cleaning.csv``."""
    paths = _paths(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)

    def measure(path: Path, row: dict, write) -> None:
        image = read_gray(path)
        result, kind = clean_frame(image, params)
        row.update(sector=kind, overlay_px=int(result.overlay_mask.sum()), inpainted_px=result.inpainted_px,
                   filled_px=result.filled_px)
        write(out_dir / f"{stems[path]}.png", lambda: result.image)
        write(out_dir / f"{stems[path]}_removed.png", lambda: result.overlay_mask * 255)

    rows = process_files(paths, CLEAN_COLUMNS, measure, progress)
    write_csv_rows(out_dir / "cleaning.csv", rows, CLEAN_COLUMNS)
    return rows


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def deidentify_path(src: Path, dst: Path, uid_map=None, clean: bool = True) -> dict:
    """De-identify a DICOM file, a video or an image.

    DICOM goes through the PS3.15 basic profile; videos and images are re-encoded from
    their pixels only (no container tags, EXIF or PNG text survive) with burned-in text
    removed. Returns a JSON-serialisable report.
    """
    from fetalkit.io.video import VIDEO_SUFFIXES
    if src.resolve() == dst.resolve():
        raise InputError(f"{src}: output would overwrite the input; choose another -o path")
    if not src.is_file():
        raise InputError(f"{src}: file not found")
    cleaner: Optional[Callable[[np.ndarray], np.ndarray]] = (lambda f: clean_frame(f)[0].image) if clean else None
    if is_dicom(src) or src.suffix.lower() == ".dcm":
        from fetalkit.deid import UidMap, deidentify_file
        report = deidentify_file(src, dst, uid_map if uid_map is not None else UidMap(), clean_pixels=cleaner)
        return report.as_dict()
    if src.suffix.lower() in VIDEO_SUFFIXES:
        return deidentify_video(src, dst, clean)
    image = read_gray(src)
    result, kind = clean_frame(image)
    if dst.suffix.lower() not in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
        raise InputError(f"{dst}: output of an image must be an image file (.png)")
    write_image(dst, result.image)
    return {"source": str(src), "output": str(dst), "kind": "image", "metadata": "dropped (pixels re-encoded)",
            "pixels_cleaned": True, "overlay_px_removed": int(result.overlay_mask.sum()), "sector": kind}


def deidentify_video(src: Path, dst: Path, clean: bool = True) -> dict:
    """Re-encode a video frame by frame with burned-in text removed from every frame.

    The output is written to a temporary file and renamed at the end, so a failure
    leaves nothing behind; only pixels, size and frame rate are carried over (the
    writer copies no container metadata). Colour frames stay colour.
    """
    from fetalkit.io.video import FOURCC, VideoSink, open_source
    if dst.suffix.lower() not in FOURCC:
        raise InputError(f"{dst}: output of a video must be a video file ({', '.join(sorted(FOURCC))})")
    source = open_source(str(src))
    sink, n_frames, removed_px, no_sector = None, 0, 0, 0
    try:
        for _, frame in source:
            if clean:
                result, kind = clean_frame(frame)
                frame, removed_px = result.image, removed_px + int(result.overlay_mask.sum())
                no_sector += kind != "found"
            if sink is None:
                sink = VideoSink(dst, source.fps or 25.0, source.size_hw, is_color=frame.ndim == 3)
            sink.write(frame)
            n_frames += 1
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    if sink is None:
        raise InputError(f"{src}: the video holds no readable frames")
    sink.close()
    return {"source": str(src), "output": str(dst), "kind": "video", "frames": n_frames, "fps": source.fps,
            "metadata": "dropped (frames re-encoded, no container tags copied)", "pixels_cleaned": clean,
            "overlay_px_removed": removed_px, "frames_without_sector": no_sector}
