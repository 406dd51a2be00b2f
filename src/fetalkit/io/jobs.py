"""Jobs over many files: one row per input, never stopping on a bad one, outputs written atomically.

The rules of :mod:`fetalkit.io.inputs` hold here for every file command
(``biometry head``, ``aop``, ``detect``, ``classify``, ``sector``, ``clean``):

* every input, and every entry a folder held that could not be read, gets a row;
  an error fills its ``error`` column and the job goes on;
* output names are planned before anything is read: two inputs never share an
  output (a later stem gets ``_``), and an input whose output would replace an
  input file is refused in its row, not processed;
* the summary files (csv / json) are written even when every input failed.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from fetalkit.errors import FetalkitError, InputError
from fetalkit.io.images import atomic_write_bytes, write_image
from fetalkit.io.inputs import InputFiles, list_inputs, os_error, printable, refuse_overwrite

log = logging.getLogger(__name__)

# write(path, make_image): queue an image for writing; ``make_image`` runs on the writer thread.
Writer = Callable[[Path, Callable[[], np.ndarray]], None]
# The outputs of one input, relative to the output folder, from its stem.
OutputNames = Callable[[str], list[str]]


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output folder, or say in one line why it cannot be (a file there, no permission)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{printable(out_dir)}: exists and is not a folder; give a folder for --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{printable(out_dir)}: cannot create the output folder ({(e.strerror or str(e)).lower()}); "
                         "choose another --out") from None
    return out_dir


def gather_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, InputError]]]:
    """The files to process and what was passed over; InputError when there is nothing at all."""
    inputs = list(inputs)
    paths, skipped = list_inputs(inputs)
    if not paths and not skipped:
        raise InputError(f"no input images found in {', '.join(printable(i) for i in inputs)}; "
                         "give image or DICOM files, or folders holding them")
    return paths, skipped


def plan_stems(paths: list[Path], out_dir: Path, names: OutputNames,
               summary: Iterable[str] = ()) -> tuple[dict[Path, str], dict[Path, InputError]]:
    """An output stem per input such that no two inputs share an output file.

    A stem whose outputs are taken gets ``_`` appended (``a.png`` and ``a_removed.png``
    in ``clean`` would otherwise both write ``a_removed.png``).  An input whose
    outputs would replace any input file is returned in the second dict, refused.
    """
    taken = set(summary)
    files = InputFiles(paths)
    stems: dict[Path, str] = {}
    refused: dict[Path, InputError] = {}
    for p in paths:
        stem = p.stem
        while any(n in taken for n in names(stem)):
            stem += "_"
        hit = next((n for n in names(stem) if files.overwritten_by(out_dir / n)), None)
        if hit is not None:
            refused[p] = InputError(f"{printable(p)}: its output {printable(out_dir / hit)} would overwrite an input; "
                                    "choose another --out")
            continue
        taken.update(names(stem))
        stems[p] = stem
    return stems, refused


@dataclass
class FileJob:
    """The planned work of one file command: what to read, under which output stems, what was refused."""

    out_dir: Path
    paths: list[Path]
    stems: dict[Path, str]
    skipped: list[tuple[Path, InputError]] = field(default_factory=list)
    refused: dict[Path, InputError] = field(default_factory=dict)

    def run(self, columns: list[str], measure: Callable[[Path, dict, Writer], None],
            progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
        return process_files(self.paths, columns, measure, progress, self.skipped, self.refused)


def plan_job(inputs: Iterable[str | os.PathLike], out_dir: Path, names: OutputNames,
             summary: Iterable[str] = ()) -> FileJob:
    """List the inputs, plan their outputs and create the output folder (in that order: a refused run writes nothing).

    ``names(stem)`` gives the outputs of one input relative to ``out_dir``;
    ``summary`` the run's own files (``measurements.csv``), which may never replace
    an input either.
    """
    summary = list(summary)
    paths, skipped = gather_inputs(inputs)
    refuse_overwrite(paths, [out_dir / n for n in summary])
    stems, refused = plan_stems(paths, out_dir, names, summary)
    return FileJob(prepare_out_dir(out_dir), paths, stems, skipped, refused)


def process_files(paths: list[Path], columns: list[str], measure: Callable[[Path, dict, Writer], None],
                  progress: Optional[Callable[[int, int], None]] = None,
                  skipped: Iterable[tuple[Path, InputError]] = (),
                  refused: Optional[dict[Path, InputError]] = None) -> list[dict]:
    """Call ``measure(path, row, write)`` for every input and collect the rows.

    A ``FetalkitError`` or an OS error fills the row's ``error`` column and the job
    goes on; so does an unexpected error (named as such, so that it gets reported
    to us), because one odd file must not cost the rest of an archive.  ``skipped``
    and ``refused`` inputs get their error rows without being read.  Images queued
    with ``write`` are drawn and encoded on one background thread, so encoding
    overlaps the next inference; all are on disk when this returns.
    """
    refused = refused or {}
    rows = [_row(columns, p, err) for p, err in skipped]
    todo = list(paths)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = []  # (the row an output belongs to, its output path, the write)
        current: dict = {}

        def write(path: Path, make_image: Callable[[], np.ndarray]) -> None:
            pending.append((current["row"], path, pool.submit(lambda: write_image(path, make_image()))))

        for k, path in enumerate(todo):
            row = current["row"] = _row(columns, path, refused.get(path))
            if path not in refused:
                try:
                    measure(path, row, write)
                except FetalkitError as err:
                    row.update(getattr(err, "fields", {}))  # what stands of a refused input (its domain score)
                    row["error"] = _naming(path, printable(err).replace("\n", " "))
                except OSError as err:
                    row["error"] = printable(os_error(path, err))
                except MemoryError:
                    row["error"] = (f"{printable(path)}: not enough memory to process this file; "
                                    "lower FETALKIT_MAX_PIXELS or free memory")
                except Exception as err:  # noqa: BLE001 - one odd file must not stop the archive
                    log.exception("unexpected error on %s", printable(path))
                    row["error"] = (f"{printable(path)}: unexpected error ({type(err).__name__}: "
                                    f"{printable(err)}); please report it with this file")
            rows.append(row)
            if progress:
                progress(k + 1, len(todo))
        for row, path, f in pending:
            try:
                f.result()
            except (FetalkitError, OSError) as err:
                # an overlay could not be written: its row says so (the measurement stands)
                message = printable(err if isinstance(err, FetalkitError) else os_error(path, err))
                row["error"] = (row["error"] + " " if row["error"] else "") + message
    return rows


def _naming(path: Path, message: str) -> str:
    """The message with the file's name in front, unless it already names it."""
    name = printable(path)
    return message if name in message else f"{name}: {message}"


def _row(columns: list[str], path: Path, err: Optional[FetalkitError]) -> dict:
    row = {c: "" for c in columns}
    row["filename"] = printable(path)
    if err is not None:
        row["error"] = printable(err).replace("\n", " ")
    return row


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
    """Write a csv atomically (temp file + rename); names that are not UTF-8 are escaped (``printable``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows({k: printable(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows)
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
