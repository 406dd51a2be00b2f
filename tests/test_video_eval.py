"""fetalkit.evaluation.video: coverage, replay of hold rules over cached detections, per-sequence breakdown."""

import numpy as np
import pytest

from fetalkit.evaluation.video import covered_fraction, evaluate_rules, replay, sequence_breakdown
from fetalkit.masking.hold import HoldRule
from fetalkit.synth.phantom import head_phantom
from fetalkit.synth.sequences import Sequence
from fetalkit.types import ImageDetections

BOX = np.array([100.0, 120.0, 140.0, 160.0])


def test_covered_fraction():
    assert covered_fraction(BOX, BOX[None]) == 1.0
    assert covered_fraction(BOX, np.array([[100, 120, 120, 160]])) == pytest.approx(0.5)
    assert covered_fraction(BOX, np.zeros((0, 4))) == 0.0
    # two masks that together cover the box
    assert covered_fraction(BOX, np.array([[90, 110, 121, 170], [119, 110, 150, 170]])) == 1.0


def _sequence():
    """10 frames of one scan with the target (detected in the first 4 only), then 6 frames of another scan."""
    scan, other = head_phantom(seed=1).image, head_phantom(seed=2).image
    frames = [scan] * 10 + [other] * 6
    targets = [BOX] * 10 + [None] * 6
    found = ImageDetections(BOX[None].astype(np.float32), np.array([0.9], np.float32), np.array([0]))
    dets = [found] * 4 + [ImageDetections.empty()] * 12
    return Sequence(frames, targets, ["clean"] * 10 + ["cutaway"] * 6, source="scan.png"), dets


def test_replay_counts_what_each_rule_covers():
    seq, dets = _sequence()
    alone = replay(seq, dets, HoldRule("none"))
    assert (alone["fn"], alone["targets"], alone["false_masked"], alone["empties"]) == (6, 10, 0, 6)
    # BBoxHold keeps the box 10 frames after the last detection (frame 3): the misses are
    # fixed, and the first 4 cut-away frames (10-13) are masked too
    frames = replay(seq, dets, HoldRule("frames", hold_frames=10))
    assert (frames["fn"], frames["false_masked"]) == (0, 4)
    # BBoxHoldSim keeps it while the scan looks the same, and lets go at the cut-away
    sim = replay(seq, dets, HoldRule("ssim", ssim_threshold=0.6))
    assert (sim["fn"], sim["false_masked"]) == (0, 0)


def test_evaluate_rules_and_breakdown():
    seq, dets = _sequence()
    never = Sequence(seq.frames, seq.target_boxes, seq.kinds, source="never.png")
    rows = evaluate_rules([seq, never], [dets, [ImageDetections.empty()] * 16],
                          [{"rule": "none"}, {"rule": "ssim", "ssim_threshold": 0.6}])
    none, sim = rows
    assert none["fn_rate"] == pytest.approx(16 / 20) and none["fn_reduction"] == 0.0
    assert sim["fn_rate"] == pytest.approx(10 / 20) and sim["fn_reduction"] == pytest.approx(1 - 10 / 16)
    per_seq = sequence_breakdown([seq, never], [dets, [ImageDetections.empty()] * 16])
    assert [r["source"] for r in per_seq] == ["scan.png", "never.png"]
    assert [(r["fn_detector"], r["fn_held"], r["rarely_found"]) for r in per_seq] == [(6, 0, False), (10, 10, True)]


def test_sequences_take_targets_from_source_images_only(tmp_path):
    from fetalkit.detection.boxes import DetSample, DetSet
    from fetalkit.evaluation.video import build_sequences
    from fetalkit.io.images import write_image
    image = head_phantom(seed=3).image
    h, w = image.shape
    samples = []
    for name, tags, has_box in (("a.png", {}, True), ("a_nofh.png", {"derived": "nofh"}, True),
                                ("b_nops.png", {"derived": "nops"}, False)):
        path = write_image(tmp_path / name, image)
        boxes = BOX[None].astype(np.float32) if has_box else np.zeros((0, 4), np.float32)
        samples.append(DetSample(name, path, w, h, boxes, np.zeros(len(boxes), np.int64), "g", tags))
    seqs = build_sequences(DetSet(["ps"], samples), "ps", n_sequences=5, n_frames=12)
    assert [s.source for s in seqs] == ["a.png"]  # the derived positive is not a target source
    assert len(seqs[0].frames) == 12 and any(b is not None for b in seqs[0].target_boxes)
