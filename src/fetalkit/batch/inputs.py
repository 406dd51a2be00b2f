"""What a batch reads and remembers: the inputs of an archive, their hashes, and the journal.

The journal (``OUT/.batch/journal.jsonl``) is the batch's memory: one JSON line
per finished input, appended and flushed as each one finishes, so a run killed
at any moment keeps everything that finished before it (a line cut short by the
kill is ignored on reading).  ``manifest.csv`` and ``results.csv`` are written
from it at the end of every run.

Names are keyed by :func:`fetalkit.io.inputs.printable` (a byte of a name that is
not UTF-8 as ``\\xNN``), in the journal as in the csv files, so an old archive's
Latin-1 names neither stop a run nor break a resume; :func:`on_disk` finds such a
name's file again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from fetalkit.io.images import atomic_write_bytes
from fetalkit.io.inputs import DICOM_SUFFIXES, IMAGE_SUFFIXES, printable
from fetalkit.io.video import VIDEO_SUFFIXES

STATE_DIR = ".batch"
MANIFEST_COLUMNS = ["input", "sha256", "size_bytes", "status", "outputs", "error", "seconds"]


def key(rel: Path | str) -> str:
    """The name of an input (or output) in the journal and the csv files: relative, '/', printable."""
    return printable(rel.as_posix() if isinstance(rel, Path) else rel)


def on_disk(folder: Path, name: str) -> Optional[Path]:
    """The file that :func:`key` ``name`` stands for under ``folder``, or None when there is none.

    ``\\xNN`` of a byte from 0x80 is the byte printable() escaped; a name that
    really holds a backslash is tried as written too.
    """
    raw = re.sub(r"\\x([89a-fA-F][0-9a-fA-F])", lambda m: chr(0xDC00 + int(m.group(1), 16)), name)
    for candidate in dict.fromkeys((raw, name)):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def kind_of(path: Path) -> Optional[str]:
    """``image``, ``video`` or ``dicom`` by suffix (or a DICOM preamble for files without one); None otherwise.

    Only a regular file is opened to look for the preamble (opening a FIFO would
    block); an OSError on opening one (no permission) is raised, for its own row.
    """
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if (suffix == "" or suffix[1:].isdigit()) and stat.S_ISREG(os.stat(path).st_mode):
        # archives often name DICOM files IM0001 or 1.2.840....23
        with open(path, "rb") as f:
            if f.read(132)[128:132] == b"DICM":
                return "dicom"
    return None


def _not_a_file(path: Path) -> Optional[tuple[str, str]]:
    """(status, reason) for an entry that is not a readable regular file; None for one that is.

    Links are followed (a link to a scan is that scan).  A FIFO, socket or device
    is never read (opening a FIFO blocks): ignored with its reason.  A link that
    leads nowhere may be a lost input: failed.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return "failed", f"{printable(path)}: a dangling link (its target {printable(os.readlink(path))} " \
                             "does not exist); restore the target or remove the link"
        return "failed", f"{printable(path)}: the file vanished while fetalkit ran; run again"
    except OSError as e:
        return "failed", f"{printable(path)}: cannot be read ({(e.strerror or str(e)).lower()}); check the file"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "ignored", "a named pipe (FIFO), not a file; not read"
    if stat.S_ISSOCK(mode):
        return "ignored", "a socket, not a file; not read"
    if stat.S_ISDIR(mode):
        return "ignored", "a link to a folder; not followed (give that folder as SRC to include it)"
    return "ignored", "a device, not a file; not read"


def find_inputs(src: Path, out_dir: Path) -> tuple[list[Path], list[Entry]]:
    """Every file under ``src`` (recursive, sorted, hidden files and folders skipped), relative to it,
    and an ignored or failed entry for each one that is not a readable file.

    FIFOs, sockets, links to folders, dangling links and folders that cannot be
    listed get an entry with the reason; nothing is passed over in silence.
    ``out_dir`` is left out when it lies inside ``src``; a file given as ``src``
    is its own archive.
    """
    if not src.is_dir():
        problem = _not_a_file(src)
        rel = Path(src.name)
        return ([rel], []) if problem is None else ([], [Entry(input=key(rel), status=problem[0], error=problem[1])])
    out_resolved = out_dir.resolve()
    found: list[Path] = []
    passed: list[Entry] = []

    def unreadable(e: OSError) -> None:
        rel = Path(e.filename).relative_to(src) if e.filename else Path(".")
        passed.append(Entry(input=key(rel) + "/", status="failed", error=f"{printable(e.filename)}: a folder that "
                            f"cannot be listed ({(e.strerror or str(e)).lower()}); give fetalkit read permission"))

    for root, dirs, files in os.walk(src, onerror=unreadable):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_path / d).resolve() != out_resolved)
        for name in [d for d in dirs if os.path.islink(root_path / d)] + files:
            path = root_path / name
            if name.startswith("."):
                continue
            problem = _not_a_file(path)
            if problem is None:
                found.append(path.relative_to(src))
            else:
                passed.append(Entry(input=key(path.relative_to(src)), status=problem[0], error=problem[1]))
    return sorted(found), sorted(passed, key=lambda e: e.input)


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
            e = printable_entry(Entry(**json.loads(line)))
        except (ValueError, TypeError):
            continue
        entries[e.input] = e
    return entries


def printable_entry(e: Entry) -> Entry:
    """The entry with its names and error as printable text (an older journal held raw names)."""
    e.input, e.error = printable(e.input), printable(e.error)
    e.outputs = [printable(o) for o in e.outputs]
    return e


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
        self._f.write(json.dumps(asdict(printable_entry(entry))) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def compact_journal(path: Path, entries: Iterable[Entry]) -> None:
    """Rewrite the journal with one line per input (atomically)."""
    atomic_write_bytes(path, "".join(json.dumps(asdict(e)) + "\n" for e in entries
                                     if e.status in ("done", "failed")).encode())

