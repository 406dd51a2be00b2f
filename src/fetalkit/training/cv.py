"""Block cross-validation of a detector recipe: K folds of id blocks, the same schedule in each.

One split's test part is one draw of scans; a better recipe and a lucky one look alike
on it.  Here the development part (train + val; the test part of the split seed never
enters) is dealt into K folds of whole groups.  Each fold trains the recipe on the other
K - 1 folds for a fixed number of epochs (the last epoch is kept: nothing is chosen on
the held-out fold), exports it to ONNX and scores the held-out fold twice:

* stills: COCO AP[.5:.95] / AP50 per class (source images only, as the headline figures),
  label F1 and FPPI (on the derived negatives) at one fixed operating point;
* video: ``bench video``'s simulated sequences built from the held-out fold's images,
  the detector alone vs the default BBoxHoldSim, as the **absolute** share of target
  frames shown unmasked and the relative reduction.

With ``CvConfig.flip`` the same fold models are scored with test-time flip averaging
(pointed at a copy of a scored run folder, nothing is trained again: each fold resumes
from its finished ``last.pt``).

Then mean and sample sd over the folds.  Each fold is resumable and, once scored, skipped.
``only`` trains a subset of the folds (a CV spread over sessions or machines: each trains its
folds into one run folder, or into its own folder, merged later by :func:`merge_cv_runs`); the
record then says which folds it holds (``complete`` false until all K are scored).
Two recipes are compared **paired** (:func:`paired_differences`, ``fetalkit eval cv-compare``):
the folds differ far more than recipes do, so differences are taken fold by fold.
"""

from __future__ import annotations

import json
from copy import deepcopy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from fetalkit.datasets.splits import cv_folds
from fetalkit.errors import DataError


@dataclass
class CvConfig:
    folds: int = 5
    conf: float = 0.46            # one operating point for every fold (the bundled detector's, chosen on val)
    iou: float = 0.4
    category: str = "pubic_symphysis"   # the class the video benchmark hides
    sequences: int = 40           # simulated sequences per held-out fold
    frames: int = 60
    flip: bool = False            # score with test-time flip averaging (twice the inference)


def fold_metrics(summary: dict, categories: list[str]) -> dict[str, float]:
    """The figures of one fold from ``evaluate_detector``: AP / AP50 / F1 on the source images
    (derived negatives excluded, as the README's figures) and FPPI over the whole fold."""
    src = summary.get("source_images", summary)
    row = {}
    for c in categories:
        row |= {f"ap_{c}": src[f"ap_{c}"], f"ap50_{c}": src[f"ap50_{c}"], f"f1_{c}": src[f"f1_{c}"],
                f"fppi_{c}": summary[f"fppi_{c}"]}
    row |= {"ap": src["ap"], "f1": src["f1"], "fppi": summary["fppi"]}
    return {k: float(v) for k, v in row.items()}


def video_metrics(ds, detector, cv: CvConfig, seed: int) -> dict[str, float]:
    """Simulated sequences from the held-out images: misses of the detector alone and after
    the default BBoxHoldSim, as shares of the target frames, and the relative reduction."""
    from fetalkit.evaluation.video import build_sequences, detect_sequences, draw_breakdown
    from fetalkit.detection.region import parse_roi
    from fetalkit.masking.pipeline import MaskConfig
    seqs = build_sequences(ds, cv.category, cv.sequences, cv.frames, seed)
    dets = detect_sequences(seqs, detector, cv.category, cv.conf, parse_roi("auto"))  # as `fetalkit mask` detects
    (row,) = draw_breakdown(seqs, dets, MaskConfig.margin)
    targets = max(row["target_frames"], 1)
    return {"video_sequences": float(len(seqs)), "video_target_frames": float(row["target_frames"]),
            "video_miss_rate_detector": row["fn_detector"] / targets, "video_miss_rate_held": row["fn_held"] / targets,
            "video_miss_reduction": float(row["fn_reduction"]),
            "video_false_masked_increase_pp": float(row["false_masked_increase_pp"])}


# options that say how a fold runs, not what it learns: folds trained with other values (another
# machine's core count) are still one recipe's; they change AP only by floating-point order
RUN_ONLY = ("threads",)


def same_recipe(stored: dict, recipe: dict, config_type) -> bool:
    """Whether a scored fold used ``recipe`` (``RUN_ONLY`` options aside); options added since it
    was scored count at their defaults."""
    learnt = lambda train: {k: v for k, v in train.items() if k not in RUN_ONLY}
    defaults = {k: v for k, v in asdict(config_type()).items() if k != "categories"}
    cv_defaults = asdict(CvConfig())
    return (learnt({**defaults, **stored.get("train", {})}) == learnt(recipe["train"])
            and {**cv_defaults, **stored.get("cv", {})} == recipe["cv"])


def with_run_values(recipe: dict, recipes: list[dict]) -> dict:
    """``recipe`` with each ``RUN_ONLY`` option as the folds' ``recipes`` ran it: their one value,
    or the sorted list where they differ (e.g. threads [1, 2]), so a record says how its folds
    ran rather than how the latest command would have."""
    recipe = deepcopy(recipe)
    for key in RUN_ONLY:
        values = [r.get("train", {}).get(key) for r in recipes if key in r.get("train", {})]
        values = sorted({v for value in values for v in (value if isinstance(value, list) else [value])}, key=str)
        if values:
            recipe["train"][key] = values if len(values) > 1 else values[0]
    return recipe


def summarise_folds(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample sd (ddof 1) of every figure over the folds."""
    keys = [k for k in rows[0] if k != "fold"]
    return {k: {"mean": float(np.mean([r[k] for r in rows])),
                "sd": float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0} for k in keys}


def fold_teachers(distill_from: str | list[str], fold: int, held_out: set[str]) -> str | list[str]:
    """The teachers of one fold: "{fold}" in each path replaced by the fold number.  A teacher must
    be a run's checkpoint with its ``split.txt`` beside it that trained on none of the fold's
    held-out images (the teacher's own fold of a CV run with the same folds and split seed),
    else what the student learns from it would leak the held-out fold."""
    from fetalkit.training.detect import teacher_paths
    paths = [p.replace("{fold}", str(fold)) for p in teacher_paths(distill_from)]
    for p in paths:
        split = Path(p).parent / "split.txt"
        if not split.is_file():
            raise DataError(f"{p}: a teacher under cross-validation needs its run's split.txt beside it; give a "
                            f"fold of a CV run with the same folds, e.g. RUN/fold{{fold}}/last.pt")
        trained = {line.split(",")[0] for line in split.read_text().splitlines() if line.endswith(",train")}
        if trained & held_out:
            raise DataError(f"{p}: trained on {len(trained & held_out)} images of fold {fold}'s held-out part; give "
                            f"a CV run's fold{{fold}} with the same --cv K and split seed (--split-seed)")
    return paths[0] if len(paths) == 1 else paths


def cross_validate_detector(data_dir: Path, out_dir: Path, cfg, cv: CvConfig,
                            progress: Optional[Callable[[str], None]] = None,
                            epoch_progress: Optional[Callable[[dict], None]] = None,
                            only: Optional[Iterable[int]] = None) -> dict:
    """Train ``cfg`` (a ``DetTrainConfig``) on each fold (or the folds in ``only``) and score its
    held-out fold; writes ``foldN/`` runs, ``cv.json`` (the scored folds, mean, sd) and ``cv.csv``;
    returns the cv.json record.  Folds already scored with the same recipe are kept either way."""
    from fetalkit.detection.formats import read_detection_set
    from fetalkit.evaluation.detection import evaluate_detector
    from fetalkit.runtime.detector import FlipAveraged, OnnxDetector
    from fetalkit.training.detect import fit, load_letterboxed, load_teacher
    from fetalkit.training.detectors import build_detector
    from fetalkit.training.distill import check_distillable
    from fetalkit.training.export import export_detector
    say = progress or (lambda message: None)
    ds = read_detection_set(data_dir)
    if not ds.samples or not any(len(s.labels) for s in ds.samples):
        raise DataError(f"{data_dir}: the label set has no boxed images; cross-validation needs labelled objects")
    cfg.categories = list(ds.categories)
    if cv.category not in ds.categories:
        raise DataError(f"{data_dir}: no class {cv.category!r} for the video benchmark "
                        f"(classes: {', '.join(ds.categories)}); pass --cv-category")
    try:
        folds = cv_folds(ds.groups(), cv.folds, cfg.data_split_seed)
    except ValueError as e:
        raise DataError(f"{data_dir}: {e}") from None
    chosen = set(range(len(folds)) if only is None else only)
    if chosen - set(range(len(folds))):
        raise DataError(f"no fold {min(chosen - set(range(len(folds))))} in a {len(folds)}-fold cross-validation; "
                        f"give fold numbers 0 to {len(folds) - 1}")
    teachers = [None] * len(folds)
    if cfg.distill_from:  # every chosen fold's teachers checked before any fold trains
        student = build_detector(cfg.arch, len(cfg.categories), cfg.size, "random")
        for i, (_, held_idx) in enumerate(folds):
            if i not in chosen:
                continue
            teachers[i] = fold_teachers(cfg.distill_from, i, {ds.samples[j].file_name for j in held_idx})
            check_distillable(student, load_teacher(teachers[i]), cfg.size)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = {"train": {k: v for k, v in asdict(cfg).items() if k != "categories"}, "cv": asdict(cv)}
    data = None  # letterboxed once, only if a fold still has to train
    rows, fold_recipes = [], []
    for i, (train_idx, held_idx) in enumerate(folds):
        fold_dir = out_dir / f"fold{i}"
        done = fold_dir / "fold.json"
        stored = json.loads(done.read_text()) if done.is_file() else {}
        if stored and same_recipe(stored.get("recipe", {}), recipe, type(cfg)):
            rows.append(stored["metrics"])
            fold_recipes.append(stored["recipe"])
            say(f"fold {i}: already scored")
            continue
        if i not in chosen:
            continue
        if data is None:
            say("reading and letterboxing the images")
            data = load_letterboxed(ds, cfg.size)
        fold_dir.mkdir(parents=True, exist_ok=True)
        parts = {int(j): "train" for j in train_idx} | {int(j): "val" for j in held_idx}
        (fold_dir / "split.txt").write_text("".join(f"{ds.samples[j].file_name},{p}\n" for j, p in sorted(parts.items())))
        say(f"fold {i}: training on {len(train_idx)} images, {len(held_idx)} held out")
        fold_cfg = deepcopy(cfg)
        fold_cfg.distill_from = teachers[i]
        # no validation indices: a fixed schedule whose last epoch is kept, nothing chosen on the held-out fold
        fit(ds, data, train_idx, held_idx[:0], fold_cfg, fold_dir, resume=True, progress=epoch_progress)
        onnx = fold_dir / "detector.onnx"
        export_detector(fold_dir / "last.pt", onnx, name=f"cv-fold{i}",
                        operating_point={"conf": cv.conf, "iou": cv.iou, "chosen_on": "fixed for cross-validation"})
        say(f"fold {i}: scoring the held-out images and sequences")
        detector = FlipAveraged(OnnxDetector(onnx)) if cv.flip else OnnxDetector(onnx)
        held = ds.subset(held_idx)
        metrics = {"fold": i, "n_train": len(train_idx), "n_held_out": len(held_idx),
                   **fold_metrics(evaluate_detector(held, detector, cv.conf, cv.iou), ds.categories),
                   **video_metrics(held, detector, cv, cfg.seed + i)}
        done.write_text(json.dumps({"recipe": recipe, "metrics": metrics}, indent=1))
        rows.append(metrics)
        fold_recipes.append(recipe)
    if not rows:
        raise DataError(f"{out_dir}: no fold scored yet; give folds to train (or leave out the fold choice)")
    record = {"data": str(data_dir), "recipe": with_run_values(recipe, fold_recipes), "folds": rows,
              "complete": len(rows) == len(folds),
              "summary": summarise_folds(rows)}
    write_cv_report(record, out_dir)
    return record


def _cell(fmt: str, value: float) -> str:
    return f"{100 * value:.{fmt[-1]}f} %" if fmt.startswith("%") else f"{value:.{fmt}f}"


def cv_markdown(record: dict) -> str:
    """The record as the Markdown table the docs show: a row per fold, then mean ± sd
    (AP per class, the video class's F1 and FPPI, the video figures in %), so a table
    in a doc is pasted from the record, never retyped."""
    category = {**asdict(CvConfig()), **record["recipe"].get("cv", {})}["category"]
    rows, summary = record["folds"], record["summary"]
    columns = [(k, k[3:].replace("_", " ") + " AP", "3") for k in rows[0] if k.startswith("ap_")] + [
        (f"f1_{category}", category.replace("_", " ") + " F1", "3"),
        (f"fppi_{category}", category.replace("_", " ") + " FPPI", "3"),
        ("video_miss_rate_detector", "missed alone", "%2"), ("video_miss_rate_held", "missed after BBoxHoldSim", "%2"),
        ("video_miss_reduction", "reduction", "%1"), ("video_false_masked_increase_pp", "false-masked +pp", "2")]
    columns = [c for c in columns if c[0] in rows[0]]
    lines = ["| fold | held-out images | " + " | ".join(name for _, name, _ in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {r['fold']} | {r['n_held_out']} | " + " | ".join(_cell(f, r[k]) for k, _, f in columns) + " |"
              for r in rows]
    scope = "mean ± sd" if record.get("complete") else f"mean ± sd, folds {', '.join(str(r['fold']) for r in rows)}"
    lines.append(f"| **{scope}** | | " + " | ".join(f"**{_cell(f, summary[k]['mean'])}** ± {_cell(f, summary[k]['sd'])}"
                                                   for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"


def write_cv_report(record: dict, out_dir: Path) -> None:
    """``cv.json``, ``cv.csv`` (one row per fold, then the mean and sd rows) and ``cv.md`` (the table for a doc)."""
    from fetalkit.io.images import atomic_write_bytes
    from fetalkit.io.jobs import write_csv_rows
    rows = record["folds"]
    summary = record["summary"]
    table = rows + [{"fold": stat, **{k: v[stat] for k, v in summary.items()}} for stat in ("mean", "sd")]
    write_csv_rows(out_dir / "cv.csv", table, list(rows[0]))
    atomic_write_bytes(out_dir / "cv.md", cv_markdown(record).encode())
    atomic_write_bytes(out_dir / "cv.json", json.dumps(record, indent=1).encode())


def merge_cv_runs(runs: list[Path], out_dir: Path) -> dict:
    """One record from the scored folds of several runs (or cv.json files) of one recipe, e.g. folds
    trained on different machines; writes ``out_dir``'s cv.json / cv.csv and each fold's folder
    (copied from its run, or its ``fold.json`` rebuilt from a bare cv.json), so ``--cv-only`` can
    go on there.  Other recipes (``RUN_ONLY`` options aside: the record then lists each value),
    other folds, or one fold scored twice with different figures raise ``DataError`` and nothing
    is written."""
    import shutil
    from fetalkit.io.images import atomic_write_bytes
    records = [(Path(run), read_cv_record(Path(run))) for run in runs]
    first_run, first = records[0]
    listed = {(run if run.is_dir() else run.parent).resolve() for run, _ in records}
    if (out_dir / "cv.json").is_file() and out_dir.resolve() not in listed:
        raise DataError(f"{out_dir}: already holds a cross-validation; name it among the runs to merge "
                        f"into it, or give an empty folder")
    fold_key = lambda r: (r["n_train"], r["n_held_out"])
    rows: dict[int, tuple[Path, dict, dict]] = {}  # fold -> its run, figures, run's recipe
    for run, record in records:
        changes = [k for k in recipe_changes(first, record) if k not in RUN_ONLY]
        if changes:
            raise DataError(f"{run}: another recipe than {first_run} ({', '.join(changes)} differ); "
                            f"merge only runs of one recipe")
        for row in record["folds"]:
            seen = rows.get(row["fold"])
            if seen and fold_key(seen[1]) != fold_key(row):
                raise DataError(f"{run}: fold {row['fold']} holds other scans than in {seen[0]} "
                                f"(another data folder?); merge only runs over the same folds")
            if seen and seen[1] != row:
                raise DataError(f"{run}: fold {row['fold']} was also scored in {seen[0]} with other figures; "
                                f"keep one of the two runs' fold{row['fold']}")
            rows.setdefault(row["fold"], (run, row, record["recipe"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    for fold, (run, row, fold_recipe) in sorted(rows.items()):
        source, target = (run if run.is_dir() else run.parent) / f"fold{fold}", out_dir / f"fold{fold}"
        if (source / "fold.json").is_file() and source.resolve() != target.resolve():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif not (target / "fold.json").is_file():
            target.mkdir(exist_ok=True)
            atomic_write_bytes(target / "fold.json", json.dumps({"recipe": fold_recipe, "metrics": row}, indent=1).encode())
    folds = [row for _, (_, row, _) in sorted(rows.items())]
    k = first["recipe"].get("cv", {}).get("folds", len(folds))
    recipe = with_run_values(first["recipe"], [r["recipe"] for _, r in records])
    record = {"data": first.get("data"), "recipe": recipe, "folds": folds, "complete": len(folds) == k,
              "summary": summarise_folds(folds)}
    write_cv_report(record, out_dir)
    return record


# the figures `fetalkit eval cv-compare` shows by default, after AP[.5:.95] of every class
COMPARED = ("f1", "fppi", "video_miss_rate_detector", "video_miss_rate_held", "video_false_masked_increase_pp")
NOT_RECORDED = "(not recorded: its default)"


def read_cv_record(path: Path) -> dict:
    """A ``cv.json`` record, from its file or its run folder."""
    file = path / "cv.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no cv.json; run `fetalkit train detector --cv K --out {path}` first")
    try:
        record = json.loads(file.read_text())
        record["folds"], record["recipe"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{file}: not a cross-validation record (cv.json of `fetalkit train detector --cv`)") from None
    return record


def recipe_changes(base: dict, other: dict) -> dict[str, tuple]:
    """The options in which two records' recipes differ: name -> (base value, other value); an
    option one record lacks (added after it was scored, so at its default then) is NOT_RECORDED."""
    flat = lambda r: {**r.get("train", {}), **{f"cv_{k}": v for k, v in r.get("cv", {}).items()}}
    a, b = flat(base["recipe"]), flat(other["recipe"])
    return {k: (a.get(k, NOT_RECORDED), b.get(k, NOT_RECORDED)) for k in sorted(a.keys() | b.keys())
            if a.get(k, NOT_RECORDED) != b.get(k, NOT_RECORDED)}


def paired_differences(base: dict, other: dict, keys: Optional[list[str]] = None) -> dict[str, dict]:
    """Fold-by-fold differences ``other - base`` of two cv.json records over the folds both hold
    (all K, unless one was trained in part): per figure the per-fold differences, their mean and
    sample sd, and in how many folds ``other`` is higher / lower.  Records of different folds
    (fold count, split seed, held-out sizes) or with no fold in common raise ``DataError``."""
    fold_key = lambda r: (r["fold"], r["n_train"], r["n_held_out"])
    split_seed = lambda r: r["recipe"].get("train", {}).get("data_split_seed")
    fold_count = lambda r: r["recipe"].get("cv", {}).get("folds")
    by_fold_b = {r["fold"]: r for r in other["folds"]}
    rows_a = [r for r in base["folds"] if r["fold"] in by_fold_b]
    rows_b = [by_fold_b[r["fold"]] for r in rows_a]
    if (split_seed(base) != split_seed(other) or fold_count(base) != fold_count(other)
            or any(fold_key(a) != fold_key(b) for a, b in zip(rows_a, rows_b))):
        raise DataError("the two cross-validations are not over the same folds (fold count, split seed or "
                        "held-out sizes differ): rerun one with the other's data, --cv K and split seed")
    if not rows_a:
        raise DataError("the two cross-validations have no scored fold in common: score the same folds (--cv-only)")
    keys = keys or [k for k in rows_a[0] if k.startswith("ap_") and not k.startswith("ap50_")] + list(COMPARED)
    keys = [k for k in keys if k in rows_a[0] and k in rows_b[0]]
    result = {}
    for k in keys:
        d = np.array([b[k] - a[k] for a, b in zip(rows_a, rows_b)], float)
        result[k] = {"folds": [r["fold"] for r in rows_a], "diffs": d.tolist(), "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                     "higher": int((d > 0).sum()), "lower": int((d < 0).sum())}
    return result
