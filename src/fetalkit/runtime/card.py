"""Model cards: the JSON file beside every ONNX model, the boundary between training and runtime.

Required keys: ``name``, ``task``, ``input_hw`` ([h, w]), ``normalise`` ({mean, std}
applied to x/255), ``classes`` (names, background excluded for binary models),
``output`` ("probability"). Everything else (metrics, data, split, command,
params, speed) is documentation and is shown by ``fetalkit models``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fetalkit.errors import ModelError

REQUIRED_KEYS = ("name", "task", "input_hw", "normalise", "classes", "output")
TASKS = ("head-seg", "psfhs-seg", "detector", "overlay-seg", "view")


def card_path_for(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_card(model_path: Path) -> dict:
    """Read and validate the card of ``model.onnx`` (``model.json`` beside it)."""
    path = card_path_for(model_path)
    if not path.is_file():
        raise ModelError(f"{model_path}: no model card {path.name} beside it; export models with 'fetalkit export'")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: model card is not valid JSON ({e})") from None
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise ModelError(f"{path}: model card lacks {', '.join(missing)}")
    if card["task"] not in TASKS:
        raise ModelError(f"{path}: unknown task {card['task']!r} (known: {', '.join(TASKS)})")
    return card


def write_card(model_path: Path, card: dict) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise ValueError(f"card lacks {missing}")
    path = card_path_for(model_path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(path)
    return path
