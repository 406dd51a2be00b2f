"""Hold rules on scripted detection sequences (exact masks per frame) and SSIM agreement with scikit-image."""

import numpy as np
import pytest

from fetalkit.masking.hold import HoldRule, downscale_gray, ssim
from fetalkit.types import ImageDetections

BOX = [10.0, 20.0, 40.0, 50.0]


def dets(*rows):
    """rows: (class, x1, y1, x2, y2)."""
    if not rows:
        return ImageDetections.empty()
    a = np.asarray(rows, np.float32)
    return ImageDetections(a[:, 1:], np.full(len(a), 0.9, np.float32), a[:, 0].astype(np.int64))


def run(rule, frames, seq):
    return [rule.update(f, d) for f, d in zip(frames, seq)]


def still_frames(n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (120, 160), dtype=np.uint8)
    return [base.copy() for _ in range(n)]


def test_none_masks_only_detections():
    steps = run(HoldRule("none"), still_frames(3), [dets((0, *BOX)), dets(), dets((0, *BOX))])
    assert [len(s.masks.labels) for s in steps] == [1, 0, 1] and not any(s.held for s in steps)


def test_bboxhold_keeps_last_box_for_n_frames_per_class():
    seq = [dets((0, *BOX), (1, 0, 0, 5, 5)), dets((1, 0, 0, 5, 5)), dets(), dets(), dets(), dets((0, 1, 1, 9, 9))]
    steps = run(HoldRule("frames", hold_frames=2), still_frames(len(seq)), seq)
    # class 0: detected in 0, held in 1 and 2 (ages 1, 2), gone in 3 and 4, detected again in 5
    # class 1: detected in 0 and 1, held in 2 and 3, gone in 4
    expect = [{0, 1}, {0, 1}, {0, 1}, {1}, set(), {0}]
    assert [set(s.masks.labels.tolist()) for s in steps] == expect
    assert steps[1].held == [{"box": [10.0, 20.0, 30.0, 30.0], "class": 0, "rule": "BBoxHold", "age": 1}]
    assert [h["age"] for h in steps[2].held if h["class"] == 0] == [2]
    np.testing.assert_array_equal(steps[5].masks.boxes_xyxy, [[1, 1, 9, 9]])  # the new box, not the old


def test_bboxholdsim_holds_while_the_view_is_unchanged():
    frames = still_frames(4) + still_frames(3, seed=1)  # a cut to another view at frame 4
    seq = [dets((0, *BOX))] + [dets()] * 6
    steps = run(HoldRule("ssim", ssim_threshold=0.6), frames, seq)
    assert [len(s.masks.labels) for s in steps] == [1, 1, 1, 1, 0, 0, 0]
    assert steps[1].ssim[0] == pytest.approx(1.0) and steps[4].ssim[0] < 0.6
    assert steps[2].held[0]["rule"] == "BBoxHoldSim"
    capped = run(HoldRule("ssim", ssim_threshold=0.6, max_hold_frames=2), still_frames(4), seq[:4])
    assert [len(s.masks.labels) for s in capped] == [1, 1, 1, 0]


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="unknown hold rule"):
        HoldRule("sometimes")
    with pytest.raises(ValueError):
        HoldRule("frames", hold_frames=-1)


def test_ssim_agrees_with_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (200, 300), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    for x, y in ((a, b), (downscale_gray(a), downscale_gray(b)), (a, a)):
        ref = skm.structural_similarity(x.astype(np.float64), y.astype(np.float64), data_range=255.0)
        assert ssim(x, y) == pytest.approx(ref, abs=1e-6)


def test_a_detection_elsewhere_does_not_end_a_hold():
    far = (0, 100, 90, 120, 110)
    seq = [dets((0, *BOX)), dets(far), dets(far), dets(far), dets((0, 12, 22, 42, 52))]
    steps = run(HoldRule("frames", hold_frames=2), still_frames(len(seq)), seq)
    held = [[h["box"] for h in s.held] for s in steps]
    # frames 1-2: the first box is held although the detector fires far away; frame 3: its hold ends;
    # frame 4: a new box near the first one, and the far box (not found again) is held
    assert held == [[], [[10.0, 20.0, 30.0, 30.0]], [[10.0, 20.0, 30.0, 30.0]], [], [[100.0, 90.0, 20.0, 20.0]]]
    assert [len(s.masks.labels) for s in steps] == [1, 2, 2, 1, 2]


def test_ssim_over_the_imaged_area_ignores_the_common_black_surround():
    rng = np.random.default_rng(5)
    a, b = np.zeros((60, 80)), np.zeros((60, 80))
    a[20:40, 20:60] = rng.integers(20, 255, (20, 40))
    b[20:40, 20:60] = rng.integers(20, 255, (20, 40))   # another view in the same sector
    whole, imaged = ssim(a, b), ssim(a, b, imaged_only=True)
    assert whole > 0.5 and imaged < whole - 0.2          # the black surround inflates the whole-frame value
    assert ssim(a, a, imaged_only=True) == pytest.approx(1.0)


def test_bboxholdsim_downscales_only_the_frames_an_ssim_needs(monkeypatch):
    import fetalkit.masking.hold as hold
    calls = []
    monkeypatch.setattr(hold, "downscale_gray", lambda f: calls.append(f) or f[::4, ::4].astype(np.float64))
    frames = still_frames(6)
    seq = [dets((0, *BOX))] * 4 + [dets(), dets()]
    steps = run(HoldRule("ssim", ssim_threshold=0.6), frames, seq)
    assert [len(s.masks.labels) for s in steps] == [1] * 6
    # detected in frames 0-3: nothing downscaled; frame 4: it and the reference (frame 3); frame 5: itself
    assert [id(f) for f in calls] == [id(frames[4]), id(frames[3]), id(frames[5])]


def test_gain_matched_ssim_holds_through_a_fade_but_not_a_cut():
    rng = np.random.default_rng(7)
    view = np.clip(rng.normal(90, 40, (120, 160)), 0, 255).astype(np.uint8)
    faded = (view * 0.25).astype(np.uint8)                    # lost contact: the same view, darker
    other = np.clip(rng.normal(90, 40, (120, 160)), 0, 255).astype(np.uint8)
    frames, seq = [view, faded, faded, other], [dets((0, *BOX)), dets(), dets(), dets()]
    plain = run(HoldRule("ssim", ssim_threshold=0.55, ssim_gain=False), frames, seq)
    gain = run(HoldRule("ssim", ssim_threshold=0.55, ssim_gain=True), frames, seq)
    assert [len(s.masks.labels) for s in plain] == [1, 0, 0, 0]   # the fade ends the plain hold
    assert [len(s.masks.labels) for s in gain] == [1, 1, 1, 0]    # gain-matched: held, until the cut
    assert gain[1].ssim[0] > 0.9 > 0.55 > plain[1].ssim[0]


def test_a_partly_overlapping_detection_does_not_replace_a_held_box():
    shifted = (0, 25.0, 20.0, 55.0, 50.0)      # IoU 0.33 with BOX: maybe another structure
    near = (0, 12.0, 22.0, 42.0, 52.0)         # IoU 0.77: the same structure, moved
    steps = run(HoldRule("frames", hold_frames=5), still_frames(3), [dets((0, *BOX)), dets(shifted), dets(near)])
    np.testing.assert_array_equal(steps[1].masks.boxes_xyxy, [[25, 20, 55, 50], [10, 20, 40, 50]])
    assert [h["box"] for h in steps[1].held] == [[10.0, 20.0, 30.0, 30.0]]
    # frame 2: `near` supersedes the held BOX; `shifted`, not found again, is now the held one
    np.testing.assert_array_equal(steps[2].masks.boxes_xyxy, [[12, 22, 42, 52], [25, 20, 55, 50]])


def test_bboxholdsim_compares_frames_of_a_changed_size():
    """The region detected in may grow mid-hold (fetalkit mask --roi auto): the SSIM
    then compares the reference resized to the new frame instead of failing."""
    import cv2
    rule = HoldRule("ssim", ssim_threshold=0.5)
    base = cv2.GaussianBlur(still_frames(1)[0], (0, 0), 3)   # structure larger than a pixel, as in a scan
    wider = np.pad(base, ((0, 0), (0, 8)))
    steps = run(rule, [base, wider], [dets((0, *BOX)), dets()])
    assert steps[1].held and steps[1].ssim[0] > 0.5
