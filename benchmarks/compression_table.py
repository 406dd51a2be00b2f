"""The compression table (FPUS23 paper, Table 2) for fetalkit's own models: structured pruning at
30 / 50 / 70 % of the channels, fine-tuned, each also as static INT8.

    python benchmarks/compression_table.py --kind view --checkpoint RUN/best.pt --epochs 3 --out runs/compress_view
    python benchmarks/compression_table.py --kind detector --checkpoint src/fetalkit/models/psfhs-fcos-mnv2.pt \\
        --data DET_SET --epochs 4 --out runs/compress_det

For every model: parameters, multiply-accumulates (fvcore), ONNX file size, peak memory of
inference (a fresh process: onnxruntime session + 5 runs), latency (onnxruntime, batch 1,
1 thread, median of 200 runs; ratio to the unpruned FP32 model measured in the same run)
and the held-out figures: test accuracy / macro-F1 for the view classifier (its run's
split); for the detector, on the test part of its split, COCO AP[.5:.95] per class and the
symphysis label F1 on the source scans, and its FPPI on the derived negatives (the
figures of the README's detection row).
Pruning: torch-pruning, L2 group magnitude, every prunable layer group at the same ratio
(``--global-ranking``: ratio of all channels, ranked together), the view classifier's class
layer and the detector's FPN and head kept; ``--steps N`` (detector) prunes in N equal steps,
each fine-tuned; fine-tuning
selects the epoch on the val part, as training does; ``--distill W`` (detector) also
distils the unpruned detector into the pruned one while fine-tuning.  ``--ratio-of params`` reads
each ratio as a share of the model's parameters (the FPUS23 paper's "x % pruned"), pruned as the
smallest channel ratio that removes it.  Writes table.csv and table.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fetalkit.training.compress import (channel_ratio_for_params, count_macs, detector_ignored_layers, latency_ms,
                                        peak_inference_mb, prune_channels, pruned_card, step_ratios,
                                        view_ignored_layers)
from fetalkit.training.models import count_parameters

RATIOS = (0.3, 0.5, 0.7)


def measure(onnx_path: Path, model, example: torch.Tensor, feed: dict, runs: int) -> dict:
    return {"params": count_parameters(model), "gmacs": count_macs(model, example) / 1e9,
            "onnx_mb": onnx_path.stat().st_size / 2**20,
            "peak_mb": peak_inference_mb(onnx_path, tuple(next(iter(feed.values())).shape)),
            "ms": latency_ms(onnx_path, feed, runs=runs)}


def channel_ratio(args, model, prune_copy, ratio: float) -> float:
    """The channel ratio that ``ratio`` asks for: itself (``--ratio-of channels``), or the one that removes
    ``ratio`` of the parameters (``--ratio-of params``, the FPUS23 paper's meaning), found on copies."""
    if args.ratio_of == "channels":
        return ratio

    def params_left(r: float) -> int:
        return count_parameters(prune_copy(copy.deepcopy(model), r))
    found = channel_ratio_for_params(params_left, count_parameters(model), ratio)
    print(f"{ratio:.0%} of the parameters: {found:.3f} of the channels", flush=True)
    return found


def pruning_fields(args, ratio: float, channels: float) -> dict:
    return {"pruned": ratio, "pruned_of": args.ratio_of, "pruned_channels": channels}


# --------------------------------------------------------------------------- view classifier


def view_rows(args) -> list[dict]:
    from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD, normalise
    from fetalkit.runtime.session import OnnxModel
    from fetalkit.training.view import (ViewTrainConfig, export_view, fit, labels_of, load_view_arrays,
                                        load_view_checkpoint, quantize_view, split_items)
    model, ck = load_view_checkpoint(args.checkpoint)
    cfg, run_dir = ck["config"], args.checkpoint.parent
    classes, size = cfg["classes"], cfg["size_px"]
    parts = {p: split_items(run_dir, p) for p in ("train", "val", "test")}
    arrays = {p: load_view_arrays(items, size) for p, items in parts.items()}
    labels = {p: labels_of(items, classes) for p, items in parts.items()}
    example = torch.zeros(1, 1, size, size)
    feed = {"image": normalise(arrays["test"][:1], GRAY_MEAN, GRAY_STD)[:, None]}

    def scores(onnx_path: Path) -> dict:
        from fetalkit.training.view import macro_f1
        m = OnnxModel(onnx_path, threads=2)
        pred = np.concatenate([m.run(normalise(arrays["test"][i:i + 64], GRAY_MEAN, GRAY_STD)[:, None]).argmax(1)
                               for i in range(0, len(arrays["test"]), 64)])
        return {"test_accuracy": float((pred == labels["test"]).mean()),
                "test_macro_f1": macro_f1(labels["test"], pred, len(classes))}

    def prune_copy(net, r):
        return prune_channels(net, example, r, view_ignored_layers(net), global_ranking=args.global_ranking)

    rows = []
    for ratio in (0.0, *args.ratios):
        net = copy.deepcopy(model)
        channels = channel_ratio(args, model, prune_copy, ratio) if ratio else 0.0
        if ratio:
            prune_copy(net, channels)
            tune = ViewTrainConfig(arch=cfg["arch"], size_px=size, epochs=args.epochs, batch_size=cfg["batch_size"],
                                   lr=args.lr, seed=cfg["seed"])
            out = args.out / f"view_p{int(ratio * 100)}"
            fit(arrays["train"], labels["train"], arrays["val"], labels["val"], classes, tune, out, model=net)
            net.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=False)["model"])
        fp32 = args.out / f"view_p{int(ratio * 100)}.onnx"
        export_view(net.eval(), classes, size, fp32, {"arch": cfg["arch"], **pruning_fields(args, ratio, channels)})
        int8 = fp32.with_name(fp32.stem + "-int8.onnx")
        rng = np.random.default_rng(0)
        quantize_view(fp32, int8, arrays["train"][rng.permutation(len(arrays["train"]))[:128]])
        for precision, path in (("fp32", fp32), ("int8", int8)):
            rows.append({"model": "view-mnv2", **pruning_fields(args, ratio, channels), "precision": precision,
                         **measure(path, net, example, feed, args.runs), **scores(path)})
            print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- detector


def detector_rows(args) -> list[dict]:
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.evaluation.detection import evaluate_detector
    from fetalkit.io.images import read_gray
    from fetalkit.runtime.card import read_card, write_card
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.training.detect import fit, load_detector_checkpoint, load_letterboxed, split_indices
    from fetalkit.training.detectors import DenseDetectorExport
    from fetalkit.training.export import quantize_detector, write_detector_onnx
    model, cfg, ck = load_detector_checkpoint(args.checkpoint)
    ds = read_detection_set(args.data)
    train_idx, val_idx, test_idx = split_indices(ds, cfg.data_split_seed)
    data = load_letterboxed(ds, cfg.size)
    example = torch.zeros(1, 1, cfg.size, cfg.size)
    bundled_card = read_card(args.checkpoint.with_suffix(".onnx"))
    calibration = [read_gray(ds.samples[i].image_path) for i in train_idx[:64]]
    feed = None

    def scores(onnx_path: Path) -> dict:
        # as the headline figures: AP and F1 on the source scans, FPPI on the derived negatives
        s = evaluate_detector(ds.subset(test_idx), OnnxDetector(onnx_path))
        src = s["source_images"]
        return {"ap_pubic_symphysis": src["ap_pubic_symphysis"], "ap_fetal_head": src["ap_fetal_head"],
                "f1_pubic_symphysis": src["f1_pubic_symphysis"], "fppi_pubic_symphysis": s["fppi_pubic_symphysis"]}

    def prune_copy(net, r):
        return prune_channels(net, example, r, detector_ignored_layers(net), traced=DenseDetectorExport(net, cfg.size),
                              global_ranking=args.global_ranking)

    rows = []
    for ratio in (0.0, *args.ratios):
        net = copy.deepcopy(model)
        channels = channel_ratio(args, model, prune_copy, ratio) if ratio else 0.0
        fp32 = args.out / f"det_p{int(ratio * 100)}.onnx"
        card = copy.deepcopy(bundled_card)
        if ratio:
            tune = copy.deepcopy(cfg)
            tune.epochs, tune.lr, tune.from_checkpoint = args.epochs // args.steps, args.lr, None
            # another fine-tuning seed, the same split (a config's split follows its seed unless pinned)
            tune.seed, tune.split_seed = (cfg.seed if args.seed is None else args.seed), cfg.data_split_seed
            tune.threads = args.threads  # fit sets torch's threads from its config
            if args.distill:  # the unpruned detector teaches its pruned copy (same FPN and head)
                tune.distill_from, tune.distill_weight = str(args.checkpoint), args.distill
            for step, step_ratio in enumerate(step_ratios(channels, args.steps), 1):
                prune_copy(net, step_ratio)
                out = args.out / (f"det_p{int(ratio * 100)}" + (f"_s{step}" if args.steps > 1 else ""))
                fit(ds, data, train_idx, val_idx, tune, out, resume=True, model=net,
                    progress=lambda row: print({k: row[k] for k in row if k.startswith(("epoch", "val_ap", "seconds"))},
                                               flush=True))
                net.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=False)["model"])
            write_detector_onnx(net.eval(), cfg.size, fp32)
            # the operating point of a pruned detector is chosen again on val, as for any detector
            tuning = {"epochs": args.epochs, "steps": args.steps, "seed": tune.seed, "lr": args.lr,
                      "distill": args.distill, "global_ranking": args.global_ranking}
            card = pruned_card(card, name=fp32.stem, params=count_parameters(net),
                               pruning=pruning_fields(args, ratio, channels), pruned_from=args.checkpoint.stem,
                               best=torch.load(out / "best.pt", map_location="cpu", weights_only=False),
                               tuning=tuning, command="python benchmarks/compression_table.py " + " ".join(sys.argv[1:]))
            write_card(fp32, card)
            sweep = evaluate_detector(ds.subset(val_idx), OnnxDetector(fp32), sweep=True)["_sweep"]["best"]
            card["operating_point"] = {"conf": sweep["conf"], "iou": sweep["iou"],
                                       "chosen_on": f"val split (seed {cfg.data_split_seed}), best mean label F1 "
                                                    f"{sweep['f1_mean']:.4f}"}
            write_card(fp32, card)
        else:
            write_detector_onnx(net.eval(), cfg.size, fp32)
            card.update(name=fp32.stem)
            write_card(fp32, card)
        int8 = fp32.with_name(fp32.stem + "-int8.onnx")
        quantize_detector(fp32, int8, calibration)
        if feed is None:
            det = OnnxDetector(fp32)
            feed = {det.input_name: det.prepare(calibration[0])[0]}
        traced = DenseDetectorExport(net, cfg.size).eval()
        for precision, path in (("fp32", fp32), ("int8", int8)):
            rows.append({"model": "psfhs-fcos-mnv2", **pruning_fields(args, ratio, channels), "precision": precision,
                         **measure(path, traced, example, feed, args.runs), **scores(path)})
            print(rows[-1], flush=True)
    return rows


def pruned_cell(row: dict) -> str:
    if not row["pruned"] or row.get("pruned_of", "channels") == "channels":
        return f"{round(row['pruned'] * 100)} %"
    return f"{round(row['pruned'] * 100)} % of params ({round(row['pruned_channels'] * 100)} % of channels)"


def write_tables(rows: list[dict], out: Path) -> None:
    base = next(r["ms"] for r in rows if r["pruned"] == 0 and r["precision"] == "fp32")
    base_macs = next(r["gmacs"] for r in rows if r["pruned"] == 0 and r["precision"] == "fp32")
    for r in rows:
        r["speedup"] = base / r["ms"]
        r["fewer_macs"] = base_macs / r["gmacs"]
    keys = list(rows[0])
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    metric_keys = [k for k in keys if k.startswith(("test_", "ap_", "f1_", "fppi_"))]
    head = ["model", "pruned", "precision", "params", "GMACs", "fewer MACs", "ONNX MB", "peak MB", "ms/image",
            "speed-up", *metric_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], pruned_cell(r), r["precision"], f"{r['params'] / 1e6:.3f} M",
                 f"{r['gmacs']:.4f}", f"{r['fewer_macs']:.2f}x", f"{r['onnx_mb']:.2f}", f"{r['peak_mb']:.1f}",
                 f"{r['ms']:.2f}", f"{r['speedup']:.2f}x", *[f"{r[k]:.4f}" for k in metric_keys]]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["view", "detector"], required=True)
    ap.add_argument("--checkpoint", type=Path, required=True, help="view: a run's best.pt; detector: a .pt beside its .onnx")
    ap.add_argument("--data", type=Path, help="detector: the label set it trained on")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after pruning")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak learning rate")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="detector: weight of distillation from the unpruned checkpoint while fine-tuning (0: none)")
    ap.add_argument("--steps", type=int, default=1,
                    help="detector: prune in this many equal steps, each fine-tuned for epochs/steps (1: one shot)")
    ap.add_argument("--global-ranking", action="store_true",
                    help="rank channels across all layer groups (ratio of all channels) instead of ratio of each group")
    ap.add_argument("--ratio-of", choices=["channels", "params"], default="channels",
                    help="what a ratio is of: channels of each layer group (torch-pruning's ratio), or the model's "
                         "parameters (the FPUS23 paper's: the channel ratio that removes that share of the weights)")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="pruning ratios (the unpruned row always comes first)")
    ap.add_argument("--seed", type=int, default=None,
                    help="detector: fine-tuning seed (default: the checkpoint's training seed)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per model")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for fine-tuning")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not 1 <= args.steps <= args.epochs:
        ap.error(f"--steps must be between 1 and --epochs ({args.epochs}): each step fine-tunes epochs/steps")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = view_rows(args) if args.kind == "view" else detector_rows(args)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    write_tables(rows, args.out)


if __name__ == "__main__":
    main()
