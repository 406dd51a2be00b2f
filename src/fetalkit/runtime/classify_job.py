"""``fetalkit classify``: the scan view of each input, one csv row per input, never stopping on a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fetalkit.errors import InputError
from fetalkit.io.images import expand_inputs, read_still
from fetalkit.io.jobs import process_files, write_csv_rows
from fetalkit.runtime.classifier import ViewClassifier


def classify_files(inputs: list[Path], out_dir: Path, model: Optional[str] = None, threads: int = 2) -> list[dict]:
    """Classify every input; ``out_dir/classes.csv`` holds filename, class, probability, p_<class>..., error."""
    vc = ViewClassifier(model, threads=threads)
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError(f"no input images found in {', '.join(map(str, inputs))}")
    columns = ["filename", "class", "probability", *[f"p_{c}" for c in vc.classes], "error"]

    def measure(path: Path, row: dict, write) -> None:
        image, _ = read_still(path)
        label, p, probs = vc.classify(image)
        row.update({"class": label, "probability": f"{p:.4f}",
                    **{f"p_{c}": f"{q:.4f}" for c, q in zip(vc.classes, probs)}})

    rows = process_files(paths, columns, measure)
    write_csv_rows(out_dir / "classes.csv", rows, columns)
    return rows
