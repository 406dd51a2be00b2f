"""Scoring a view classifier: accuracy, per-class precision / recall / F1 (scikit-learn), confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from fetalkit.datasets.views import ViewItem, read_view_image, split_view_items
from fetalkit.errors import DataError
from fetalkit.io.jobs import write_csv_rows


def view_scores(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix (rows: truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
            "per_class": {c: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
                          for k, c in enumerate(classes)},
            "classes": classes, "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist()}


def per_source_accuracy(items: list[ViewItem], predicted: list[str]) -> dict:
    """Accuracy per (origin, class): does the classifier answer the plane in every source?"""
    out: dict[str, dict] = {}
    for key in sorted({f"{it.origin}:{it.label}" for it in items}):
        hits = [p == it.label for it, p in zip(items, predicted) if f"{it.origin}:{it.label}" == key]
        out[key] = {"n": len(hits), "accuracy": round(float(np.mean(hits)), 4)}
    return out


def plot_confusion(scores: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ConfusionMatrixDisplay(np.array(scores["confusion"]), display_labels=scores["classes"]).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=30)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_view(model: str, sources: list[list[ViewItem]], split: str, seed: Optional[int], out_dir: Path,
                  update_card: bool = False, threads: int = 2) -> dict:
    """Classify one split part with an ONNX view model; writes metrics.json, per_class.csv,
    predictions.csv and confusion.png into ``out_dir``."""
    from fetalkit.runtime.classifier import ViewClassifier
    vc = ViewClassifier(model, threads=threads)
    card = vc.model.card
    seed = card.get("split", {}).get("seed", 0) if seed is None else seed
    items = [it for it in split_view_items(sources, split, seed) if it.label in vc.classes]
    if not items:
        raise DataError(f"no {split} images of the classes {', '.join(vc.classes)} in the data given")
    probs = np.concatenate([vc.probabilities([read_view_image(it) for it in items[i:i + 32]])
                            for i in range(0, len(items), 32)])
    pred = [vc.classes[k] for k in probs.argmax(1)]
    scores = view_scores([it.label for it in items], pred, vc.classes)
    scores["per_source"] = per_source_accuracy(items, pred)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps({**scores, "split": split, "seed": seed,
                                                      "model": str(vc.model.path)}, indent=1))
    write_csv_rows(out_dir / "per_class.csv", [{"class": c, **r} for c, r in scores["per_class"].items()],
                   ["class", "precision", "recall", "f1", "support"])
    write_csv_rows(out_dir / "predictions.csv",
                   [{"source": str(it.source), "frame": "" if it.frame is None else it.frame, "group": it.group,
                     "origin": it.origin, "label": it.label, "predicted": p, "probability": f"{probs[k].max():.4f}"}
                    for k, (it, p) in enumerate(zip(items, pred))],
                   ["source", "frame", "group", "origin", "label", "predicted", "probability"])
    plot_confusion(scores, out_dir / "confusion.png",
                   f"{vc.model.path.stem}, {split} split: accuracy {scores['accuracy']:.3f} ({scores['n']} images)")
    if update_card:
        if split != "test":
            raise DataError("--update-card takes the test split only (the card's figures are held-out ones)")
        from fetalkit.training.export import update_card as write_metrics
        write_metrics(vc.model.path, "metrics", {
            "test_accuracy": round(scores["accuracy"], 4), "test_macro_f1": round(scores["macro_f1"], 4),
            **{f"test_f1_{c}": round(r["f1"], 4) for c, r in scores["per_class"].items()},
            "test_images": scores["n"]})
    return scores
