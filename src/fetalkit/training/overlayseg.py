"""Training of the overlay-pixel model: the learned inside-sector path of burned-in text removal.

Inside the imaging sector a caliper dot, an arrow or a label drawn over bright
tissue joins the tissue into one bright component, and component-level rules
must then keep or erase both.  The overlay-pixel model decides per pixel
instead: a small fully convolutional network (3 x 3 dilated convolutions) that sees
the grey crop and its 7 x 7 top-hat and outputs the probability that each pixel
was drawn.  :func:`fetalkit.preprocess.text.detect_overlay` runs it only on
crops around the seed pixels (bright top-hat peaks inside the sector).

Training data is made, not labelled: text, calipers, arrows and measurement
traces are pasted on clean frames (:func:`draw_synthetic_overlays`, exact
masks), and 40 x 40 patches are cut around seed pixels, half on overlays and
half on anatomy (the hard negatives).  Frames come from each dataset's own
train split; the operating point is chosen on the val
split with the same scoring as ``benchmarks/measure_text_removal.py``: a pair
of probability thresholds (a hysteresis: pixels above the low one count when
their 8-connected group reaches the high one) whose mean overlay recall is at
least ``min_recall`` on every source folder (de-identification puts recall
first) and that, among those, alters the fewest anatomy pixels.  The run also
writes a static INT8 version (convolutions quantised, calibrated on seed crops
of train frames; ``benchmarks/bench_clean.py`` times both) with its own operating point.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fetalkit.datasets.splits import split_seed_of
from fetalkit.errors import DataError
from fetalkit.evaluation.text import mean_of, sector_or_frame, score_cleaners
from fetalkit.io.images import read_gray
from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.text import (OVERLAY_TASK, TextRemovalParams, draw_synthetic_overlays, overlay_crops,
                                      overlay_seeds)
from fetalkit.runtime.card import read_card, write_card
from fetalkit.runtime.preprocess import normalise
from fetalkit.training.export import int8_card, quantize_qdq
from fetalkit.training.models import count_parameters
from fetalkit.training.runs import RunFiles, default_device, seed_everything

THRESHOLD_GRID = (0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
HIGH_GRID = (0.2, 0.3, 0.5, 0.7, 0.8, 0.9)
MAX_HYSTERESIS_LOW = 0.1  # hysteresis recall <= its low threshold's; the bundled model misses 0.96 at 0.075
OPERATING_RULE = ("(low, high) probability thresholds with val recall >= {} on every source that "
                  "alter the fewest anatomy pixels on the worst source")


@dataclass(frozen=True)
class OverlayTrainConfig:
    channels: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    patch_px: int = 40
    draws_per_frame: int = 2
    patches_per_draw: int = 16
    min_recall: float = 0.96
    n_val_frames: int = 30           # per source folder, for the operating point
    int8: bool = True                # also write overlay-fcn-int8.onnx (static INT8, its own operating point)
    n_calibration_frames: int = 40   # train frames whose seed crops calibrate the INT8 model
    seed: int = 0
    split_seed: Optional[int] = None
    threads: int = 2

    @property
    def data_split_seed(self) -> int:
        return split_seed_of(self.seed, self.split_seed)


def receptive_field_px(dilations: Sequence[int]) -> int:
    return 1 + 2 * sum(dilations)


class OverlayFCN(nn.Module):
    """Grey crop (N x 1 x H x W, ``x / 255``) -> overlay probability (N x 1 x H x W), any H, W.

    The 7 x 7 top-hat is computed in the graph (max-pool erosion and dilation,
    the same border rule as OpenCV's), so the runtime feeds the grey crop only.
    """

    def __init__(self, channels: int = 16, dilations: Sequence[int] = (1, 2, 4, 1), tophat_px: int = 7):
        super().__init__()
        self.tophat_px = tophat_px
        layers: list[nn.Module] = []
        c_in = 2
        for d in dilations:
            layers += [nn.Conv2d(c_in, channels, 3, padding=d, dilation=d), nn.ReLU()]
            c_in = channels
        self.body = nn.Sequential(*layers, nn.Conv2d(channels, 1, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        k, r = self.tophat_px, self.tophat_px // 2
        opened = F.max_pool2d(-F.max_pool2d(-x, k, 1, r), k, 1, r)
        return self.body(torch.cat([x, x - opened], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


# --------------------------------------------------------------------------- data


def draw_training_overlays(gray: np.ndarray, sector: np.ndarray, rng: np.random.Generator):
    """Random overlays for one training draw: more and more varied than the benchmark's."""
    return draw_synthetic_overlays(gray, sector, seed=int(rng.integers(2**31)), n_text_outside=1,
                                   n_text_inside=int(rng.integers(1, 4)), n_calipers=int(rng.integers(1, 3)),
                                   n_arrows=int(rng.integers(0, 3)), n_traces=int(rng.integers(0, 2)))


def sample_patches(image: np.ndarray, truth: np.ndarray, inside: np.ndarray, seeds: np.ndarray,
                   rng: np.random.Generator, patch_px: int, n: int) -> tuple[np.ndarray, ...]:
    """``n`` patches (image, truth, loss weight = inside the sector), half centred near overlay
    seeds and half near anatomy seeds (jittered by up to 8 px)."""
    pad = patch_px // 2
    img = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    tru = np.pad(truth, pad)
    ins = np.pad(inside.astype(np.uint8), pad)
    out: list[list[np.ndarray]] = [[], [], []]
    for centres in (np.argwhere(seeds & (truth > 0)), np.argwhere(seeds & (truth == 0))):
        if len(centres) == 0:
            continue
        for y, x in centres[rng.integers(len(centres), size=n // 2)]:
            y0 = int(np.clip(y + rng.integers(-8, 9), 0, img.shape[0] - patch_px))
            x0 = int(np.clip(x + rng.integers(-8, 9), 0, img.shape[1] - patch_px))
            window = (slice(y0, y0 + patch_px), slice(x0, x0 + patch_px))
            for dst, src in zip(out, (img, tru, ins)):
                dst.append(src[window])
    return tuple(np.array(a, np.uint8).reshape(-1, patch_px, patch_px) for a in out)


def build_patches(paths: Sequence[Path], cfg: OverlayTrainConfig, seed: int,
                  progress: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, ...]:
    """(images, truths, weights): N x P x P uint8 patches from ``cfg.draws_per_frame`` draws per frame."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, ...]] = []
    params = TextRemovalParams()
    for i, path in enumerate(paths):
        gray = read_gray(path)
        sector = sector_or_frame(gray)
        inside = sector > 0
        for _ in range(cfg.draws_per_frame):
            syn = draw_training_overlays(gray, sector, rng)
            seeds = overlay_seeds(syn.image, inside, params) & inside
            parts.append(sample_patches(syn.image, syn.overlay_mask, inside, seeds, rng, cfg.patch_px,
                                        cfg.patches_per_draw))
        if progress:
            progress(i + 1, len(paths))
    if not parts or sum(len(p[0]) for p in parts) == 0:
        raise DataError("no training patches: the frames have no bright seed pixels inside their sector")
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


# --------------------------------------------------------------------------- training


def _as_tensors(patches: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    x, y, w = patches
    return (torch.from_numpy(x[:, None]).float() / 255.0, torch.from_numpy(y[:, None]).float(),
            torch.from_numpy(w[:, None]).float())


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the pixels inside the sector (the only ones the model judges)."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def train_one_epoch(model: OverlayFCN, data: tuple[torch.Tensor, ...], optimizer, scheduler,
                    batch_size: int, g: torch.Generator) -> float:
    """One pass in random order; each batch randomly flipped and transposed (overlays have no up)."""
    model.train()
    x_all, y_all, w_all = data
    order = torch.randperm(len(x_all), generator=g)
    n_batches = len(x_all) // batch_size
    total = 0.0
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y, w = x_all[idx], y_all[idx], w_all[idx]
        flip, transpose = torch.rand(2, generator=g) < 0.5
        if flip:
            x, y, w = x.flip(-1), y.flip(-1), w.flip(-1)
        if transpose:
            x, y, w = x.transpose(-1, -2), y.transpose(-1, -2), w.transpose(-1, -2)
        loss = masked_bce(model.logits(x), y, w)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
    return total / max(n_batches, 1)


@torch.no_grad()
def eval_loss(model: OverlayFCN, data: tuple[torch.Tensor, ...], batch_size: int = 512) -> float:
    model.eval()
    x_all, y_all, w_all = data
    total, weight = 0.0, 0.0
    for b in range(0, len(x_all), batch_size):
        x, y, w = x_all[b:b + batch_size], y_all[b:b + batch_size], w_all[b:b + batch_size]
        loss = F.binary_cross_entropy_with_logits(model.logits(x), y, reduction="none")
        total += float((loss * w).sum())
        weight += float(w.sum())
    return total / max(weight, 1.0)


def export_overlay_model(model: OverlayFCN, out_path: Path, card: dict) -> dict:
    """ONNX (dynamic N, H, W; opset 17) + card; returns the card."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    torch.onnx.export(model, (torch.zeros(1, 1, 64, 64),), str(out_path), input_names=["image"],
                      output_names=["probability"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "probability": {0: "n", 2: "h", 3: "w"}})
    write_card(out_path, card)
    return card


def calibration_feeds(paths: Sequence[Path], seed: int, card: dict, max_crops_per_frame: int = 6) -> list[dict]:
    """Model inputs as the cleaner makes them (``card``'s normalisation): seed crops of frames
    with pasted overlays."""
    rng = np.random.default_rng(seed)
    mean, std = card["normalise"]["mean"], card["normalise"]["std"]
    params = TextRemovalParams()
    feeds = []
    for path in paths:
        gray = read_gray(path)
        sector = sector_or_frame(gray)
        syn = draw_training_overlays(gray, sector, rng)
        seeds = (overlay_seeds(syn.image, sector > 0, params) & (sector > 0)).view(np.uint8)
        for x0, y0, x1, y1 in overlay_crops(seeds, params.learned_halo_px)[:max_crops_per_frame]:
            feeds.append({"image": normalise(syn.image[None, None, y0:y1, x0:x1], mean, std)})
    if not feeds:
        raise DataError("no calibration crops: the frames have no bright seed pixels inside their sector")
    return feeds


def quantize_overlay_model(fp32_path: Path, out_path: Path, calibration_paths: Sequence[Path], seed: int) -> dict:
    """Static INT8 of the convolutions (QDQ; the in-graph top-hat stays in float, where it is
    exact); the card is the FP32 card with ``precision: int8``, written beside the file."""
    feeds = calibration_feeds(calibration_paths, seed, read_card(fp32_path))
    quantize_qdq(fp32_path, out_path, feeds, ["Conv", "Relu"])
    card = int8_card(fp32_path, out_path, None, {
        "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations; "
                  "Conv + Relu quantised, the top-hat in float",
        "calibration_crops": len(feeds), "calibration_frames": len(calibration_paths)})
    write_card(out_path, card)
    return card


def operating_grid() -> list[tuple[float, float]]:
    """(low, high) pairs tried: every plain threshold (high = low) and hysteresis pairs."""
    plain = [(t, t) for t in THRESHOLD_GRID]
    return plain + [(lo, hi) for lo in THRESHOLD_GRID if lo <= MAX_HYSTERESIS_LOW for hi in HIGH_GRID if hi > lo]


def choose_operating_point(onnx_path: Path, val_paths: Sequence[Path], min_recall: float, seed: int = 0
                           ) -> tuple[dict, list[dict]]:
    """Operating point on validation frames (module docstring); returns it and the whole sweep.

    Recall and altered pixels are averaged per source folder (one per scanner /
    dataset); a pair must reach ``min_recall`` on the worst source, and of those
    the one that alters the fewest anatomy pixels on its worst source wins, so
    that a set of small frames is not carried by a set of large ones.
    """
    grid = operating_grid()
    # each frame cleaned as `fetalkit clean` does: sector found on the overlaid frame
    cleaners = {f"{lo:g}/{hi:g}": (lambda im, sector, lo=lo, hi=hi: clean_frame(
        im, TextRemovalParams(overlay_model=str(onnx_path), learned_threshold=lo, learned_high_threshold=hi))[0])
        for lo, hi in grid}
    rows = score_cleaners(val_paths, cleaners, seed=seed)
    source_of = [str(p.parent) for p in val_paths]  # rows come in the order of val_paths
    sources = sorted(set(source_of))

    def worst(table: list[dict], key: str, pick) -> float:
        return pick(mean_of([r for r, rs in zip(table, source_of) if rs == s], key) for s in sources)

    sweep = []
    for lo, hi in grid:
        table = rows[f"{lo:g}/{hi:g}"]
        sweep.append({"threshold": lo, "high_threshold": hi, "recall": round(mean_of(table, "recall"), 4),
                      "recall_worst_source": round(worst(table, "recall", min), 4),
                      "altered_pct": round(mean_of(table, "altered_pct"), 4),
                      "altered_pct_worst_source": round(worst(table, "altered_pct", max), 4),
                      "ssim": round(mean_of(table, "ssim"), 4)})
    passing = [r for r in sweep if r["recall_worst_source"] >= min_recall]
    best = (min(passing, key=lambda r: (r["altered_pct_worst_source"], -r["recall_worst_source"])) if passing
            else max(sweep, key=lambda r: r["recall_worst_source"]))
    return {"threshold": best["threshold"], "high_threshold": best["high_threshold"]}, sweep


def _per_source(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """Up to ``n`` paths of each source folder, drawn without replacement, in their original order."""
    out: list[Path] = []
    for folder in sorted({p.parent for p in paths}):
        out += _spread([p for p in paths if p.parent == folder], n, seed)
    return out


def _spread(paths: Sequence[Path], n: int, seed: int) -> list[Path]:
    """``n`` paths drawn without replacement (all when fewer), in their original order."""
    if len(paths) <= n:
        return list(paths)
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]


def train_overlay_seg(train_paths: Sequence[Path], val_paths: Sequence[Path], out_dir: Path,
                      cfg: OverlayTrainConfig, data_note: str, command: str = "", resume: bool = True,
                      progress: Optional[Callable[[dict], None]] = None,
                      load_progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Build patches, train (``last.pt`` / ``best.pt`` by val loss), export ``overlay-fcn.onnx`` +
    card with the operating point chosen on ``val_paths``; returns the card."""
    if not train_paths or not val_paths:
        raise DataError("need frames in both the train and the val split")
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = default_device()
    train = _as_tensors(build_patches(train_paths, cfg, cfg.seed, load_progress))
    val = _as_tensors(build_patches(val_paths, cfg, cfg.seed + 1))
    model = OverlayFCN(cfg.channels, cfg.dilations).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = max(1, len(train[0]) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * steps)
    g = torch.Generator().manual_seed(cfg.seed)
    run = RunFiles(out_dir, asdict(cfg), "min", model, optimizer, scheduler, g, None)
    start = run.start(resume, device, {"params_total": count_parameters(model), "n_train_frames": len(train_paths),
                                       "n_val_frames": len(val_paths), "n_train_patches": int(len(train[0]))})
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        train_loss = train_one_epoch(model, train, optimizer, scheduler, cfg.batch_size, g)
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(eval_loss(model, val), 5),
               "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
        run.end_epoch(epoch, row, row["val_loss"])
        if progress:
            progress({**row, "best": run.best})

    best = torch.load(run.best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(best["model"])
    onnx_path = Path(out_dir) / "overlay-fcn.onnx"
    card = {
        "name": "overlay-fcn", "task": OVERLAY_TASK, "input_hw": [cfg.patch_px, cfg.patch_px],
        "input_note": "fully convolutional: any crop size; input_hw is the training patch size",
        "normalise": {"mean": 0.0, "std": 1.0, "applied_to": "x / 255"},
        "classes": ["overlay"], "output": "probability",
        "arch": "overlay-fcn", "arch_description": f"{len(cfg.dilations)} x 3x3 conv ({cfg.channels} ch, dilations "
                                                   f"{'-'.join(map(str, cfg.dilations))}) on grey + in-graph 7x7 "
                                                   f"top-hat; receptive field {receptive_field_px(cfg.dilations)} px",
        "params": count_parameters(model),
        "train": {"epochs": cfg.epochs, "best_epoch": best["epoch"], "seed": cfg.seed, "lr": cfg.lr,
                  "batch_size": cfg.batch_size, "command": command,
                  "val_metrics": {k: v for k, v in best["metrics"].items() if k.startswith("val_")}},
        "data": data_note, "split": {"seed": cfg.data_split_seed, "train_frames": len(train_paths),
                                     "val_frames": len(val_paths)},
        "operating_point": {"threshold": 0.5, "high_threshold": 0.5, "rule": OPERATING_RULE.format(cfg.min_recall)},
        "metrics": {},
    }
    export_overlay_model(model, onnx_path, card)
    chosen = _per_source(val_paths, cfg.n_val_frames, cfg.seed)
    point, sweep = choose_operating_point(onnx_path, chosen, cfg.min_recall, seed=cfg.seed)
    card["operating_point"] = {**card["operating_point"], **point,
                               "val_frames": len(chosen), "sweep": sweep}
    write_card(onnx_path, card)
    if cfg.int8:
        # INT8 shifts the probabilities a little, so it gets its own operating point by the same rule
        q_path = Path(out_dir) / "overlay-fcn-int8.onnx"
        q_card = quantize_overlay_model(onnx_path, q_path, _spread(train_paths, cfg.n_calibration_frames, cfg.seed),
                                        cfg.seed)
        point, sweep = choose_operating_point(q_path, chosen, cfg.min_recall, seed=cfg.seed)
        q_card["operating_point"] = {**q_card["operating_point"], **point, "sweep": sweep}
        write_card(q_path, q_card)
    return card
