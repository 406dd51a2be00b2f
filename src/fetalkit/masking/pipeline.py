"""The masking pipeline: per frame detect -> hold rule -> grow -> render -> write, streamed.

Three stages run at once, joined by bounded queues (memory stays flat over any
length of video): a reader thread decodes and letterboxes each frame for the
network, the calling thread detects and applies the hold rule (onnxruntime releases
the GIL), and a writer thread renders and encodes.  Frames keep their order and none
is dropped: a queue blocks instead.  Frames keep their colour: the detector, the hold
rule and the fail-safe sector see the grey frame (BT.601 luma, ``PreparedFrame.gray``),
the masks are drawn on the frame as read, so a colour input gives a colour output.

Fail-safe: if the detector fails on a frame (an exception, or no result), that frame
is written with the imaging sector (or the whole frame) blanked and the log says so;
a fault never shows an unmasked frame.  A frame that cannot be decoded (a damaged frame
of a video, an unreadable file in a folder) is written as a black frame in its place,
so the frames after it keep their index and timing; the log and the report name it.

Nothing is half-written: the log is written beside its final name and renamed only
when the output is (frames were written); an output path that is an input (links
resolved) is refused before anything is read or written.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fetalkit.detection.region import (Region, RoiOption, crop, detection_region, imaged_region, region_xywh,
                                      to_frame)
from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.inputs import printable, refuse_overwrite
from fetalkit.io.video import FrameSource, open_sink, output_paths, to_gray
from fetalkit.masking import defaults
from fetalkit.masking.hold import HoldRule
from fetalkit.masking.render import blank_frame, grow_boxes, render_masks
from fetalkit.types import ImageDetections

QUEUE_FRAMES = 8
_END = object()


@dataclass
class MaskConfig:
    """Options of ``fetalkit mask`` (defaults documented in the README)."""

    classes: Optional[list[str]] = None     # None: every class of the model
    rule: str = defaults.RULE               # none | frames | ssim (fetalkit.masking.defaults says why)
    hold_frames: int = defaults.HOLD_FRAMES
    ssim_threshold: float = defaults.SSIM_THRESHOLD
    ssim_gain: bool = defaults.SSIM_GAIN
    ssim_imaged_only: bool = defaults.SSIM_IMAGED_ONLY
    max_hold_frames: int = defaults.MAX_HOLD_FRAMES
    style: str = "fill"
    # px if >= 1, else a fraction of the box's longer side; 0.15 covers the detector's box error
    # (chosen on val sequences of `fetalkit bench video`: README, Privacy masking)
    margin: float = 0.15
    min_size_px: float = 0.0
    fail_safe: str = "sector"               # sector | frame: what to blank when detection fails
    conf: Optional[float] = None            # None: the model's operating point
    iou: Optional[float] = None
    # Where the detector looks (fetalkit.detection.region): "auto" (the imaged area, grown
    # over the video), "full" or a fixed (x, y, w, h); README, Privacy masking: wide screens.
    roi: RoiOption = "auto"
    # Frames the domain check puts outside the detector's domain (fetalkit.runtime.domain):
    # "pass" leaves them to the viewer unmasked (the log and the summary say so: the model
    # cannot tell what to hide there, and masking a heart as a head helps no one); "mask"
    # uses the detector's boxes anyway.  Every frame is checked (on the reader thread): a
    # check every few frames would leave the first frames after a cut into the domain
    # unmasked.  A frame counts as outside only when it scores outside and so did most of
    # the last ``domain_window`` frames: the domain is entered at once and left only when
    # the scan has left it, so a blurred or dark frame inside a scan is still masked.
    outside_domain: str = "pass"
    domain_window: int = 15


@dataclass
class FrameResult:
    index: int
    frame: np.ndarray          # what is written (the source frame until ``rendered``)
    record: dict               # the JSON log line
    boxes: Optional[np.ndarray] = None   # rectangles to hide (x1, y1, x2, y2), margin included
    rendered: bool = True


@dataclass
class PreparedFrame:
    """What can be done to a frame before detection, on any thread."""

    gray: np.ndarray
    model_input: object = None   # the detector's ModelInput, when it makes one
    roi: Optional[Region] = None   # (x1, y1, x2, y2) detected in; None: the whole frame
    domain_score: Optional[float] = None  # the domain check's score, when the masker has one


@dataclass
class Masker:
    """The per-frame logic, free of threads and files (tests drive it frame by frame)."""

    detector: object
    cfg: MaskConfig
    sector_mask: Optional[np.ndarray] = None
    domain: Optional[object] = None   # a fetalkit.runtime.domain.DomainCheck, or None: every frame in domain
    rule: HoldRule = field(init=False)
    keep: np.ndarray = field(init=False)
    imaged: Optional[Region] = field(init=False, default=None)  # the imaged area so far (auto)
    outside_frames: int = field(init=False, default=0)   # frames found outside the domain
    recent_outside: deque = field(init=False, default_factory=deque)  # the last frames' own verdicts

    def __post_init__(self):
        if self.cfg.outside_domain not in ("pass", "mask"):
            raise InputError(f"--outside-domain must be pass or mask, got {self.cfg.outside_domain!r}")
        self.rule = HoldRule(self.cfg.rule, self.cfg.hold_frames, self.cfg.ssim_threshold, self.cfg.max_hold_frames,
                             ssim_imaged_only=self.cfg.ssim_imaged_only, ssim_gain=self.cfg.ssim_gain)
        names = self.detector.classes
        wanted = names if self.cfg.classes is None else self.cfg.classes  # []: hide nothing
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise InputError(f"--classes {', '.join(unknown)}: not classes of the model ({', '.join(names)})")
        self.keep = np.array([c in wanted for c in names])

    def _sector(self, gray: np.ndarray) -> Optional[np.ndarray]:
        """The imaging sector to blank on a fault (found once, on the first faulty frame)."""
        if self.sector_mask is None:
            from fetalkit.preprocess.sector import detect_sector
            try:
                self.sector_mask = detect_sector(gray).mask
            except FetalkitError:
                return None  # no sector found: blank the whole frame
        return self.sector_mask if self.sector_mask.shape == gray.shape else None

    def roi_box(self, gray: np.ndarray) -> Optional[Region]:
        """The region (x1, y1, x2, y2) the detector looks at in this frame; None: all of it.
        ``auto``'s imaged area only grows (the union of every frame's so far), so an image
        that widens is followed at once and a dark frame never narrows it.  The reader
        thread calls this once per frame, in order."""
        if self.cfg.roi == "auto":
            self.imaged = imaged_region(gray, self.imaged)
        return detection_region(gray, self.cfg.roi, self.imaged, _input_side(self.detector))

    def prepare(self, frame: np.ndarray) -> PreparedFrame:
        """Gray conversion, the region to detect in, the detector's letterbox and the domain score
        (the reader thread runs it)."""
        gray = to_gray(frame)
        make = getattr(self.detector, "model_input", None)
        roi = self.roi_box(gray)
        try:
            score = float(self.domain.scores([gray])[0]) if self.domain is not None else None
        except Exception:  # a fault here is the classifier's: step() meets it again and blanks the frame
            score = None
        try:
            return PreparedFrame(gray, make(crop(gray, roi)) if make else None, roi, score)
        except Exception:  # a fault here is the detector's: step() meets it again and blanks the frame
            return PreparedFrame(gray, None, roi, score)

    def detect(self, pre: PreparedFrame) -> ImageDetections:
        """The wanted classes' detections, in frame pixels."""
        d = self.detector.detect(pre.model_input if pre.model_input is not None else crop(pre.gray, pre.roi),
                                 self.cfg.conf, self.cfg.iou)
        m = self.keep[d.labels] if len(d.labels) else np.zeros(0, bool)
        return to_frame(ImageDetections(d.boxes_xyxy[m], d.scores[m], d.labels[m]), pre.roi)

    def step(self, index: int, frame: np.ndarray, pre: Optional[PreparedFrame] = None,
             render: bool = True) -> FrameResult:
        """Detect + hold on one frame; returns the rendered frame (``render``: else the
        boxes, for :meth:`render`) and its log record."""
        t0 = time.perf_counter()
        pre = pre or self.prepare(frame)
        try:
            outside = self.outside_domain(pre)
            if outside and self.cfg.outside_domain == "pass":
                dets = ImageDetections.empty()
                self.rule.reset()
            else:
                dets = self.detect(pre)
            error = None
        except Exception as e:  # any inference fault -> the fail-safe frame, never an unmasked one
            dets, error = None, f"{type(e).__name__}: {e}"
        t1 = time.perf_counter()
        names = self.detector.classes
        if dets is None:
            self.rule.reset()
            out = blank_frame(frame, self._sector(pre.gray) if self.cfg.fail_safe == "sector" else None)
            record = {"frame": index, "masks": [], "detections": [], "held": [], "fail_safe": True,
                      "error": error, "ms": {"detect": round((t1 - t0) * 1000, 2)}}
            return FrameResult(index, out, record)
        # SSIM on the frame at the detector's scale: the letterbox has already shrunk it
        resized = getattr(pre.model_input, "resized", None)
        step = self.rule.update(resized if resized is not None else pre.gray, dets)
        t2 = time.perf_counter()
        boxes = grow_boxes(step.masks.boxes_xyxy, pre.gray.shape, self.cfg.margin, self.cfg.min_size_px)
        record = {
            "frame": index,
            "masks": [[int(x1), int(y1), int(x2 - x1), int(y2 - y1)] for x1, y1, x2, y2 in boxes],
            "detections": [{"class": names[int(k)], "score": round(float(s), 4),
                            "box": [round(float(b[0]), 1), round(float(b[1]), 1), round(float(b[2] - b[0]), 1),
                                    round(float(b[3] - b[1]), 1)]}
                           for b, s, k in zip(dets.boxes_xyxy, dets.scores, dets.labels)],
            "held": [{**h, "class": names[h["class"]]} for h in step.held],
            "ms": {"detect": round((t1 - t0) * 1000, 2), "hold": round((t2 - t1) * 1000, 2)},
        }
        roi = region_xywh(pre.roi, pre.gray.shape)
        if roi is not None:
            record["roi"] = roi
        if pre.domain_score is not None:
            record["domain"] = round(pre.domain_score, 3)
            if outside:
                record["outside_domain"] = True
        if step.ssim:
            record["ssim"] = {names[k]: round(v, 4) for k, v in step.ssim.items()}
        result = FrameResult(index, frame, record, boxes, rendered=False)
        return self.render(result) if render else result

    def outside_domain(self, pre: PreparedFrame) -> bool:
        """Whether this frame lies outside the detector's domain: it scores outside, and so did most of
        the last ``domain_window`` frames (counted; call it once per frame, in order)."""
        if self.domain is None:
            return False
        if pre.domain_score is None:  # prepared without the check, or the check failed there: once more here
            pre.domain_score = float(self.domain.scores([pre.gray])[0])
        below = pre.domain_score < self.domain.threshold
        self.recent_outside.append(below)
        while len(self.recent_outside) > max(1, self.cfg.domain_window):
            self.recent_outside.popleft()
        outside = below and 2 * sum(self.recent_outside) > len(self.recent_outside)
        self.outside_frames += int(outside)
        return outside

    def domain_warning(self, frames: int) -> Optional[str]:
        """A line for the user when most frames lay outside the detector's domain, else None."""
        if self.domain is None or not frames or self.outside_frames * 2 <= frames:
            return None
        what = ("left unmasked" if self.cfg.outside_domain == "pass" else "masked anyway, with boxes the model "
                "was not made for")
        return (f"{self.outside_frames} of {frames} frames are outside the detector's domain (it was made for "
                f"{self.domain.made_for}); they were {what}")

    def lost_frame(self, index: int, shape: tuple, reason: Optional[str] = None) -> FrameResult:
        """The frame written where the input's frame could not be decoded: black, never guessed.
        The hold rule starts again after it, as after a detector fault."""
        self.rule.reset()
        record = {"frame": index, "masks": [], "detections": [], "held": [], "fail_safe": True, "lost": True,
                  "error": f"{reason or 'the frame could not be decoded (damaged)'}; written black", "ms": {}}
        return FrameResult(index, np.zeros(shape, np.uint8), record)

    def render(self, result: FrameResult) -> FrameResult:
        """Hide the result's boxes in (a copy of) its frame; stateless, so the writer thread runs it."""
        if not result.rendered:
            t = time.perf_counter()
            result.frame = render_masks(result.frame, result.boxes, self.cfg.style)
            result.rendered = True
            result.record["ms"]["render"] = round((time.perf_counter() - t) * 1000, 2)
        return result


def _input_side(detector) -> int:
    """The network's input size (the longer side it letterboxes to); 0 when unknown."""
    spec = getattr(detector, "spec", None)
    return int(getattr(spec, "size", 0) or 0)


@dataclass
class StreamReport:
    frames: int
    seconds: float
    failed_frame: Optional[int] = None
    error: Optional[str] = None
    latency_ms: list = field(default_factory=list)
    encode_ms: list = field(default_factory=list)
    lost: list = field(default_factory=list)      # frames that could not be decoded, written black in place
    missing: list = field(default_factory=list)   # every frame lost: those, then any the input ends without
    declared: Optional[int] = None                # frames the input declares (None: a camera)
    lost_reasons: list = field(default_factory=list)  # why the lost frames were lost, where known
    fps_assumed: Optional[float] = None           # the rate written when the input states none (DEFAULT_FPS)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def problems(self, name: object, output: object) -> tuple[Optional[str], Optional[str]]:
        """(the error line, a warning line) for the run of ``name`` into ``output``; None when there is none.

        An error when the output has fewer frames than the input declares (cut short or
        damaged: the frames written are still a valid output) or the stream stopped on a
        fault; only a warning when damaged frames were written black in place.
        """
        from fetalkit.io.video import describe_lost, frame_list
        if self.declared and self.missing and self.frames < self.declared:
            return describe_lost(name, self.declared, self.missing, output, blanked=self.lost), None
        if self.error:
            return (f"{printable(name)}: stopped at frame {self.failed_frame} ({self.error}); "
                    f"the {self.frames} frames before it are in {printable(output)}"), None
        if self.lost:
            s = "s" if len(self.lost) > 1 else ""
            text = f"{printable(name)}: frame{s} {frame_list(self.lost)} could not be decoded (damaged)"
            if self.lost_reasons:  # a folder's frame file names itself and says what is wrong with it
                more = len(self.lost) - 1
                text = self.lost_reasons[0] + (f" (and {more} more frame{'s' if more > 1 else ''})" if more else "")
            return None, f"{text}; written black in {printable(output)}"
        return None, None


def run_stream(source: FrameSource, output: Path, masker: Masker, log_path: Optional[Path] = None,
               progress: Optional[Callable[[int], None]] = None, pace_fps: Optional[float] = None) -> StreamReport:
    """Mask every frame of ``source`` into ``output`` with the three overlapped stages.

    A frame that cannot be read or written stops the stream cleanly: every frame
    already written stays valid and the report names the failing frame.  A frame
    that cannot be decoded does not stop it: it is written black and listed in
    ``report.lost``; ``report.missing`` adds the frames a cut video ends without.
    ``pace_fps`` releases frames at that rate, as a live source would (a file is
    otherwise read as fast as possible); latency is measured from a frame's release
    to the end of its write.
    """
    refuse_overwrite(source.input_paths(), output_paths(output, source) + ([log_path] if log_path else []))
    sink = open_sink(output, source, _first_is_color(source))
    q_in: queue.Queue = queue.Queue(QUEUE_FRAMES)
    q_out: queue.Queue = queue.Queue(QUEUE_FRAMES)
    stop = threading.Event()
    errors: dict = {}
    arrival: dict[int, float] = {}
    latencies: list[float] = []
    encode_ms: list[float] = []
    blanked: list[int] = []
    read_to_end = threading.Event()  # the source was read to its end: what it lacks is known
    abandoned = threading.Event()    # this thread was interrupted: no one reads the queues any more
    try:
        log = _TempLog(log_path) if log_path else None
    except BaseException:
        sink.abort()
        raise

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q_in.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        expected, shape = 0, None
        try:
            for i, frame in source:
                if pace_fps:
                    wait = t_start + i / pace_fps - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                for lost in range(expected, i):  # undecodable frames before this one: black in their place
                    blanked.append(lost)
                    arrival[lost] = time.perf_counter()
                    if not put((lost, None, frame.shape)):
                        return
                expected, shape = i + 1, frame.shape
                arrival[i] = time.perf_counter()
                if not put((i, frame, masker.prepare(frame))):
                    return
            for lost in (g for g in source.lost if g >= expected):  # a folder's last files unreadable
                blanked.append(lost)
                arrival[lost] = time.perf_counter()
                expected = lost + 1
                if not put((lost, None, shape)):
                    return
            read_to_end.set()
            if source.kind == "video" and source.count and expected < source.count:
                errors["read"] = (expected, f"the video ends after {expected} of the {source.count} frames its "
                                            "header announces (cut short or damaged)")
        except FetalkitError as e:
            errors["read"] = (len(arrival), str(e))
        except Exception as e:  # a decoder fault mid-stream
            errors["read"] = (len(arrival), f"{type(e).__name__}: {e}")
        finally:
            while not abandoned.is_set():
                with contextlib.suppress(queue.Full):
                    q_in.put(_END, timeout=0.1)
                    break

    def writer():
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                masker.render(item)
                t_w = time.perf_counter()
                sink.write(item.frame)
                encode_ms.append((time.perf_counter() - t_w) * 1000)
                latencies.append((time.perf_counter() - arrival.pop(item.index)) * 1000)
                if log:
                    log.write(json.dumps(item.record) + "\n")
                if progress:
                    progress(item.index + 1)
        except Exception as e:
            errors["write"] = (item.index, f"{type(e).__name__}: {e}")
            stop.set()
            while q_out.get() is not _END:  # drain so the producer never blocks
                pass

    t0 = t_start = time.perf_counter()
    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    try:
        for t in threads:
            t.start()
        while True:
            item = q_in.get()
            if item is _END:
                break
            if stop.is_set():
                continue
            i, frame, pre = item
            q_out.put(masker.lost_frame(i, pre, source.lost_reasons.get(i)) if frame is None
                      else masker.step(i, frame, pre, render=False))
        q_out.put(_END)
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        failed = errors.get("read") or errors.get("write")
        sink.close()  # after a failure too: the frames written before it stay a valid output
    except BaseException:  # an interrupt or a fault of this thread: nothing half-written stays
        stop.set()
        abandoned.set()
        with contextlib.suppress(queue.Full):
            q_out.put(_END, timeout=1)  # the writer finishes what it holds, then stops
        for t in threads:
            t.join(timeout=1)
        sink.abort()
        if log:
            log.discard()
        raise
    if log:
        log.finish(publish=bool(latencies))  # a log only beside an output
    report = StreamReport(len(latencies), seconds, latency_ms=latencies, encode_ms=encode_ms, lost=blanked,
                          missing=source.missing() if read_to_end.is_set() else [], declared=source.count,
                          lost_reasons=[source.lost_reasons[i] for i in blanked if i in source.lost_reasons],
                          fps_assumed=source.output_fps if source.fps_assumed else None)
    if failed:
        report.failed_frame, report.error = failed
    return report


class _TempLog:
    """The per-frame log, written beside its final name and renamed there only by ``finish(publish=True)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp_", suffix=self.path.suffix)
        except OSError as e:
            raise InputError(f"{printable(self.path)}: cannot write the log here ({e.strerror or e}); "
                             "choose another --log path") from None
        self.file = os.fdopen(fd, "w")

    def write(self, text: str) -> None:
        self.file.write(text)

    def finish(self, publish: bool) -> None:
        self.file.close()
        if publish:
            os.chmod(self.tmp, 0o644)  # mkstemp creates 0600; the log is an ordinary output
            os.replace(self.tmp, self.path)
        else:
            self.discard()

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _first_is_color(source: FrameSource) -> bool:
    """Peek at the first decodable frame (re-inserted, with any undecodable ones before it) to choose
    a colour or gray output."""
    it = iter(source._frames)
    before = []
    for first in it:
        if first is not None:
            break
        before.append(first)
    else:
        raise InputError(f"{printable(source.path)}: the input holds no readable frames")
    source._frames = itertools.chain(before, [first], it)
    return first.ndim == 3
