"""Segmentation training loop (binary head masks and multi-class label maps).

Read it top to bottom: ``prepare`` -> ``train_one_epoch`` / ``evaluate`` per epoch
-> checkpoints + ``metrics.csv`` + ``metrics.png`` -> ``export_onnx``.
Data are held in memory at the model input size (they are small), so the loop
works on 2 CPU cores; a GPU is used when present.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fetalkit.datasets.splits import split_seed_of
from fetalkit.runtime.preprocess import GRAY_MEAN, GRAY_STD
from fetalkit.training.models import build_segmenter, count_parameters, set_encoder_trainable
from fetalkit.training.runs import RunFiles, default_device, seed_everything


@dataclass
class SegData:
    """Images and targets at the model input size.

    ``images``: N x h x w uint8. ``targets``: N x h x w uint8, either soft binary
    masks (0..255 = fraction of the pixel inside the object, ``classes == 1``) or
    label maps (0..classes-1).
    """

    images: np.ndarray
    targets: np.ndarray
    classes: int


@dataclass
class TrainConfig:
    arch: str = "unet-mobilenet_v2"
    init: str = "imagenet"              # imagenet | random
    strategy: str = "full"              # full | decoder (frozen encoder)
    epochs: int = 25
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    input_hw: tuple[int, int] = (176, 256)
    threads: int = 2
    hflip: bool = True                  # off where left/right carries anatomy (PSFHS: caudal is right)
    extra: dict = field(default_factory=dict)
    split_seed: Optional[int] = None    # None: ``seed`` (another seed then trains on the same split)

    @property
    def data_split_seed(self) -> int:
        return split_seed_of(self.seed, self.split_seed)


def build_augment(seed: int, hflip: bool = True):
    """Geometric + intensity augmentation (albumentations), applied to image and target together."""
    import albumentations as A
    import cv2
    aug = A.Compose([
        A.HorizontalFlip(p=0.5 if hflip else 0.0),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.06, 0.06), rotate=(-25, 25),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
        A.RandomGamma(gamma_limit=(80, 125), p=0.3),
        A.GaussianBlur(blur_limit=(3, 5), p=0.15),
    ], seed=seed)
    return aug


class ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, data: SegData, indices: np.ndarray, augment=None):
        self.data, self.indices, self.augment = data, np.asarray(indices), augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        image, target = self.data.images[i], self.data.targets[i]
        if self.augment is not None:
            out = self.augment(image=image, mask=target)
            image, target = out["image"], out["mask"]
        x = torch.from_numpy(((image.astype(np.float32) / 255.0 - GRAY_MEAN) / GRAY_STD)[None])
        if self.data.classes == 1:
            y = torch.from_numpy((target.astype(np.float32) / 255.0)[None])
        else:
            y = torch.from_numpy(target.astype(np.int64))
        return x, y


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (a loss, not the reported metric)."""
    if classes == 1:
        prob, onehot = torch.sigmoid(logits), target
    else:
        prob = logits.softmax(1)[:, 1:]
        onehot = F.one_hot(target, classes).permute(0, 3, 1, 2).float()[:, 1:]
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Cross-entropy (BCE for one class) + soft Dice: the usual pair for thin/small structures."""
    ce = (F.binary_cross_entropy_with_logits(logits, target) if classes == 1
          else F.cross_entropy(logits, target))
    return ce + soft_dice_loss(logits, target, classes)


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, device, classes: int) -> float:
    model.train()
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = seg_loss(model(x), y, classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(x)
        n += len(x)
    return total / max(n, 1)


@torch.no_grad()
def predict_probabilities(model: nn.Module, loader, device, classes: int) -> tuple[np.ndarray, float]:
    """Probabilities for a (non-augmented) loader, N x h x w (binary) or N x C x h x w, and the mean loss."""
    model.eval()
    probs, total, n = [], 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total += float(seg_loss(logits, y, classes)) * len(x)
        n += len(x)
        p = torch.sigmoid(logits)[:, 0] if classes == 1 else logits.softmax(1)
        probs.append(p.cpu().numpy())
    return np.concatenate(probs), total / max(n, 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """AdamW + one-cycle schedule; the pretrained encoder gets a 3x lower rate (discriminative rates)."""
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    enc_lr = cfg.lr / 3 if cfg.init == "imagenet" else cfg.lr
    groups = [{"params": rest, "lr": cfg.lr}]
    if enc:
        groups.append({"params": enc, "lr": enc_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    return optimizer, scheduler


ValMetric = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def fit(data: SegData, train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig, out_dir: Path,
        val_metrics: ValMetric, select_key: str, select_mode: str = "min", resume: bool = True,
        progress: Optional[Callable[[dict], None]] = None, stop_after_epoch: Optional[int] = None) -> dict:
    """Train, validate each epoch, keep ``last.pt`` / ``best.pt``, write ``metrics.csv`` + ``metrics.png``.

    ``val_metrics(probabilities, val_idx)`` returns task metrics (e.g. HC error) and
    ``select_key`` picks the best epoch. Re-running with the same ``out_dir``
    resumes from ``last.pt`` exactly (model, optimiser, schedule and every random
    state), so an interrupted run ends where an uninterrupted one would.
    ``stop_after_epoch`` ends this call early (time-boxed training on a CPU).
    """
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = default_device()
    model = build_segmenter(cfg.arch, data.classes, cfg.init).to(device)
    if cfg.strategy == "decoder":
        set_encoder_trainable(model, False)
    elif cfg.strategy != "full":
        raise ValueError(f"unknown strategy {cfg.strategy!r}; use full or decoder")
    g = torch.Generator().manual_seed(cfg.seed)
    augment = build_augment(cfg.seed, cfg.hflip)
    train_loader = torch.utils.data.DataLoader(ArrayDataset(data, train_idx, augment),
                                               batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                               generator=g)
    val_loader = torch.utils.data.DataLoader(ArrayDataset(data, val_idx), batch_size=16)
    optimizer, scheduler = make_optimizer(model, cfg, len(train_loader))
    run = RunFiles(out_dir, asdict(cfg), select_mode, model, optimizer, scheduler, g, augment)
    start_epoch = run.start(resume, device, {
        "params_total": count_parameters(model), "params_trainable": count_parameters(model, trainable_only=True),
        "n_train": int(len(train_idx)), "n_val": int(len(val_idx))})
    row: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        train_loss = train_one_epoch(model, train_loader, optimizer, scheduler, device, data.classes)
        probs, val_loss = predict_probabilities(model, val_loader, device, data.classes)
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
               **{k: round(float(v), 5) for k, v in val_metrics(probs, val_idx).items()},
               "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
        run.end_epoch(epoch, row, row[select_key])
        if progress:
            progress({**row, "best": run.best})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return {"best": run.best, "last": row}


class ProbabilityHead(nn.Module):
    """Wraps a segmenter so the exported graph outputs probabilities (sigmoid / softmax)."""

    def __init__(self, model: nn.Module, classes: int):
        super().__init__()
        self.model, self.classes = model, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.classes == 1:
            return torch.sigmoid(logits)
        # Softmax over the channel axis written out element-wise: onnxruntime runs its
        # Softmax node on the last axis only, so a channel softmax costs two transposes of
        # the full-resolution map (about 9 % of the PSFHS model's time); this is the same
        # function, exported as ReduceMax / Sub / Exp / ReduceSum / Div.
        e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return e / e.sum(dim=1, keepdim=True)


def load_checkpoint_model(path: Path, classes: int) -> tuple[nn.Module, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build_segmenter(cfg["arch"], classes, init="random")
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def export_onnx(model: nn.Module, classes: int, input_hw: tuple[int, int], path: Path) -> Path:
    """Export to ONNX (opset 17, dynamic batch) with probabilities as output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # eval() on the wrapper: export restores its mode, and a train-mode wrapper would flip the model
    wrapped = ProbabilityHead(model.cpu(), classes).eval()
    x = torch.zeros(1, 1, *input_hw)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(wrapped, (x,), str(tmp), input_names=["image"], output_names=["probability"],
                      dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    tmp.replace(path)
    return path
