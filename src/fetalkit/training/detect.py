"""Detector training loop (torchvision detectors on gray ultrasound).

Read it top to bottom: images letterboxed to ``size`` in memory -> albumentations
(named as in the paper) -> ``train_one_epoch`` -> COCO AP on the validation part ->
``last.pt`` / ``best.pt`` + ``metrics.csv`` / ``metrics.png``.  Resumable exactly,
like the segmentation loop, and CPU-workable (a 256 px MobileNetV2 detector).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import cv2
import numpy as np
import torch

from fetalkit.datasets.splits import split_seed_of
from fetalkit.detection.boxes import DetSet, box_coverage
from fetalkit.errors import DataError, ModelError
from fetalkit.evaluation.detection import coco_ap
from fetalkit.types import ImageDetections
from fetalkit.io.images import read_gray
from fetalkit.runtime.detector import letterbox
from fetalkit.training.distill import Distiller, EnsembleTeacher, check_distillable
from fetalkit.training.detectors import backbone_parameters, build_detector, warm_start
from fetalkit.training.models import count_parameters
from fetalkit.training.runs import RunFiles, default_device, seed_everything


@dataclass
class DetTrainConfig:
    arch: str = "fcos-mnv2"
    init: str = "imagenet"            # imagenet | random
    # a trained detector checkpoint to start from (fine-tuning): its weights replace ``init``
    # wherever names and shapes agree, e.g. a GroupNorm model into a fcos-mnv2-bn one
    from_checkpoint: Optional[str] = None
    size: int = 256                   # square letterboxed input
    epochs: int = 16
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    hflip: bool = True                # also mimics an inverted probe (FPUS23)
    # probability of re-letterboxing a random box-safe crop: frames of other aspect ratios,
    # with the padding a wide or tall scanner frame gets at run time
    aspect_crops: float = 0.0
    # probability of a long linear motion blur (a probe moving fast), where detectors miss
    # most in video; the mild box blur below stays either way
    motion_blur: float = 0.0
    # probability of a stronger photometric change: gamma (a scanner's gain / dynamic range),
    # multiplicative grain and coarse noise (speckle of another probe), on top of the mild
    # brightness / contrast below
    photometric: float = 0.0
    # probability of a mosaic: a crop of a 2 x 2 grid of this image and three other training
    # images at native scale, so a structure is seen at any place, cut by any edge, beside parts
    # of negatives (the cut-away frames a probe passes through)
    mosaic: float = 0.0
    # the last K epochs without mosaic, so training ends on whole frames as ``mask`` sees them
    close_mosaic: int = 0
    # probability that an image lacking a class gets that class's boxed structure from another
    # training image pasted into its imaged area (copy-paste of boxes onto negatives)
    copy_paste: float = 0.0
    # a trained detector (checkpoint or bundled name) of the same FPN and head whose FPN features
    # and dense outputs the student also learns (fetalkit.training.distill), e.g. the unpruned
    # detector for a pruned one; a list: an ensemble whose averaged dense outputs it learns;
    # under CV, "{fold}" in a path is the fold number; ``distill_weight`` scales those losses
    distill_from: Union[str, list[str], None] = None
    distill_weight: float = 1.0
    categories: list[str] = field(default_factory=list)
    split_seed: Optional[int] = None  # None: ``seed`` (another seed then trains on the same split)
    # train on train + val with a recipe fixed beforehand (epochs included): nothing is held
    # out to choose an epoch, so the last one is kept (``best.pt`` = ``last.pt``); test stays out
    final: bool = False

    @property
    def data_split_seed(self) -> int:
        return split_seed_of(self.seed, self.split_seed)


@dataclass
class LetterboxedSet:
    """A DetSet in memory at the model input: images N x S x S uint8, boxes scaled, and the scale."""

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    scales: np.ndarray


def load_letterboxed(ds: DetSet, size: int, progress: Optional[Callable[[int, int], None]] = None) -> LetterboxedSet:
    images, boxes, scales = [], [], []
    for i, s in enumerate(ds.samples):
        if not s.image_path.is_file():
            raise DataError(f"{s.image_path}: image of {s.file_name} is missing; the label set needs its images")
        img, scale = letterbox(read_gray(s.image_path), size)
        images.append(img)
        boxes.append(s.boxes_xyxy * scale)
        scales.append(scale)
        if progress:
            progress(i + 1, len(ds.samples))
    return LetterboxedSet(np.stack(images), boxes, [s.labels for s in ds.samples], np.asarray(scales))


def build_augment(seed: int, size: int, hflip: bool, aspect_crops: float = 0.0, motion_blur: float = 0.0,
                  photometric: float = 0.0, mosaic: float = 0.0):
    """The paper's augmentations, in albumentations: ShiftScaleRotate (as Affine), brightness /
    contrast (RGBShift has no meaning on gray), horizontal flip, RandomSizedBBoxSafeCrop, Blur;
    with ``aspect_crops``, also a box-safe crop of any aspect ratio letterboxed again; with
    ``motion_blur``, a linear motion blur of 5-19 px at any angle; with ``photometric``, gamma
    0.6-1.6, multiplicative grain and noise drawn at half resolution (correlated like speckle);
    with ``mosaic``, first a crop of a 2 x 2 grid of the image and the three images the caller
    passes as ``mosaic_metadata`` (``DetDataset`` does)."""
    import albumentations as A
    tile = [A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), fit_mode="contain",
                     fill=0, p=mosaic)] if mosaic > 0 else []
    reframe = [A.Sequential([
        A.BBoxSafeRandomCrop(erosion_rate=0.0),
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0),
    ], p=aspect_crops)] if aspect_crops > 0 else []
    return A.Compose(tile + reframe + [
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-5, 5), rotate_method="ellipse",
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.6),
        A.HorizontalFlip(p=0.5 if hflip else 0.0),
        A.RandomSizedBBoxSafeCrop(size, size, erosion_rate=0.0, p=0.25),
        A.Blur(blur_limit=(3, 5), p=0.1),
    ] + ([A.MotionBlur(blur_limit=(5, 19), p=motion_blur)] if motion_blur > 0 else [])
      + ([A.Sequential([
          A.RandomGamma(gamma_limit=(60, 160), p=0.7),
          A.MultiplicativeNoise(multiplier=(0.7, 1.3), elementwise=True, p=0.5),
          A.GaussNoise(std_range=(0.02, 0.08), noise_scale_factor=0.5, p=0.3),
      ], p=photometric)] if photometric > 0 else []), bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3,
                                clip=True), seed=seed)


MOSAIC_PARTNERS = 3
PASTE_TRIES = 10          # placements tried per structure before it is left out
PASTE_FEATHER_PX = 4      # alpha ramp at the patch edge, so no seam marks a pasted structure
PASTE_MIN_IMAGED = 0.9    # share of non-black pixels the destination needs (inside the sector)
PASTE_MAX_COVER = 0.3     # at most this share of an existing box may be covered (it keeps its label)


def feather_alpha(h: int, w: int, ramp_px: int = PASTE_FEATHER_PX) -> np.ndarray:
    """h x w weights: 1 inside, falling linearly to 1 / (ramp_px + 1) at the border."""
    ys = np.minimum(np.arange(h), np.arange(h)[::-1]) + 1
    xs = np.minimum(np.arange(w), np.arange(w)[::-1]) + 1
    return np.clip(np.minimum.outer(ys, xs) / (ramp_px + 1), 0.0, 1.0).astype(np.float32)


def paste_structures(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, donor: np.ndarray,
                     donor_boxes: np.ndarray, donor_labels: np.ndarray, rng: np.random.Generator):
    """Paste each donor box of a class ``image`` lacks at a random place of ``image``'s imaged area
    (>= 90 % non-black) that covers at most 30 % of any of its boxes, feathered at the edge; returns
    new arrays (inputs untouched): the image, its boxes with the pasted ones, their labels."""
    out = image.astype(np.float32)
    kept_boxes, kept_labels = [b for b in boxes.reshape(-1, 4)], [int(v) for v in labels]
    h, w = image.shape
    for box, label in zip(donor_boxes.reshape(-1, 4), donor_labels):
        if int(label) in kept_labels:
            continue
        x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x2, y2 = min(int(np.ceil(box[2])), donor.shape[1]), min(int(np.ceil(box[3])), donor.shape[0])
        bw, bh = x2 - x1, y2 - y1
        if bw < 4 or bh < 4 or bw > w or bh > h:
            continue
        patch = donor[y1:y2, x1:x2].astype(np.float32)
        for _ in range(PASTE_TRIES):
            nx, ny = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            place = np.array([nx, ny, nx + bw, ny + bh], np.float32)
            region = out[ny:ny + bh, nx:nx + bw]
            if (region > 0).mean() < PASTE_MIN_IMAGED or (
                    kept_boxes and box_coverage(place, kept_boxes).max() > PASTE_MAX_COVER):
                continue
            alpha = feather_alpha(bh, bw)
            out[ny:ny + bh, nx:nx + bw] = alpha * patch + (1 - alpha) * region
            kept_boxes.append(place)
            kept_labels.append(int(label))
            break
    return (np.clip(out.round(), 0, 255).astype(np.uint8), np.asarray(kept_boxes, np.float32).reshape(-1, 4),
            np.asarray(kept_labels, np.int64))


class DetDataset(torch.utils.data.Dataset):
    """Letterboxed training images through ``augment``; with ``mosaic``, each draw also gets three
    partner images from the same indices; with ``copy_paste`` P, an image lacking a class gets, with
    probability P, the structures of a donor image that has boxes (partners and donors drawn by the
    pipeline's own generator, so a resumed run draws the same ones)."""

    def __init__(self, data: LetterboxedSet, indices: np.ndarray, augment=None, mosaic: bool = False,
                 copy_paste: float = 0.0):
        self.data, self.indices, self.augment, self.mosaic = data, np.asarray(indices), augment, mosaic
        self.copy_paste = copy_paste
        self.donors = np.array([i for i in self.indices if len(data.labels[i])], np.int64)
        self.n_classes = max([int(v) + 1 for i in self.donors for v in data.labels[i]], default=0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        image, boxes, labels = self.data.images[i], self.data.boxes[i], self.data.labels[i]
        if self.augment is not None:
            rng = self.augment.random_generator
            if (self.copy_paste > 0 and len(self.donors) and len(set(labels.tolist())) < self.n_classes
                    and rng.random() < self.copy_paste):
                j = rng.choice(self.donors)
                image, boxes, labels = paste_structures(image, boxes, labels, self.data.images[j],
                                                        self.data.boxes[j], self.data.labels[j], rng)
            extra = {}
            if self.mosaic:
                partners = rng.choice(self.indices, size=MOSAIC_PARTNERS)
                extra["mosaic_metadata"] = [{"image": self.data.images[j], "bboxes": self.data.boxes[j].reshape(-1, 4),
                                             "labels": self.data.labels[j]} for j in partners]
            out = self.augment(image=image, bboxes=boxes.reshape(-1, 4), labels=labels, **extra)
            image, boxes, labels = out["image"], np.asarray(out["bboxes"]), np.asarray(out["labels"])
        x = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
        # torchvision labels are 1..K (0 is background)
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1) + 1}
        return x, target


def set_mosaic(loader, probability: float) -> None:
    """Turn the mosaic of a training loader on (``probability`` > 0) or off, between epochs."""
    import albumentations as A
    dataset = loader.dataset
    for t in dataset.augment.transforms if dataset.augment is not None else []:
        if isinstance(t, A.Mosaic):
            t.p = probability
    dataset.mosaic = probability > 0


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def make_optimizer(model, cfg: DetTrainConfig, steps_per_epoch: int):
    """AdamW + one-cycle; the pretrained trunk learns 3x slower (the paper's discriminative rates)."""
    trunk, rest = backbone_parameters(model)
    trunk_lr = cfg.lr / 3 if cfg.init == "imagenet" or cfg.from_checkpoint else cfg.lr
    groups = [{"params": rest, "lr": cfg.lr}, {"params": trunk, "lr": trunk_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                    total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    return optimizer, scheduler


def train_one_epoch(model, loader, optimizer, scheduler, device, distiller=None) -> dict[str, float]:
    """One pass over ``loader``; with a ``Distiller``, its losses are added to the detector's own."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    for images, targets in loader:
        images = [x.to(device) for x in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        if distiller is not None:
            losses |= distiller.losses()
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
    return {f"train_{k}": v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def predict_torch(model, data: LetterboxedSet, indices: np.ndarray, device, batch_size: int = 16) -> list[ImageDetections]:
    """torchvision postprocessed detections, mapped back to original image pixels."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        xs = [torch.from_numpy(data.images[i].astype(np.float32) / 255.0)[None].to(device) for i in idx]
        for i, r in zip(idx, model(xs)):
            out.append(ImageDetections(r["boxes"].cpu().numpy() / data.scales[i], r["scores"].cpu().numpy(),
                                       r["labels"].cpu().numpy() - 1))
    return out


def fit(ds: DetSet, data: LetterboxedSet, train_idx: np.ndarray, val_idx: np.ndarray, cfg: DetTrainConfig,
        out_dir: Path, resume: bool = True, progress: Optional[Callable[[dict], None]] = None,
        stop_after_epoch: Optional[int] = None, model: Optional[torch.nn.Module] = None) -> dict:
    """Train, score COCO AP[.5:.95] on ``val_idx`` each epoch, keep the best; exactly resumable.
    An empty ``val_idx`` (a final fit) scores nothing and keeps the last epoch.
    ``model``: train this network (e.g. a pruned detector) instead of building ``cfg.arch``."""
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = default_device()
    if model is None:
        model = build_detector(cfg.arch, len(cfg.categories), cfg.size, cfg.init)
        if cfg.from_checkpoint:
            warm_start(model, read_checkpoint_weights(cfg.from_checkpoint))
    model = model.to(device)
    teacher = load_teacher(cfg.distill_from).to(device) if cfg.distill_from else None
    g = torch.Generator().manual_seed(cfg.seed)
    augment = build_augment(cfg.seed, cfg.size, cfg.hflip, cfg.aspect_crops, cfg.motion_blur, cfg.photometric,
                            cfg.mosaic)
    loader = torch.utils.data.DataLoader(DetDataset(data, train_idx, augment, cfg.mosaic > 0, cfg.copy_paste), batch_size=cfg.batch_size,
                                         shuffle=True, drop_last=True, generator=g, collate_fn=collate)
    optimizer, scheduler = make_optimizer(model, cfg, len(loader))
    val_set = ds.subset(val_idx)
    run = RunFiles(out_dir, asdict(cfg), "max", model, optimizer, scheduler, g, augment)
    start_epoch = run.start(resume, device, {"params_total": count_parameters(model), "n_train": int(len(train_idx)),
                                             "n_val": int(len(val_idx))})
    row: dict = {}
    distiller = Distiller(model, teacher, cfg.distill_weight) if teacher is not None else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            if cfg.mosaic > 0:
                set_mosaic(loader, cfg.mosaic if epoch < cfg.epochs - cfg.close_mosaic else 0.0)
            losses = train_one_epoch(model, loader, optimizer, scheduler, device, distiller)
            metrics = coco_ap(val_set, predict_torch(model, data, val_idx, device)) if len(val_idx) else {}
            row = {"epoch": epoch, **{k: round(v, 5) for k, v in losses.items()},
                   **{f"val_{k}": round(v, 5) for k, v in metrics.items()},
                   "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
            run.end_epoch(epoch, row, row["val_ap"] if len(val_idx) else float(epoch))
            if progress:
                progress({**row, "best": run.best})
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:  # the student leaves without the distiller's hooks, however training ends
        if distiller is not None:
            distiller.close()
    return {"best": run.best, "last": row}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A checkpoint file, or a bundled detector's name (its training checkpoint ships beside its ONNX)."""
    from fetalkit.config import MODELS_DIR
    bundled = MODELS_DIR / f"{name_or_path}.pt"
    return bundled if not Path(name_or_path).exists() and bundled.is_file() else Path(name_or_path)


def read_checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a detector checkpoint (a run's ``best.pt`` or a bundled name)."""
    path = resolve_checkpoint(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only: no code runs
        return ck["model"]
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; give a run's best.pt or a bundled detector's name") from None
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise DataError(f"{path}: not a fetalkit detector checkpoint ({type(e).__name__}); give a run's best.pt") from None


def load_detector_checkpoint(path: Path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = DetTrainConfig(**ck["config"])
    model = build_detector(cfg.arch, len(cfg.categories), cfg.size, init="random")
    model.load_state_dict(ck["model"])
    return model.eval(), cfg, ck


def teacher_paths(distill_from: Union[str, list[str]]) -> list[str]:
    """The checkpoints of ``DetTrainConfig.distill_from`` (one path or several) as a list."""
    return [distill_from] if isinstance(distill_from, str) else list(distill_from)


def load_teacher(distill_from: Union[str, list[str]]) -> torch.nn.Module:
    """The teacher of ``DetTrainConfig.distill_from``: one detector, or an ``EnsembleTeacher`` of several."""
    members = [load_detector_checkpoint(resolve_checkpoint(p))[0] for p in teacher_paths(distill_from)]
    return members[0] if len(members) == 1 else EnsembleTeacher(members)


def split_indices(ds: DetSet, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test by group (subject or id block); test is never used for tuning."""
    from fetalkit.datasets.splits import SPLIT_PARTS, select_split
    groups = ds.groups()
    return tuple(select_split(groups, part, seed) for part in SPLIT_PARTS)


def train_detector(data_dir: Path, out_dir: Path, cfg: DetTrainConfig, resume: bool = True,
                   progress=None, load_progress=None) -> dict:
    """Read a COCO / YOLO folder, split it by group, train; writes ``split.txt`` beside the checkpoints."""
    from fetalkit.detection.formats import read_detection_set
    ds = read_detection_set(data_dir)
    if not ds.samples:
        raise DataError(f"{data_dir}: the label set has no images")
    if not any(len(s.labels) for s in ds.samples):
        raise DataError(f"{data_dir}: the label set has no boxes at all; a detector needs labelled objects")
    cfg.categories = list(ds.categories)
    if cfg.from_checkpoint:  # refuse a checkpoint that does not fit before any output is written
        try:
            warm_start(build_detector(cfg.arch, len(cfg.categories), cfg.size, "random"),
                       read_checkpoint_weights(cfg.from_checkpoint))
        except ModelError as e:
            raise ModelError(f"{cfg.from_checkpoint}: {e} ({cfg.arch}); fine-tune a detector with the same trunk") from None
    if cfg.distill_from:  # likewise a teacher whose FPN or head differ from the student's
        try:
            check_distillable(build_detector(cfg.arch, len(cfg.categories), cfg.size, "random"),
                              load_teacher(cfg.distill_from), cfg.size)
        except ModelError as e:
            raise ModelError(f"{cfg.distill_from}: cannot teach {cfg.arch}: {e}") from None
    train_idx, val_idx, test_idx = split_indices(ds, cfg.data_split_seed)
    if not len(train_idx) or not len(val_idx):
        raise DataError(f"{data_dir}: too few groups ({len(set(ds.groups()))}) to split into train / val / test")
    parts = {int(i): p for p, idx in zip(("train", "val", "test"), (train_idx, val_idx, test_idx)) for i in idx}
    if cfg.final:  # val joins training; split.txt still says which part each image came from
        train_idx, val_idx = np.sort(np.concatenate([train_idx, val_idx])), val_idx[:0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "split.txt").write_text("".join(f"{s.file_name},{parts[i]}\n" for i, s in enumerate(ds.samples)))
    data = load_letterboxed(ds, cfg.size, load_progress)
    return fit(ds, data, train_idx, val_idx, cfg, out_dir, resume, progress)
