"""The learned inside-sector path of text removal: network, export, crops, trainer, bundled model."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from fetalkit.cli import app
from fetalkit.io.images import write_image
from fetalkit.preprocess.text import (TextRemovalParams, detect_overlay, draw_synthetic_overlays, overlay_crops,
                                      hysteresis_mask, overlay_seeds, overlay_thresholds)
from fetalkit.runtime.registry import load_model
from fetalkit.synth.phantom import head_phantom
from fetalkit.training.overlayseg import (OverlayFCN, export_overlay_model, masked_bce, operating_grid,
                                         sample_patches)


def test_in_graph_tophat_is_opencvs():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    x = torch.from_numpy(gray[None, None]).float() / 255.0
    k = 7
    opened = torch.nn.functional.max_pool2d(-torch.nn.functional.max_pool2d(-x, k, 1, k // 2), k, 1, k // 2)
    ours = ((x - opened)[0, 0].numpy() * 255.0).round().astype(np.uint8)
    theirs = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    assert np.array_equal(ours, theirs)


def test_onnx_export_matches_torch_on_any_crop_size(tmp_path):
    torch.manual_seed(0)
    model = OverlayFCN(8)
    path = tmp_path / "m.onnx"
    export_overlay_model(model, path, {"name": "m", "task": "overlay-seg", "input_hw": [40, 40],
                                       "normalise": {"mean": 0.0, "std": 1.0}, "classes": ["overlay"],
                                       "output": "probability", "operating_point": {"threshold": 0.5}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for h, w in ((23, 57), (64, 64), (101, 12)):
        x = rng.random((2, 1, h, w), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"image": x})[0]
        assert got.shape == (2, 1, h, w)
        assert np.abs(got - expected).max() < 1e-5


def test_crops_cover_every_seed_with_its_halo():
    seeds = np.zeros((100, 120), np.uint8)
    seeds[10, 10] = seeds[12, 14] = seeds[80, 100] = 1
    crops = overlay_crops(seeds, 8)
    assert len(crops) == 2  # the two near seeds share a crop
    covered = np.zeros(seeds.shape, bool)
    for x0, y0, x1, y1 in crops:
        covered[y0:y1, x0:x1] = True
    grown = cv2.dilate(seeds, np.ones((17, 17), np.uint8)) > 0
    assert covered[grown].all()
    assert overlay_crops(np.zeros_like(seeds), 8) == []


def test_patches_are_centred_on_overlay_and_anatomy_seeds():
    p = head_phantom(0)
    ys, xs = np.nonzero(p.sector)
    spot = np.zeros(p.image.shape, np.float32)  # a bright echo, so that anatomy seeds exist too
    spot[int(ys.mean()), int(xs.mean())] = 1.0
    spot = cv2.GaussianBlur(spot, (0, 0), 1.0)
    frame = np.maximum(p.image, (spot / spot.max() * 250).astype(np.uint8))
    syn = draw_synthetic_overlays(frame, p.sector, seed=3)
    inside = p.sector > 0
    seeds = overlay_seeds(syn.image, inside) & inside
    rng = np.random.default_rng(0)
    x, y, w = sample_patches(syn.image, syn.overlay_mask, inside, seeds, rng, 40, 16)
    assert x.shape == y.shape == w.shape == (16, 40, 40)
    assert (y.reshape(16, -1).max(axis=1)[:8] == 1).all()  # first half: overlay in every patch
    centre = y[8:, 12:28, 12:28].reshape(8, -1)
    assert (centre.max(axis=1) == 0).any()  # second half: anatomy seeds, not overlay
    assert set(np.unique(w)) <= {0, 1}
    # the loss ignores pixels outside the sector
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.ones(1, 1, 4, 4)
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., 0, 0] = 1
    full = masked_bce(logits, target, torch.ones_like(weight))
    assert torch.isclose(masked_bce(logits, target, weight), full)
    target[..., 1:, :] = 0  # changing ignored pixels changes nothing
    assert torch.isclose(masked_bce(logits, target, weight), full)


def test_trainer_cli_writes_a_usable_model(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for seed in range(6):
        write_image(frames / f"f{seed}.png", head_phantom(seed, shape_hw=(270, 400)).image)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "overlay-seg", "--out", str(run), "--frames", str(frames),
                                      "--no-public", "--epochs", "2", "--channels", "4", "--draws", "1"])
    assert result.exit_code == 0, result.output
    onnx_path = run / "overlay-fcn.onnx"
    card = json.loads(onnx_path.with_suffix(".json").read_text())
    assert card["task"] == "overlay-seg" and card["split"]["train_frames"] >= 2
    op = card["operating_point"]
    assert 0 < op["threshold"] <= op["high_threshold"] < 1
    assert [(r["threshold"], r["high_threshold"]) for r in op["sweep"]] == operating_grid()
    # the rule: of the pairs reaching the recall on every source, the fewest altered pixels on the worst one
    passing = [r for r in op["sweep"] if r["recall_worst_source"] >= 0.96]
    chosen = next(r for r in op["sweep"] if (r["threshold"], r["high_threshold"]) == (op["threshold"], op["high_threshold"]))
    if passing:
        assert chosen["altered_pct_worst_source"] == min(r["altered_pct_worst_source"] for r in passing)
    else:
        assert chosen["recall_worst_source"] == max(r["recall_worst_source"] for r in op["sweep"])
    assert (run / "metrics.csv").read_text().count("\n") == 3
    params = TextRemovalParams(overlay_model=str(onnx_path))
    assert overlay_thresholds(params) == (op["threshold"], op["high_threshold"])
    q_card = json.loads((run / "overlay-fcn-int8.json").read_text())
    assert q_card["precision"] == "int8" and q_card["quantisation"]["calibration_crops"] > 0
    assert [(r["threshold"], r["high_threshold"]) for r in q_card["operating_point"]["sweep"]] == operating_grid()
    q_model = load_model(str(run / "overlay-fcn-int8.onnx"), "overlay-seg")
    x = np.random.default_rng(0).random((1, 1, 40, 52), dtype=np.float32)
    # the INT8 file computes the same network, to within its quantisation steps
    expected = load_model(str(onnx_path), "overlay-seg").run(x)
    assert np.abs(q_model.run(x) - expected).mean() < 0.1
    p = head_phantom(7, shape_hw=(270, 400))
    mask = detect_overlay(draw_synthetic_overlays(p.image, p.sector, seed=1).image, p.sector, params)
    assert mask.shape == p.image.shape and mask.dtype == np.uint8


def test_hysteresis_keeps_only_groups_that_reach_the_high_threshold():
    prob = np.zeros((20, 30), np.float32)
    prob[2:5, 2:12] = 0.1          # a faint stroke ...
    prob[3, 6] = 0.9               # ... with a confident core: kept whole, rims included
    prob[10:13, 20:23] = 0.2       # lone speckle at the low threshold: dropped
    prob[15, 5] = prob[16, 6] = 0.1
    prob[17, 7] = 0.8              # diagonal neighbours join (8-connectivity)
    got = hysteresis_mask(prob >= 0.05, prob >= 0.5)
    expected = np.zeros(prob.shape, np.uint8)
    expected[2:5, 2:12] = 1
    expected[15, 5] = expected[16, 6] = expected[17, 7] = 1
    assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_thresholds_come_from_the_params_then_the_card(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    base = {"name": "m", "task": "overlay-seg", "input_hw": [40, 40], "normalise": {"mean": 0.0, "std": 1.0},
            "classes": ["overlay"], "output": "probability"}
    export_overlay_model(OverlayFCN(4), path, base | {"operating_point": {"threshold": 0.1}})
    params = TextRemovalParams(overlay_model=str(path))
    assert overlay_thresholds(params) == (0.1, 0.1)  # an older card: a plain threshold
    path = tmp_path / "m2.onnx"
    export_overlay_model(OverlayFCN(4), path, base | {"operating_point": {"threshold": 0.1, "high_threshold": 0.7}})
    params = TextRemovalParams(overlay_model=str(path))
    assert overlay_thresholds(params) == (0.1, 0.7)
    assert overlay_thresholds(replace(params, learned_threshold=0.3)) == (0.3, 0.7)
    assert overlay_thresholds(replace(params, learned_threshold=0.8)) == (0.8, 0.8)  # high never below low
    assert overlay_thresholds(replace(params, learned_high_threshold=0.4)) == (0.1, 0.4)


def test_trainer_cli_refuses_missing_frames(tmp_path):
    result = CliRunner().invoke(app, ["train", "overlay-seg", "--out", str(tmp_path / "run"), "--no-public"])
    assert result.exit_code != 0 and "no frames to train on" in result.output


@pytest.mark.parametrize("name", [None, "overlay-fcn", "overlay-fcn-int8"])
def test_bundled_models_and_their_cards(name):
    model = load_model(name, "overlay-seg")
    card = model.card
    assert card["name"] == (name or "overlay-fcn-int8")  # the INT8 file is the default
    assert card["normalise"] == {"mean": 0.0, "std": 1.0, "applied_to": "x / 255"}
    assert 0 < card["operating_point"]["threshold"] <= card["operating_point"]["high_threshold"] < 1
    assert card["train"]["seed"] == 0 and card["train"]["command"].startswith("fetalkit train overlay-seg")
    assert card["metrics"]["command"].startswith("python benchmarks/measure_text_removal.py")
    out = model.run(np.zeros((1, 1, 30, 45), np.float32))
    assert out.shape == (1, 1, 30, 45) and 0.0 <= out.min() and out.max() <= 1.0


def test_clean_cli_refuses_a_bad_overlay_model_before_writing(tmp_path):
    frame = tmp_path / "f.png"
    write_image(frame, head_phantom(0, shape_hw=(270, 400)).image)
    out_dir = tmp_path / "out"
    result = CliRunner().invoke(app, ["clean", str(frame), "--out", str(out_dir), "--overlay-model", "nope"])
    assert result.exit_code != 0 and not out_dir.exists()
    result = CliRunner().invoke(app, ["clean", str(frame), "--out", str(out_dir), "--inside", "cnn"])
    assert result.exit_code != 0 and "inside_method" in result.output and not out_dir.exists()
    result = CliRunner().invoke(app, ["clean", str(frame), "--out", str(out_dir), "--inside", "rules", "-q"])
    assert result.exit_code == 0 and (out_dir / "cleaning.csv").is_file()
