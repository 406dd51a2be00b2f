"""The registry of bundled models: ``src/fetalkit/models/<name>.onnx`` + ``<name>.json``."""

from __future__ import annotations

from pathlib import Path

from fetalkit.config import MODELS_DIR
from fetalkit.errors import ModelError
from fetalkit.runtime.card import read_card

DEFAULT_MODELS = {"head-seg": "head-unet-mnv2", "psfhs-seg": "psfhs-unet-mnv2", "detector": "psfhs-fcos-mnv2",
                  "overlay-seg": "overlay-fcn-int8", "view": "view-mnv2"}


def bundled_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.onnx"))


def bundled_cards() -> list[dict]:
    cards = []
    for name in bundled_names():
        path = MODELS_DIR / f"{name}.onnx"
        card = read_card(path)
        card["file_mb"] = round(path.stat().st_size / 2**20, 2)
        cards.append(card)
    return cards


def resolve_model(name_or_path: str | Path | None, task: str) -> Path:
    """Path of a model given a bundled name, a path to an .onnx file, or None (the task's default)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODELS.get(task)
        if name_or_path is None:
            raise ModelError(f"no bundled default model for task {task}; pass --model")
    p = Path(name_or_path)
    if p.suffix == ".onnx" or p.exists():
        if not p.is_file():
            raise ModelError(f"{p}: model file not found")
        return p
    bundled = MODELS_DIR / f"{name_or_path}.onnx"
    if bundled.is_file():
        return bundled
    raise ModelError(f"{name_or_path}: neither a file nor a bundled model (bundled: {', '.join(bundled_names()) or 'none'})")


def load_model(name_or_path: str | Path | None, task: str, threads: int = 2):
    """Resolve and load a model, checking that its card is for ``task``."""
    from fetalkit.runtime.session import OnnxModel
    model = OnnxModel(resolve_model(name_or_path, task), threads=threads)
    if model.task != task:
        raise ModelError(f"{model.path}: a {model.task} model, but this command needs a {task} model")
    return model
