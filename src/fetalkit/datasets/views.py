"""Scan-view (plane) labels from the public sets, for the view classifier.

Each image is a :class:`ViewItem`: where its pixels are, its class and its split group.
Every source keeps its own group split (:func:`fetalkit.datasets.splits.select_split`
per source, one seed), so the HC18 and PSFHS images the view classifier is tested on
are those the head and PSFHS models were tested on, and a small class is never left
out of a part by chance.

Classes of the public sets (``PUBLIC_VIEW_CLASSES``):

* ``head_transthalamic``: HC18 training images (the trans-thalamic plane of HC
  measurement), groups = subjects;
* ``intrapartum_transperineal``: PSFHS, groups = blocks of 50 ids;
* ``fetal_echo``: FeEcho4D, the 66 frames of the sweep clip in blocks of 11 frames
  and the 37 radial slices in blocks of 6 slices (time blocks: neighbouring frames
  are near-identical);
* ``other_standard_plane``: the 40 FETAL_PLANES_DB images and the 13 SonoNet
  examples, one coarse class because no plane of theirs has enough images to be a
  class (groups = FETAL_PLANES_DB patients, one group per SonoNet image).

A user's own labels come as a CVAT / FPUS23 folder (:mod:`fetalkit.datasets.fpus23`)
or as class folders (:func:`class_folder_items`); :func:`view_sources` tells them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.datasets.hc18 import list_hc18
from fetalkit.datasets.psfhs import list_psfhs, psfhs_groups
from fetalkit.datasets.splits import select_split
from fetalkit.errors import DataError, InputError
from fetalkit.io.images import IMAGE_SUFFIXES, read_gray

PUBLIC_VIEW_CLASSES = ("head_transthalamic", "intrapartum_transperineal", "fetal_echo", "other_standard_plane")
ECHO_CLIP_BLOCK, ECHO_SLICE_BLOCK = 11, 6


@dataclass(frozen=True)
class ViewItem:
    """One labelled image: a file, or frame ``frame`` of a video file."""

    source: Path
    label: str
    group: str                      # the unit of splitting: subject, id block, time block, stream
    frame: Optional[int] = None     # frame index when ``source`` is a video


def read_view_image(item: ViewItem) -> np.ndarray:
    """The item's pixels as H x W uint8 grey."""
    if item.frame is None:
        return read_gray(item.source)
    cap = cv2.VideoCapture(str(item.source))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, item.frame)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise InputError(f"{item.source}: cannot read frame {item.frame}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame


def _hc18(root: Path) -> list[ViewItem]:
    return [ViewItem(it.image_path, "head_transthalamic", f"hc18-{it.subject_id}") for it in list_hc18(root)]


def _psfhs(root: Path) -> list[ViewItem]:
    items = list_psfhs(root)
    return [ViewItem(it.image_path, "intrapartum_transperineal", g)
            for it, g in zip(items, psfhs_groups([it.image_id for it in items]))]


def _feecho4d(root: Path) -> list[ViewItem]:
    out: list[ViewItem] = []
    for clip in sorted((root / "video").glob("*.avi")):
        cap = cv2.VideoCapture(str(clip))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        out += [ViewItem(clip, "fetal_echo", f"echo-{clip.stem}-{k // ECHO_CLIP_BLOCK}", k) for k in range(n)]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "video"):
        slices = sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        out += [ViewItem(q, "fetal_echo", f"echo-{folder.name}-{k // ECHO_SLICE_BLOCK}") for k, q in enumerate(slices)]
    return out


def _other_planes(planes_db: Optional[Path], sononet: Optional[Path]) -> list[ViewItem]:
    out: list[ViewItem] = []
    if planes_db is not None and (planes_db / "Images").is_dir():
        for q in sorted((planes_db / "Images").iterdir()):
            m = re.match(r"Patient(\d+)_", q.name)
            if q.suffix.lower() in IMAGE_SUFFIXES and m:
                out.append(ViewItem(q, "other_standard_plane", f"planesdb-{m.group(1)}"))
    if sononet is not None and sononet.is_dir():
        out += [ViewItem(q, "other_standard_plane", f"sononet-{q.stem}")
                for q in sorted(sononet.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES]
    return out


def public_view_items(data_root: Path) -> list[list[ViewItem]]:
    """The labelled images of the public sets under ``data_root``, one list per source (each split apart)."""
    sources = []
    for name, reader in (("hc18", _hc18), ("psfhs", _psfhs), ("feecho4d", _feecho4d)):
        if (data_root / name).is_dir():
            sources.append(reader(data_root / name))
    planes_db, sononet = data_root / "fetal_planes_db", data_root / "sononet_examples"
    other = _other_planes(planes_db if planes_db.is_dir() else None, sononet if sononet.is_dir() else None)
    if other:
        sources.append(other)
    sources = [s for s in sources if s]
    if not sources:
        raise DataError(f"{data_root}: none of hc18/, psfhs/, feecho4d/, fetal_planes_db/, sononet_examples/ "
                        "found; set FETALKIT_DATA or give --data")
    return sources


def split_view_items(sources: list[list[ViewItem]], part: str, seed: int = 0) -> list[ViewItem]:
    """One part (train / val / test / all) of every source, each split by its own groups."""
    chosen: list[ViewItem] = []
    for items in sources:
        groups = [it.group for it in items]
        if len(set(groups)) < 3 and part != "all":
            raise DataError(f"{items[0].source.parent}: {len(set(groups))} split group(s); need at least 3 "
                            "(subjects, blocks or streams) to hold some out")
        chosen += [items[i] for i in select_split(groups, part, seed)]
    return chosen


def is_cvat_folder(path: Path) -> bool:
    """A CVAT 1.1 XML, or a folder holding ``annotation/*/annotations.xml`` or ``*/annotations.xml`` (FPUS23 layout)."""
    if path.is_file():
        return path.suffix.lower() == ".xml"
    return any(path.glob("annotations.xml")) or any(path.glob("*/annotations.xml")) or \
        any(path.glob("annotation/*/annotations.xml"))


def class_folder_items(root: Path) -> list[list[ViewItem]]:
    """A folder of class folders, ``ROOT/<class>/<image>`` or ``ROOT/<class>/<acquisition>/<image>``
    (e.g. FPUS23's plane folders BPD_PLANE, AC_PLANE, FL_PLANE, NO_PLANE), one source per class.

    Images inside an acquisition folder (a patient, a stream) form one split group;
    images directly in a class folder are split one by one, so put the frames of one
    acquisition in a folder of their own, or near-identical frames land on both sides.
    """
    sources = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items = [ViewItem(q, folder.name, f"{folder.name}/{q.name}") for q in sorted(folder.iterdir())
                 if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            items += [ViewItem(q, folder.name, f"{folder.name}/{sub.name}") for q in sorted(sub.iterdir())
                      if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
        if items:
            sources.append(items)
    return sources


_PUBLIC_FOLDERS = ("hc18", "psfhs", "feecho4d", "fetal_planes_db", "sononet_examples")


def view_sources(data: Optional[Path], task: Optional[str] = None, images: Optional[Path] = None
                 ) -> list[list[ViewItem]]:
    """The labelled views of ``data``: a CVAT / FPUS23 folder (classes from ``task``: plane, fetus or
    probe), a folder holding the public sets (default: ``$FETALKIT_DATA``), or a folder of class
    folders (:func:`class_folder_items`)."""
    from fetalkit.config import data_root
    root = Path(data) if data is not None else data_root()
    if not root.exists():
        raise DataError(f"{root}: no such folder; give --data (the public sets' folder or a CVAT / FPUS23 folder)")
    if is_cvat_folder(root):
        from fetalkit.datasets.fpus23 import fpus23_view_items
        return fpus23_view_items(root, task or "plane", images)
    if task is not None:
        raise DataError(f"--task {task} is for CVAT / FPUS23 folders; {root} holds no annotations.xml")
    if any((root / name).is_dir() for name in _PUBLIC_FOLDERS):
        return public_view_items(root)
    sources = class_folder_items(root)
    if len(sources) < 2:
        raise DataError(f"{root}: neither the public sets, a CVAT / FPUS23 folder, nor two or more class "
                        "folders of images (ROOT/<class>/<image>)")
    return sources
