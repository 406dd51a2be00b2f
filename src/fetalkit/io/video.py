"""Frame sources and sinks for streams: image, folder of frames, video file, multi-frame DICOM, camera.

A source yields frames as they are stored (gray H x W or colour H x W x 3, uint8) with
their index; ``fps``, ``size_hw`` and ``count`` (None when unknown, e.g. a camera) describe
the stream.  A sink writes frames in order and is finished with ``close()`` (the output
then appears under its final name) or thrown away with ``abort()``.

Video sinks are written to a temporary file and renamed when closed, so an
interrupted run never leaves a file that looks complete; for a failure mid-stream
:meth:`VideoSink.close` keeps the frames written so far (a valid, shorter video).

Hostile input: a frame that cannot be decoded (a damaged frame of a video, an
unreadable file in a folder of frames) is skipped and its index recorded in
``FrameSource.lost``; the stream goes on.  Names that are not UTF-8 reach OpenCV
through a temporary link with an ASCII name (OpenCV crashes on them otherwise).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

# FFmpeg's own log lines ("[mjpeg @ 0x...] No JPEG data found") would appear beside
# fetalkit's one line per problem; lost frames are reported by fetalkit instead.
# Read when OpenCV first opens a video, so it is set before any capture exists.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fetalkit.errors import InputError  # noqa: E402
from fetalkit.io.images import IMAGE_SUFFIXES, write_image  # noqa: E402
from fetalkit.io.inputs import (check_pixels, decode_image, list_inputs, printable, quiet_stderr,  # noqa: E402
                                read_bytes)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
DICOM_SUFFIXES = {".dcm", ".dicom", ""}
FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".mkv": "MJPG", ".m4v": "mp4v"}
DEFAULT_FPS = 25.0        # written when a clip states no frame rate (a DICOM without FrameTime, a video at 0)
MAX_CONSECUTIVE_LOST = 100  # undecodable frames in a row after which a video is taken to end there


class FramesLost(InputError):
    """The output holds fewer frames than the input declares; the output written is complete and valid."""


def describe_lost(name: object, declared: int, missing: list[int], output: object, blanked: list[int] = ()) -> str:
    """The one line for a clip cut short or damaged: which frames were lost, where the readable ones are."""
    text = (f"{printable(name)}: {len(missing)} of {declared} frames could not be decoded (cut short or damaged; "
            f"frame{'s' if len(missing) > 1 else ''} {frame_list(missing)}); the {declared - len(missing)} "
            f"readable frames are in {printable(output)}")
    if blanked:
        text += f", with frame{'s' if len(blanked) > 1 else ''} {frame_list(blanked)} written black in place"
    return text


def frame_list(indices: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (frames named in a message, runs collapsed)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@contextlib.contextmanager
def cv2_path(path: str | os.PathLike) -> Iterator[str]:
    """A name OpenCV can open ``path`` by, for the duration of the block.

    OpenCV encodes names as UTF-8 and crashes (SIGSEGV) on a name that is not, so such a
    name is reached through a symlink with an ASCII name in a fresh temporary folder,
    removed when the block ends (an opened capture or writer keeps its file open).
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    folder = tempfile.mkdtemp(prefix="fetalkit-")
    link = os.path.join(folder, "link" + (Path(text).suffix if Path(text).suffix.isascii() else ""))
    try:
        os.symlink(os.path.abspath(text), link)
        yield link
    finally:
        with contextlib.suppress(OSError):
            os.unlink(link)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def to_gray(frame: np.ndarray) -> np.ndarray:
    """What models see: the frame itself when grey, else BT.601 luma of the BGR frame."""
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
    fps_assumed: bool = False       # no frame rate stated: outputs are written at DEFAULT_FPS
    lost: list[int] = field(default_factory=list)  # frames skipped as undecodable, filled while iterating
    lost_reasons: dict[int, str] = field(default_factory=dict)  # why, where known (a folder's frame files)
    read: int = 0                   # frames decoded so far

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frame) of every decodable frame; an undecodable one is skipped and its index kept in ``lost``.

        A lost frame at the end of a video (cut short) is not yielded as lost: only
        ``count`` (declared) minus ``read`` says how many are missing there.
        """
        for i, frame in enumerate(self._frames):
            if frame is None:
                self.lost.append(i)
                continue
            self.read += 1
            yield i, frame

    @property
    def output_fps(self) -> float:
        """The frame rate outputs are written at (DEFAULT_FPS when the source states none)."""
        return self.fps or DEFAULT_FPS

    def missing(self) -> list[int]:
        """Every frame lost so far: the skipped ones, then those the declared count has beyond the last read."""
        seen = self.read + len(self.lost)
        return self.lost + list(range(seen, self.count or 0))

    def input_paths(self) -> list[str]:
        """The files and folder this source reads (what an output must never replace)."""
        if self.kind == "folder" and self.names:
            return [self.path] + [os.path.join(self.path, n) for n in self.names]
        return [self.path]


def _video_frames(cap, count: Optional[int]) -> Iterator[Optional[np.ndarray]]:
    """Frames of a capture; None for each undecodable frame that is followed by a decodable one.

    OpenCV's read() fails on a damaged frame and goes on with the next one, so a
    failure is only an end when the declared count is reached, after
    MAX_CONSECUTIVE_LOST failures in a row, or at once for a camera (no count).
    """
    misses = attempts = 0
    try:
        while True:
            ok, frame = cap.read()
            attempts += 1
            if ok:
                yield from [None] * misses
                misses = 0
                yield frame
                continue
            misses += 1
            if not count or attempts >= count or misses >= MAX_CONSECUTIVE_LOST:
                return
    finally:
        cap.release()


def _open_capture(p: Path):
    """A cv2.VideoCapture on ``p`` (any name), with what OpenCV's AVI parser prints silenced."""
    with cv2_path(p) as name, quiet_stderr():
        return cv2.VideoCapture(name)


def _folder_frames(files: list[Path], reasons: Optional[dict] = None) -> Iterator[Optional[np.ndarray]]:
    """The frames of a folder in order; None for a file that cannot be decoded (its error kept in ``reasons``)."""
    for i, f in enumerate(files):
        try:
            yield _read_frame(f)
        except InputError as e:
            if reasons is not None:
                reasons[i] = str(e)
            yield None


def open_source(source: str) -> FrameSource:
    """Open an image, a folder of frames, a video file, a multi-frame DICOM, or a camera
    (an integer index) / stream URL.  Errors name the input and what to do."""
    if source.isdigit() or "://" in source:
        if printable(source) != source:  # OpenCV would crash on it; a URL has no such bytes
            raise InputError(f"{printable(source)}: not a valid stream URL (bytes that are not UTF-8)")
        with quiet_stderr():
            cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not cap.isOpened():
            raise InputError(f"{source}: cannot open the camera / stream; check the index or URL")
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        return FrameSource("camera", source, cap.get(cv2.CAP_PROP_FPS) or None, (h, w), None,
                           _video_frames(cap, None))
    p = Path(source)
    if p.is_dir():
        return _open_folder(p)
    if not p.is_file():
        raise InputError(f"{printable(p)}: no such file or folder")
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        image = _read_frame(p)
        return FrameSource("image", str(p), None, image.shape[:2], 1, iter([image]), names=[p.name])
    if suffix in VIDEO_SUFFIXES:
        return _open_video(p)
    if suffix in DICOM_SUFFIXES:
        from fetalkit.io.dicom import read_dicom
        d = read_dicom(p, colour=True)  # frames as stored: a colour clip's output stays colour
        n = len(d.frames)
        return FrameSource("dicom", str(p), d.fps, d.frames.shape[1:3], n, iter(d.frames), dicom=d,
                           fps_assumed=n > 1 and not d.fps)
    raise InputError(f"{printable(p)}: unknown input type {suffix!r}; give an image, a folder of frames, a video "
                     f"({', '.join(sorted(VIDEO_SUFFIXES))}), a DICOM file or a camera index")


def _open_folder(p: Path) -> FrameSource:
    """A folder of frames in name order; its size is the first decodable frame's."""
    files, skipped = list_inputs([p], IMAGE_SUFFIXES)
    if skipped:  # a sub-folder or FIFO named like a frame: a frame would silently go missing
        where, err = skipped[0]
        reason = str(err).removeprefix(f"{printable(where)}: ").removesuffix("; skipped")
        raise InputError(f"{printable(where)}: {reason} among the frames; move it out of the folder "
                         f"({len(skipped)} such entries)")
    if not files:
        raise InputError(f"{printable(p)}: no image frames (png, jpg, bmp, tif) in this folder")
    frames = _folder_frames(files)
    first = next((f for f in frames if f is not None), None)
    if first is None:
        _read_frame(files[0])  # raises the first file's own error
        raise InputError(f"{printable(p)}: no readable image frames in this folder")
    # Decoded frames are not kept: the folder is read again from the start for the stream.
    reasons: dict[int, str] = {}
    return FrameSource("folder", str(p), None, first.shape[:2], len(files), _folder_frames(files, reasons),
                       names=[f.name for f in files], lost_reasons=reasons)


def _open_video(p: Path) -> FrameSource:
    """A video file, its declared frame size checked before any frame is decoded."""
    cap = _open_capture(p)
    if not cap.isOpened():
        raise InputError(f"{printable(p)}: unreadable video (unknown codec or damaged file)")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    if count <= 0 or h <= 0 or w <= 0:
        cap.release()
        raise InputError(f"{printable(p)}: the video holds no frames")
    try:
        check_pixels(p, h, w)
    except InputError:
        cap.release()
        raise
    fps = cap.get(cv2.CAP_PROP_FPS) or None
    return FrameSource("video", str(p), fps, (h, w), count, _video_frames(cap, count), fps_assumed=fps is None)


def _read_frame(path: Path) -> np.ndarray:
    """One frame file as stored (grey or BGR uint8), size checked before decoding; InputError naming it."""
    return decode_image(read_bytes(path), path, keep_colour=True)


class VideoSink:
    """Writes a video with the source's size and fps (MJPG for .avi/.mkv, mp4v for .mp4/.mov)."""

    def __init__(self, path: Path, fps: float, size_hw: tuple[int, int], is_color: bool):
        self.path = path
        suffix = path.suffix.lower()
        if suffix not in FOURCC:
            raise InputError(f"{printable(path)}: unknown video type {suffix!r}; use {', '.join(sorted(FOURCC))}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        self.is_color = is_color
        with cv2_path(self.tmp) as name, quiet_stderr():
            self.writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*FOURCC[suffix]), float(fps),
                                          (size_hw[1], size_hw[0]), isColor=is_color)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise InputError(f"{printable(path)}: cannot write a {suffix} video here (codec or permissions)")
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
    """Collects frames and writes one multi-frame DICOM (the source's metadata as template) on close.

    Frames are written in the source's colour (RGB for a colour source, MONOCHROME2 for a
    grey one) and with the source's Burned In Annotation (YES when it states none): what
    passes through a sink (masking) hides regions, it does not remove burned-in text.
    """

    def __init__(self, path: Path, source: FrameSource):
        self.path, self.source, self.frames = path, source, []
        self.colour = source.dicom.frames.ndim == 4

    def write(self, frame: np.ndarray) -> None:
        if self.colour and frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        self.frames.append(frame if self.colour else to_gray(frame))

    def close(self) -> None:
        from fetalkit.io.dicom import write_dicom
        if self.frames:
            d = self.source.dicom
            write_dicom(self.path, np.stack(self.frames), template=d.dataset, fps=self.source.output_fps,
                        pixel_mm=d.pixel_mm, burned_in_annotation=None)

    def abort(self) -> None:
        self.frames.clear()


def open_sink(output: Path, source: FrameSource, is_color: bool):
    """The sink matching the output's form: a video file, a DICOM file, an image, or a folder."""
    try:
        return _open_sink(output, source, is_color)
    except OSError as e:
        raise InputError(f"{printable(output)}: cannot write here ({e.strerror or e}); "
                         "choose another output path") from None


def _open_sink(output: Path, source: FrameSource, is_color: bool):
    suffix = output.suffix.lower()
    if suffix in FOURCC:
        return VideoSink(output, source.output_fps, source.size_hw, is_color)
    if suffix in (".dcm", ".dicom"):
        if source.kind != "dicom":
            raise InputError(f"{printable(output)}: a DICOM output needs a DICOM input (its metadata is the template)")
        return DicomSink(output, source)
    if suffix in IMAGE_SUFFIXES:
        if source.count != 1:
            raise InputError(f"{printable(output)}: an image output takes one frame; the input has "
                             f"{source.count or 'a stream of'} frames (give a folder or a video name)")
        return FolderSink(output.parent, [output.name])
    if output.exists() and not output.is_dir():
        raise InputError(f"{printable(output)}: exists and is not a folder")
    return FolderSink(output, source.names)


def output_paths(output: Path, source: FrameSource) -> list[Path]:
    """Every path the sink for ``output`` may replace (a folder output: the folder and its frame files)."""
    if output.suffix.lower() in FOURCC or output.suffix.lower() in (".dcm", ".dicom", *IMAGE_SUFFIXES):
        return [output]
    names = source.names or []
    return [output] + [output / n for n in names]
