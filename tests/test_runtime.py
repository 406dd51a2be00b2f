import json

import numpy as np
import pytest

from fetalkit.errors import InputError, ModelError
from fetalkit.io.images import expand_inputs, read_gray, write_image
from fetalkit.runtime.card import read_card
from fetalkit.runtime.registry import bundled_cards, load_model, resolve_model


def test_read_gray_converts_and_rejects(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 2] = 255  # pure red in BGR order
    write_image(tmp_path / "c.png", rgb)
    g = read_gray(tmp_path / "c.png")
    assert g.shape == (10, 12) and g.dtype == np.uint8 and int(g[0, 0]) == 76  # BT.601 luma of red
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="x.png: not a readable image"):
        read_gray(tmp_path / "x.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png"):
        read_gray(tmp_path / "empty.png")


def test_expand_inputs_lists_images_and_keeps_explicit_files(tmp_path):
    write_image(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "a.jpg", np.zeros((4, 4), np.uint8))
    (tmp_path / "readme.txt").write_text("x")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.jpg", "b.png"]
    assert [p.name for p in expand_inputs([tmp_path / "readme.txt"])] == ["readme.txt"]


def test_card_validation(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="no model card"):
        read_card(model)
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(model)
    (tmp_path / "m.json").write_text(json.dumps({"name": "m", "task": "head-seg"}))
    with pytest.raises(ModelError, match="lacks"):
        read_card(model)
    (tmp_path / "m.json").write_text(json.dumps({"name": "m", "task": "head-seg", "input_hw": [64, 64],
                                                 "normalise": {"mean": 0, "std": 1}, "classes": ["x"],
                                                 "output": "probability"}))
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load_model(model, "head-seg")


def test_resolve_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_model(tmp_path / "nope.onnx", "head-seg")
    with pytest.raises(ModelError, match="neither a file nor a bundled model"):
        resolve_model("no-such-model", "head-seg")


def test_bundled_head_model_card_is_complete():
    cards = {c["name"]: c for c in bundled_cards()}
    card = cards["head-unet-mnv2"]
    assert card["task"] == "head-seg" and card["file_mb"] <= 15
    assert card["params"] > 1_000_000 and card["train"]["command"].startswith("fetalkit train head-seg")
    assert "test_hc_abs_diff_mm_mean" in card["metrics"]
    model = load_model("head-unet-mnv2", "head-seg", threads=1)
    out = model.predict([np.zeros((540, 800), np.uint8)])
    assert out.shape == (1, 1, *card["input_hw"]) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ModelError, match="needs a detector model"):
        load_model("head-unet-mnv2", "detector")
