"""``fetalkit demo``: the main job end to end on the embedded phantom (no data, no torch needed)."""

from __future__ import annotations

import time
from pathlib import Path

from fetalkit.biometry.head_job import measure_files
from fetalkit.datasets.hc18 import read_pixel_csv


def run_head_demo(out_dir: Path, n: int = 6, seed: int = 0) -> list[dict]:
    """Write ``n`` phantom head images, measure them with the bundled model; rows with truth beside result."""
    from fetalkit.synth.phantom import write_phantom_folder
    images_dir = out_dir / "phantoms"
    csv_path = write_phantom_folder(images_dir, n=n, seed=seed)
    truth = read_pixel_csv(csv_path)
    t0 = time.perf_counter()
    rows = measure_files([images_dir], out_dir / "biometry", pixel_csv=csv_path)
    seconds = time.perf_counter() - t0
    for r in rows:
        r["hc_true_mm"] = truth[Path(r["filename"]).name][1]
        r["seconds_total"] = seconds
    return rows
