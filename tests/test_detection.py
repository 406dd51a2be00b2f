"""Detection data, metrics and runtime: label formats, boxes, COCO AP / F1 / FPPI, NMS, YOLO ONNX layouts."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fetalkit.detection.boxes import DetSample, DetSet, box_iou, boxes_from_label_map, square_boxes
from fetalkit.detection.formats import read_coco, read_cvat, read_detection_set, read_yolo, write_detection_set
from fetalkit.errors import DataError
from fetalkit.evaluation.detection import coco_ap, label_metrics, sweep_operating_points
from fetalkit.types import ImageDetections
from fetalkit.io.images import write_image
from fetalkit.runtime.detector import letterbox, nms_per_class


def fetalkit(*args):
    return subprocess.run([sys.executable, "-m", "fetalkit.cli", *map(str, args)], capture_output=True, text=True)


def small_set(tmp_path, n=4):
    """n images 60 x 80 with one or two boxes each, the last one a negative."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = rng.integers(0, 60, (60, 80), dtype=np.uint8)
        if i < n - 1:
            boxes = np.array([[10 + i, 12, 30 + i, 40], [45, 5, 70, 20]], np.float32)[: 1 + i % 2]
            labels = np.array([0, 1], np.int64)[: len(boxes)]
        else:
            boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        for (x1, y1, x2, y2) in boxes.astype(int):
            image[y1:y2, x1:x2] = 220
        path = write_image(tmp_path / "src" / f"im{i}.png", image)
        samples.append(DetSample(f"im{i}.png", path, 80, 60, boxes, labels, group=f"g{i}"))
    return DetSet(["ps", "fh"], samples)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_formats_round_trip_keep_boxes_negatives_and_images(tmp_path, fmt):
    ds = small_set(tmp_path)
    out = write_detection_set(ds, tmp_path / fmt, fmt)
    back = read_detection_set(out)
    assert back.categories == ["ps", "fh"]
    assert [s.file_name for s in back.samples] == [s.file_name for s in ds.samples]
    for a, b in zip(ds.samples, back.samples):
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, atol=0.01)
        assert a.labels.tolist() == b.labels.tolist()
        assert b.image_path.is_file()
    assert back.counts()["negative_images"] == 1
    if fmt == "coco":  # the split group travels with the COCO image record
        assert [s.group for s in back.samples] == [s.group for s in ds.samples]


def test_write_refuses_existing_folder_and_leaves_nothing_half_written(tmp_path):
    ds = small_set(tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        write_detection_set(ds, tmp_path / "taken", "coco")
    ds.samples[2].image_path = tmp_path / "src" / "gone.png"  # fails after two images were copied
    with pytest.raises(DataError, match="gone.png: image of im2.png not found"):
        write_detection_set(ds, tmp_path / "new", "coco")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp_")]


def test_yolo_errors_name_file_and_line(tmp_path):
    ds = small_set(tmp_path)
    out = write_detection_set(ds, tmp_path / "y", "yolo")
    label = out / "labels" / "im0.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"im0.txt:2: class 7 has no name"):
        read_yolo(out)
    label.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"im0.txt:1: expected 'class cx cy w h'"):
        read_yolo(out)
    label.write_text("0 0.95 0.5 0.3 0.2\n")  # reaches x = 1.1 * width
    with pytest.raises(DataError, match=r"im0.txt:1: box .* outside the 80x60 image"):
        read_yolo(out)


def test_coco_errors(tmp_path):
    ds = small_set(tmp_path)
    out = write_detection_set(ds, tmp_path / "c", "coco")
    doc = json.loads((out / "annotations.json").read_text())
    doc["annotations"][0]["category_id"] = 9
    (out / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="category_id 9 is not in 'categories'"):
        read_coco(out / "annotations.json")
    (out / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable COCO json"):
        read_coco(out / "annotations.json")


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><task><labels><label><name>head</name></label><label><name>arm</name></label></labels></task></meta>
<image id="0" name="frame_000000.png" width="672" height="389">
  <box label="arm" occluded="0" xtl="167.41" ytl="188.51" xbr="228.50" ybr="278.10"></box>
  <box label="head" occluded="0" xtl="10" ytl="20" xbr="110" ybr="120"></box>
  <tag label="Probe"><attribute name="orientation">h</attribute></tag>
</image>
<image id="1" name="frame_000001.png" width="672" height="389">
  <tag label="Orientation"><attribute name="Pose">hdvb</attribute></tag>
</image>
</annotations>"""


def test_cvat_boxes_and_tags(tmp_path):
    (tmp_path / "stream_a").mkdir()
    path = tmp_path / "stream_a" / "annotations.xml"
    path.write_text(CVAT)
    ds = read_cvat(path)
    assert ds.categories == ["head", "arm"]
    s0, s1 = ds.samples
    np.testing.assert_allclose(s0.boxes_xyxy[0], [167.41, 188.51, 228.50, 278.10], atol=1e-3)
    assert s0.labels.tolist() == [1, 0]
    assert s0.tags == {"Probe": {"orientation": "h"}} and s1.tags == {"Orientation": {"Pose": "hdvb"}}
    assert s1.is_negative and s0.group == "stream_a"
    path.write_text(CVAT.replace('xbr="110"', 'xbr="800"'))
    with pytest.raises(DataError, match="frame_000000.png.*outside the 672x389 image"):
        read_cvat(path)


def test_fpus23_cvat_files_parse(tmp_path):
    from tests.conftest import need_dataset
    root = need_dataset("fpus23")
    ds = read_detection_set(root / "annotation")
    assert set(ds.categories) == {"head", "arm", "abdomen", "legs"}
    assert len(ds.samples) == 15113 and sum(len(s.labels) for s in ds.samples) == 20230
    assert all("Probe" in s.tags for s in ds.samples[:100])


def test_boxes_from_labels_and_square():
    label = np.zeros((50, 60), np.uint8)
    label[10:20, 5:9] = 1
    label[30:45, 20:50] = 2
    boxes, labels = boxes_from_label_map(label, {1: 0, 2: 1})
    assert boxes.tolist() == [[5, 10, 9, 20], [20, 30, 50, 45]] and labels.tolist() == [0, 1]
    sq = square_boxes(boxes, 60, 50)
    w, h = sq[:, 2] - sq[:, 0], sq[:, 3] - sq[:, 1]
    assert np.allclose(w, h) and w.tolist() == [10, 30]
    assert np.allclose((sq[:, 0] + sq[:, 2]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2)
    edge = square_boxes(np.array([[0, 0, 4, 40]], np.float32), 60, 50)  # shifted to stay inside
    assert edge.tolist() == [[0, 0, 40, 40]]


def test_psfhs_negatives_hold_no_pixel_of_the_removed_class():
    from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL
    from fetalkit.detection.sources import psfhs_negative
    label = np.zeros((100, 100), np.uint8)
    label[10:25, 20:50] = PS_LABEL
    label[30:90, 30:90] = FH_LABEL
    image = np.full((100, 100), 90, np.uint8)
    neg, boxes, labels = psfhs_negative(image, label, PS_LABEL)
    assert (neg[:28] == 0).all() and (neg[28:] == 90).all()
    assert labels.tolist() == [1] and boxes.tolist() == [[30, 30, 90, 90]]
    neg, boxes, labels = psfhs_negative(image, label, FH_LABEL)
    assert (neg[27:] == 0).all() and labels.tolist() == [0] and boxes.tolist() == [[20, 10, 50, 25]]


def dets(rows):
    a = np.asarray(rows, np.float32).reshape(-1, 6)
    return ImageDetections(a[:, :4], a[:, 4], a[:, 5].astype(np.int64))


def test_metrics_on_scripted_detections(tmp_path):
    ds = small_set(tmp_path)  # im0: ps; im1: ps + fh; im2: ps; im3: negative
    perfect = [dets(np.column_stack([s.boxes_xyxy, np.ones(len(s.labels)), s.labels])) for s in ds.samples]
    ap = coco_ap(ds, perfect)
    assert ap["ap_ps"] == pytest.approx(1.0) and ap["ap_fh"] == pytest.approx(1.0)
    noisy = list(perfect)
    noisy[3] = dets([[1, 1, 20, 20, 0.9, 0]])           # a ps false positive on the negative
    noisy[1] = dets([[12, 12, 32, 40, 0.8, 0]])          # fh missed, ps found
    m = label_metrics(ds, noisy, conf=0.5)
    assert (m["precision_ps"], m["recall_ps"]) == (pytest.approx(3 / 4), 1.0)
    assert m["recall_fh"] == 0.0 and m["negatives_fh"] == 3 and m["fppi_fh"] == 0.0
    assert m["negatives_ps"] == 1 and m["fppi_ps"] == 1.0
    assert label_metrics(ds, noisy, conf=0.95)["fppi_ps"] == 0.0  # above its score: gone
    best = sweep_operating_points(ds, {0.5: noisy}, np.array([0.5, 0.85, 0.95]))["best"]
    # conf 0.5: ps F1 6/7, fh 0; 0.85 loses the 0.8 true positive but keeps the 0.9 false one; 0.95: ps F1 0.8
    assert best["conf"] == 0.5 and best["f1_mean"] == pytest.approx(3 / 7)


def test_metrics_by_origin_split_source_and_derived_images(tmp_path):
    from dataclasses import replace
    from fetalkit.evaluation.detection import by_origin
    ds = small_set(tmp_path)  # im0: ps; im1: ps + fh; im2: ps; im3: negative
    ds.samples[2] = replace(ds.samples[2], tags={"derived": "nofh"})
    ds.samples[3] = replace(ds.samples[3], tags={"derived": "nops"})
    found = [dets(np.column_stack([s.boxes_xyxy, np.ones(len(s.labels)), s.labels])) for s in ds.samples]
    found[2] = dets([])                                   # the derived positive is missed
    found[3] = dets([[1, 1, 20, 20, 0.9, 0]])             # a false positive on the derived negative
    parts = by_origin(ds, found, found, conf=0.5)
    src, der = parts["source_images"], parts["derived_images"]
    assert (src["n_images"], der["n_images"], der["n_negative_images"]) == (2, 2, 1)
    assert src["recall_ps"] == 1.0 and src["precision_ps"] == 1.0 and src["ap_ps"] == pytest.approx(1.0)
    assert der["recall_ps"] == 0.0 and der["fppi_ps"] == 1.0
    assert by_origin(ds.subset([0, 1]), found[:2], found[:2], 0.5) == {}  # no derived images: nothing to split


def test_nms_per_class_and_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.7], [0.1, 0.6]], np.float32)
    d = nms_per_class(boxes, scores, conf=0.5, iou=0.5)
    got = sorted(zip(d.labels.tolist(), [round(float(v), 2) for v in d.scores]))
    assert got == [(0, 0.9), (1, 0.6), (1, 0.7)]  # the second class-0 box is suppressed, classes independent
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 119)


def test_letterbox_keeps_aspect_and_scale():
    image = np.full((100, 200), 7, np.uint8)
    out, scale = letterbox(image, 64)
    assert out.shape == (64, 64) and scale == pytest.approx(0.32)
    assert (out[:32] == 7).all() and (out[32:] == 0).all()
    out, _ = letterbox(image, 64, centre=True, pad_value=114)
    assert (out[16:48] == 7).all() and (out[:16] == 114).all()
    # free input sides: pad only up to the next multiple (90 x 200 -> 29 x 64 -> 32 x 64)
    out, scale = letterbox(np.full((90, 200), 7, np.uint8), 64, multiple=16)
    assert out.shape == (32, 64) and scale == pytest.approx(0.32)
    assert (out[:29] == 7).all() and (out[29:] == 0).all()
    out, _ = letterbox(np.full((200, 90), 7, np.uint8), 64, multiple=16)
    assert out.shape == (64, 32)


def test_data_boxes_cli_on_psfhs_and_fpus23(tmp_path):
    from tests.conftest import need_dataset
    psfhs = need_dataset("psfhs")
    res = fetalkit("data", "boxes", psfhs, "--format", "yolo", "--out", tmp_path / "y", "--square")
    assert res.returncode == 0, res.stderr
    ds = read_yolo(tmp_path / "y")
    assert ds.categories == ["pubic_symphysis", "fetal_head"]
    pos = [s for s in ds.samples if "_no" not in s.file_name]
    neg_ps = [s for s in ds.samples if s.file_name.endswith("_nops.png")]
    assert len(pos) == len(list((psfhs / "image").glob("*.png"))) and neg_ps
    assert all(sorted(s.labels.tolist()) == [0, 1] for s in pos)      # every PSFHS image holds both
    assert all(0 not in s.labels for s in neg_ps)                      # derived negatives lack the PS
    sides = np.concatenate([s.boxes_xyxy for s in pos])
    assert np.allclose(sides[:, 2] - sides[:, 0], sides[:, 3] - sides[:, 1], atol=1e-3)  # --square
    fpus = need_dataset("fpus23")
    res = fetalkit("data", "boxes", fpus / "annotation" / "stream_hdvb_aroundabd_h" / "annotations.xml",
                   "--out", tmp_path / "f")
    assert res.returncode == 1 and "--no-copy-images" in res.stderr and not (tmp_path / "f").exists()
    res = fetalkit("data", "boxes", fpus / "annotation" / "stream_hdvb_aroundabd_h" / "annotations.xml",
                   "--out", tmp_path / "f", "--no-copy-images")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "f" / "annotations.json").read_text())
    assert len(doc["images"]) == 361 and doc["images"][0]["tags"]["Probe"]["orientation"] in ("h", "v")
