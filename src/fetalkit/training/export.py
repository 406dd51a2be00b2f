"""Checkpoint -> ONNX + model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from fetalkit.datasets.splits import split_seed_of
from fetalkit.io.images import atomic_write_bytes
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
        "data": TASK_DATA[task], "split": {"seed": split_seed_of(cfg["seed"], cfg.get("split_seed")), **split_counts(run_dir)},
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


def write_detector_onnx(model, size: int, out_path: Path) -> None:
    """A single-stage detector as ONNX in the dense layout (free batch, height and width), atomically."""
    import torch
    from fetalkit.io.images import atomic_writer
    from fetalkit.training.detectors import DenseDetectorExport
    wrapper = DenseDetectorExport(model, size).eval()
    x = torch.zeros(1, 1, size, size)
    with atomic_writer(out_path) as f:
        torch.onnx.export(wrapper, (x,), f, opset_version=17, input_names=["image"], output_names=["boxes", "scores"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "boxes": {0: "batch", 1: "anchors"}, "scores": {0: "batch", 1: "anchors"}},
                          dynamo=False)


def export_detector(checkpoint: Path, out_path: Path, name: str | None = None,
                    operating_point: dict | None = None) -> dict:
    """Export a single-stage detector run to ONNX (dense layout, see fetalkit.runtime.detector) + card.
    ``operating_point`` (conf, iou, chosen_on) goes into the card instead of the untuned default,
    e.g. a final fit's, carried over from the val run of its recipe."""
    from fetalkit.training.detect import load_detector_checkpoint
    from fetalkit.training.detectors import DET_ARCHS, INPUT_MULTIPLE
    model, cfg, ck = load_detector_checkpoint(checkpoint)
    write_detector_onnx(model, cfg.size, out_path)
    run_dir = checkpoint.parent
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else ""
    card = {
        "name": name or out_path.stem, "task": "detector", "input_hw": [cfg.size, cfg.size],
        # the longer side goes to input_hw; the other is padded only to a multiple of this
        "input_multiple": INPUT_MULTIPLE,
        "normalise": {"mean": 0.0, "std": 1.0, "applied_to": "x / 255 (the graph normalises inside)"},
        "classes": list(cfg.categories), "output": "dense",
        "operating_point": operating_point or {"conf": 0.25, "iou": 0.6,
                                               "chosen_on": "default (run eval detector --sweep --update-card)"},
        "arch": cfg.arch, "arch_description": DET_ARCHS[cfg.arch].description,
        "params": count_parameters(model), "init": cfg.init, "precision": "fp32",
        "train": {"epochs": cfg.epochs, "best_epoch": ck["epoch"], "seed": cfg.seed, "lr": cfg.lr,
                  "batch_size": cfg.batch_size, "size": cfg.size, "command": command,
                  "trained_on": "train+val (final fit)" if cfg.final else "train",
                  "val_metrics": {k: v for k, v in ck.get("metrics", {}).items() if k.startswith("val_")}},
        "split": {"seed": cfg.data_split_seed, **split_counts(run_dir)},
        "metrics": {},
    }
    write_card(out_path, card)
    return card


NETWORK_PREFIXES = ("/backbone/", "/head/")


def is_decode_tail(node_name: str) -> bool:
    """Nodes outside the network proper: box decoding from anchors and score activation.
    They stay in float: 8-bit per-tensor anchor coordinates step by about 1 px at 256 px
    input, which cost 0.05 symphysis AP at the strict IoUs (0.8-0.95) on val."""
    return not node_name.startswith(NETWORK_PREFIXES)


def quantize_qdq(fp32_path: Path, out_path: Path, batches: list[dict], op_types: list[str],
                 keep_float: Callable[[str], bool] = lambda name: False) -> None:
    """Static INT8 with onnxruntime's quantize_static: QDQ, per-channel int8 weights, uint8
    activations, MinMax calibration on ``batches`` (input feeds); nodes for which
    ``keep_float(name)`` is true stay in float.  The file is written atomically."""
    import tempfile
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        exclude = [n.name for n in onnx.load(str(pre)).graph.node if keep_float(n.name)]
        q = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        op_types_to_quantize=op_types, nodes_to_exclude=exclude)
        atomic_write_bytes(out_path, q.read_bytes())


def int8_card(fp32_path: Path, out_path: Path, name: str | None, quantisation: dict) -> dict:
    """The FP32 model's card with ``precision: int8``, the quantisation notes and no figures yet."""
    from fetalkit.runtime.card import read_card
    card = read_card(fp32_path)
    card.update(name=name or out_path.stem, precision="int8", quantisation=quantisation | {"from": fp32_path.name},
                metrics={})
    card.pop("speed", None)
    return card


def quantize_detector(fp32_path: Path, out_path: Path, calibration: list, name: str | None = None,
                      keep_float: tuple[str, ...] = ()) -> dict:
    """Static INT8 of a detector (:func:`quantize_qdq`) on calibration images (H x W uint8);
    the card is the FP32 card with ``precision: int8``.  Nodes whose names start with a
    prefix in ``keep_float`` stay in float (mixed precision), as does the box decoding."""
    from fetalkit.runtime.detector import OnnxDetector

    det = OnnxDetector(fp32_path, threads=2)
    batches = [{det.input_name: det.prepare(im)[0]} for im in calibration]
    quantize_qdq(fp32_path, out_path, batches, ["Conv", "Add", "Relu", "Clip", "Resize", "MaxPool", "Mul"],
                 lambda name: name.startswith(tuple(keep_float)) or is_decode_tail(name))
    card = int8_card(fp32_path, out_path, name, {
        "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations; box decoding in float",
        "kept_float": list(keep_float), "calibration_images": len(calibration)})
    write_card(out_path, card)
    return card
