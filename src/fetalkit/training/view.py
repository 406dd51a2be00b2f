"""The scan-view classifier: architectures, training loop, export.

Read it top to bottom: ``VIEW_ARCHS`` (one registry: MobileNetV2 and small ResNets),
``load_view_arrays`` (every image through :func:`fetalkit.runtime.classifier.view_input`,
cached), ``train_one_epoch`` / ``evaluate``, ``fit`` and ``export_view``.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from fetalkit.datasets.views import ViewItem, read_view_image
from fetalkit.errors import DataError, ModelError
from fetalkit.runtime.classifier import view_input
from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD, normalise
from fetalkit.training.headseg import cache_dir
from fetalkit.training.models import count_parameters, offline_imagenet_weights
from fetalkit.training.runs import RunFiles, default_device, seed_everything


# --------------------------------------------------------------------------- architectures


def _mobilenet_v2(n_classes: int, init: str) -> nn.Module:
    import torchvision
    model = torchvision.models.mobilenet_v2(num_classes=n_classes)
    if init == "imagenet":
        state = {k: v for k, v in offline_imagenet_weights("mobilenet_v2").items() if not k.startswith("classifier")}
        model.load_state_dict(state, strict=False)
    # grey input: the RGB filters of the first convolution summed into one channel
    first = model.features[0][0]
    conv = nn.Conv2d(1, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
    conv.weight.data = first.weight.data.sum(dim=1, keepdim=True)
    model.features[0][0] = conv
    return model


class _Block(nn.Module):
    """ResNet basic block: two 3 x 3 convolutions with BatchNorm, identity or 1 x 1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.short = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.short(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet for grey views: a strided stem, three stages of basic blocks
    (width w, 2w, 4w; each stage halves the size), global pooling, a linear layer.
    Depth = 2 + 2 x blocks (ResNet8: one block a stage)."""

    def __init__(self, n_classes: int, blocks: tuple[int, int, int], width: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c = width
        for stage, n in enumerate(blocks):
            c_out = width * 2 ** stage
            for k in range(n):
                layers.append(_Block(c, c_out, 2 if k == 0 else 1))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


RESNET_BLOCKS = {8: (1, 1, 1), 10: (2, 1, 1), 14: (2, 2, 2), 20: (3, 3, 3)}


@dataclass(frozen=True)
class ViewArch:
    name: str
    description: str
    build: Callable[[int, str], nn.Module]


VIEW_ARCHS: dict[str, ViewArch] = {
    "mnv2": ViewArch("mnv2", "MobileNetV2 (torchvision), ImageNet-initialised, grey first convolution",
                     _mobilenet_v2),
}


def view_arch(name: str) -> ViewArch:
    """An architecture of ``VIEW_ARCHS``, or a small ResNet named ``resnet{8,10,14,20}-w{width}``."""
    if name in VIEW_ARCHS:
        return VIEW_ARCHS[name]
    m = re.fullmatch(r"resnet(\d+)-w(\d+)", name)
    if m and int(m.group(1)) in RESNET_BLOCKS and 4 <= int(m.group(2)) <= 128:
        depth, width = int(m.group(1)), int(m.group(2))
        blocks = RESNET_BLOCKS[depth]
        return ViewArch(name, f"ResNet{depth} (blocks {blocks}, width {width}), random init",
                        lambda n, init: SmallResNet(n, blocks, width))
    raise ModelError(f"unknown view architecture {name!r}; choose mnv2 or resnet{{8,10,14,20}}-w<width>")


# --------------------------------------------------------------------------- data


def load_view_arrays(items: list[ViewItem], size_px: int,
                     progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """N x size x size uint8 network inputs of ``items`` (cached as .npz: derived data, never committed)."""
    key = hashlib.sha1("|".join(f"{it.source.resolve()}#{it.frame}" for it in items).encode()
                       + f"|{size_px}|v1".encode()).hexdigest()[:16]
    cache = cache_dir() / f"views_{size_px}_{key}.npz"
    if cache.is_file():
        return np.load(cache)["images"]
    out = np.zeros((len(items), size_px, size_px), np.uint8)
    for i, it in enumerate(items):
        out[i] = view_input(read_view_image(it), size_px)
        if progress:
            progress(i + 1, len(items))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, images=out)
    tmp.replace(cache)
    return out


def _augment(seed: int):
    import albumentations as A
    return A.Compose([
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.8),
        A.RandomGamma(gamma_limit=(75, 135), p=0.4),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    ], seed=seed)


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, augment=None):
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        return torch.from_numpy(normalise(image, GRAY_MEAN, GRAY_STD)[None]), int(self.labels[i])


# --------------------------------------------------------------------------- training


@dataclass
class ViewTrainConfig:
    arch: str = "mnv2"
    size_px: int = 128
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    init: str = "imagenet"
    seed: int = 0
    split_seed: Optional[int] = None


def class_balanced_sampler(labels: np.ndarray, generator: torch.Generator):
    """Each class drawn equally often (the public sets range from 53 to 1168 images a class)."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels),
                                                  replacement=True, generator=generator)


def train_one_epoch(model, loader, optimizer, scheduler, device) -> float:
    model.train()
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(model(x), y, label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, n = total + loss.item() * len(y), n + len(y)
    return total / max(n, 1)


@torch.no_grad()
def predict(model, images: np.ndarray, device, batch_size: int = 64) -> np.ndarray:
    """N x C softmax probabilities of ``images`` (N x S x S uint8)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(normalise(images[i:i + batch_size], GRAY_MEAN, GRAY_STD)[:, None]).to(device)
        out.append(torch.softmax(model(x), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0))


def fit(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
        classes: list[str], cfg: ViewTrainConfig, out_dir: Path, resume: bool = False,
        progress: Optional[Callable[[dict], None]] = None, model: Optional[nn.Module] = None) -> dict:
    """Train on the train arrays, select the epoch with the best val macro-F1; ``best.pt`` in ``out_dir``.

    ``model``: start from this network (e.g. a pruned one) instead of building ``cfg.arch``.
    """
    seed_everything(cfg.seed)
    device = default_device()
    if model is None:
        model = view_arch(cfg.arch).build(len(classes), cfg.init)
    model = model.to(device)
    rng = torch.Generator().manual_seed(cfg.seed)
    augment = _augment(cfg.seed)
    loader = torch.utils.data.DataLoader(_ViewDataset(train_images, train_labels, augment),
                                         batch_size=cfg.batch_size,
                                         sampler=class_balanced_sampler(train_labels, rng), drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader),
                                                    pct_start=0.15)
    config = {**asdict(cfg), "classes": classes, "arch_description": view_arch(cfg.arch).description}
    run = RunFiles(out_dir, config, "max", model, optimizer, scheduler, rng, augment)
    start = run.start(resume, device, {"train_images": len(train_labels), "val_images": len(val_labels)})
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loss = train_one_epoch(model, loader, optimizer, scheduler, device)
        pred = predict(model, val_images, device).argmax(1)
        row = {"epoch": epoch, "train_loss": round(loss, 5),
               "val_accuracy": round(float((pred == val_labels).mean()), 5),
               "val_macro_f1": round(macro_f1(val_labels, pred, len(classes)), 5),
               "seconds": round(time.perf_counter() - t0, 1)}
        # macro-F1 first (small classes count as much as large ones), accuracy breaks ties
        run.end_epoch(epoch, row, row["val_macro_f1"] + 1e-3 * row["val_accuracy"])
        if progress:
            progress(row)
    best = torch.load(run.best_path, map_location="cpu", weights_only=False)["metrics"] if run.best_path.is_file() else {}
    return {"best": best.get("val_macro_f1", float("nan")), "best_epoch": best.get("epoch"),
            "params": count_parameters(model)}


def labels_of(items: list[ViewItem], classes: list[str]) -> np.ndarray:
    index = {c: k for k, c in enumerate(classes)}
    unknown = sorted({it.label for it in items} - set(index))
    if unknown:
        raise DataError(f"labels {unknown} are not classes of this model ({', '.join(classes)})")
    return np.array([index[it.label] for it in items], np.int64)


# --------------------------------------------------------------------------- export


class _Softmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), 1)


def load_view_checkpoint(checkpoint: Path) -> tuple[nn.Module, dict]:
    """The network of a ``best.pt`` (a pruned network is stored whole) and the checkpoint."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    if "module" in ck:
        model = ck["module"]
    else:
        model = view_arch(cfg["arch"]).build(len(cfg["classes"]), "random")
        model.load_state_dict(ck["model"])
    return model.eval(), ck


def export_view(model: nn.Module, classes: list[str], size_px: int, out_path: Path, card_extra: dict) -> dict:
    """Write ``out_path`` (.onnx, softmax in the graph, dynamic batch) and its card; returns the card."""
    import onnx
    from fetalkit.runtime.card import write_card
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.onnx")
    torch.onnx.export(_Softmax(model.eval()), (torch.zeros(1, 1, size_px, size_px),), str(tmp),
                      input_names=["image"], output_names=["probability"],
                      dynamic_axes={"image": {0: "n"}, "probability": {0: "n"}}, opset_version=17, dynamo=False)
    onnx.checker.check_model(str(tmp))
    tmp.replace(out_path)
    card = {"name": out_path.stem, "task": "view", "input_hw": [size_px, size_px],
            "normalise": {"mean": GRAY_MEAN, "std": GRAY_STD, "applied_to": "x / 255"},
            "classes": classes, "output": "probability",
            "preprocess": "imaged area, letterboxed into a centred square (fetalkit.runtime.classifier.view_input)",
            "params": count_parameters(model), **card_extra}
    write_card(out_path, card)
    return card


# --------------------------------------------------------------------------- one run


def train_view(sources: list[list[ViewItem]], out_dir: Path, cfg: ViewTrainConfig, resume: bool = False,
               progress: Optional[Callable[[dict], None]] = None,
               load_progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Split every source by its groups, train, and write ``split.txt`` (item, part) beside the checkpoints."""
    from fetalkit.datasets.splits import split_seed_of
    from fetalkit.datasets.views import PUBLIC_VIEW_CLASSES, split_view_items
    seed = split_seed_of(cfg.seed, cfg.split_seed)
    train, val = split_view_items(sources, "train", seed), split_view_items(sources, "val", seed)
    present = sorted({it.label for it in train})
    classes = [c for c in PUBLIC_VIEW_CLASSES if c in present] + [c for c in present if c not in PUBLIC_VIEW_CLASSES]
    if len(classes) < 2:
        raise DataError(f"the training part holds {len(classes)} class(es); a classifier needs at least two")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{it.source}#{_frame_field(it)},{it.label},{it.group},{part}"
             for part, part_items in (("train", train), ("val", val),
                                      ("test", split_view_items(sources, "test", seed))) for it in part_items]
    (out_dir / "split.txt").write_text("\n".join(lines) + "\n")
    images = load_view_arrays(train + val, cfg.size_px, load_progress)
    result = fit(images[:len(train)], labels_of(train, classes), images[len(train):], labels_of(val, classes),
                 classes, cfg, out_dir, resume, progress)
    return {**result, "classes": classes, "train": len(train), "val": len(val)}


def _frame_field(item: ViewItem) -> str:
    """What follows ``#`` in ``split.txt``: a video's frame index, ``phantom<seed>`` or nothing."""
    if item.phantom_seed is not None:
        return f"phantom{item.phantom_seed}"
    if item.derive:
        return item.derive
    return "" if item.frame is None else str(item.frame)


def split_items(run_dir: Path, part: str) -> list[ViewItem]:
    """The items of one part of a run's ``split.txt``."""
    out = []
    for line in (run_dir / "split.txt").read_text().splitlines():
        where, label, group, p = line.rsplit(",", 3)
        if p == part:
            source, frame = where.rsplit("#", 1)
            if frame.startswith("phantom"):
                out.append(ViewItem(Path(source), label, group, phantom_seed=int(frame[len("phantom"):])))
            elif frame in ("nops", "nofh"):
                out.append(ViewItem(Path(source), label, group, derive=frame))
            else:
                out.append(ViewItem(Path(source), label, group, int(frame) if frame else None))
    return out


def quantize_view(fp32_path: Path, out_path: Path, calibration: np.ndarray, name: Optional[str] = None) -> dict:
    """Static INT8 (``fetalkit.training.export.quantize_qdq``) calibrated on ``calibration`` (N x S x S uint8)."""
    from fetalkit.runtime.card import write_card
    from fetalkit.training.export import int8_card, quantize_qdq
    feeds = [{"image": normalise(calibration[i:i + 8], GRAY_MEAN, GRAY_STD)[:, None]}
             for i in range(0, len(calibration), 8)]
    quantize_qdq(fp32_path, out_path, feeds, ["Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "GlobalAveragePool"])
    card = int8_card(fp32_path, out_path, name, {
        "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations",
        "calibration_images": int(len(calibration))})
    write_card(out_path, card)
    return card


def export_view_run(checkpoint: Path, out_path: Path, name: Optional[str] = None,
                    int8: bool = False, calibration_n: int = 128) -> dict:
    """Export a run's ``best.pt`` (or ``last.pt``, the schedule's end): ONNX + card (recipe, split, val
    figures); with ``int8`` also
    ``<out>-int8.onnx``, calibrated on up to ``calibration_n`` images of the run's train part."""
    from fetalkit.training.export import split_counts
    model, ck = load_view_checkpoint(checkpoint)
    cfg, run_dir = ck["config"], checkpoint.parent
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else ""
    if "metrics" not in ck:  # last.pt: its epoch's row of metrics.csv (the schedule's end, not a selection)
        import csv
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
        ck["metrics"] = {k: float(v) for k, v in rows[int(ck["epoch"])].items() if k.startswith("val_")}
    card = export_view(model, cfg["classes"], cfg["size_px"], out_path, {
        "name": name or out_path.stem, "arch": cfg["arch"], "arch_description": cfg["arch_description"],
        "train": {"epochs": cfg["epochs"], "best_epoch": ck["epoch"], "seed": cfg["seed"], "lr": cfg["lr"],
                  "batch_size": cfg["batch_size"], "command": command,
                  "val_metrics": {k: v for k, v in ck["metrics"].items() if k.startswith("val_")}},
        "split": {"seed": cfg["seed"] if cfg.get("split_seed") is None else cfg["split_seed"],
                  **split_counts(run_dir)},
        "metrics": {}})
    if int8:
        import random
        train = split_items(run_dir, "train")
        random.Random(0).shuffle(train)
        int8_path = out_path.with_name(out_path.stem + "-int8.onnx")
        quantize_view(out_path, int8_path, load_view_arrays(train[:calibration_n], cfg["size_px"]))
        card["int8_file"] = str(int8_path)
    return card

