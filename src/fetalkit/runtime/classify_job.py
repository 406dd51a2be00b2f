"""``fetalkit classify``: the scan view of each input, one csv row per input, never stopping on a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fetalkit.io.images import check_min_size, read_still
from fetalkit.io.jobs import plan_job, write_csv_rows
from fetalkit.runtime.classifier import ViewClassifier
from fetalkit.runtime.domain import domain_score


UNKNOWN = "unknown"


def classify_files(inputs: list[Path], out_dir: Path, model: Optional[str] = None, threads: int = 2) -> list[dict]:
    """Classify every input; ``out_dir/classes.csv`` holds filename, class, probability, domain_score,
    p_<class>..., error.

    With a model whose card names a domain (the bundled one: every ultrasound class), an
    input scoring under its threshold, or whose most likely class lies outside the domain
    (``not_ultrasound``), is answered ``unknown``; its probabilities are still written.
    """
    job = plan_job(inputs, out_dir, lambda stem: [], summary=["classes.csv"])
    vc = ViewClassifier(model, threads=threads)
    domain = vc.model.card.get("domain")
    inside = [vc.classes.index(c) for c in domain["classes"]] if domain else None
    columns = ["filename", "class", "probability", "domain_score", *[f"p_{c}" for c in vc.classes], "error"]

    def measure(path: Path, row: dict, write) -> None:
        image, _ = read_still(path)
        check_min_size(path, image)
        label, p, probs = vc.classify(image)
        score = ""
        if inside is not None:
            s = float(domain_score(probs[None], inside)[0])
            score = f"{s:.4f}"
            if s < float(domain["threshold"]) or vc.classes.index(label) not in inside:
                label = UNKNOWN
        row.update({"class": label, "probability": f"{p:.4f}", "domain_score": score,
                    **{f"p_{c}": f"{q:.4f}" for c, q in zip(vc.classes, probs)}})

    rows = job.run(columns, measure)
    write_csv_rows(out_dir / "classes.csv", rows, columns)
    return rows
