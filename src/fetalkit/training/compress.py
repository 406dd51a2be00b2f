"""Model compression: structured channel pruning (torch-pruning), compute counts (fvcore), and
the measurements of an exported ONNX model (file size, peak memory, latency).

Pruning removes whole channels, so a pruned network is an ordinary smaller network: its ONNX
file runs in onnxruntime like any other, and static INT8 (``fetalkit.training.export.quantize_qdq``)
applies on top.  ``benchmarks/compression_table.py`` puts it together for the view classifier
and the bundled detector.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn


def prune_channels(model: nn.Module, example: torch.Tensor, ratio: float, ignored: list[nn.Module],
                   traced: nn.Module | None = None, round_to: int = 8, global_ranking: bool = False) -> nn.Module:
    """Remove ``ratio`` of the channels of the prunable layer groups, in place.

    torch-pruning's MetaPruner with L2 group-magnitude importance: coupled layers
    (a convolution, its BatchNorm, the next layer's inputs, residual additions) are
    pruned together, so the network stays consistent.  ``ignored`` layers keep their
    output channels (the class layer, a detector's FPN and head); ``traced`` is the
    module to trace (a wrapper whose forward takes a tensor), default ``model``.
    Channel counts are rounded to multiples of ``round_to`` (kernels prefer them).
    By default every group loses ``ratio`` of its channels; ``global_ranking`` instead ranks
    the channels of all groups together (each group's importance over its mean, torch-pruning's
    default normaliser), so ``ratio`` of all channels go, more from the groups that matter
    less; no group loses more than 90 %.
    """
    import torch_pruning as tp
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    root = traced if traced is not None else model
    root.eval()
    pruner = tp.pruner.MetaPruner(root, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to,
                                  global_pruning=global_ranking, max_pruning_ratio=0.9)
    pruner.step()
    return model


def channel_ratio_for_params(params_left: Callable[[float], int], params_before: int, removed: float,
                             iters: int = 12) -> float:
    """The smallest channel ratio whose pruning removes at least ``removed`` of the parameters.

    The FPUS23 paper's "x % pruned" is x % of the weights (Han et al. 2015), while torch-pruning's ratio
    is of channels: removing half of a convolution's input and output channels removes about three
    quarters of its weights.  ``params_left(r)`` prunes a copy at channel ratio ``r`` and counts what is
    left; the parameters left fall as ``r`` grows (in steps, with channel rounding), so bisection finds it.
    """
    if not 0.0 < removed < 1.0:
        raise ValueError(f"the fraction of parameters to remove must be in (0, 1), got {removed}")
    lo, hi = 0.0, 0.9
    if 1.0 - params_left(hi) / params_before < removed:
        raise ValueError(f"pruning 90 % of the channels removes less than {removed:.0%} of the parameters "
                         "(the layers kept hold too many); ask for less")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if 1.0 - params_left(mid) / params_before < removed:
            lo = mid
        else:
            hi = mid
    return hi


def step_ratios(ratio: float, steps: int) -> list[float]:
    """Per-step ratios that prune ``ratio`` of the channels in ``steps`` equal steps, each step's
    ratio taken of the channels left by the one before (0.5 in 2 steps: 0.25, then 1/3)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    kept = [1.0 - ratio * k / steps for k in range(steps + 1)]
    return [1.0 - kept[k + 1] / kept[k] for k in range(steps)]


def pruned_card(card: dict, *, name: str, params: int, pruning: dict, pruned_from: str, best: dict,
                tuning: dict, command: str) -> dict:
    """The unpruned model's card made its pruned copy's: the training, export and speed records
    described the unpruned network, so they give way to the fine-tuning's (``tuning``: epochs, seed,
    lr, ...; ``best``: the fine-tuning's best checkpoint, its epoch and val figures) and the command
    that made it; ``card`` itself is not changed."""
    kept = {k: v for k, v in card.items() if k not in ("speed", "export_command", "metrics", "train")}
    old_train = card.get("train", {})
    return {**kept, "name": name, "params": params, **pruning, "pruned_from": pruned_from, "metrics": {},
            "train": {**tuning, "best_epoch": best["epoch"], "batch_size": old_train.get("batch_size"),
                      "size": old_train.get("size"), "trained_on": "train", "command": command,
                      "val_metrics": {k: v for k, v in best.get("metrics", {}).items() if k.startswith("val_")}}}


def view_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The class layer of a view classifier (its outputs are the classes)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1:]


def detector_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """A single-stage detector's FPN and head: only the trunk is pruned (about 80 % of the compute of
    fcos-mnv2 at 256 px, fvcore), so the anchors, levels and head stay as trained."""
    keep = (nn.Conv2d, nn.GroupNorm, nn.BatchNorm2d)
    return [m for part in (model.backbone.fpn, model.head) for m in part.modules() if isinstance(m, keep)]


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by fvcore (which calls them "flops")."""
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(model.eval(), example)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(analysis.total())


def latency_ms(onnx_path: Path, feed: dict, runs: int = 100, warmup: int = 10, threads: int = 1) -> float:
    """Median milliseconds of one onnxruntime run of ``feed`` (batch as given), ``threads`` intra-op threads."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


_PEAK_SCRIPT = """
import json, sys
import numpy as np, onnxruntime as ort

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the present size
before = status_kb("VmRSS:")
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], sess_options=opts, providers=["CPUExecutionProvider"])
x = np.zeros([int(v) for v in sys.argv[2].split(",")], np.float32)
for _ in range(5):
    s.run(None, {s.get_inputs()[0].name: x})
print(json.dumps({"peak_mb": (status_kb("VmHWM:") - before) / 1024}))
"""


def peak_inference_mb(onnx_path: Path, input_shape: tuple[int, ...]) -> float:
    """Peak resident memory that loading ``onnx_path`` and running it costs, in MiB, in a fresh process:
    the peak (Linux VmHWM, reset once Python and onnxruntime are loaded) after the session and 5 runs,
    minus the size before the session."""
    res = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(onnx_path), ",".join(map(str, input_shape))],
                         capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"])
