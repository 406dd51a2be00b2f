"""Checkpoint -> ONNX + model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fetalkit.runtime.card import write_card
from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD
from fetalkit.training.models import SEG_ARCHS, count_parameters
from fetalkit.training.segment import export_onnx, load_checkpoint_model

TASK_CLASSES = {"head-seg": ["fetal_head"], "psfhs-seg": ["background", "pubic_symphysis", "fetal_head"]}
TASK_DATA = {
    "head-seg": "HC18 training_set (van den Heuvel et al. 2018, CC BY 4.0); split by subject (NNN_HC, NNN_2HC = one subject)",
    "psfhs-seg": "PSFHS (Chen et al. 2024, CC BY 4.0); split by blocks of 50 consecutive ids, duplicate pairs kept together",
}


def split_counts(run_dir: Path) -> dict:
    """Images per part of the run's split (from ``split.txt``: ``image_id,part`` lines)."""
    counts: dict[str, int] = {}
    path = run_dir / "split.txt"
    if path.is_file():
        for line in path.read_text().splitlines():
            part = line.rsplit(",", 1)[-1]
            counts[part] = counts.get(part, 0) + 1
    return counts


def export_segmenter(checkpoint: Path, task: str, out_path: Path, name: str | None = None) -> dict:
    """Export ``best.pt`` of a run to ``out_path`` (.onnx) and write its card; returns the card."""
    classes = TASK_CLASSES[task]
    n_out = 1 if len(classes) == 1 else len(classes)
    model, ck = load_checkpoint_model(checkpoint, n_out)
    cfg = ck["config"]
    input_hw = tuple(cfg["input_hw"])
    export_onnx(model, n_out, input_hw, out_path)
    run_dir = checkpoint.parent
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else ""
    card = {
        "name": name or out_path.stem, "task": task, "input_hw": list(input_hw),
        "normalise": {"mean": GRAY_MEAN, "std": GRAY_STD, "applied_to": "x / 255"},
        "classes": classes, "output": "probability",
        "arch": cfg["arch"], "arch_description": SEG_ARCHS[cfg["arch"]].description,
        "params": count_parameters(model), "init": cfg["init"], "strategy": cfg["strategy"],
        "train": {"epochs": cfg["epochs"], "best_epoch": ck["epoch"], "seed": cfg["seed"], "lr": cfg["lr"],
                  "batch_size": cfg["batch_size"], "command": command,
                  "val_metrics": {k: v for k, v in ck.get("metrics", {}).items() if k.startswith("val_")}},
        "data": TASK_DATA[task], "split": {"seed": cfg["seed"], **split_counts(run_dir)},
        "metrics": {},
    }
    write_card(out_path, card)
    return card


def torch_onnx_max_abs_diff(checkpoint: Path, onnx_path: Path, images: list[np.ndarray], n_out: int) -> float:
    """Largest |torch - onnxruntime| probability difference on the given images (export parity)."""
    import torch
    from fetalkit.runtime.session import OnnxModel
    from fetalkit.training.segment import ProbabilityHead
    model, _ = load_checkpoint_model(checkpoint, n_out)
    ort_model = OnnxModel(onnx_path, threads=1)
    batch = ort_model.prepare(images)
    with torch.no_grad():
        ref = ProbabilityHead(model, n_out)(torch.from_numpy(batch)).numpy()
    return float(np.abs(ref - ort_model.run(batch)).max())


def update_card(onnx_path: Path, section: str, values: dict) -> None:
    """Merge ``values`` into ``card[section]`` (metrics from eval, speed from the benchmark)."""
    from fetalkit.runtime.card import card_path_for
    path = card_path_for(onnx_path)
    card = json.loads(path.read_text())
    card.setdefault(section, {}).update(values)
    write_card(onnx_path, card)
