"""Batch jobs over files: one row per input, never stopping on a bad one, outputs written atomically."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from fetalkit.errors import FetalkitError
from fetalkit.io.images import atomic_write_bytes, write_image

# write(path, make_image): queue an image for writing; ``make_image`` runs on the writer thread.
Writer = Callable[[Path, Callable[[], np.ndarray]], None]


def process_files(paths: list[Path], columns: list[str], measure: Callable[[Path, dict, Writer], None],
                  progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Call ``measure(path, row, write)`` for every input and collect the rows.

    A ``FetalkitError`` fills the row's ``error`` column and the job goes on.
    Images queued with ``write`` are drawn and encoded on one background thread,
    so encoding overlaps the next inference; all are on disk when this returns.
    """
    rows = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = []

        def write(path: Path, make_image: Callable[[], np.ndarray]) -> None:
            pending.append(pool.submit(lambda: write_image(path, make_image())))

        for k, path in enumerate(paths):
            row = {c: "" for c in columns}
            row["filename"] = str(path)
            try:
                measure(path, row, write)
            except FetalkitError as err:
                row["error"] = str(err).replace("\n", " ")
            rows.append(row)
            if progress:
                progress(k + 1, len(paths))
        for f in pending:
            f.result()
    return rows


def unique_stems(paths: list[Path]) -> dict[Path, str]:
    """Output stem per input, suffixed with ``_`` where two inputs share a stem (same name, other folder)."""
    used, out = set(), {}
    for p in paths:
        stem = p.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        out[p] = stem
    return out


def write_csv_rows(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """Write a csv atomically (temp file + rename)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
