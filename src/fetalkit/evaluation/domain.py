"""Calibrating and scoring the domain check of every bundled model (``fetalkit eval domain``).

For each task of :data:`fetalkit.runtime.domain.MODEL_DOMAINS` the score of an image is
the view classifier's highest probability among the task's classes
(:func:`fetalkit.runtime.domain.domain_score`).  The operating threshold
is the score that keeps ``retention`` (99 %: a clinic should rarely see a real head
refused) of the in-domain images of the classifier's own validation part; the held-out
test part (other subjects, id blocks, time blocks, sources) gives the AUROC, the
in-domain share kept and the false-accept rate (the share of out-of-domain images
passing), overall and per source, at that threshold and at the one keeping 95 % of the
validation images (the figure the field reports).  Images of pydicom's
wheel are never used here: they are the test of other scanners' files
(``benchmarks/domain_real_files.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from fetalkit.datasets.views import ViewItem, read_view_image, split_view_items
from fetalkit.errors import DataError
from fetalkit.io.jobs import write_csv_rows
from fetalkit.runtime.domain import DEFAULT_CLASSIFIER, MODEL_DOMAINS, domain_score

RETENTION = 0.99
REPORTED_RETENTION = 0.95


def classify_items(vc, items: list[ViewItem], batch: int = 32) -> np.ndarray:
    """N x C probabilities of the view classifier ``vc`` on ``items``."""
    return np.concatenate([vc.probabilities([read_view_image(it) for it in items[i:i + batch]])
                           for i in range(0, len(items), batch)])


def domain_figures(score: np.ndarray, inside: np.ndarray, threshold: float, origins: list[str]) -> dict:
    """AUROC, in-domain share kept and false-accept rate of ``score >= threshold``, with the FAR per source."""
    from sklearn.metrics import roc_auc_score
    passed = score >= threshold
    out = {"n_in": int(inside.sum()), "n_out": int((~inside).sum()),
           "kept_in_domain": round(float(passed[inside].mean()), 4) if inside.any() else None,
           "false_accept": round(float(passed[~inside].mean()), 4) if (~inside).any() else None,
           "auroc": round(float(roc_auc_score(inside, score)), 4) if 0 < inside.sum() < len(inside) else None}
    by_source: dict[str, dict] = {}
    for origin in sorted(set(origins)):
        pick = np.array([o == origin for o in origins]) & ~inside
        if pick.any():
            by_source[origin] = {"n": int(pick.sum()), "false_accept": round(float(passed[pick].mean()), 4)}
    out["false_accept_by_source"] = by_source
    return out


def calibrate_domains(sources: list[list[ViewItem]], out_dir: Path, classifier: str = DEFAULT_CLASSIFIER,
                      seed: Optional[int] = None, retention: float = RETENTION, update_cards: bool = False,
                      threads: int = 2) -> dict:
    """Thresholds on val, figures on test, for every task; ``update_cards`` writes ``card["domain"]``
    into every bundled model of the task.  Writes ``domain.json`` and ``scores.csv`` into ``out_dir``."""
    from fetalkit.runtime.classifier import ViewClassifier
    vc = ViewClassifier(classifier, threads=threads)
    seed = vc.model.card.get("split", {}).get("seed", 0) if seed is None else seed
    val, test = split_view_items(sources, "val", seed), split_view_items(sources, "test", seed)
    if not val or not test:
        raise DataError("the data give no validation or test images to calibrate on")
    p_val, p_test = classify_items(vc, val), classify_items(vc, test)
    result: dict = {"classifier": classifier, "seed": seed, "retention": retention, "tasks": {}}
    for task, classes in MODEL_DOMAINS.items():
        cols = [vc.classes.index(c) for c in classes]
        s_val, s_test = domain_score(p_val, cols), domain_score(p_test, cols)
        in_val = np.array([it.label in classes for it in val])
        in_test = np.array([it.label in classes for it in test])
        if not in_val.any():
            raise DataError(f"no validation images of {', '.join(classes)}: cannot calibrate the {task} domain")
        threshold = float(np.quantile(s_val[in_val], 1.0 - retention, method="lower"))
        at_95 = float(np.quantile(s_val[in_val], 1.0 - REPORTED_RETENTION, method="lower"))
        origins = [it.origin for it in test]
        result["tasks"][task] = {
            "classes": list(classes), "threshold": round(threshold, 4),
            "val": domain_figures(s_val, in_val, threshold, [it.origin for it in val]),
            "test": domain_figures(s_test, in_test, threshold, origins),
            "threshold_95": round(at_95, 4), "test_95": domain_figures(s_test, in_test, at_95, origins)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "domain.json").write_text(json.dumps(result, indent=1))
    write_csv_rows(out_dir / "scores.csv",
                   [{"source": str(it.source), "frame": "" if it.frame is None else it.frame, "origin": it.origin,
                     "label": it.label, **{c: f"{p_test[k, j]:.4f}" for j, c in enumerate(vc.classes)}}
                    for k, it in enumerate(test)],
                   ["source", "frame", "origin", "label", *vc.classes])
    if update_cards:
        write_domains(result, classifier)
    return result


def write_domains(result: dict, classifier: str) -> list[str]:
    """Store each task's domain (classes, threshold, held-out figures) in its bundled models' cards."""
    from fetalkit.config import MODELS_DIR
    from fetalkit.runtime.card import read_card, write_card
    written = []
    for path in sorted(MODELS_DIR.glob("*.onnx")):
        card = read_card(path)
        task = result["tasks"].get(card.get("task"))
        if task is None:
            continue
        card["domain"] = {"classes": task["classes"], "threshold": task["threshold"], "classifier": classifier,
                          "retention": result["retention"], "test": task["test"],
                          "threshold_95": task["threshold_95"], "test_95": task["test_95"],
                          "command": "fetalkit eval domain --update-cards"}
        write_card(path, card)
        written.append(path.stem)
    return written
