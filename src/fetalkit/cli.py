"""The ``fetalkit`` command line: thin wrappers that parse, call and print.

User errors (``FetalkitError``) become one red line and exit status 1.
Torch-based commands (train, eval, export) import their modules lazily, so the
runtime install (no torch) still runs everything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from fetalkit.errors import FetalkitError
from fetalkit.masking import defaults as hold_defaults

app = typer.Typer(help="fetalkit: fetal-ultrasound AI on an ordinary CPU.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
train_app = typer.Typer(help="Train models on your own labelled data.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models on labelled data.", no_args_is_help=True)
export_app = typer.Typer(help="Export trained checkpoints to ONNX + model card.", no_args_is_help=True)
biometry_app = typer.Typer(help="Measure: fetal head (HC, BPD, OFD), angle of progression.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")
app.add_typer(biometry_app, name="biometry")
data_app = typer.Typer(help="Dataset tools: detection boxes, duplicates.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Benchmarks on your data: masking on video.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
audit_app = typer.Typer(help="Audit what an output still reveals: de-identified files, masked clips (exit 1 on a leak).",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 1) -> None:
    from fetalkit.io.inputs import printable
    console.print(f"[red]error:[/red] {escape(printable(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _needs_training_extra() -> None:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        fail("this command needs the training extra: pip install 'fetalkit[train]'")


def _check_split(split: str) -> None:
    if split not in ("train", "val", "test", "all"):
        fail(f"--split must be train, val, test or all, got {split!r}")


@app.command("models")
def models_cmd(json_out: bool = typer.Option(False, "--json", help="Print the model cards as JSON.")):
    """List the bundled models with their model cards."""
    from fetalkit.runtime.registry import bundled_cards
    cards = bundled_cards()
    if json_out:
        out.print_json(json.dumps(cards))
        return
    from rich.table import Table
    table = Table(title="bundled models")
    for col in ("name", "task", "input", "params", "size MB", "metrics (held-out)"):
        table.add_column(col)
    for c in cards:
        metrics = ", ".join(f"{k} {v}" for k, v in c.get("metrics", {}).items())
        table.add_row(c["name"], c["task"], "x".join(map(str, c["input_hw"])), f"{c.get('params', 0)/1e6:.2f} M",
                      f"{c.get('file_mb', 0):.1f}", metrics)
    out.print(table)


def _train_segmenter(task: str, data: Optional[Path], out_dir: Path, cfg, resume: bool) -> None:
    """Shared body of the ``train *-seg`` commands: progress bars, per-epoch lines, summary."""
    from rich.progress import Progress
    from fetalkit.config import dataset_dir
    if task == "head-seg":
        from fetalkit.training.headseg import train_head_seg as train_fn
        root, key, unit = data or dataset_dir("hc18"), "val_hc_mae_mm", "mm"
    else:
        from fetalkit.training.psfhsseg import train_psfhs_seg as train_fn
        root, key, unit = data or dataset_dir("psfhs"), "val_score", ""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "command.txt").write_text("fetalkit " + " ".join(sys.argv[1:]) + "\n")
    with Progress(console=console) as bar:
        load = bar.add_task("reading data", total=None)
        task_bar = bar.add_task("training", total=cfg.epochs)

        def on_epoch(row):
            bar.update(task_bar, completed=row["epoch"] + 1)
            metrics = "  ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
            bar.console.print(f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  {metrics}  ({row['seconds']} s)")
        result = train_fn(root, out_dir, cfg, resume=resume, progress=on_epoch,
                          load_progress=lambda i, n: bar.update(load, completed=i, total=n))
    out.print(f"best {key} {result['best']:.4f} {unit}; checkpoints and metrics in {out_dir}")


@train_app.command("head-seg")
def train_head_seg_cmd(
    data: Path = typer.Option(None, "--data", help="HC18 folder (with training_set/ and its csv). Default: $FETALKIT_DATA/hc18."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics.csv, metrics.png, split.txt."),
    arch: str = typer.Option("unet-mobilenet_v2", help="Architecture (see fetalkit.training.models.SEG_ARCHS)."),
    init: str = typer.Option("imagenet", help="Encoder initialisation: imagenet (offline weights) or random."),
    strategy: str = typer.Option("full", help="full fine-tuning, or decoder (frozen encoder)."),
    epochs: int = typer.Option(20, min=1),
    batch_size: int = typer.Option(8, min=1),
    lr: float = typer.Option(2e-3, help="Peak one-cycle learning rate (the pretrained encoder gets lr/3)."),
    input_h: int = typer.Option(176, help="Model input height (a multiple of 32)."),
    input_w: int = typer.Option(256, help="Model input width (a multiple of 32)."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the augmentation and (unless --split-seed) the split."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train / val / test split (default: --seed); keep it to retrain with another --seed on the same split."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    resume: bool = typer.Option(True, help="Resume from RUN_DIR/last.pt when present."),
):
    """Train the fetal head segmenter on HC18 (subject-level split, seeded, resumable)."""
    _needs_training_extra()
    from fetalkit.training.segment import TrainConfig
    cfg = TrainConfig(arch=arch, init=init, strategy=strategy, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, input_hw=(input_h, input_w), threads=threads, split_seed=split_seed)
    _train_segmenter("head-seg", data, out_dir, cfg, resume)


@train_app.command("psfhs-seg")
def train_psfhs_seg_cmd(
    data: Path = typer.Option(None, "--data", help="PSFHS folder (image/ + label/). Default: $FETALKIT_DATA/psfhs."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics.csv, metrics.png, split.txt."),
    arch: str = typer.Option("unet-mobilenet_v2", help="Architecture (see fetalkit.training.models.SEG_ARCHS)."),
    init: str = typer.Option("imagenet", help="Encoder initialisation: imagenet (offline weights) or random."),
    strategy: str = typer.Option("full", help="full fine-tuning, or decoder (frozen encoder)."),
    epochs: int = typer.Option(20, min=1),
    batch_size: int = typer.Option(8, min=1),
    lr: float = typer.Option(2e-3, help="Peak one-cycle learning rate (the pretrained encoder gets lr/3)."),
    input_size: int = typer.Option(256, help="Model input height = width (a multiple of 32)."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the augmentation and (unless --split-seed) the split."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train / val / test split (default: --seed); keep it to retrain with another --seed on the same split."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    resume: bool = typer.Option(True, help="Resume from RUN_DIR/last.pt when present."),
):
    """Train the pubic symphysis + fetal head segmenter on PSFHS (id-block split, seeded, resumable)."""
    _needs_training_extra()
    from fetalkit.training.segment import TrainConfig
    # No horizontal flip: in PSFHS the caudal end of the symphysis is on the right, and AoP depends on it.
    cfg = TrainConfig(arch=arch, init=init, strategy=strategy, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, input_hw=(input_size, input_size), threads=threads, hflip=False,
                      split_seed=split_seed)
    _train_segmenter("psfhs-seg", data, out_dir, cfg, resume)


@train_app.command("detector")
def train_detector_cmd(
    data: Path = typer.Option(..., "--data", help="COCO folder (annotations.json + images/) or YOLO folder, e.g. from 'fetalkit data boxes'."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics.csv, metrics.png, split.txt."),
    arch: str = typer.Option("fcos-mnv2", help="Architecture (fetalkit.training.detectors.DET_ARCHS): fcos-mnv2, fcos-mnv2-bn, fcos-mnv2-s32, fcos-mnv2-w64, retinanet-mnv2, fasterrcnn-mnv2."),
    init: str = typer.Option("imagenet", help="Backbone initialisation: imagenet (offline weights) or random."),
    from_checkpoint: Optional[str] = typer.Option(None, "--from-checkpoint", help="Fine-tune a trained detector: a run's best.pt, or psfhs-fcos-mnv2 (the bundled one). Weights are loaded wherever names and shapes agree (other classes get a new class layer); a GroupNorm head carries over into fcos-mnv2-bn's BatchNorm head."),
    epochs: int = typer.Option(16, min=1),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(2e-3, help="Peak one-cycle learning rate (the pretrained trunk gets lr/3)."),
    size: int = typer.Option(256, help="Square letterboxed input size (a multiple of 32)."),
    hflip: bool = typer.Option(True, help="Horizontal flip augmentation (also mimics an inverted probe)."),
    aspect_crops: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a box-safe crop of random aspect ratio, letterboxed again (for scanner frames wider or taller than the training images)."),
    motion_blur: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a linear motion blur of 5-19 px (a probe moving fast; detectors miss most in such frames)."),
    photometric: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a stronger photometric change: gamma 0.6-1.6, multiplicative grain and coarse noise (other scanners' gain and speckle)."),
    mosaic: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability of a mosaic: a crop of a 2 x 2 grid of the image and three other training images at native scale (structures at any place, cut by any edge, beside negatives)."),
    close_mosaic: int = typer.Option(0, "--close-mosaic", min=0, help="With --mosaic: the last K epochs without it (training ends on whole frames, as masking sees them)."),
    copy_paste: float = typer.Option(0.0, "--copy-paste", min=0.0, max=1.0, help="Probability that an image lacking a class (a negative) gets that class's boxed structure from another training image pasted into its imaged area, feathered at the edge."),
    distill_from: Optional[list[str]] = typer.Option(None, "--distill-from", help="Also learn a trained detector's FPN features and dense outputs (knowledge distillation): a run's best.pt or psfhs-fcos-mnv2. Its FPN and head must have this architecture's shapes (fcos-mnv2 and fcos-mnv2-bn agree). Repeat for an ensemble teacher (averaged dense outputs). With --cv, '{fold}' in a path is the fold number: RUN/fold{fold}/last.pt of a CV run with the same folds."),
    distill_weight: float = typer.Option(1.0, "--distill-weight", min=0.0, help="With --distill-from: weight of the distillation losses beside the detector's own."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the augmentation and (unless --split-seed) the split."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train / val / test split (default: --seed); keep it to retrain with another --seed on the same split."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    resume: bool = typer.Option(True, help="Resume from RUN_DIR/last.pt when present."),
    final: bool = typer.Option(False, "--final", help="Train on train + val with a recipe fixed beforehand (e.g. from an earlier run); the last epoch is kept, no val AP is scored; test stays held out."),
    cv: int = typer.Option(0, "--cv", min=0, help="Block cross-validation: train the recipe on K folds of groups of train + val (test stays out), keep each fold's last epoch, score its held-out fold (AP, F1, FPPI, video misses); writes cv.json / cv.csv with mean and sd. 0: one ordinary run."),
    cv_conf: float = typer.Option(0.46, "--cv-conf", help="With --cv: the one confidence threshold of every fold (F1, FPPI, video)."),
    cv_iou: float = typer.Option(0.4, "--cv-iou", help="With --cv: the one NMS IoU of every fold."),
    cv_category: str = typer.Option("pubic_symphysis", "--cv-category", help="With --cv: the class the video benchmark hides."),
    cv_sequences: int = typer.Option(40, "--cv-sequences", min=1, help="With --cv: simulated sequences per held-out fold (60 frames each)."),
    cv_flip: bool = typer.Option(False, "--cv-flip", help="With --cv: score with test-time flip averaging (the image and its mirror, boxes fused; twice the inference)."),
    cv_only: Optional[str] = typer.Option(None, "--cv-only", help="With --cv: train only these folds, comma-separated (e.g. 0,1), to spread a CV over sessions or machines; folds already scored in --out are kept and summarised with them."),
):
    """Train a detector on your labelled boxes (split by group / image, seeded, resumable; COCO AP per epoch)."""
    _needs_training_extra()
    from rich.progress import Progress
    from fetalkit.training.detect import DetTrainConfig, train_detector
    if size % 32 or size < 128:
        fail(f"--size must be a multiple of 32 and at least 128 (the coarsest level needs 2 x 2 cells), got {size}")
    from fetalkit.training.detect import read_checkpoint_weights
    teachers = list(distill_from or [])
    if any("{fold}" in t for t in teachers) and not cv:
        fail("--distill-from: '{fold}' in a path needs --cv K (each fold learns from its own fold's teacher)")
    only = _fold_choice(cv_only, cv)
    for checkpoint in [from_checkpoint, *sorted({t.replace("{fold}", str(i)) for t in teachers
                                                 for i in (only if only is not None else range(cv or 1))})]:
        if checkpoint:
            read_checkpoint_weights(checkpoint)  # a bad file is refused before the run folder is made
    distill_from = teachers[0] if len(teachers) == 1 else (teachers or None)  # one teacher: a path, as ever
    cfg = DetTrainConfig(arch=arch, init=init, size=size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         threads=threads, hflip=hflip, split_seed=split_seed, aspect_crops=aspect_crops,
                         motion_blur=motion_blur, photometric=photometric, mosaic=mosaic, close_mosaic=close_mosaic,
                         copy_paste=copy_paste, from_checkpoint=from_checkpoint, distill_from=distill_from,
                         distill_weight=distill_weight, final=final)
    if cv == 1 or (cv and final):
        fail("--cv K needs K >= 2 folds, and trains each fold on its own (no --final)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "command.txt").write_text("fetalkit " + " ".join(sys.argv[1:]) + "\n")
    if cv:
        _cross_validate(data, out_dir, cfg, cv, cv_conf, cv_iou, cv_category, cv_sequences, cv_flip, only)
        return
    with Progress(console=console) as bar:
        load = bar.add_task("reading data", total=None)
        task_bar = bar.add_task("training", total=epochs)

        def on_epoch(row):
            bar.update(task_bar, completed=row["epoch"] + 1)
            loss = sum(v for k, v in row.items() if k.startswith("train_"))
            aps = "  ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("val_ap"))
            bar.console.print(f"epoch {row['epoch']:3d}  loss {loss:.4f}  {aps}  ({row['seconds']} s)")
        result = train_detector(data, out_dir, cfg, resume=resume, progress=on_epoch,
                                load_progress=lambda i, n: bar.update(load, completed=i, total=n))
    if final:
        out.print(f"final fit on train + val: kept epoch {epochs - 1}; checkpoints and metrics in {out_dir}")
    else:
        out.print(f"best val AP[.5:.95] {result['best']:.4f}; checkpoints and metrics in {out_dir}")


def _fold_choice(text: Optional[str], k: int) -> Optional[list[int]]:
    """--cv-only's fold numbers (None: every fold)."""
    if text is None:
        return None
    if not k:
        fail("--cv-only needs --cv K (it picks folds of a cross-validation)")
    try:
        folds = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        fail(f"--cv-only: give fold numbers separated by commas (e.g. 0,1), got {text!r}")
    if not folds or folds[0] < 0 or folds[-1] >= k:
        fail(f"--cv-only: fold numbers run from 0 to {k - 1} with --cv {k}, got {text!r}")
    return folds


def _cross_validate(data: Path, out_dir: Path, cfg, k: int, conf: float, iou: float, category: str,
                    sequences: int, flip: bool, only: Optional[list[int]] = None) -> None:
    from fetalkit.training.cv import CvConfig, cross_validate_detector
    cv = CvConfig(folds=k, conf=conf, iou=iou, category=category, sequences=sequences, flip=flip)

    def on_epoch(row):
        loss = sum(v for key, v in row.items() if key.startswith("train_"))
        console.print(f"  epoch {row['epoch']:3d}  loss {loss:.4f}  ({row['seconds']} s)")
    record = cross_validate_detector(data, out_dir, cfg, cv, progress=console.print, epoch_progress=on_epoch, only=only)
    _print_cv_summary(record, out_dir)


def _print_cv_summary(record: dict, out_dir: Path) -> None:
    """A CV record's mean ± sd and per-fold figures (those of `train detector --cv` and `eval cv-merge`)."""
    from dataclasses import asdict
    from fetalkit.training.cv import CvConfig
    summary, rows = record["summary"], record["folds"]
    train, cv = record["recipe"]["train"], {**asdict(CvConfig()), **record["recipe"]["cv"]}
    k, category = cv["folds"], cv["category"]
    if not record["complete"]:
        out.print(f"partial: fold{'s' if len(rows) > 1 else ''} {', '.join(str(r['fold']) for r in rows)} of {k} scored so far; "
                  f"the others train with --cv-only or without it", highlight=False)
    shown = [key for key in rows[0] if key.startswith("ap_")] + [
        f"f1_{category}", f"fppi_{category}", "video_miss_rate_detector", "video_miss_rate_held", "video_miss_reduction"]
    scope = f"{k}-fold" if record["complete"] else f"{len(rows)} of {k} folds of"
    out.print(f"{scope} block cross-validation of {train['arch']}, {train['epochs']} epochs, conf {cv['conf']:g}"
              + (", flip-averaged" if cv.get("flip") else "") + ": mean ± sd (per fold)")
    for key in shown:
        out.print(f"  {key:26s} {summary[key]['mean']:.4f} ± {summary[key]['sd']:.4f}   ("
                  + ", ".join(f"{r[key]:.4f}" for r in rows) + ")")
    out.print(f"video: share of target frames shown unmasked (detector alone -> BBoxHoldSim) over "
              f"{int(sum(r['video_sequences'] for r in rows))} sequences; wrote {out_dir / 'cv.json'}, cv.csv and cv.md")


@train_app.command("view")
def train_view_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run folder: best.pt, last.pt, metrics.csv, metrics.png, split.txt."),
    data: Optional[Path] = typer.Option(None, "--data", help="The public sets' folder (default $FETALKIT_DATA: HC18, PSFHS, FeEcho4D, FETAL_PLANES_DB, SonoNet) or a CVAT / FPUS23 folder of tagged frames."),
    task: Optional[str] = typer.Option(None, "--task", help="CVAT / FPUS23: which tag is the class: plane, fetus (orientation) or probe (orientation)."),
    images: Optional[Path] = typer.Option(None, "--images", help="CVAT / FPUS23: folder of the frames (IMAGES/<stream>/<frame>), when not beside the XML."),
    arch: str = typer.Option("mnv2", help="mnv2 (MobileNetV2, ImageNet init) or resnet{8,10,14,20}-w<width> (random init)."),
    size: int = typer.Option(128, help="Square input size in px."),
    epochs: int = typer.Option(8, min=1),
    batch_size: int = typer.Option(32, min=2),
    lr: float = typer.Option(1e-3, help="Peak one-cycle learning rate."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the augmentation and (unless --split-seed) the split."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train / val / test split (default: --seed)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    resume: bool = typer.Option(True, help="Resume from OUT/last.pt when present."),
    leave_out: Optional[List[str]] = typer.Option(None, "--leave-out", help="Public sets: ORIGIN:CLASS (e.g. fetal_planes_db:fetal_head; repeatable) kept out of training and validation, tested only (leave-one-source-out)."),
):
    """Train a scan-view classifier (split by subject / id block / time block / stream; class-balanced; resumable)."""
    _needs_training_extra()
    import torch
    from rich.progress import Progress
    from fetalkit.datasets.views import view_sources
    from fetalkit.training.view import ViewTrainConfig, train_view, view_arch
    view_arch(arch)  # a bad --arch fails before any data is read
    torch.set_num_threads(threads)
    cfg = ViewTrainConfig(arch=arch, size_px=size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                          split_seed=split_seed, init="imagenet" if arch == "mnv2" else "random")
    sources = view_sources(data, task, images, leave_out=tuple(leave_out or ()))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "command.txt").write_text("fetalkit " + " ".join(sys.argv[1:]) + "\n")
    with Progress(console=console) as bar:
        load = bar.add_task("reading images", total=None)
        task_bar = bar.add_task("training", total=epochs)

        def on_epoch(row):
            bar.update(task_bar, completed=row["epoch"] + 1)
            bar.console.print(f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  val accuracy "
                              f"{row['val_accuracy']:.4f}  macro-F1 {row['val_macro_f1']:.4f}  ({row['seconds']} s)")
        result = train_view(sources, out_dir, cfg, resume=resume, progress=on_epoch,
                            load_progress=lambda i, n: bar.update(load, completed=i, total=n))
    out.print(f"{result['train']} train / {result['val']} val images, classes {', '.join(result['classes'])}; "
              f"best val macro-F1 {result['best']:.4f}; checkpoints in {out_dir}")


@export_app.command("view")
def export_view_cmd(checkpoint: Path = typer.Argument(..., help="A run's best.pt from 'fetalkit train view'."),
                    out_path: Path = typer.Option(..., "--out", help="Output .onnx (the card .json goes beside it)."),
                    int8: bool = typer.Option(False, "--int8", help="Also write an INT8 copy (<out>-int8.onnx), calibrated on the run's train images."),
                    name: Optional[str] = typer.Option(None, help="Model name in the card (default: the file stem).")):
    """Export a view classifier to ONNX (softmax in the graph) with its card."""
    _needs_training_extra()
    from fetalkit.training.view import export_view_run
    card = export_view_run(checkpoint, out_path, name=name, int8=int8)
    out.print(f"wrote {out_path} ({card['params'] / 1e6:.2f} M parameters, classes {', '.join(card['classes'])})"
              + (f" and {card['int8_file']}" if card.get("int8_file") else ""))


@eval_app.command("cv-compare")
def eval_cv_compare_cmd(
    baseline: Path = typer.Argument(..., help="Run folder (or cv.json) of the baseline recipe's cross-validation."),
    others: List[Path] = typer.Argument(..., help="Run folders (or cv.json) of the recipes to compare with it, over the same folds."),
    figures: str = typer.Option(None, "--figures", help="Comma-separated cv.csv columns to compare (default: AP per class, F1, FPPI, video misses, false-masked)."),
    csv_out: Path = typer.Option(None, "--out", help="Write the paired differences as csv (one row per recipe and figure)."),
):
    """Paired comparison of cross-validated recipes: fold-by-fold differences from the baseline."""
    from fetalkit.training.cv import paired_differences, read_cv_record, recipe_changes
    try:
        base = read_cv_record(baseline)
    except FetalkitError as e:
        fail(str(e))
    keys = figures.split(",") if figures else None
    rows, failed = [], 0
    for path in others:
        try:
            other = read_cv_record(path)
            diffs = paired_differences(base, other, keys)
        except FetalkitError as e:
            console.print(f"[red]error:[/red] {escape(f'{path}: {e}' if str(path) not in str(e) else str(e))}",
                          highlight=False, soft_wrap=True)
            failed += 1
            continue
        changes = recipe_changes(base, other)
        paired = next(iter(diffs.values()))["folds"] if diffs else [r["fold"] for r in base["folds"]]
        of_k = "" if len(paired) == base["recipe"].get("cv", {}).get("folds", len(paired)) else \
            f" ({', '.join(map(str, paired))} of {base['recipe']['cv']['folds']})"
        out.print(f"{path} against {baseline}, paired over {len(paired)} folds{of_k}: "
                  + (", ".join(f"{k} {a} -> {b}" for k, a, b in ((k, *v) for k, v in changes.items())) or "the same recipe"),
                  highlight=False, soft_wrap=True)
        if base.get("data") != other.get("data"):
            out.print(f"  note: different data folders ({base.get('data')} / {other.get('data')})", highlight=False)
        for key, d in diffs.items():
            out.print(f"  {key:32s} {d['mean']:+.4f} ± {d['sd']:.4f}   higher in {d['higher']} of {len(d['diffs'])}"
                      f"   ({', '.join(f'{x:+.4f}' for x in d['diffs'])})", highlight=False, soft_wrap=True)
            rows.append({"recipe": str(path), "figure": key, "mean_diff": d["mean"], "sd_diff": d["sd"],
                         "higher": d["higher"], "lower": d["lower"], "folds": len(d["diffs"]),
                         "diffs": " ".join(f"{x:.6f}" for x in d["diffs"])})
    if csv_out and rows:
        from fetalkit.io.jobs import write_csv_rows
        write_csv_rows(csv_out, rows, list(rows[0]))
        out.print(f"wrote {csv_out}")
    if failed:
        raise typer.Exit(1)


@eval_app.command("cv-merge")
def eval_cv_merge_cmd(
    out_dir: Path = typer.Argument(..., help="Run folder for the merged record (may be one of the runs)."),
    runs: List[Path] = typer.Argument(..., help="Run folders (or cv.json) of one recipe's cross-validation, each holding some of its folds."),
):
    """One cross-validation from folds scored in several runs (sessions, machines): cv.json / cv.csv, resumable with --cv-only."""
    from fetalkit.training.cv import merge_cv_runs
    try:
        record = merge_cv_runs(runs, out_dir)
    except FetalkitError as e:
        fail(str(e))
    _print_cv_summary(record, out_dir)


@eval_app.command("domain")
def eval_domain_cmd(out_dir: Path = typer.Option(..., "--out", help="Output folder: domain.json, scores.csv."),
                    data: Optional[Path] = typer.Option(None, "--data", help="The public sets' folder (default $FETALKIT_DATA)."),
                    classifier: str = typer.Option("view-mnv2-int8", "--classifier", help="View classifier whose anatomy classes score the domain."),
                    update_cards: bool = typer.Option(False, "--update-cards", help="Write each task's domain (classes, threshold, held-out figures) into its bundled models' cards.")):
    """Calibrate the domain check of every bundled model: threshold keeping 99 % of in-domain val images; AUROC and false-accept rate on test (also at 95 %)."""
    from fetalkit.datasets.views import view_sources
    from fetalkit.evaluation.domain import calibrate_domains
    result = calibrate_domains(view_sources(data), out_dir, classifier, update_cards=update_cards)
    for task, r in result["tasks"].items():
        t, t95 = r["test"], r["test_95"]
        out.print(f"{task:12s} domain {'+'.join(r['classes'])}: threshold {r['threshold']:.3f}; test AUROC "
                  f"{t['auroc']}, kept {t['kept_in_domain']} of {t['n_in']} in-domain, false accept "
                  f"{t['false_accept']} of {t['n_out']} others (at 95 % val retention, threshold "
                  f"{r['threshold_95']:.3f}: kept {t95['kept_in_domain']}, false accept {t95['false_accept']})",
                  highlight=False, soft_wrap=True)
    out.print(f"wrote {out_dir / 'domain.json'}" + ("; cards updated" if update_cards else ""))


@eval_app.command("view")
def eval_view_cmd(model: str = typer.Option(..., "--model", help="View classifier: bundled name or .onnx."),
                  out_dir: Path = typer.Option(..., "--out", help="Output folder: metrics.json, per_class.csv, confusion.png, predictions.csv."),
                  data: Optional[Path] = typer.Option(None, "--data", help="As for 'fetalkit train view'."),
                  task: Optional[str] = typer.Option(None, "--task", help="As for 'fetalkit train view'."),
                  images: Optional[Path] = typer.Option(None, "--images", help="As for 'fetalkit train view'."),
                  split: str = typer.Option("test", help="train, val, test or all (the model's own split)."),
                  seed: Optional[int] = typer.Option(None, help="Split seed (default: the one in the model card)."),
                  leave_out: Optional[List[str]] = typer.Option(None, "--leave-out", help="As for 'fetalkit train view': these images join the test part."),
                  update_card: bool = typer.Option(False, "--update-card", help="Write the figures into the model card (test split only).")):
    """Accuracy, per-class precision / recall / F1 and the confusion matrix of a view classifier."""
    _check_split(split)
    from fetalkit.datasets.views import view_sources
    from fetalkit.evaluation.view import evaluate_view
    result = evaluate_view(model, view_sources(data, task, images, leave_out=tuple(leave_out or ())), split, seed,
                           out_dir, update_card=update_card)
    out.print(f"{split}: accuracy {result['accuracy']:.4f} on {result['n']} images; macro-F1 {result['macro_f1']:.4f}")
    for c, r in result["per_class"].items():
        out.print(f"  {c:28s} P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}  ({r['support']} images)")
    out.print("accuracy per source and class:")
    for key, r in result["per_source"].items():
        out.print(f"  {key:50s} {r['accuracy']:.4f}  ({r['n']} images)", highlight=False)
    out.print(f"confusion matrix in {out_dir / 'confusion.png'}")


@app.command("classify")
def classify_cmd(inputs: List[Path] = typer.Argument(..., help="Images, single-frame DICOM and/or folders."),
                 out_dir: Path = typer.Option(..., "--out", help="Output folder: classes.csv."),
                 model: Optional[str] = typer.Option(None, "--model", help="View classifier: bundled name or .onnx (default: the bundled one)."),
                 threads: int = typer.Option(2, help="onnxruntime threads."),
                 quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Classify the scan view (plane) of each image: classes.csv with the class, its probability and every class's."""
    from fetalkit.runtime.classify_job import classify_files
    rows = classify_files(inputs, out_dir, model, threads)
    if not quiet:
        for r in rows[:20]:
            if not r["error"]:
                out.print(f"{Path(r['filename']).name}: {r['class']} ({float(r['probability']):.3f})")
    _finish(rows, quiet, f"classes in {out_dir / 'classes.csv'}")


@train_app.command("overlay-seg")
def train_overlay_seg_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run folder: checkpoints, metrics, overlay-fcn.onnx + card."),
    hc18: Optional[Path] = typer.Option(None, "--hc18", help="HC18 folder (split by subject). Default: $FETALKIT_DATA/hc18 when present."),
    psfhs: Optional[Path] = typer.Option(None, "--psfhs", help="PSFHS folder (split by id block). Default: $FETALKIT_DATA/psfhs when present."),
    frames: list[Path] = typer.Option([], "--frames", help="Folder of your own clean frames (no burned-in text; split by file); repeatable."),
    no_public: bool = typer.Option(False, "--no-public", help="Do not add HC18 / PSFHS by default; train on --frames only."),
    epochs: int = typer.Option(12, min=1),
    channels: int = typer.Option(16, min=4, help="Width of the network."),
    dilations: str = typer.Option("1,2,4,1", help="Dilation of each 3x3 layer (their number is the depth)."),
    draws: int = typer.Option(2, min=1, help="Overlay draws per training frame (16 patches each)."),
    min_recall: float = typer.Option(0.96, min=0.5, max=1.0, help="Operating point: of the thresholds with this val recall on every dataset, those altering the fewest anatomy pixels."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the overlays and (unless --split-seed) the split."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train / val / test split (default: --seed)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    int8: bool = typer.Option(True, help="Also write overlay-fcn-int8.onnx (static INT8 on train crops, its own operating point)."),
    resume: bool = typer.Option(True, help="Resume from RUN_DIR/last.pt when present."),
):
    """Train the overlay-pixel model of 'fetalkit clean' on clean frames with pasted text, calipers, arrows."""
    _needs_training_extra()
    from rich.progress import Progress
    from fetalkit.config import dataset_dir
    from fetalkit.datasets.frames import split_frames
    from fetalkit.training.overlayseg import OverlayTrainConfig, train_overlay_seg
    if not no_public:
        hc18 = hc18 or (dataset_dir("hc18") if dataset_dir("hc18").is_dir() else None)
        psfhs = psfhs or (dataset_dir("psfhs") if dataset_dir("psfhs").is_dir() else None)
    if hc18 is None and psfhs is None and not frames:
        fail("no frames to train on: pass --hc18, --psfhs or --frames (or set FETALKIT_DATA)")
    try:
        dilation_list = tuple(int(d) for d in dilations.split(","))
        assert dilation_list and min(dilation_list) >= 1
    except (ValueError, AssertionError):
        fail(f"--dilations must be positive integers separated by commas, got {dilations!r}")
    cfg = OverlayTrainConfig(channels=channels, dilations=dilation_list, epochs=epochs, draws_per_frame=draws, min_recall=min_recall,
                             seed=seed, split_seed=split_seed, threads=threads, int8=int8)
    parts = {part: split_frames(part, cfg.data_split_seed, hc18, psfhs, frames) for part in ("train", "val")}
    note = "; ".join(f"{name} {p}" for name, p in (("HC18", hc18), ("PSFHS", psfhs)) if p) + \
        "".join(f"; frames {f}" for f in frames) + " (own train split; overlays pasted, masks exact)"
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "fetalkit " + " ".join(sys.argv[1:])
    (out_dir / "command.txt").write_text(command + "\n")
    with Progress(console=console) as bar:
        load = bar.add_task("cutting patches", total=None)
        task_bar = bar.add_task("training", total=epochs)

        def on_epoch(row):
            bar.update(task_bar, completed=row["epoch"] + 1)
            bar.console.print(f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
                              f"({row['seconds']} s)")
        card = train_overlay_seg(parts["train"], parts["val"], out_dir, cfg, note, command, resume=resume,
                                 progress=on_epoch, load_progress=lambda i, n: bar.update(load, completed=i, total=n))
    op = card["operating_point"]
    chosen = next(r for r in op["sweep"]
                  if (r["threshold"], r["high_threshold"]) == (op["threshold"], op["high_threshold"]))
    out.print(f"wrote {out_dir / 'overlay-fcn.onnx'}; thresholds {op['threshold']:g} / {op['high_threshold']:g} on "
              f"{op['val_frames']} val frames: recall {chosen['recall']:.3f} (worst source "
              f"{chosen['recall_worst_source']:.3f}), altered {chosen['altered_pct']:.2f} % (worst source "
              f"{chosen['altered_pct_worst_source']:.2f} %)")
    q_path = out_dir / "overlay-fcn-int8.onnx"
    if int8 and q_path.is_file():
        q_op = json.loads(q_path.with_suffix(".json").read_text())["operating_point"]
        out.print(f"wrote {q_path} (INT8); thresholds {q_op['threshold']:g} / {q_op['high_threshold']:g}")


@eval_app.command("head-seg")
def eval_head_seg_cmd(
    data: Path = typer.Option(None, "--data", help="HC18 folder. Default: $FETALKIT_DATA/hc18."),
    model: str = typer.Option(None, "--model", help="Bundled model name or .onnx path (default: the bundled head model)."),
    split: str = typer.Option("test", help="Part of the subject-level split: test (held out), val, train or all."),
    seed: int = typer.Option(0, help="Split seed (the training's --split-seed, else its --seed)."),
    out_dir: Path = typer.Option(None, "--out", help="Folder for per_image.csv and summary.json."),
    limit: int = typer.Option(0, help="Score only the first N images of the split (0 = all)."),
    card: bool = typer.Option(False, "--update-card", help="Store the figures in the model's card."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Dice, Hausdorff distance (mm) and HC difference (mm, %) of a head model on HC18 (MONAI metrics)."""
    _needs_training_extra()
    _check_split(split)
    from rich.progress import Progress
    from fetalkit.config import dataset_dir
    from fetalkit.evaluation.head import evaluate_head
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"scoring {split}", total=None)
        summary = evaluate_head(data or dataset_dir("hc18"), model, split, seed, out_dir, limit or None,
                                progress=lambda i, n: bar.update(task, completed=i, total=n))
    if card:
        from fetalkit.training.export import update_card
        update_card(Path(summary["model"]), "metrics", {
            f"{split}_{k}": round(v, 4) for k, v in summary.items() if k.endswith(("_mean", "_median"))} |
            {f"{split}_n_images": summary["n_images"]})
    if json_out:
        out.print_json(json.dumps(summary))
        return
    out.print(f"{summary['n_images']} images ({split} split, seed {seed}), {summary['n_failed']} without a head")
    out.print(f"Dice {summary['dice_mean']:.4f}   Hausdorff {summary['hd_mm_mean']:.2f} mm   "
              f"|HC diff| {summary['hc_abs_diff_mm_mean']:.2f} mm ({summary['hc_abs_diff_pct_mean']:.2f} %), "
              f"median {summary['hc_abs_diff_mm_median']:.2f} mm")
    if "measured_share" in summary:
        out.print(f"domain check (as biometry head): {summary['n_refused']} refused, {100 * summary['measured_share']:.1f} % "
                  f"measured; |HC diff| over those {summary['hc_abs_diff_mm_mean_measured']:.2f} mm")
    if out_dir:
        out.print(f"per-image results: {out_dir / 'per_image.csv'}")


def _export(task: str, checkpoint: Path, out_path: Path, name: Optional[str]) -> None:
    _needs_training_extra()
    import numpy as np
    from fetalkit.errors import InputError
    from fetalkit.training.export import TASK_CLASSES, export_segmenter, torch_onnx_max_abs_diff
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    card = export_segmenter(checkpoint, task, out_path, name)
    n_out = 1 if len(TASK_CLASSES[task]) == 1 else len(TASK_CLASSES[task])
    rng = np.random.default_rng(0)
    diff = torch_onnx_max_abs_diff(checkpoint, out_path, [rng.integers(0, 255, (540, 800), dtype=np.uint8)], n_out)
    out.print(f"wrote {out_path} ({out_path.stat().st_size / 2**20:.1f} MB, {card['params'] / 1e6:.2f} M params); "
              f"max |torch - onnx| = {diff:.2e}")


@export_app.command("head-seg")
def export_head_seg_cmd(
    checkpoint: Path = typer.Argument(..., help="A run's best.pt (or last.pt)."),
    out_path: Path = typer.Option(..., "--out", help="Target .onnx file (the card .json is written beside it)."),
    name: str = typer.Option(None, help="Model name in the card (default: file stem)."),
):
    """Export a head-seg checkpoint to ONNX + card and check torch/onnxruntime parity."""
    _export("head-seg", checkpoint, out_path, name)


@export_app.command("psfhs-seg")
def export_psfhs_seg_cmd(
    checkpoint: Path = typer.Argument(..., help="A run's best.pt (or last.pt)."),
    out_path: Path = typer.Option(..., "--out", help="Target .onnx file (the card .json is written beside it)."),
    name: str = typer.Option(None, help="Model name in the card (default: file stem)."),
):
    """Export a psfhs-seg checkpoint to ONNX + card and check torch/onnxruntime parity."""
    _export("psfhs-seg", checkpoint, out_path, name)


@eval_app.command("psfhs-seg")
def eval_psfhs_seg_cmd(
    data: Path = typer.Option(None, "--data", help="PSFHS folder. Default: $FETALKIT_DATA/psfhs."),
    model: str = typer.Option(None, "--model", help="Bundled model name or .onnx path (default: the bundled PSFHS model)."),
    split: str = typer.Option("test", help="Part of the id-block split: test (held out), val, train or all."),
    seed: int = typer.Option(0, help="Split seed (the training's --split-seed, else its --seed)."),
    out_dir: Path = typer.Option(None, "--out", help="Folder for per_image.csv and summary.json."),
    limit: int = typer.Option(0, help="Score only the first N images of the split (0 = all)."),
    card: bool = typer.Option(False, "--update-card", help="Store the figures in the model's card."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Per-class Dice / HD95 / ASD (px), |delta AoP| and the challenge score of a PSFHS model (MONAI metrics)."""
    _needs_training_extra()
    _check_split(split)
    from rich.progress import Progress
    from fetalkit.config import dataset_dir
    from fetalkit.evaluation.psfhs import evaluate_psfhs
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"scoring {split}", total=None)
        s = evaluate_psfhs(data or dataset_dir("psfhs"), model, split, seed, out_dir, limit or None,
                           progress=lambda i, n: bar.update(task, completed=i, total=n))
    if card:
        from fetalkit.training.export import update_card
        update_card(Path(s["model"]), "metrics", {f"{split}_{k}": round(v, 4) for k, v in s.items()
                                                  if k.endswith(("_mean", "_median", "score"))}
                    | {f"{split}_n_images": s["n_images"]})
    if json_out:
        out.print_json(json.dumps(s))
        return
    out.print(f"{s['n_images']} images ({split} split, seed {seed}), {s['n_errors']} with an AoP error")
    out.print(f"pubic symphysis  Dice {s['dice_ps_mean']:.4f}  HD95 {s['hd95_ps_mean']:.2f} px  ASD {s['asd_ps_mean']:.2f} px")
    out.print(f"fetal head       Dice {s['dice_fh_mean']:.4f}  HD95 {s['hd95_fh_mean']:.2f} px  ASD {s['asd_fh_mean']:.2f} px")
    out.print(f"|delta AoP| mean {s['aop_abs_diff_deg_mean']:.2f} deg, median {s['aop_abs_diff_deg_median']:.2f} deg;  "
              f"challenge score {s['challenge_score']:.4f}")


@export_app.command("detector")
def export_detector_cmd(
    checkpoint: Path = typer.Argument(..., help="A detector run's best.pt (or last.pt)."),
    out_path: Path = typer.Option(..., "--out", help="Target .onnx file (the card .json is written beside it)."),
    name: str = typer.Option(None, help="Model name in the card (default: file stem)."),
    int8: bool = typer.Option(False, "--int8", help="Also write OUT stem + '-int8.onnx': static INT8 calibrated on training images."),
    calibration: int = typer.Option(64, help="Calibration images for --int8 (from the run's train split)."),
    data: Path = typer.Option(None, "--data", help="The run's label set (for --int8 calibration images)."),
    operating_point_from: str = typer.Option(None, "--operating-point-from", help="Copy the confidence and NMS IoU of this model's card (bundled name or .onnx), e.g. for a --final fit, whose recipe's val run chose them."),
):
    """Export a single-stage detector (fcos-mnv2, retinanet-mnv2) to ONNX + card; check torch/onnxruntime parity."""
    _needs_training_extra()
    from fetalkit.errors import InputError
    from fetalkit.training.export import export_detector, quantize_detector
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    if int8 and data is None:
        fail("--int8 needs --data (the label set the run trained on) for calibration images")
    op = None
    if operating_point_from:
        from fetalkit.runtime.card import read_card
        from fetalkit.runtime.registry import resolve_model
        source = resolve_model(operating_point_from, "detector")
        src_op = read_card(source).get("operating_point") or {}
        if not {"conf", "iou"} <= set(src_op):
            fail(f"--operating-point-from {operating_point_from}: its card has no operating point; run eval detector --sweep --update-card on it")
        op = {"conf": src_op["conf"], "iou": src_op["iou"],
              "chosen_on": f"carried over from {source.name} ({src_op.get('chosen_on', 'its card')})"}
    card = export_detector(checkpoint, out_path, name, op)
    out.print(f"wrote {out_path} ({out_path.stat().st_size / 2**20:.1f} MB, {card['params'] / 1e6:.2f} M params)")
    if int8:
        from fetalkit.detection.formats import read_detection_set
        from fetalkit.io.images import read_gray
        ds = read_detection_set(data)
        train = {ln.split(",")[0] for ln in (checkpoint.parent / "split.txt").read_text().splitlines()
                 if ln.endswith(",train")}
        paths = [s.image_path for s in ds.samples if s.file_name in train][:: max(1, len(train) // calibration)]
        q_path = out_path.with_name(out_path.stem + "-int8.onnx")
        quantize_detector(out_path, q_path, [read_gray(p) for p in paths[:calibration]])
        out.print(f"wrote {q_path} ({q_path.stat().st_size / 2**20:.1f} MB, INT8, {len(paths[:calibration])} calibration images)")


@eval_app.command("detector")
def eval_detector_cmd(
    data: Path = typer.Option(..., "--data", help="COCO / YOLO / CVAT label set with its images."),
    model: str = typer.Option(None, "--model", help="Bundled detector name or .onnx path (default: the bundled PSFHS detector)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for summary.json, detections.json and f1_curve.png."),
    split: str = typer.Option("all", help="Score part of the group split (train / val / test, as in training) or all."),
    seed: int = typer.Option(0, help="Split seed (the training's --split-seed, else its --seed)."),
    conf: float = typer.Option(None, help="Confidence threshold (default: the model's stored operating point)."),
    iou: float = typer.Option(None, help="NMS IoU (default: the model's stored operating point)."),
    sweep: bool = typer.Option(False, help="Sweep confidence x NMS IoU for the best label F1; plot F1 vs confidence."),
    card: bool = typer.Option(False, "--update-card", help="Store the figures (and, with --sweep on the val split, the operating point) in the card."),
    class_names: str = typer.Option(None, help="Class names of a YOLO ONNX without metadata, comma-separated."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    flip_average: bool = typer.Option(False, "--flip-average", help="Test-time flip averaging: run the image and its mirror, fuse the boxes (twice the inference)."),
):
    """COCO AP[.5:.95] / AP50 (faster-coco-eval), label P / R / F1 and FPPI on negatives; threshold sweep."""
    _check_split(split)
    from rich.progress import Progress
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.evaluation.detection import evaluate_detector, plot_f1_curves
    from fetalkit.runtime.detector import OnnxDetector, detections_json
    from fetalkit.runtime.registry import resolve_model
    from fetalkit.io.images import atomic_write_bytes
    ds = read_detection_set(data)
    if split != "all":
        from fetalkit.datasets.splits import select_split
        ds = ds.subset(select_split(ds.groups(), split, seed))
    if not ds.samples:
        fail(f"{data}: no images in the {split} split")
    det = OnnxDetector(resolve_model(model, "detector"), class_names=class_names.split(",") if class_names else None)
    if flip_average:
        from fetalkit.runtime.detector import FlipAveraged
        if card:
            fail("--flip-average scores another runtime than the model's own: drop --update-card")
        det = FlipAveraged(det)
    if split == "val" and str((det.card or {}).get("train", {}).get("trained_on", "")).startswith("train+val"):
        if card:  # an operating point chosen on images the model trained on would look better than it is
            fail(f"{det.path.name} trained on the val split (a final fit): --update-card would store figures of "
                 "training images; give it the operating point of its recipe's val run (export detector --operating-point-from)")
        console.print(f"note: {det.path.name} trained on the val split (a final fit): these are training images")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"detecting ({split})", total=len(ds.samples))
        s = evaluate_detector(ds, det, conf, iou, sweep, progress=lambda i, n: bar.update(task, completed=i))
    dets, result = s.pop("_detections"), s.pop("_sweep", None)
    s.update(model=str(det.path), data=str(data), split=split, seed=seed)
    records = [r for smp, d in zip(ds.samples, dets) for r in detections_json(smp.file_name, d, ds.categories)]
    atomic_write_bytes(out_dir / "detections.json", json.dumps(records, indent=1).encode())
    if result:
        atomic_write_bytes(out_dir / "sweep.json", json.dumps(result["table"]).encode())
        try:
            plot_f1_curves(result, ds.categories, out_dir / "f1_curve.png")
        except ModuleNotFoundError:
            console.print("no F1 plot: it needs matplotlib (pip install 'fetalkit[train]'); the curve is in sweep.json")
    atomic_write_bytes(out_dir / "summary.json", json.dumps(s, indent=2).encode())
    if card and det.card:
        from fetalkit.training.export import update_card
        keys = ("ap", "ap50", "precision", "recall", "f1", "fppi")
        figures = {f"{split}_{k}": round(float(v), 4) for k, v in s.items()
                   if k.startswith(keys) and isinstance(v, (int, float))} | {f"{split}_n_images": s["n_images"]}
        for part in ("source_images", "derived_images"):
            figures |= {f"{split}_{part}_{k}": round(float(v), 4) for k, v in s.get(part, {}).items()
                        if k.startswith(keys + ("n_images",)) and isinstance(v, (int, float))}
        update_card(det.path, "metrics", figures)
        if result:
            if split != "val":
                console.print("[yellow]operating point not stored: choose it on the val split, not on "
                              f"{split}[/yellow]")
            else:
                b = result["best"]
                update_card(det.path, "operating_point", {"conf": b["conf"], "iou": b["iou"],
                                                          "chosen_on": f"val split (seed {seed}), best mean label F1 {b['f1_mean']:.4f}"})
    if json_out:
        out.print_json(json.dumps(s))
        return
    out.print(f"{s['n_images']} images ({split} split), {s['n_negative_images']} without any box; "
              f"conf {s['conf']:.3f}, NMS IoU {s['iou']:.2f}")
    for c in ds.categories:
        out.print(f"{c:18s} AP {s[f'ap_{c}']:.4f}  AP50 {s[f'ap50_{c}']:.4f}  P {s[f'precision_{c}']:.4f}  "
                  f"R {s[f'recall_{c}']:.4f}  F1 {s[f'f1_{c}']:.4f}  FPPI {s[f'fppi_{c}']:.4f} "
                  f"({s[f'negatives_{c}']} negatives)")
    out.print(f"{'all':18s} AP {s['ap']:.4f}  AP50 {s['ap50']:.4f}  P {s['precision']:.4f}  R {s['recall']:.4f}  "
              f"F1 {s['f1']:.4f}  FPPI {s['fppi']:.4f}")
    for part, what in (("source_images", "source images (derived excluded)"),
                       ("derived_images", "derived images (one structure blanked)")):
        if part in s:
            p = s[part]
            out.print(f"{what}: {p['n_images']} images, {p['n_negative_images']} without any box")
            for c in ds.categories:
                out.print(f"  {c:16s} AP {p[f'ap_{c}']:.4f}  AP50 {p[f'ap50_{c}']:.4f}  P {p[f'precision_{c}']:.4f}  "
                          f"R {p[f'recall_{c}']:.4f}  F1 {p[f'f1_{c}']:.4f}  FPPI {p[f'fppi_{c}']:.4f} "
                          f"({p[f'negatives_{c}']} negatives)")
    if result:
        b = result["best"]
        out.print(f"best operating point: conf {b['conf']:.3f}, NMS IoU {b['iou']:.2f} (mean label F1 {b['f1_mean']:.4f}); "
                  f"curve in {out_dir / 'f1_curve.png'}")


@app.command("detect")
def detect_cmd(inputs: List[Path] = typer.Argument(..., help="Images and/or folders."),
               model: str = typer.Option(None, "--model", help="Bundled detector name or .onnx path (default: the bundled PSFHS detector; YOLO ONNX exports accepted)."),
               conf: float = typer.Option(None, help="Confidence threshold (default: the model's operating point)."),
               iou: float = typer.Option(None, help="NMS IoU (default: the model's operating point)."),
               out_dir: Path = typer.Option(..., "--out", help="Output folder: detections.json (+ overlays)."),
               overlay: bool = typer.Option(False, help="Also write OUT/overlays/NAME.png with the boxes drawn."),
               class_names: str = typer.Option(None, help="Class names of a YOLO ONNX without metadata, comma-separated."),
               roi: str = typer.Option("auto", "--roi", help="Where to detect in each image: auto (its imaged area, without a scanner screen's black sides and graphics), full or X,Y,W,H."),
               quiet: bool = typer.Option(False, "--quiet")):
    """Detect regions of interest; writes COCO-results-style detections.json (bbox [x, y, w, h] in input pixels)."""
    from fetalkit.detection.jobs import detect_files
    from fetalkit.detection.region import parse_roi
    rows = detect_files(inputs, model, conf, iou, out_dir, overlay, class_names.split(",") if class_names else None,
                        parse_roi(roi))
    _finish(rows, quiet, f"detections in {out_dir / 'detections.json'}")


@app.command("mask")
def mask_cmd(source: str = typer.Argument(..., help="Image, folder of frames, video (mp4/avi), multi-frame DICOM, or camera index / stream URL."),
             output: Path = typer.Option(..., "-o", "--output", help="Output in the matching form: image, folder, video file (.avi MJPG / .mp4), .dcm."),
             model: str = typer.Option(None, "--model", help="Detector: bundled name or .onnx (default: the bundled PSFHS detector; YOLO ONNX accepted)."),
             classes: str = typer.Option(None, "--classes", help="Comma-separated classes to hide (default: all classes of the model)."),
             hold: str = typer.Option(hold_defaults.RULE, "--hold", help="Temporal rule: none, frames (BBoxHold) or ssim (BBoxHoldSim)."),
             hold_frames: int = typer.Option(hold_defaults.HOLD_FRAMES, "--hold-frames", min=0, help="BBoxHold: frames to keep a box after the detector loses it."),
             ssim_threshold: float = typer.Option(hold_defaults.SSIM_THRESHOLD, "--ssim-threshold", help="BBoxHoldSim: hold while SSIM to the last detected frame >= T."),
             ssim_gain: bool = typer.Option(hold_defaults.SSIM_GAIN, "--ssim-gain/--no-ssim-gain", help="BBoxHoldSim: scale both frames to one mean brightness before the SSIM (a fade is not a new view)."),
             ssim_imaged: bool = typer.Option(hold_defaults.SSIM_IMAGED_ONLY, "--ssim-imaged/--ssim-whole-frame", help="BBoxHoldSim: average the SSIM over the imaged area only, not the black surround every frame shares."),
             max_hold_frames: int = typer.Option(hold_defaults.MAX_HOLD_FRAMES, help="BBoxHoldSim: longest hold in frames."),
             style: str = typer.Option("fill", "--style", help="fill, blur or pixelate."),
             margin: float = typer.Option(None, "--margin", help="Grow masks by this many px (>= 1) or this fraction of the box's longer side (< 1); default 0.15."),
             min_size: float = typer.Option(0.0, "--min-size", help="Smallest mask side in px."),
             fail_safe: str = typer.Option("sector", "--fail-safe", help="When detection fails on a frame: blank the imaging sector, or the whole frame."),
             conf: float = typer.Option(None, help="Confidence threshold (default: the model's operating point)."),
             iou: float = typer.Option(None, help="NMS IoU (default: the model's operating point)."),
             roi: str = typer.Option("auto", "--roi", help="Where to detect: auto (the imaged area, grown as it widens), full (the whole frame) or X,Y,W,H in frame pixels."),
             log: Path = typer.Option(None, "--log", help="Write one JSON line per frame (masks, detections, held, ssim, ms, roi)."),
             threads: int = typer.Option(1, help="onnxruntime threads (1: decode and encode run on the other core; 2 measured slower)."),
             class_names: str = typer.Option(None, help="Class names of a YOLO ONNX without metadata, comma-separated."),
             outside_domain: str = typer.Option("pass", "--outside-domain", help="Frames the domain check puts outside the detector's domain: pass (left unmasked, logged) or mask (the detector's boxes used anyway)."),
             quiet: bool = typer.Option(False, "--quiet")):
    """Hide regions of interest in every frame (detector + hold rule + fail-safe), streamed in real time."""
    from rich.progress import Progress
    from fetalkit.io.inputs import printable
    from fetalkit.io.video import open_source
    from fetalkit.masking.hold import RULES
    from fetalkit.detection.region import parse_roi
    from fetalkit.masking.pipeline import MaskConfig, Masker, run_stream
    from fetalkit.masking.render import STYLES
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.domain import DomainCheck
    from fetalkit.runtime.registry import resolve_model
    if hold not in RULES:
        fail(f"--hold must be one of {', '.join(RULES)}, got {hold!r}")
    if style not in STYLES:
        fail(f"--style must be one of {', '.join(STYLES)}, got {style!r}")
    if fail_safe not in ("sector", "frame"):
        fail(f"--fail-safe must be sector or frame, got {fail_safe!r}")
    roi_value = parse_roi(roi)
    src = open_source(source)
    det = OnnxDetector(resolve_model(model, "detector"), threads=threads,
                       class_names=class_names.split(",") if class_names else None)
    cfg = MaskConfig(classes=classes.split(",") if classes else None, rule=hold, hold_frames=hold_frames,
                     ssim_threshold=ssim_threshold, ssim_gain=ssim_gain, ssim_imaged_only=ssim_imaged,
                     max_hold_frames=max_hold_frames, style=style,
                     margin=MaskConfig.margin if margin is None else margin,
                     min_size_px=min_size, fail_safe=fail_safe, conf=conf, iou=iou, roi=roi_value,
                     outside_domain=outside_domain)
    masker = Masker(det, cfg, domain=DomainCheck.of(det))
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("masking", total=src.count)
        report = run_stream(src, output, masker, log, progress=lambda n: bar.update(task, completed=n))
    if report.fps_assumed and report.frames > 1:
        console.print(f"no frame timing in {printable(source)}: written at {report.fps_assumed:g} frames/s",
                      highlight=False, soft_wrap=True, markup=False)
    problem, warning = report.problems(source, output)
    if problem:
        fail(problem)
    for line in (warning, masker.domain_warning(report.frames)):
        if line:
            console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    if not quiet:
        import numpy as np
        lat = np.percentile(report.latency_ms, [50, 99]) if report.latency_ms else [0, 0]
        out.print(f"{report.frames} frames masked in {report.seconds:.2f} s ({report.fps:.1f} frames/s; latency p50 "
                  f"{lat[0]:.1f} ms, p99 {lat[1]:.1f} ms); rule {masker.rule.name}; wrote {printable(output)}"
                  + (f"; log {printable(log)}" if log else ""), highlight=False, soft_wrap=True)


@bench_app.command("video")
def bench_video_cmd(
    data: Path = typer.Option(..., "--data", help="Detection label set (COCO / YOLO) with images, e.g. from 'fetalkit data boxes'."),
    model: str = typer.Option(None, "--model", help="Detector (default: the bundled PSFHS detector)."),
    category: str = typer.Option("pubic_symphysis", help="The class to hide (its box is the target)."),
    split: str = typer.Option("test", help="Images from this part of the group split (held out from training)."),
    seed: int = typer.Option(0, help="Split seed; also seeds the simulated motion."),
    sequences: int = typer.Option(40, min=1, help="Number of sequences (one per held-out image)."),
    draws: int = typer.Option(1, min=1, help="Build the sequences this many times with fresh motion, noise and cut-aways (seeds SEED, SEED+1, ...) and pool them; the spread between draws is printed."),
    frames: int = typer.Option(60, min=10, help="Frames per sequence."),
    margin: float = typer.Option(None, help="Mask margin, as in 'fetalkit mask' (default: its default, 0.15)."),
    conf: float = typer.Option(None, help="Detector confidence (default: the model's operating point)."),
    roi: str = typer.Option("auto", "--roi", help="Where to detect, as in 'fetalkit mask': auto, full or X,Y,W,H."),
    wide: float = typer.Option(None, "--wide", help="Show each frame in the centre of a black frame this many times as wide as high (a scanner screen; 1.811 is the FeEcho4D clip's 1112 x 614)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for rules.csv, rules.json and tradeoff.png."),
    domain: bool = typer.Option(True, "--domain/--no-domain", help="As 'fetalkit mask': frames the domain check puts outside the detector's domain get no detection."),
    json_out: bool = typer.Option(False, "--json"),
):
    """False-negative and false-masked frame rates of the hold rules on simulated scan sequences."""
    _check_split(split)
    from rich.progress import Progress
    from fetalkit.datasets.splits import select_split
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.evaluation.video import (build_sequences, detect_sequences, evaluate_rules, plot_tradeoff,
                                           rule_grid, draw_breakdown, kind_breakdown, scan_intervals,
                                           sequence_breakdown, ssim_variant)
    from fetalkit.io.images import atomic_write_bytes
    from fetalkit.io.jobs import write_csv_rows
    from fetalkit.detection.region import parse_roi
    from fetalkit.masking.pipeline import MaskConfig
    from fetalkit.runtime.detector import OnnxDetector
    from fetalkit.runtime.domain import DomainCheck
    from fetalkit.runtime.registry import resolve_model
    margin = MaskConfig.margin if margin is None else margin
    roi_value = parse_roi(roi)
    if wide is not None and wide < 1:
        fail(f"--wide {wide}: a screen as wide as high or wider (>= 1), e.g. 1.811")
    ds = read_detection_set(data)
    if split != "all":
        ds = ds.subset(select_split(ds.groups(), split, seed))
    det = OnnxDetector(resolve_model(model, "detector"))
    if category not in det.classes:
        fail(f"--category {category}: not a class of {det.path.name} ({', '.join(det.classes)})")
    with Progress(console=console, transient=True, disable=json_out) as bar:
        t1 = bar.add_task("building sequences", total=None)
        seqs = []
        for draw in range(draws):  # the split stays the one of --seed; only the simulation changes
            part = build_sequences(ds, category, sequences, frames, seed + draw,
                                   lambda i, n: bar.update(t1, completed=i + draw * n, total=n * draws))
            for s in part:
                s.draw = draw
            seqs += part
        t2 = bar.add_task("detecting", total=sum(len(s.frames) for s in seqs))
        if wide:
            for s in seqs:
                s.widen(wide)
        check = DomainCheck.of(det) if domain else None
        dets = detect_sequences(seqs, det, category, conf, roi_value, lambda done: bar.update(t2, completed=done),
                                check)
        rows = evaluate_rules(seqs, dets, rule_grid(), margin)
        per_seq = sequence_breakdown(seqs, dets, margin)
        per_kind = kind_breakdown(seqs, dets, margin)
        per_draw = draw_breakdown(seqs, dets, margin)
        try:
            intervals = scan_intervals(per_seq)
        except ModuleNotFoundError:
            intervals = None
            console.print("no intervals: they need scipy (pip install 'fetalkit[train]')")
    write_csv_rows(out_dir / "sequences.csv", per_seq, list(per_seq[0]))
    if intervals:
        write_csv_rows(out_dir / "intervals.csv", intervals, list(intervals[0]))
    write_csv_rows(out_dir / "draws.csv", per_draw, list(per_draw[0]))
    write_csv_rows(out_dir / "kinds.csv", per_kind, list(per_kind[0]))
    columns = ["rule", "hold_frames", "ssim_threshold", "ssim_gain", "ssim_imaged_only", "fn_rate", "fn_reduction", "false_masked_rate",
               "false_masked_increase_pp", "mean_masked_area", "target_frames", "empty_frames"]
    write_csv_rows(out_dir / "rules.csv", rows, columns)
    atomic_write_bytes(out_dir / "rules.json", json.dumps(rows, indent=1).encode())
    try:
        plot_tradeoff(rows, out_dir / "tradeoff.png")
    except ModuleNotFoundError:
        console.print("no plot: it needs matplotlib (pip install 'fetalkit[train]')")
    if json_out:
        out.print_json(json.dumps(rows))
        return
    from rich.table import Table
    table = Table(title=f"{len(seqs)} sequences x {frames} frames" + (f" ({draws} draws)" if draws > 1 else "")
                  + f", {category}, {det.path.name}, margin {margin:g}")
    for col in ("rule", "setting", "FN frames", "FN removed", "false-masked", "+pp", "masked area"):
        table.add_column(col)
    for r in rows:
        setting = str(r.get("hold_frames", r.get("ssim_threshold", "")))
        if r["rule"] == "ssim" and ssim_variant(r):
            setting += f" ({ssim_variant(r)})"
        table.add_row(r["rule"], setting, f"{100 * r['fn_rate']:.2f} %", f"{100 * r['fn_reduction']:.1f} %",
                      f"{100 * r['false_masked_rate']:.2f} %", f"{r['false_masked_increase_pp']:+.2f}",
                      f"{100 * r['mean_masked_area']:.2f} %")
    out.print(table)
    fn_alone = sum(r["fn_detector"] for r in per_seq)
    rare = [r for r in per_seq if r["rarely_found"]]
    out.print(f"detector alone: {fn_alone} false-negative frames in {sum(r['fn_detector'] > 0 for r in per_seq)} of "
              f"{len(per_seq)} sequences; {len(rare)} sequences whose target it misses in >= 90 % of frames hold "
              f"{sum(r['fn_detector'] for r in rare)} of them (no hold rule can keep a box never seen)"
              + (": " + ", ".join(r["source"] for r in rare) if rare else ""))
    unreachable = sum(r["fn_unreachable"] for r in per_seq)
    if fn_alone:
        out.print(f"{unreachable} of the {fn_alone} are covered by no box detected so far in their sequence: no hold "
                  f"rule that keeps earlier boxes in place can remove more than {100 * (1 - unreachable / fn_alone):.1f} %")
    out.print("false-negative frames by kind of frame (detector alone -> BBoxHoldSim): " + "; ".join(
        f"{r['kind']} {r['fn_detector']} -> {r['fn_held']} of {r['target_frames']}" for r in per_kind))
    if draws > 1:
        out.print("per draw (detector alone -> BBoxHoldSim): " + "; ".join(
            f"draw {r['draw']}: {r['fn_detector']} -> {r['fn_held']} FN frames ({100 * r['fn_reduction']:.1f} % removed), "
            f"{r['false_masked_increase_pp']:+.2f} pp false-masked" for r in per_draw))
    if intervals:
        fn_ci, fm_ci = intervals
        out.print(f"BBoxHoldSim (default) over {fn_ci['scans']} scans, 95 % interval from resampling scans: "
                  f"{100 * fn_ci['value']:.1f} % of misses removed ({100 * fn_ci['low']:.1f}-{100 * fn_ci['high']:.1f} %), "
                  f"{fm_ci['value']:+.2f} pp false-masked ({fm_ci['low']:+.2f} to {fm_ci['high']:+.2f})")
    out.print(f"wrote {out_dir / 'rules.csv'}, {out_dir / 'sequences.csv'}, {out_dir / 'kinds.csv'}, "
              f"{out_dir / 'draws.csv'}" + (f", {out_dir / 'intervals.csv'}" if intervals else "")
              + f" and {out_dir / 'tradeoff.png'}")


@biometry_app.command("head")
def biometry_head_cmd(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: measurements.csv and <stem>_overlay.png."),
    pixel_mm: Optional[float] = typer.Option(None, "--pixel-mm", help="Pixel size in mm for all inputs."),
    pixel_csv: Optional[Path] = typer.Option(None, "--pixel-csv", help="HC18-style csv: filename,pixel size(mm)[,...]."),
    model: str = typer.Option(None, "--model", help="Bundled model name or .onnx path (default: the bundled head model)."),
    overlays: bool = typer.Option(True, help="Write overlay PNGs."),
    threads: int = typer.Option(2, help="onnxruntime threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    force: bool = typer.Option(False, "--force", help="Measure images the domain check refuses (not a fetal head plane); their plane_ok stays false."),
):
    """Measure fetal head circumference, BPD and OFD on 2D ultrasound images."""
    from rich.progress import Progress
    from fetalkit.biometry.head_job import measure_files
    with Progress(console=console, transient=True, disable=quiet or json_out) as bar:
        task = bar.add_task("measuring", total=None)
        rows = measure_files(inputs, out_dir, pixel_mm, pixel_csv, model, overlays, threads,
                             progress=lambda i, n: bar.update(task, completed=i, total=n), force=force)
    failed = [r for r in rows if r["error"]]
    if json_out:
        out.print_json(json.dumps(rows))
    elif not quiet:
        from rich.table import Table
        units = "mm" if (pixel_mm or pixel_csv) else "px"
        table = Table(title=f"fetal head biometry ({units})")
        for col in ("file", f"HC {units}", f"BPD {units}", f"OFD {units}"):
            table.add_column(col)
        for r in rows[:20]:
            if not r["error"]:
                table.add_row(Path(r["filename"]).name, r[f"hc_{units}"], r[f"bpd_{units}"], r[f"ofd_{units}"])
        out.print(table)
        if len(rows) > 20:
            out.print(f"... {len(rows) - 20} more rows")
        if units == "px":
            out.print("no pixel size given (--pixel-mm / --pixel-csv): lengths are in pixels (hc_px, bpd_px, ofd_px)")
        out.print(f"{len(rows) - len(failed)} measured, {len(failed)} failed; results in {out_dir / 'measurements.csv'}")
    for r in failed:
        console.print(f"[red]error:[/red] {escape(r['error'])}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Output folder."),
             n: int = typer.Option(6, help="Number of phantom images."),
             seed: int = typer.Option(0, help="Phantom seed.")):
    """Head biometry on phantom images, and privacy masking of a phantom clip, compared with their exact truth."""
    from rich.table import Table
    from fetalkit.demo import run_head_demo
    with console.status("measuring phantom heads with the bundled model"):
        rows = run_head_demo(out_dir, n, seed)
    table = Table(title="fetal head biometry on phantom images (true HC is exact)")
    for col in ("image", "true HC mm", "measured HC mm", "diff mm", "BPD mm", "OFD mm"):
        table.add_column(col, justify="right")
    diffs = []
    for r in rows:
        if r["error"]:
            table.add_row(Path(r["filename"]).name, f"{r['hc_true_mm']:.1f}", "failed", r["error"], "", "")
            continue
        d = float(r["hc_mm"]) - r["hc_true_mm"]
        diffs.append(abs(d))
        table.add_row(Path(r["filename"]).name, f"{r['hc_true_mm']:.1f}", r["hc_mm"], f"{d:+.1f}", r["bpd_mm"], r["ofd_mm"])
    out.print(table)
    if diffs:
        out.print(f"mean |HC diff| {sum(diffs) / len(diffs):.2f} mm on {len(diffs)} of {len(rows)} images, "
                  f"{len(rows) / rows[0]['seconds_total']:.1f} images/s including model load and overlays")
    out.print(f"inputs:       {out_dir / 'phantoms'}")
    out.print(f"measurements: {out_dir / 'biometry' / 'measurements.csv'}")
    out.print(f"overlays:     {out_dir / 'biometry'}/*_overlay.png")
    from fetalkit.demo import run_mask_demo
    with console.status("masking the head in a phantom clip with the bundled detector"):
        m = run_mask_demo(out_dir, seed)
    out.print(f"privacy masking of a {m['frames']}-frame phantom clip (fetal_head, BBoxHoldSim): "
              f"{m['false_negative_frames']} of {m['target_frames']} head frames not covered, "
              f"{m['false_masked_frames']} of {m['empty_frames']} frames without the head masked, "
              f"{m['fps']:.0f} frames/s")
    out.print(f"clip:         {m['clip']}")
    out.print(f"masked clip:  {m['masked']}  (per-frame log {m['log']})")


@biometry_app.command("aop")
def biometry_aop_cmd(
    inputs: List[Path] = typer.Argument(..., help="Transperineal ultrasound images and/or folders."),
    out_dir: Path = typer.Option(..., "--out", help="Output folder: measurements.csv, masks/<stem>.png, overlays."),
    model: str = typer.Option(None, "--model", help="Bundled model name or .onnx path (default: the bundled PSFHS model)."),
    caudal_end: str = typer.Option("right", help="Image side of the caudal end of the pubic symphysis (PSFHS: right)."),
    opening: str = typer.Option("counterclockwise", help="Screen direction in which the angle opens: counterclockwise, clockwise or auto."),
    overlays: bool = typer.Option(True, help="Write overlay PNGs."),
    threads: int = typer.Option(2, help="onnxruntime threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    force: bool = typer.Option(False, "--force", help="Measure images the domain check refuses (not an intrapartum transperineal scan); their plane_ok stays false."),
):
    """Segment pubic symphysis + fetal head and measure the angle of progression (ISUOG)."""
    from rich.progress import Progress
    from fetalkit.biometry.labour import measure_aop_files
    if caudal_end not in ("right", "left", "up", "down"):
        fail(f"--caudal-end must be right, left, up or down, got {caudal_end!r}")
    if opening not in ("counterclockwise", "clockwise", "auto"):
        fail(f"--opening must be counterclockwise, clockwise or auto, got {opening!r}")
    with Progress(console=console, transient=True, disable=quiet or json_out) as bar:
        task = bar.add_task("measuring", total=None)
        rows = measure_aop_files(inputs, out_dir, model, threads, overlays, caudal_end, opening,
                                 progress=lambda i, n: bar.update(task, completed=i, total=n), force=force)
    failed = [r for r in rows if r["error"]]
    if json_out:
        out.print_json(json.dumps(rows))
    elif not quiet:
        out.print(f"{len(rows) - len(failed)} measured, {len(failed)} failed; results in {out_dir / 'measurements.csv'}, "
                  f"label maps in {out_dir / 'masks'}")
    for r in failed:
        console.print(f"[red]error:[/red] {escape(r['error'])}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command("sector")
def sector_cmd(inputs: List[Path] = typer.Argument(..., help="Images and/or folders."),
               out_dir: Path = typer.Option(..., "--out", help="Output folder: masks, overlays, sectors.csv/json."),
               quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Find the imaging sector (fan or rectangle) of each image, apart from scanner UI and text."""
    from rich.progress import Progress
    from fetalkit.preprocess.jobs import sector_files
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("detecting sectors", total=None)
        rows = sector_files(inputs, out_dir, progress=lambda i, n: bar.update(task, completed=i, total=n))
    _finish(rows, quiet, f"sectors in {out_dir / 'sectors.csv'}")


@app.command("clean")
def clean_cmd(inputs: List[Path] = typer.Argument(..., help="Images and/or folders."),
              out_dir: Path = typer.Option(..., "--out", help="Output folder: cleaned images, removed-pixel masks, cleaning.csv."),
              inside: str = typer.Option("learned", "--inside", help="Inside the sector: learned (overlay-pixel model) or rules (drawn-stroke gates)."),
              overlay_model: str = typer.Option("overlay-fcn-int8", "--overlay-model", help="Bundled name (overlay-fcn-int8, overlay-fcn) or .onnx path of the overlay-pixel model (e.g. from 'fetalkit train overlay-seg')."),
              threshold: Optional[float] = typer.Option(None, "--threshold", help="Low overlay probability threshold (default: the model card's operating point)."),
              high_threshold: Optional[float] = typer.Option(None, "--high-threshold", help="A group of pixels above --threshold counts only when one reaches this (default: the card's)."),
              quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Remove burned-in text, calipers and arrows (top-hat + Otsu/hysteresis + inpainting, confined to the sector)."""
    from rich.progress import Progress
    from fetalkit.preprocess.jobs import clean_files
    from fetalkit.preprocess.text import TextRemovalParams
    try:
        params = TextRemovalParams(inside_method=inside, overlay_model=overlay_model, learned_threshold=threshold,
                                   learned_high_threshold=high_threshold)
    except ValueError as e:
        fail(f"{e}")
    if inside == "learned":
        from fetalkit.runtime.registry import load_model
        load_model(overlay_model, "overlay-seg")  # a bad --overlay-model fails before any file is written
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("cleaning", total=None)
        rows = clean_files(inputs, out_dir, params, progress=lambda i, n: bar.update(task, completed=i, total=n))
    _finish(rows, quiet, f"cleaned images in {out_dir}")


@app.command("deid")
def deid_cmd(src: Path = typer.Argument(..., help="A DICOM file, a video (.mp4 .avi .mov .mkv .m4v) or an image."),
             output: Path = typer.Option(..., "-o", "--output", help="Output file (never the input)."),
             clean: bool = typer.Option(True, help="Also remove burned-in text from the pixels."),
             shift_dates: bool = typer.Option(False, "--shift-dates", help="DICOM: move each patient's dates by one number of days (-365..-1, intervals kept) instead of removing them; with --key-file the same in every run, else drawn for this run."),
             keep: Optional[List[str]] = typer.Option(None, "--keep", help="DICOM: keep this attribute as it is, by keyword or tag (repeatable); you answer for what it reveals."),
             key_file: Optional[Path] = typer.Option(None, "--key-file", help="DICOM: secret key file (made when missing; a batch's is OUT/.batch/uid-key): new UIDs and date shifts are keyed hashes, so runs sharing it agree. Keep it with the source data."),
             json_out: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """De-identify: DICOM PS3.15 basic profile + an ultrasound attribute allow-list (new consistent UIDs), burned-in text removed from the pixels."""
    from fetalkit.io.inputs import printable
    from fetalkit.deid import UidMap, load_or_create_key
    from fetalkit.preprocess.jobs import deidentify_path
    uids = UidMap(key=load_or_create_key(key_file)) if key_file is not None else None
    report = deidentify_path(src, output, uid_map=uids, clean=clean, shift_dates=shift_dates, keep=tuple(keep or ()))
    if report.get("fps_assumed"):  # on stderr: --json output stays JSON
        console.print(f"no frame timing in {printable(src)}: written at {report['fps_assumed']:g} frames/s",
                      highlight=False, soft_wrap=True, markup=False)
    if report.get("pixels_verified") is False:
        console.print(f"[yellow]warning:[/yellow] burned-in text is left in the pixels of {escape(printable(output))} "
                      f"(residual {report.get('pixel_residual') or 0:.3f}, or read by OCR), so the file says BurnedInAnnotation "
                      "YES and PatientIdentityRemoved NO; fetalkit audit deid names what is left",
                      highlight=False, soft_wrap=True)
    elif report.get("patient_identity_removed") == "NO":
        console.print(f"kept on request: {', '.join(report['kept_on_request'])}; they are identifying, so the "
                      "file says PatientIdentityRemoved NO", highlight=False, soft_wrap=True, markup=False)
    if json_out:
        out.print_json(json.dumps(report))
        return
    if "removed" in report:
        out.print(f"removed {len(report['removed'])} by the profile and {len(report['removed_by_allowlist'])} by the "
                  f"allow-list, emptied {len(report['emptied'])}, replaced {len(report['replaced'])}, "
                  f"dates shifted {len(report['shifted'])}, kept on request {len(report['kept_on_request'])} "
                  f"attributes; {report['uids_remapped']} UIDs remapped; {report['private_tags_removed']} private "
                  f"tags removed; pixel data {report['pixel_data']}; BurnedInAnnotation {report['burned_in_annotation']}",
                  highlight=False, soft_wrap=True, markup=False)
    elif report["kind"] == "video":
        out.print(f"{report['frames']} frames re-encoded without metadata; {report['overlay_px_removed']} "
                  f"burned-in pixels removed")
    else:
        out.print(f"image re-encoded without metadata; {report['overlay_px_removed']} burned-in pixels removed")
    out.print(f"wrote {report['output']}", highlight=False, soft_wrap=True, markup=False)


@app.command("batch")
def batch_cmd(job: str = typer.Argument(..., help="mask, deid, biometry-head, aop or detect."),
              src: Path = typer.Argument(..., help="Archive folder (searched recursively: images, videos, DICOM) or one file."),
              out_dir: Path = typer.Option(..., "--out", help="Output folder: outputs mirror SRC's folders; manifest.csv, results.csv."),
              workers: int = typer.Option(1, "--workers", min=1, help="Local worker processes (1: this process); with --ray local, Ray CPUs."),
              ray: Optional[str] = typer.Option(None, "--ray", help="Run on Ray: 'local' (start one here), 'auto' or a cluster address; needs fetalkit[cluster]."),
              model: Optional[str] = typer.Option(None, "--model", help="Bundled model name or .onnx path (default: the job's bundled model)."),
              pixel_mm: Optional[float] = typer.Option(None, "--pixel-mm", help="biometry-head: pixel size in mm for every input (else from --pixel-csv or the DICOM)."),
              pixel_csv: Optional[Path] = typer.Option(None, "--pixel-csv", help="biometry-head: HC18-style csv (filename,pixel size(mm)), by file name."),
              overlays: bool = typer.Option(True, help="biometry-head, aop, detect: write overlay PNGs."),
              shift_dates: bool = typer.Option(False, "--shift-dates", help="deid: shift each patient's dates by one keyed number of days (intervals kept) instead of removing them."),
              keep: Optional[List[str]] = typer.Option(None, "--keep", help="deid: keep this attribute as it is (keyword or tag; repeatable); the report names it."),
              force: bool = typer.Option(False, "--force", help="biometry-head, aop: measure inputs the domain check refuses too (plane_ok false)."),
              audit: bool = typer.Option(False, "--audit", help="mask, deid: audit every output (fetalkit audit) into <name>.audit.json; an output that leaks is not published and its input fails."),
              quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary; errors only.")):
    """Run one job over a whole archive, resumable: rerun the same command to skip what is done and retry what failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text
    from fetalkit.batch import BatchOptions, run_batch
    if pixel_mm is not None and pixel_csv is not None:
        fail("give either --pixel-mm or --pixel-csv, not both")
    if (shift_dates or keep) and job != "deid":
        fail(f"--shift-dates and --keep are options of the deid job, not of {job}")
    if audit and job not in ("mask", "deid"):
        fail(f"--audit audits the outputs of mask and deid, not of {job}")
    if force and job not in ("biometry-head", "aop"):
        fail(f"--force measures refused inputs of biometry-head and aop, not of {job}")
    if keep:
        from fetalkit.deid import keep_tags
        keep_tags(keep)  # an unknown name is refused before the archive is read
    options = BatchOptions(model=model, pixel_mm=pixel_mm, pixel_csv=str(pixel_csv) if pixel_csv else None,
                           overlays=overlays, shift_dates=shift_dates, keep=tuple(keep or ()), audit=audit,
                           force=force)

    class FilesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} files/s" if task.speed else "- files/s")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), FilesPerSecond(),
                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[failed]} failed"),
                  console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task(job, total=None, failed=0)
        n_failed = 0

        def on_file(entry):
            nonlocal n_failed
            n_failed += entry.status == "failed"
            bar.update(task, advance=1, failed=n_failed)
        summary = run_batch(job, src, out_dir, options, workers=workers, ray_address=ray,
                            on_start=lambda n: bar.update(task, total=n), on_file=on_file)
    if not quiet:
        rate = summary.done / summary.seconds if summary.seconds else 0.0
        out.print(f"{job}: {summary.done} done ({rate:.1f} files/s), {summary.skipped} skipped (done before), "
                  f"{summary.failed} failed, {summary.ignored} ignored"
                  + (f", {summary.pending} not reached" if summary.pending else "")
                  + f"; {summary.manifest}, {summary.results}", soft_wrap=True)
        for e in summary.ignored_inputs[:5]:  # by name: a FIFO or a mistyped suffix must not go unseen
            out.print(f"ignored: {escape(e.input)}: {escape(e.error)}", highlight=False, soft_wrap=True)
        if len(summary.ignored_inputs) > 5:
            out.print(f"... {len(summary.ignored_inputs) - 5} more ignored, each with its reason in {summary.manifest}",
                      highlight=False, soft_wrap=True)
    for e in summary.failures[:20]:
        console.print(f"[red]error:[/red] {escape(e.error)}", highlight=False, soft_wrap=True)
    if len(summary.failures) > 20:
        console.print(f"... {len(summary.failures) - 20} more failures in {summary.manifest}")
    if summary.interrupted:
        console.print(f"interrupted: the {summary.done} inputs finished in this run are kept, "
                      f"{summary.pending} not reached; rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


@data_app.command("boxes")
def data_boxes_cmd(src: Path = typer.Argument(..., help="PSFHS or HC18 folder (boxes from their labels), or a COCO json / YOLO folder / CVAT XML (or a folder of CVAT annotations.xml)."),
                   fmt: str = typer.Option("coco", "--format", help="Output format: coco or yolo."),
                   out_dir: Path = typer.Option(..., "--out", help="New output folder (refused if it exists)."),
                   square: bool = typer.Option(False, help="Make every box a square around its object (box shape then leaks nothing)."),
                   negatives: bool = typer.Option(True, help="PSFHS: add one derived negative per image (see fetalkit.detection.sources)."),
                   both_negatives: bool = typer.Option(False, help="PSFHS: derive both negatives (no symphysis, no head) from every image instead of alternating."),
                   copy_images: bool = typer.Option(True, help="Copy the images into OUT/images (label files only with --no-copy-images)."),
                   all_sources: bool = typer.Option(False, "--all-sources", help="SRC is the public sets' folder: PSFHS, HC18 head boxes and the other fetal planes (FeEcho4D, FETAL_PLANES_DB, SonoNet) as negatives, each source split apart.")):
    """Convert detection labels between formats, or derive boxes from segmentation labels."""
    from rich.progress import Progress
    from fetalkit.detection.formats import write_detection_set
    from fetalkit.detection.sources import all_sources_set, source_set
    if fmt not in ("coco", "yolo"):
        fail(f"--format must be coco or yolo, got {fmt!r}")
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("reading labels", total=None)
        progress = lambda i, n: bar.update(task, completed=i, total=n)  # noqa: E731
        if all_sources:
            ds, pixels = all_sources_set(src, square, both_negatives, progress)
        else:
            ds, pixels = source_set(src, square, negatives, progress=progress, both_negatives=both_negatives)
        bar.update(task, description="writing")
        write_detection_set(ds, out_dir, fmt, pixels, copy_images)
    counts = ds.counts()
    out.print(f"{counts.pop('images')} images ({counts.pop('negative_images')} without any box); boxes: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; wrote {fmt} to {out_dir}")


@data_app.command("dedup")
def dedup_cmd(folder: List[Path] = typer.Argument(..., help="Folders and/or images."),
              out_csv: Path = typer.Option(None, "--out", help="Write the pairs to this csv."),
              max_distance: int = typer.Option(24, help="Largest Hamming distance (of 256 hash bits) for a near duplicate."),
              json_out: bool = typer.Option(False, "--json")):
    """Find exact and near-duplicate images (perceptual hash) and print the pairs with their distance."""
    from rich.progress import Progress
    from fetalkit.io.images import expand_inputs
    from fetalkit.io.jobs import write_csv_rows
    from fetalkit.preprocess.dedup import DUPLICATE_COLUMNS, find_duplicate_pairs, hash_images
    paths = expand_inputs(folder)
    with Progress(console=console, transient=True, disable=json_out) as bar:
        task = bar.add_task("hashing", total=len(paths))
        hashes, failures = hash_images(paths, progress=lambda i, n: bar.update(task, completed=i))
    pairs = find_duplicate_pairs(hashes, max_distance)
    rows = [p.as_row() for p in pairs]
    if out_csv:
        write_csv_rows(out_csv, rows, DUPLICATE_COLUMNS)
    if json_out:
        out.print_json(json.dumps(rows, default=str))
    else:
        exact = sum(1 for p in pairs if p.kind == "exact")
        out.print(f"{len(hashes)} images: {exact} exact and {len(pairs) - exact} near-duplicate pairs")
        for p in pairs[:50]:
            out.print(f"{p.kind:5s} {p.distance:3d}  {p.a}  {p.b}")
        if len(pairs) > 50:
            out.print(f"... {len(pairs) - 50} more" + (f" (all in {out_csv})" if out_csv else " (use --out FILE.csv)"))
    for path, message in failures:
        console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback (127.0.0.1, ::1) needs --token."),
              port: int = typer.Option(8000, "--port", min=1, max=65535),
              token: Optional[str] = typer.Option(None, "--token", envvar="FETALKIT_TOKEN", help="Bearer token every request must carry (open the page as /?token=...); needed off loopback."),
              max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", help="Largest upload in MB (larger: HTTP 413)."),
              temp_dir: Optional[Path] = typer.Option(None, "--temp-dir", help="Where uploads and results wait while needed (default: the system temp folder); removed on exit."),
              jobs: int = typer.Option(1, "--jobs", min=1, help="Masking / de-identification jobs run at once (more wait in a queue)."),
              allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", help="Another name the page may be opened under (a DNS name, a TLS proxy's); other Host headers get HTTP 400. Repeatable.")):
    """Serve the clinician page on this machine: masking (file and live), biometry, de-identification."""
    try:
        from fetalkit.web.server import serve
    except ModuleNotFoundError as e:
        fail(f"fetalkit serve needs the web extra ({e.name} is not installed): pip install 'fetalkit[web]'")
    from fetalkit import __version__
    from fetalkit.web.settings import WebSettings, check_bind
    settings = WebSettings(max_upload_mb=max_upload_mb, token=token, temp_dir=temp_dir, max_running_jobs=jobs,
                           host=host, allowed_hosts=tuple(allow_host or ()))
    warning = check_bind(host, token)
    if warning:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    out.print(f"fetalkit {__version__}: open http://{shown}:{port}/" + ("?token=<your token>" if token else "")
              + f"  (uploads up to {max_upload_mb:g} MB; Ctrl-C stops)", highlight=False, soft_wrap=True)
    serve(settings, host, port)


def _audit_error(e: Exception) -> str:
    from fetalkit.io.inputs import os_error
    return str(os_error(e.filename, e)) if isinstance(e, OSError) and e.filename else str(e)


def _print_audit(audit, json_out: bool) -> None:
    """The report as JSON on stdout (--json; the summary line then on stderr), else the summary line; exit 1 on a leak."""
    line = audit.summary()
    if json_out:
        out.print_json(json.dumps(audit.as_dict(), default=str))
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    else:
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    if not audit.clean:
        raise typer.Exit(1)


@audit_app.command("deid")
def audit_deid_cmd(original: Path = typer.Argument(..., help="The file before de-identification (DICOM, image or video)."),
                   output: Path = typer.Argument(..., help="Its de-identified output (any tool's; DICOM, image or video)."),
                   max_residual: float = typer.Option(0.03, "--max-residual", min=0.0, help="Residual text above this (edge energy left in the text regions, 0-1) is a leak."),
                   ocr: bool = typer.Option(True, "--ocr/--no-ocr", help="Read the text regions with Tesseract (when installed)."),
                   json_out: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the summary line goes to stderr).")):
    """Audit a de-identified file: profile actions, identifying strings in its bytes, residual burned-in text. Exit 0 clean, 1 leak, 2 usage error."""
    from fetalkit.audit.deid import audit_deid
    try:
        audit = audit_deid(original, output, max_residual=max_residual, ocr=ocr)
    except (FetalkitError, OSError) as e:  # exit 1 means a leak: a file that cannot be audited is a usage error
        fail(_audit_error(e), code=2)
    _print_audit(audit, json_out)


@audit_app.command("mask")
def audit_mask_cmd(original: str = typer.Argument(..., help="The clip before masking: image, folder of frames, video or DICOM."),
                   masked: str = typer.Argument(..., help="Its masked output, same frame size."),
                   truth: Optional[Path] = typer.Option(None, "--truth", help='Per-frame truth boxes: JSON list of {"frame": i, "bbox": [x, y, w, h], "category": c}.'),
                   model: str = typer.Option(None, "--model", help="Detector: bundled name or .onnx (default: the bundled detector)."),
                   classes: str = typer.Option(None, "--classes", help="Comma-separated classes that had to be hidden (default: all classes of the model)."),
                   max_leaked: int = typer.Option(0, "--max-leaked", min=0, help="Leaked frames tolerated before the audit fails."),
                   conf: float = typer.Option(None, help="Detector confidence (default: the model's operating point)."),
                   threads: int = typer.Option(2, help="onnxruntime threads."),
                   json_out: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the summary line goes to stderr).")):
    """Audit a masked clip frame by frame: is what the detector finds in the original hidden? Exit 0 clean, 1 leak, 2 usage error."""
    from fetalkit.audit.mask import audit_mask
    try:
        audit = audit_mask(original, masked, truth=truth, model=model,
                           classes=classes.split(",") if classes else None, max_leaked=max_leaked, conf=conf,
                           threads=threads)
    except (FetalkitError, OSError) as e:
        fail(_audit_error(e), code=2)
    _print_audit(audit, json_out)


def _finish(rows: list[dict], quiet: bool, where: str) -> None:
    failed = [r for r in rows if r["error"]]
    if not quiet:
        out.print(f"{len(rows) - len(failed)} done, {len(failed)} failed; {where}")
    for r in failed:
        console.print(f"[red]error:[/red] {escape(r['error'])}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    from fetalkit.io.inputs import os_error, printable
    try:
        app()
    except FetalkitError as e:
        console.print(f"[red]error:[/red] {escape(printable(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as e:
        # an output folder that cannot be written, a disk that is full: one line, not a traceback
        message = os_error(e.filename, e) if e.filename else f"{e.strerror or e}"
        console.print(f"[red]error:[/red] {escape(printable(message))}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
