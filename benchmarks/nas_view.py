"""A small search over ResNet-style view classifiers (depth x width) under a compute budget,
as in the FPUS23 paper's NAS appendix (ResNet8 / ResNet10), against the pruned MobileNetV2.

    python benchmarks/nas_view.py --run RUN --budget-mmacs 50 --epochs 6 --out runs/nas_view \\
        [--compression runs/compress_view/table.csv]

Every candidate trains with one recipe on the split of the view run RUN (its split.txt,
the same cached inputs), the epoch chosen on val; the candidate kept is the one with the
best val accuracy (then the fewest MACs) within the budget.  Test accuracy is reported
for every candidate beside it, never used to choose.  With --compression, the pruned
MobileNetV2 rows of benchmarks/compression_table.py are drawn on the same axes.
Writes candidates.csv and accuracy_vs_macs.png.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from fetalkit.training.compress import count_macs
from fetalkit.training.models import count_parameters
from fetalkit.training.view import (RESNET_BLOCKS, ViewTrainConfig, fit, labels_of, load_view_arrays,
                                    load_view_checkpoint, predict, split_items, view_arch)

CANDIDATES = [(d, w) for d in sorted(RESNET_BLOCKS) for w in (8, 16)] + [(8, 24), (10, 24)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a 'fetalkit train view' run folder (its split and size)")
    ap.add_argument("--budget-mmacs", type=float, default=50.0, help="compute budget, million MACs per image")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compression", type=Path, help="table.csv of benchmarks/compression_table.py --kind view")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    _, ck = load_view_checkpoint(args.run / "best.pt")
    classes, size = ck["config"]["classes"], ck["config"]["size_px"]
    parts = {p: split_items(args.run, p) for p in ("train", "val", "test")}
    arrays = {p: load_view_arrays(items, size) for p, items in parts.items()}
    labels = {p: labels_of(items, classes) for p, items in parts.items()}
    example = torch.zeros(1, 1, size, size)
    rows = []
    for depth, width in CANDIDATES:
        name = f"resnet{depth}-w{width}"
        net = view_arch(name).build(len(classes), "random")
        mmacs = count_macs(net, example) / 1e6
        t0 = time.perf_counter()
        cfg = ViewTrainConfig(arch=name, size_px=size, epochs=args.epochs, lr=args.lr, init="random", seed=0)
        result = fit(arrays["train"], labels["train"], arrays["val"], labels["val"], classes, cfg,
                     args.out / name, model=net)
        net.load_state_dict(torch.load(args.out / name / "best.pt", map_location="cpu", weights_only=False)["model"])
        acc = {p: float((predict(net, arrays[p], "cpu").argmax(1) == labels[p]).mean()) for p in ("val", "test")}
        rows.append({"arch": name, "depth": depth, "width": width, "params": count_parameters(net),
                     "mmacs": round(mmacs, 2), "within_budget": mmacs <= args.budget_mmacs,
                     "val_accuracy": acc["val"], "val_macro_f1": result["best"], "test_accuracy": acc["test"],
                     "train_seconds": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    within = [r for r in rows if r["within_budget"]]
    chosen = max(within, key=lambda r: (r["val_accuracy"], r["val_macro_f1"], -r["mmacs"])) if within else None
    for r in rows:
        r["chosen"] = r is chosen
    with open(args.out / "candidates.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    pruned = []
    if args.compression and args.compression.is_file():
        with open(args.compression) as f:
            pruned = [r for r in csv.DictReader(f) if r["precision"] == "fp32"]
    plot(rows, pruned, args.budget_mmacs, args.out / "accuracy_vs_macs.png")
    print(f"budget {args.budget_mmacs:g} MMACs: chosen {chosen['arch'] if chosen else 'none'}"
          + (f" (val accuracy {chosen['val_accuracy']:.4f}, test {chosen['test_accuracy']:.4f}, "
             f"{chosen['mmacs']} MMACs)" if chosen else ""))


def plot(rows: list[dict], pruned: list[dict], budget: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([r["mmacs"] for r in rows], [r["test_accuracy"] for r in rows], label="ResNet candidates (test)")
    for r in rows:
        ax.annotate(r["arch"].replace("resnet", "R"), (r["mmacs"], r["test_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if pruned:
        ax.scatter([float(r["gmacs"]) * 1000 for r in pruned], [float(r["test_accuracy"]) for r in pruned],
                   marker="s", label="MobileNetV2, pruned 0/30/50/70 % (test)")
    ax.axvline(budget, ls="--", c="grey", lw=1, label=f"budget {budget:g} MMACs")
    ax.set_xscale("log")
    ax.set_xlabel("million multiply-accumulates per image (fvcore)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
