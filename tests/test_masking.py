"""The masking pipeline: scripted detector, generated videos; fail-safe, log, frame count / fps, bad inputs."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fetalkit.io.video import open_source
from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
from fetalkit.types import ImageDetections


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


class ScriptedDetector:
    """Finds a box on frames listed in ``hits``; raises on frames listed in ``faults``."""

    classes = ["pubic_symphysis", "fetal_head"]

    def __init__(self, hits=(), faults=(), box=(20, 30, 50, 60)):
        self.hits, self.faults, self.box, self.n = set(hits), set(faults), box, 0

    def detect(self, gray, conf=None, iou=None):
        i, self.n = self.n, self.n + 1
        if i in self.faults:
            raise RuntimeError("inference failed")
        if i in self.hits:
            return ImageDetections(np.array([self.box], np.float32), np.array([0.9], np.float32), np.array([0]))
        return ImageDetections.empty()


def make_video(path, n=12, fps=10.0, size=(96, 128)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]), isColor=False)
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, size, dtype=np.uint8)
    for _ in range(n):
        w.write(base)
    w.release()
    return path


def test_masker_hold_and_fail_safe_frames():
    det = ScriptedDetector(hits={0, 3}, faults={2})
    m = Masker(det, MaskConfig(rule="frames", hold_frames=1, margin=0, fail_safe="frame"))
    frame = np.full((100, 100), 150, np.uint8)
    steps = [m.step(i, frame) for i in range(5)]
    assert steps[0].record["masks"] == [[20, 30, 30, 30]] and (steps[0].frame[30:60, 20:50] == 0).all()
    assert steps[1].record["held"][0]["rule"] == "BBoxHold" and steps[1].record["masks"] == [[20, 30, 30, 30]]
    assert steps[2].record["fail_safe"] and "inference failed" in steps[2].record["error"]
    assert (steps[2].frame == 0).all()                                  # a fault never shows the frame
    assert steps[3].record["masks"] and steps[4].record["held"]         # detection resumes, hold again
    assert (frame == 150).all()                                         # input untouched


def test_masker_filters_classes():
    with pytest.raises(Exception, match="not classes of the model"):
        Masker(ScriptedDetector(), MaskConfig(classes=["genital"]))
    m = Masker(ScriptedDetector(hits={0}), MaskConfig(classes=["fetal_head"], rule="none"))
    assert m.step(0, np.zeros((80, 80), np.uint8)).record["masks"] == []


def test_stream_keeps_frame_count_fps_size_and_writes_log(tmp_path):
    src = make_video(tmp_path / "in.avi")
    det = ScriptedDetector(hits=set(range(0, 12, 3)))
    report = run_stream(open_source(str(src)), tmp_path / "out.avi", Masker(det, MaskConfig(rule="frames")),
                        tmp_path / "log.jsonl")
    assert report.frames == 12 and report.error is None
    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (128, 96)
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(12))               # in order, none dropped
    assert {"frame", "masks", "detections", "held", "ms"} <= set(lines[0])
    assert all(r["masks"] for r in lines)                               # hits every 3rd frame, hold 10


def test_stream_with_the_real_detector_matches_frame_by_frame(tmp_path):
    """Threads change nothing: letterbox on the reader, render on the writer, same masks and pixels."""
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.registry import resolve_model
    (tmp_path / "in").mkdir()
    frames = []
    for i in range(6):  # wide frames (speckle beside a dark band), as scanners write them
        f = np.zeros((200, 360), np.uint8)
        f[:, :200] = np.random.default_rng(i).integers(0, 255, (200, 200), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), f)
        frames.append(f)
    det = OnnxDetector(resolve_model(None, "detector"), threads=1)
    cfg = MaskConfig(conf=0.01)  # a low threshold, so boxes appear on noise
    run_stream(open_source(str(tmp_path / "in")), tmp_path / "out", Masker(det, cfg), tmp_path / "log.jsonl")
    seq = Masker(det, cfg)
    logged = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    for i, f in enumerate(frames):
        ref = seq.step(i, f)
        assert logged[i]["masks"] == ref.record["masks"] and ref.record["masks"]
        assert np.array_equal(cv2.imread(str(tmp_path / "out" / f"{i}.png"), cv2.IMREAD_GRAYSCALE), ref.frame)


def test_folder_in_folder_out_keeps_names(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / "in" / name), np.full((40, 50), 99, np.uint8))
    run_stream(open_source(str(tmp_path / "in")), tmp_path / "out", Masker(ScriptedDetector(hits={1}), MaskConfig()))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_mask_cli_bad_inputs(tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF0000AVI garbage")
    res = fetalkit("mask", bad, "-o", tmp_path / "o.avi")
    assert res.returncode == 1 and "broken.avi" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o.avi").exists()
    (tmp_path / "empty").mkdir()
    res = fetalkit("mask", tmp_path / "empty", "-o", tmp_path / "o2")
    assert res.returncode == 1 and "no image frames" in res.stderr
    res = fetalkit("mask", make_video(tmp_path / "v.avi"), "-o", tmp_path / "o.avi", "--model",
                   "src/fetalkit/models/head-unet-mnv2.onnx")
    assert res.returncode == 1 and "needs a detector" in res.stderr


def test_unwritable_output_is_refused_before_any_frame(tmp_path):
    from fetalkit.errors import InputError
    from fetalkit.io.video import open_sink
    src = open_source(str(make_video(tmp_path / "v.avi")))
    (tmp_path / "a_file").write_text("x")  # a file where the output folder should be
    for target in (tmp_path / "a_file" / "o.avi", tmp_path / "a_file" / "frames"):
        with pytest.raises(InputError, match="cannot write here"):
            open_sink(target, src, False)


def test_truncated_video_stops_cleanly_and_names_the_frame(tmp_path):
    src = make_video(tmp_path / "v.avi", n=30)
    data = src.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])  # header still announces 30 frames
    res = fetalkit("mask", cut, "-o", tmp_path / "o.avi", "--model", "none.onnx")
    assert res.returncode == 1 and "none.onnx" in res.stderr  # the model is checked before any output
    report = run_stream(open_source(str(cut)), tmp_path / "o.avi", Masker(ScriptedDetector(), MaskConfig()))
    assert report.error and "of the 30 frames" in report.error and 0 < report.failed_frame < 30
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == report.failed_frame  # the frames before it, valid


class ShapeRecorder(ScriptedDetector):
    """A scripted detector that also records the size of every image it is given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.shapes = []

    def detect(self, gray, conf=None, iou=None):
        self.shapes.append(gray.shape)
        return super().detect(gray, conf, iou)


def wide_screen(width=300, seed=0):
    """Speckle 100 x 120 in the middle of a black 120 x ``width`` screen, a thin line at its edge."""
    f = np.zeros((120, width), np.uint8)
    f[10:110, 90:210] = np.random.default_rng(seed).integers(30, 255, (100, 120), dtype=np.uint8)
    f[:, 3] = 255
    return f


def test_roi_auto_detects_in_the_imaged_area_and_maps_boxes_back():
    det = ShapeRecorder(hits={0}, box=(5, 6, 25, 36))
    m = Masker(det, MaskConfig(rule="none", margin=0))
    step = m.step(0, wide_screen())
    x, y, w, h = step.record["roi"]
    assert x <= 90 and x + w >= 210 and y <= 10 and y + h >= 110     # the speckle is all inside
    assert x > 3 and w < 170                                          # the edge line and black sides are not
    assert det.shapes[0] == (h, w)
    assert step.record["masks"] == [[5 + x, 6 + y, 20, 30]]           # frame pixels


def test_roi_auto_only_grows():
    m = Masker(ShapeRecorder(), MaskConfig(rule="none"))
    first = m.step(0, wide_screen()).record["roi"]
    wider = wide_screen()
    wider[10:110, 40:90] = 120                                        # the image widens to the left
    grown = m.step(1, wider).record["roi"]
    assert grown[0] < first[0] and grown[0] + grown[2] >= first[0] + first[2]
    assert m.step(2, np.zeros((120, 300), np.uint8)).record["roi"] == grown   # a black frame keeps it
    assert m.step(3, wide_screen()).record["roi"] == grown


def test_roi_full_and_fixed():
    det = ShapeRecorder()
    Masker(det, MaskConfig(roi="full")).step(0, wide_screen())
    assert det.shapes[-1] == (120, 300)
    step = Masker(det, MaskConfig(roi=(280, 100, 50, 50))).step(0, wide_screen())
    assert det.shapes[-1] == (20, 20) and step.record["roi"] == [280, 100, 20, 20]   # clipped to the frame


def test_parse_roi():
    from fetalkit.errors import InputError
    from fetalkit.detection.region import parse_roi
    assert parse_roi("auto") == "auto" and parse_roi("full") == "full"
    assert parse_roi("240,40,640,570") == (240, 40, 640, 570)
    for bad in ("centre", "1,2,3", "1,2,0,4", "-1,0,5,5"):
        with pytest.raises(InputError, match="--roi"):
            parse_roi(bad)


def test_mask_cli_roi(tmp_path):
    src = make_video(tmp_path / "v.avi", n=3)
    res = fetalkit("mask", src, "-o", tmp_path / "o.avi", "--roi", "10,10")
    assert res.returncode == 1 and "--roi" in res.stderr and "X,Y,W,H" in res.stderr
    assert not (tmp_path / "o.avi").exists()
    res = fetalkit("mask", src, "-o", tmp_path / "o.avi", "--roi", "10,20,60,50", "--log", tmp_path / "log.jsonl")
    assert res.returncode == 0, res.stderr
    assert [json.loads(x)["roi"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [[10, 20, 60, 50]] * 3


def test_roi_auto_leaves_an_image_that_fills_its_frame_whole():
    """Cropping off a few black rows would only rescale the image: the detector gets the whole frame."""
    det = ShapeRecorder()
    frame = np.zeros((120, 130), np.uint8)
    frame[:100, 5:125] = np.random.default_rng(1).integers(30, 255, (100, 120), dtype=np.uint8)
    step = Masker(det, MaskConfig()).step(0, frame)
    assert det.shapes == [(120, 130)] and "roi" not in step.record


def test_roi_auto_never_magnifies_a_small_imaged_area():
    """A shallow sector is shown to the network at no more than its own scale: the region
    grows to the network's input size around the image (the detector knows that scale)."""
    from types import SimpleNamespace
    frame = np.zeros((200, 300), np.uint8)
    frame[10:60, 100:160] = np.random.default_rng(2).integers(30, 255, (50, 60), dtype=np.uint8)
    for side, shape in ((0, None), (128, (128, 128)), (256, (200, 256))):
        det = ShapeRecorder()
        det.spec = SimpleNamespace(size=side)
        step = Masker(det, MaskConfig()).step(0, frame)
        x, y, w, h = step.record["roi"]
        assert x <= 100 and x + w >= 160 and y <= 10 and y + h >= 60    # the image is inside
        if shape:
            assert det.shapes[0] == shape
        else:
            assert max(det.shapes[0]) < 90                               # no size known: the tight box


class Interrupting(ScriptedDetector):
    """Ctrl-C in the middle of the stream."""

    def detect(self, gray, conf=None, iou=None):
        if self.n == 5:
            raise KeyboardInterrupt
        return super().detect(gray, conf, iou)


def test_no_log_or_output_is_left_half_written_when_mask_fails(tmp_path):
    src = make_video(tmp_path / "v.avi", n=30)
    with pytest.raises(KeyboardInterrupt):
        run_stream(open_source(str(src)), tmp_path / "o.avi", Masker(Interrupting(), MaskConfig()),
                   tmp_path / "log.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.avi"]      # no log, no output, no .tmp_ file
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((40, 50), 99, np.uint8))
    (tmp_path / "out" / "a.png").mkdir(parents=True)                    # the first frame cannot be written
    report = run_stream(open_source(str(tmp_path / "in")), tmp_path / "out", Masker(ScriptedDetector(), MaskConfig()),
                        tmp_path / "log2.jsonl")
    assert report.error and report.frames == 0
    assert not (tmp_path / "log2.jsonl").exists() and not list(tmp_path.glob(".tmp_*"))


def test_mask_cli_dicom_without_frame_timing_uses_the_stated_default(tmp_path):
    from fetalkit.io.dicom import read_dicom, write_dicom
    from fetalkit.synth.hostile import drop_frame_timing
    src = write_dicom(tmp_path / "untimed.dcm", np.random.default_rng(0).integers(0, 255, (3, 96, 128), np.uint8),
                      fps=20.0)
    drop_frame_timing(src)
    res = fetalkit("mask", src, "-o", tmp_path / "masked.dcm", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "no frame timing in" in res.stderr and "untimed.dcm: written at 25 frames/s" in res.stderr
    assert read_dicom(tmp_path / "masked.dcm").fps == pytest.approx(25.0)
