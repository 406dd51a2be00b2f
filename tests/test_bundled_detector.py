"""The bundled PSFHS detector: its card, held-out PSFHS images, and the masking demo on a phantom clip."""

import json

import cv2
import numpy as np

from fetalkit.config import MODELS_DIR
from fetalkit.runtime.detector import OnnxDetector
from fetalkit.runtime.registry import resolve_model


def test_card_and_default_resolution():
    path = resolve_model(None, "detector")
    assert path == MODELS_DIR / "psfhs-fcos-mnv2.onnx"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["classes"] == ["pubic_symphysis", "fetal_head"] and card["output"] == "dense"
    assert card["operating_point"]["chosen_on"].startswith("val split")
    assert card["metrics"]["test_ap_fetal_head"] >= 0.79  # the figure the README reports
    int8 = json.loads((MODELS_DIR / "psfhs-fcos-mnv2-int8.json").read_text())
    assert int8["precision"] == "int8" and int8["operating_point"] == card["operating_point"]


def test_finds_both_structures_on_held_out_psfhs_images():
    from tests.conftest import need_dataset
    from fetalkit.datasets.psfhs import list_psfhs, psfhs_groups
    from fetalkit.datasets.splits import select_split
    from fetalkit.detection.boxes import box_iou, boxes_from_label_map
    items = list_psfhs(need_dataset("psfhs"))
    test = select_split(psfhs_groups([it.image_id for it in items]), "test", 0)
    det = OnnxDetector(resolve_model(None, "detector"))
    ious = []
    for i in test[::19]:
        image, label = items[i].load()
        truth, labels = boxes_from_label_map(label, {1: 0, 2: 1})
        d = det.detect(image)
        for box, k in zip(truth, labels):
            mine = d.boxes_xyxy[d.labels == k]
            ious.append(box_iou(mine, box[None]).max() if len(mine) else 0.0)
    assert np.mean(ious) > 0.8 and min(ious) > 0.5


def test_mask_demo_on_phantom_clip(tmp_path):
    from fetalkit.demo import run_mask_demo
    m = run_mask_demo(tmp_path)
    cap = cv2.VideoCapture(str(m["masked"]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == m["frames"] == 120
    assert m["empty_frames"] > 0 and m["false_negative_frames"] <= 0.05 * m["target_frames"]
    assert m["false_masked_frames"] <= 0.2 * m["empty_frames"]
    assert len(m["log"].read_text().splitlines()) == 120


def test_bundled_checkpoint_is_the_bundled_detector(tmp_path):
    """psfhs-fcos-mnv2.pt (for --from-checkpoint) re-exports to the same network as the bundled ONNX."""
    import pytest
    pytest.importorskip("torch")
    from fetalkit.training.export import export_detector
    from fetalkit.synth.phantom import head_phantom
    out = tmp_path / "re.onnx"
    export_detector(MODELS_DIR / "psfhs-fcos-mnv2.pt", out)
    frame = head_phantom(seed=3, shape_hw=(400, 400)).image  # square: the bundled card fixes a square input
    a, b = OnnxDetector(resolve_model(None, "detector")), OnnxDetector(out)
    (boxes_a, scores_a), (boxes_b, scores_b) = a.candidates(frame), b.candidates(frame)
    np.testing.assert_allclose(scores_a, scores_b, atol=1e-5)
    np.testing.assert_allclose(boxes_a, boxes_b, atol=1e-3)


def test_fine_tune_the_bundled_detector_for_other_classes():
    """A user's own classes: everything but the class layer starts from the bundled detector."""
    import pytest
    pytest.importorskip("torch")
    from fetalkit.training.detect import read_checkpoint_weights
    from fetalkit.training.detectors import build_detector, warm_start
    fresh = warm_start(build_detector("fcos-mnv2", 1, 256, "random"), read_checkpoint_weights("psfhs-fcos-mnv2"))
    assert fresh == ["head.classification_head.cls_logits.bias", "head.classification_head.cls_logits.weight"]


def test_detect_cli_finds_the_head_on_a_wide_screen_in_frame_pixels(tmp_path):
    """`fetalkit detect --roi auto` crops the imaged area and reports boxes in the screen's pixels."""
    import subprocess
    import sys
    from fetalkit.detection.boxes import box_iou
    from fetalkit.synth import head_phantom
    from fetalkit.synth.sequences import on_wide_screen
    p = head_phantom(seed=2)
    screen, ox = on_wide_screen(p.image, 2.2)
    screen[:, 4:6] = 255                                   # a line at the screen's edge
    cv2.imwrite(str(tmp_path / "screen.png"), screen)
    ys, xs = np.nonzero(p.mask)
    truth = np.array([[xs.min() + ox, ys.min(), xs.max() + 1 + ox, ys.max() + 1]], np.float32)
    for roi in ("auto", "full", "bad"):
        res = subprocess.run([sys.executable, "-m", "fetalkit.cli", "detect", str(tmp_path / "screen.png"),
                              "--roi", roi, "--out", str(tmp_path / roi)], capture_output=True, text=True)
        if roi == "bad":
            assert res.returncode == 1 and "--roi" in res.stderr and not (tmp_path / roi).exists()
            continue
        assert res.returncode == 0, res.stderr
        heads = [d["bbox"] for d in json.loads((tmp_path / roi / "detections.json").read_text())
                 if d["category"] == "fetal_head"]
        found = np.array([[x, y, x + w, y + h] for x, y, w, h in heads], np.float32).reshape(-1, 4)
        if roi == "auto":  # (the whole screen may find it too: the phantom's head is large)
            assert len(found) and box_iou(found, truth).max() > 0.8


def test_flip_averaging_is_mirror_symmetric_and_agrees_with_the_plain_detector():
    from fetalkit.detection.boxes import box_iou
    from fetalkit.runtime.detector import FlipAveraged
    from fetalkit.synth.phantom import head_phantom
    det = OnnxDetector(resolve_model(None, "detector"))
    flip = FlipAveraged(det)
    image = head_phantom(seed=4, shape_hw=(256, 256)).image  # square at the input size: no padding
    plain, fused = det.detect(image, conf=0.3), flip.detect(image, conf=0.3)
    mirrored = flip.detect(np.ascontiguousarray(image[:, ::-1]), conf=0.3)
    head = 1  # the phantom is a fetal head
    assert (plain.labels == head).any() and (fused.labels == head).any()
    best = fused.boxes_xyxy[fused.labels == head][0]
    assert box_iou(plain.boxes_xyxy[plain.labels == head][:1], best[None])[0, 0] > 0.8
    # the image's mirror gives the mirror of its boxes: the two views play the same part
    back = mirrored.boxes_xyxy[mirrored.labels == head][0]
    np.testing.assert_allclose([256 - back[2], back[1], 256 - back[0], back[3]], best, atol=0.05)
    assert np.isclose(mirrored.scores[mirrored.labels == head][0], fused.scores[fused.labels == head][0], atol=1e-4)


def test_fusing_two_views_keeps_classes_apart_and_halves_lone_boxes():
    from fetalkit.runtime.detector import fuse_two_views
    from fetalkit.types import ImageDetections
    a = ImageDetections(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.array([0.9, 0.6], np.float32),
                        np.array([0, 1]))
    b = ImageDetections(np.array([[0, 0, 10, 12], [50, 50, 60, 60]], np.float32), np.array([0.7, 0.5], np.float32),
                        np.array([0, 0]))  # the second box: the same place, another class
    f = fuse_two_views(a, b)
    assert sorted(f.labels.tolist()) == [0, 0, 1] and len(f.scores) == 3
    pair = np.flatnonzero((f.labels == 0) & (f.boxes_xyxy[:, 0] == 0))
    assert len(pair) == 1 and np.isclose(f.scores[pair[0]], 0.8) and 10 < f.boxes_xyxy[pair[0], 3] < 12
    assert np.isclose(f.scores[f.labels == 1][0], 0.3)          # only view a saw class 1 there
    assert np.isclose(f.scores[(f.labels == 0) & (f.boxes_xyxy[:, 0] == 50)][0], 0.25)
    assert list(f.scores) == sorted(f.scores, reverse=True)
    assert len(fuse_two_views(ImageDetections.empty(), ImageDetections.empty()).scores) == 0
