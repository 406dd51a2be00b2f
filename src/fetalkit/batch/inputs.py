"""What a batch reads and remembers: the inputs of an archive, their hashes, and the journal.

The journal (``OUT/.batch/journal.jsonl``) is the batch's memory: one JSON line
per finished input, appended and flushed as each one finishes, so a run killed
at any moment keeps everything that finished before it (a line cut short by the
kill is ignored on reading).  ``manifest.csv`` and ``results.csv`` are written
from it at the end of every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from fetalkit.io.images import IMAGE_SUFFIXES, atomic_write_bytes
from fetalkit.io.video import VIDEO_SUFFIXES

STATE_DIR = ".batch"
MANIFEST_COLUMNS = ["input", "sha256", "size_bytes", "status", "outputs", "error", "seconds"]
_DICOM_SUFFIXES = {".dcm", ".dicom"}


def kind_of(path: Path) -> Optional[str]:
    """``image``, ``video`` or ``dicom`` by suffix (or a DICOM preamble for files without one); None otherwise."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in _DICOM_SUFFIXES:
        return "dicom"
    if suffix == "" or suffix[1:].isdigit():  # archives often name DICOM files IM0001 or 1.2.840....23
        try:
            with open(path, "rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    return "dicom"
        except OSError:
            return None
    return None


def find_inputs(src: Path, out_dir: Path) -> list[Path]:
    """Every file under ``src`` (recursive, sorted, hidden files and folders skipped), relative to it.

    ``out_dir`` is left out when it lies inside ``src``; a file given as ``src``
    is its own archive.
    """
    if src.is_file():
        return [Path(src.name)]
    out_resolved = out_dir.resolve()
    found: list[Path] = []
    for root, dirs, files in os.walk(src):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != out_resolved)
        found.extend((root_path / f).relative_to(src) for f in files if not f.startswith("."))
    return sorted(found)


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Entry:
    """What the batch knows of one input (one journal line, one manifest row)."""

    input: str                       # path relative to SRC, with '/'
    status: str                      # done | failed | pending | ignored
    sha256: str = ""
    size_bytes: int = 0
    mtime_ns: int = 0
    outputs: list[str] = field(default_factory=list)  # relative to OUT
    error: str = ""
    seconds: float = 0.0
    result: dict = field(default_factory=dict)       # the input's results.csv row

    def manifest_row(self) -> dict:
        row = {k: getattr(self, k) for k in MANIFEST_COLUMNS}
        row["outputs"] = ";".join(self.outputs)
        row["seconds"] = f"{self.seconds:.3f}" if self.status in ("done", "failed") else ""
        return row


def read_journal(path: Path) -> dict[str, Entry]:
    """The last entry of each input; lines that do not parse (cut by a kill) are skipped."""
    entries: dict[str, Entry] = {}
    if not path.exists():
        return entries
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = Entry(**json.loads(line))
        except (ValueError, TypeError):
            continue
        entries[e.input] = e
    return entries


class Journal:
    """Append-only, one flushed line per finished input."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")
        self._f.seek(0, os.SEEK_END)
        if self._f.tell():
            # a kill may have cut the last line: start on a fresh one
            self._f.write("\n")

    def append(self, entry: Entry) -> None:
        self._f.write(json.dumps(asdict(entry)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def compact_journal(path: Path, entries: Iterable[Entry]) -> None:
    """Rewrite the journal with one line per input (atomically)."""
    atomic_write_bytes(path, "".join(json.dumps(asdict(e)) + "\n" for e in entries
                                     if e.status in ("done", "failed")).encode())

