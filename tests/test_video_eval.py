"""fetalkit.evaluation.video: coverage, replay of hold rules over cached detections, per-sequence breakdown."""

import numpy as np
import pytest

from fetalkit.evaluation.video import (covered_fraction, evaluate_rules, kind_breakdown, replay, rule_grid,
                                      scan_intervals, sequence_breakdown, unreachable_misses)
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
    # the misses of the first scan follow a detection that covers them; the second has none to keep
    assert [r["fn_unreachable"] for r in per_seq] == [0, 10]


def test_unreachable_misses_bound_every_hold_rule():
    seq, dets = _sequence()
    # the target is found only at frame 5: the 5 frames before it can be covered by no rule
    late = [ImageDetections.empty()] * 5 + [dets[0]] + [ImageDetections.empty()] * 10
    assert unreachable_misses(seq, late) == 5
    # a box found well off the target (covering 25 % of it) is no help however long it is kept
    off = ImageDetections((BOX[None] + [20, 20, 20, 20]).astype(np.float32), np.array([0.9], np.float32), np.array([0]))
    assert unreachable_misses(seq, [off] * 16) == 10
    # a margin that grows that box over the target makes every miss reachable
    assert unreachable_misses(seq, [off] * 16, margin=0.5) == 0
    # and no rule of the benchmark's grid misses fewer frames than the bound
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [dets[0] if rng.random() < 0.3 else ImageDetections.empty() for _ in range(16)]
        bound = unreachable_misses(seq, shuffled)
        for setting in rule_grid(hold_frames=(2, 20), ssim_thresholds=(0.3, 0.6)):
            assert replay(seq, shuffled, HoldRule(**setting))["fn"] >= bound


def _scan_row(source, draw, alone, held, fm_alone=0, fm_held=0, empties=10):
    return {"source": source, "draw": draw, "fn_detector": alone, "fn_held": held, "false_masked_detector": fm_alone,
            "false_masked_held": fm_held, "empty_frames": empties}


def test_scan_intervals_resample_scans_not_frames():
    # every scan removes half its misses: any resample of scans gives exactly 50 %
    even = [_scan_row(f"s{i}.png", d, 4 + i, (4 + i) / 2, 0, 1) for i in range(6) for d in range(2)]
    fn, fm = scan_intervals(even)
    assert (fn["value"], fn["low"], fn["high"], fn["scans"]) == (0.5, 0.5, 0.5, 6)
    assert fm["value"] == pytest.approx(100 * 12 / 120) and fm["low"] == pytest.approx(fm["high"])
    # one scan missed in every frame and never rescued dominates: the pooled value is low,
    # and resampling the scans gives a wide interval around it
    skewed = [_scan_row(f"s{i}.png", 0, 4, 0) for i in range(9)] + [_scan_row("hard.png", 0, 40, 40)]
    fn, _ = scan_intervals(skewed)
    assert fn["value"] == pytest.approx(1 - 40 / 76)
    assert fn["low"] < fn["value"] < fn["high"] == pytest.approx(1.0)
    assert fn["high"] - fn["low"] > 0.3
    one = scan_intervals([_scan_row("a.png", 0, 4, 1), _scan_row("a.png", 1, 4, 3)])[0]
    assert (one["value"], one["low"], one["high"], one["scans"]) == (0.5, 0.5, 0.5, 1)


def test_kind_breakdown_counts_misses_per_kind_of_frame():
    seq, dets = _sequence()
    seq.kinds[2], seq.kinds[7] = "blur", "blur"    # one found (frame 2), one missed (frame 7)
    rows = kind_breakdown([seq], [dets], setting={"rule": "frames", "hold_frames": 3})
    # the detector finds frames 0-3; BBoxHold(3) covers 4-6 and misses 7-9
    assert rows == [{"kind": "blur", "target_frames": 2, "fn_detector": 1, "fn_held": 1},
                    {"kind": "clean", "target_frames": 8, "fn_detector": 5, "fn_held": 2}]


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


def test_bench_video_cli_writes_every_table(tmp_path):
    import csv
    import subprocess
    import sys
    from fetalkit.detection.boxes import DetSample, DetSet
    from fetalkit.detection.formats import write_detection_set
    from fetalkit.io.images import write_image
    samples = []
    for i in range(3):
        image = head_phantom(seed=i).image
        boxes = BOX[None].astype(np.float32) if i < 2 else np.zeros((0, 4), np.float32)
        path = write_image(tmp_path / "src" / f"s{i}.png", image)
        samples.append(DetSample(f"s{i}.png", path, image.shape[1], image.shape[0], boxes,
                                 np.zeros(len(boxes), np.int64), group=f"g{i}"))
    write_detection_set(DetSet(["pubic_symphysis", "fetal_head"], samples), tmp_path / "set", "coco")
    r = subprocess.run([sys.executable, "-m", "fetalkit.cli", "bench", "video", "--data", str(tmp_path / "set"),
                        "--split", "all", "--sequences", "2", "--frames", "12", "--draws", "2", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rules = list(csv.DictReader(open(tmp_path / "out" / "rules.csv")))
    ssim_rows = [x for x in rules if x["rule"] == "ssim"]
    assert {(x["ssim_gain"], x["ssim_imaged_only"]) for x in ssim_rows} == {(g, i) for g in ("True", "False")
                                                                          for i in ("True", "False")}
    kinds = list(csv.DictReader(open(tmp_path / "out" / "kinds.csv")))
    assert sum(int(k["target_frames"]) for k in kinds) == int(rules[0]["target_frames"]) > 0
    assert "false-negative frames by kind of frame" in r.stdout
    # two draws of the same two scans, pooled: 4 sequences, each draw's frames adding up to the pool's
    seqs = list(csv.DictReader(open(tmp_path / "out" / "sequences.csv")))
    assert sorted((x["source"], x["draw"]) for x in seqs) == [("s0.png", "0"), ("s0.png", "1"), ("s1.png", "0"), ("s1.png", "1")]
    draws = list(csv.DictReader(open(tmp_path / "out" / "draws.csv")))
    assert [d["draw"] for d in draws] == ["0", "1"]
    assert sum(int(d["target_frames"]) for d in draws) == int(rules[0]["target_frames"])
    assert sum(int(d["fn_detector"]) for d in draws) == sum(int(x["fn_detector"]) for x in seqs)
    assert "per draw" in r.stdout
    assert all(0 <= int(x["fn_unreachable"]) <= int(x["fn_held"]) for x in seqs)
    intervals = list(csv.DictReader(open(tmp_path / "out" / "intervals.csv")))
    assert [x["metric"] for x in intervals] == ["fn_reduction", "false_masked_increase_pp"]
    assert all(float(x["low"]) <= float(x["value"]) <= float(x["high"]) and x["scans"] == "2" for x in intervals)
    assert "interval from resampling scans" in r.stdout


def test_widen_puts_frames_on_a_wide_screen_and_moves_the_boxes():
    from fetalkit.synth.sequences import Sequence
    frames = [np.full((40, 50), 100 + i, np.uint8) for i in range(3)]
    seq = Sequence(frames, [np.array([5.0, 6.0, 15.0, 16.0]), None, np.array([0.0, 0.0, 50.0, 40.0])], ["clean"] * 3)
    seq.widen(2.0)
    ox = (80 - 50) // 2
    assert all(f.shape == (40, 80) for f in seq.frames)
    assert (seq.frames[1][:, ox:ox + 50] == 101).all() and seq.frames[1][:, :ox].max() == 0
    assert np.array_equal(seq.target_boxes[0], [5 + ox, 6, 15 + ox, 16]) and seq.target_boxes[1] is None


def test_bench_video_cli_wide_screens_and_bad_options(tmp_path):
    import csv
    import subprocess
    import sys
    from fetalkit.detection.boxes import DetSample, DetSet
    from fetalkit.detection.formats import write_detection_set
    from fetalkit.io.images import write_image
    image = head_phantom(seed=0).image
    path = write_image(tmp_path / "src" / "s0.png", image)
    write_detection_set(DetSet(["pubic_symphysis", "fetal_head"], [DetSample(
        "s0.png", path, image.shape[1], image.shape[0], BOX[None].astype(np.float32), np.zeros(1, np.int64), "g0")]),
        tmp_path / "set", "coco")

    def bench(*extra):
        return subprocess.run([sys.executable, "-m", "fetalkit.cli", "bench", "video", "--data", str(tmp_path / "set"),
                               "--split", "all", "--sequences", "1", "--frames", "10", "--out", str(tmp_path / "out"),
                               *extra], capture_output=True, text=True)

    for extra in (("--wide", "1.8"), ("--wide", "1.8", "--roi", "full")):
        r = bench(*extra)
        assert r.returncode == 0, r.stderr
        rules = list(csv.DictReader(open(tmp_path / "out" / "rules.csv")))
        assert int(rules[0]["target_frames"]) + int(rules[0]["empty_frames"]) == 10
    for extra, message in ((("--wide", "0.5"), "--wide"), (("--roi", "left"), "--roi")):
        r = bench(*extra)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
