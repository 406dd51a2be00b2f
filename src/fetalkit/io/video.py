"""Frame sources and sinks for streams: image, folder of frames, video file, multi-frame DICOM, camera.

A source yields frames as they are stored (gray H x W or colour H x W x 3, uint8) with
their index; ``fps``, ``size_hw`` and ``count`` (None when unknown, e.g. a camera) describe
the stream.  A sink writes frames in order and is finished with ``close()`` (the output
then appears under its final name) or thrown away with ``abort()``.

Video sinks are written to a temporary file and renamed when closed, so an
interrupted run never leaves a file that looks complete; for a failure mid-stream
:meth:`VideoSink.close` keeps the frames written so far (a valid, shorter video).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from fetalkit.errors import InputError
from fetalkit.io.images import IMAGE_SUFFIXES, read_gray, write_image

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
DICOM_SUFFIXES = {".dcm", ".dicom", ""}
FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "MJPG", ".m4v": "mp4v"}


def to_gray(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


@dataclass
class FrameSource:
    kind: str                      # image | folder | video | dicom | camera
    path: str
    fps: float | None
    size_hw: tuple[int, int]
    count: int | None
    _frames: Iterator[np.ndarray]
    names: list[str] | None = None  # folder: the frame file names (kept in the output)
    dicom: object | None = None     # dicom: the DicomFrames record (template for the output)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return enumerate(self._frames)


def _video_frames(cap) -> Iterator[np.ndarray]:
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def open_source(source: str) -> FrameSource:
    """Open an image, a folder of frames, a video file, a multi-frame DICOM, or a camera
    (an integer index) / stream URL.  Errors name the input and what to do."""
    if source.isdigit() or "://" in source:
        cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not cap.isOpened():
            raise InputError(f"{source}: cannot open the camera / stream; check the index or URL")
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        return FrameSource("camera", source, cap.get(cv2.CAP_PROP_FPS) or None, (h, w), None, _video_frames(cap))
    p = Path(source)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{p}: no image frames (png, jpg, bmp, tif) in this folder")
        first = read_gray(files[0])
        return FrameSource("folder", str(p), None, first.shape[:2], len(files),
                           (_read_frame(f) for f in files), names=[f.name for f in files])
    if not p.is_file():
        raise InputError(f"{p}: no such file or folder")
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        image = _read_frame(p)
        return FrameSource("image", str(p), None, image.shape[:2], 1, iter([image]), names=[p.name])
    if suffix in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise InputError(f"{p}: unreadable video (unknown codec or damaged file)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        if count <= 0 or h <= 0 or w <= 0:
            cap.release()
            raise InputError(f"{p}: the video holds no frames")
        return FrameSource("video", str(p), cap.get(cv2.CAP_PROP_FPS) or None, (h, w), count, _video_frames(cap))
    if suffix in DICOM_SUFFIXES:
        from fetalkit.io.dicom import read_dicom
        d = read_dicom(p)
        return FrameSource("dicom", str(p), d.fps, d.frames.shape[1:3], len(d.frames), iter(d.frames), dicom=d)
    raise InputError(f"{p}: unknown input type {suffix!r}; give an image, a folder of frames, a video "
                     f"({', '.join(sorted(VIDEO_SUFFIXES))}), a DICOM file or a camera index")


def _read_frame(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise InputError(f"{path}: unreadable image")
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.dtype != np.uint8:
        raise InputError(f"{path}: {frame.dtype} pixels; fetalkit masks 8-bit frames")
    return frame


class VideoSink:
    """Writes a video with the source's size and fps (MJPG for .avi/.mkv, mp4v for .mp4/.mov)."""

    def __init__(self, path: Path, fps: float, size_hw: tuple[int, int], is_color: bool):
        self.path = path
        suffix = path.suffix.lower()
        if suffix not in FOURCC:
            raise InputError(f"{path}: unknown video type {suffix!r}; use {', '.join(sorted(FOURCC))}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        self.is_color = is_color
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC[suffix]), float(fps),
                                      (size_hw[1], size_hw[0]), isColor=is_color)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise InputError(f"{path}: cannot write a {suffix} video here (codec or permissions)")
        self.n = 0

    def write(self, frame: np.ndarray) -> None:
        if self.is_color and frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        self.writer.write(frame)
        self.n += 1

    def close(self) -> None:
        self.writer.release()
        if self.n:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)


class FolderSink:
    """One image per frame, named as the source frames (or frame_000000.png ...)."""

    def __init__(self, path: Path, names: list[str] | None):
        self.path, self.names, self.n = path, names, 0
        path.mkdir(parents=True, exist_ok=True)

    def write(self, frame: np.ndarray) -> None:
        name = self.names[self.n] if self.names else f"frame_{self.n:06d}.png"
        write_image(self.path / name, frame)
        self.n += 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # frames already written are complete files; nothing half-written remains


class DicomSink:
    """Collects frames and writes one multi-frame DICOM (the source's metadata as template) on close."""

    def __init__(self, path: Path, source: FrameSource):
        self.path, self.source, self.frames = path, source, []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(to_gray(frame))

    def close(self) -> None:
        from fetalkit.io.dicom import write_dicom
        if self.frames:
            d = self.source.dicom
            write_dicom(self.path, np.stack(self.frames), template=d.dataset, fps=d.fps, pixel_mm=d.pixel_mm)

    def abort(self) -> None:
        self.frames.clear()


def open_sink(output: Path, source: FrameSource, is_color: bool):
    """The sink matching the output's form: a video file, a DICOM file, an image, or a folder."""
    try:
        return _open_sink(output, source, is_color)
    except OSError as e:
        raise InputError(f"{output}: cannot write here ({e.strerror or e}); choose another output path") from None


def _open_sink(output: Path, source: FrameSource, is_color: bool):
    suffix = output.suffix.lower()
    if suffix in FOURCC:
        return VideoSink(output, source.fps or 25.0, source.size_hw, is_color)
    if suffix in (".dcm", ".dicom"):
        if source.kind != "dicom":
            raise InputError(f"{output}: a DICOM output needs a DICOM input (its metadata is the template)")
        return DicomSink(output, source)
    if suffix in IMAGE_SUFFIXES:
        if source.count != 1:
            raise InputError(f"{output}: an image output takes one frame; the input has "
                             f"{source.count or 'a stream of'} frames (give a folder or a video name)")
        return FolderSink(output.parent, [output.name])
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder")
    return FolderSink(output, source.names)
