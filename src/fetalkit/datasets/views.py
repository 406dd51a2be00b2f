"""Scan-view (plane) labels from the public sets, for the view classifier.

Each image is a :class:`ViewItem`: where its pixels are, its class and its split group.
Every source keeps its own group split (:func:`fetalkit.datasets.splits.select_split`
per source, one seed), so the HC18 and PSFHS images the view classifier is tested on
are those the head and PSFHS models were tested on, and a small class is never left
out of a part by chance.

Classes of the public sets (``PUBLIC_VIEW_CLASSES``), by anatomy across sources, so the
classifier answers the plane and not the dataset:

* ``fetal_head``: axial head planes where HC / BPD are measured: HC18 training images
  (groups = subjects), the FETAL_PLANES_DB trans-thalamic and trans-ventricular images
  (groups = patients), SonoNet BRAIN-TV, and fetalkit's head phantom (drawn as that
  plane; groups = seeds);
* ``intrapartum_transperineal``: PSFHS, groups = blocks of 50 ids;
* ``fetal_heart``: FeEcho4D (the 66 frames of the sweep clip in blocks of 11 frames and
  the 37 radial slices in blocks of 6: neighbouring frames are near-identical),
  FETAL_PLANES_DB thorax images, SonoNet 4CH, 3VV, LVOT, RVOT;
* ``other_fetal_plane``: every other FETAL_PLANES_DB and SonoNet plane (abdomen, femur,
  maternal cervix, trans-cerebellar and other brain planes, kidneys, lips, profile, spine);
* ``not_ultrasound``: the sample pictures that ship with scikit-image (photographs,
  microscopy, astronomy, text), one group each.

Each source is split apart (:func:`split_view_items`). ``leave_out`` of
:func:`public_view_items` drops one source's images of one class from every part but
``test`` (leave-one-source-out: is FETAL_PLANES_DB's head answered as head when the head
class was learnt from HC18 alone?).

A user's own labels come as a CVAT / FPUS23 folder (:mod:`fetalkit.datasets.fpus23`)
or as class folders (:func:`class_folder_items`); :func:`view_sources` tells them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.datasets.hc18 import list_hc18
from fetalkit.datasets.psfhs import list_psfhs, psfhs_groups
from fetalkit.datasets.splits import select_split
from fetalkit.errors import DataError, InputError
from fetalkit.io.images import IMAGE_SUFFIXES, read_gray

PUBLIC_VIEW_CLASSES = ("fetal_head", "intrapartum_transperineal", "fetal_heart", "other_fetal_plane", "not_ultrasound")
PHANTOM_VIEWS = 60  # head phantoms (seeds 0..59) in the fetal_head class
ECHO_CLIP_BLOCK, ECHO_SLICE_BLOCK = 11, 6


@dataclass(frozen=True)
class ViewItem:
    """One labelled image: a file, frame ``frame`` of a video file, or a generated phantom."""

    source: Path
    label: str
    group: str                      # the unit of splitting: subject, id block, time block, stream
    frame: Optional[int] = None     # frame index when ``source`` is a video
    phantom_seed: Optional[int] = None  # a fetalkit head phantom of this seed (``source`` names it only)
    origin: str = ""                # the public set it comes from (per-source figures, leave-one-source-out)
    derive: str = ""                # PSFHS: "nops" / "nofh", the scan with that structure blanked out


def read_view_image(item: ViewItem) -> np.ndarray:
    """The item's pixels as H x W uint8 grey."""
    if item.phantom_seed is not None:
        from fetalkit.synth.phantom import head_phantom
        return head_phantom(item.phantom_seed).image
    if item.derive:
        from fetalkit.datasets.psfhs import FH_LABEL, PS_LABEL, read_psfhs_image
        from fetalkit.detection.sources import psfhs_negative
        label_path = item.source.parent.parent / "label" / item.source.name  # PSFHS: image/ beside label/
        remove = PS_LABEL if item.derive == "nops" else FH_LABEL
        return psfhs_negative(read_psfhs_image(item.source), read_psfhs_image(label_path), remove)[0]
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
    return [ViewItem(it.image_path, "fetal_head", f"hc18-{it.subject_id}", origin="hc18") for it in list_hc18(root)]


def _psfhs(root: Path) -> list[ViewItem]:
    """Every scan, and (PNG layout) each scan with one structure blanked out as the detector's
    derived negatives are (symphysis for even ids, head for odd): still transperineal scans,
    so that the domain check of masking keeps them, and the degraded frames beside them, inside."""
    items = list_psfhs(root)
    groups = psfhs_groups([it.image_id for it in items])
    out = [ViewItem(it.image_path, "intrapartum_transperineal", g, origin="psfhs") for it, g in zip(items, groups)]
    out += [ViewItem(it.image_path, "intrapartum_transperineal", g, origin="psfhs",
                     derive="nops" if int(it.image_id) % 2 == 0 else "nofh")
            for it, g in zip(items, groups) if it.image_path.suffix.lower() == ".png"]
    return out


def _feecho4d(root: Path) -> list[ViewItem]:
    out: list[ViewItem] = []
    for clip in sorted((root / "video").glob("*.avi")):
        cap = cv2.VideoCapture(str(clip))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        out += [ViewItem(clip, "fetal_heart", f"echo-{clip.stem}-{k // ECHO_CLIP_BLOCK}", k, origin="feecho4d")
                for k in range(n)]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "video"):
        slices = sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        out += [ViewItem(q, "fetal_heart", f"echo-{folder.name}-{k // ECHO_SLICE_BLOCK}", origin="feecho4d")
                for k, q in enumerate(slices)]
    return out


def planes_db_class(plane: str, brain_plane: str) -> str:
    """The anatomy class of a FETAL_PLANES_DB label (its ``Plane`` and ``Brain_plane`` columns)."""
    if plane == "Fetal brain" and brain_plane in ("Trans-thalamic", "Trans-ventricular"):
        return "fetal_head"
    if plane == "Fetal thorax":
        return "fetal_heart"
    return "other_fetal_plane"


def planes_db_items(root: Path) -> list[ViewItem]:
    labels: dict[str, str] = {}
    table = root / "FETAL_PLANES_DB_data.csv"
    if table.is_file():
        for line in table.read_text(errors="replace").splitlines()[1:]:
            cols = [c.strip() for c in line.split(";")]
            if len(cols) >= 4:
                labels[cols[0]] = planes_db_class(cols[2], cols[3])
    out: list[ViewItem] = []
    for q in sorted((root / "Images").iterdir()) if (root / "Images").is_dir() else []:
        m = re.match(r"Patient(\d+)_", q.name)
        if q.suffix.lower() in IMAGE_SUFFIXES and m and q.stem in labels:
            out.append(ViewItem(q, labels[q.stem], f"planesdb-{m.group(1)}", origin="fetal_planes_db"))
    return out


SONONET_CLASSES = {"BRAIN-TV": "fetal_head", "4CH": "fetal_heart", "3VV": "fetal_heart", "LVOT": "fetal_heart",
                   "RVOT": "fetal_heart"}  # every other SonoNet plane: other_fetal_plane


def sononet_items(root: Path) -> list[ViewItem]:
    return [ViewItem(q, SONONET_CLASSES.get(q.stem.upper(), "other_fetal_plane"), f"sononet-{q.stem}",
                     origin="sononet_examples")
            for q in sorted(root.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES]


def _not_ultrasound() -> list[ViewItem]:
    """scikit-image's bundled sample pictures (in its wheel: nothing is downloaded)."""
    import skimage.data
    folder = Path(skimage.data.__file__).parent
    return [ViewItem(q, "not_ultrasound", f"skimage-{q.stem}", origin="skimage")
            for q in sorted(folder.iterdir()) if q.suffix.lower() in (".png", ".jpg")]


def _phantoms(n: int = PHANTOM_VIEWS) -> list[ViewItem]:
    return [ViewItem(Path(f"phantom-{k}"), "fetal_head", f"phantom-{k}", phantom_seed=k, origin="phantom")
            for k in range(n)]


def public_view_items(data_root: Path, leave_out: tuple[str, ...] = ()) -> list[list[ViewItem]]:
    """The labelled images of the public sets under ``data_root`` (plus scikit-image's sample
    pictures and fetalkit's head phantoms), one list per source (each split apart).

    ``leave_out`` holds ``"<origin>:<class>"`` entries (e.g. ``"fetal_planes_db:fetal_head"``):
    those images are kept for the ``test`` part only (:func:`split_view_items`).
    """
    readers = (("hc18", _hc18), ("psfhs", _psfhs), ("feecho4d", _feecho4d), ("fetal_planes_db", planes_db_items),
               ("sononet_examples", sononet_items))
    found = [reader(data_root / name) for name, reader in readers if (data_root / name).is_dir()]
    if not any(found):
        raise DataError(f"{data_root}: none of hc18/, psfhs/, feecho4d/, fetal_planes_db/, sononet_examples/ "
                        "found; set FETALKIT_DATA or give --data")
    sources = [s for s in found + [_not_ultrasound(), _phantoms()] if s]
    if leave_out:
        known = {f"{it.origin}:{it.label}" for items in sources for it in items}
        unknown = [x for x in leave_out if x not in known]
        if unknown:
            raise DataError(f"--leave-out {unknown[0]}: no such images (give ORIGIN:CLASS, one of "
                            f"{', '.join(sorted(known))})")
        sources = [[replace(it, origin=it.origin + LEFT_OUT) if f"{it.origin}:{it.label}" in leave_out else it
                    for it in items] for items in sources]
    return sources


LEFT_OUT = " (left out)"  # marks the origin of an item held out of training and validation


def split_view_items(sources: list[list[ViewItem]], part: str, seed: int = 0) -> list[ViewItem]:
    """One part (train / val / test / all) of every source, each split by its own groups.

    Items left out (:func:`public_view_items`) join the ``test`` part whole and no other.
    """
    chosen: list[ViewItem] = []
    for items in sources:
        kept = [it for it in items if not it.origin.endswith(LEFT_OUT)]
        if part in ("test", "all"):
            chosen += [it for it in items if it.origin.endswith(LEFT_OUT)]
        if not kept:
            continue
        groups = [it.group for it in kept]
        if len(set(groups)) < 3 and part != "all":
            raise DataError(f"{kept[0].source.parent}: {len(set(groups))} split group(s); need at least 3 "
                            "(subjects, blocks or streams) to hold some out")
        chosen += [kept[i] for i in select_split(groups, part, seed)]
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


def view_sources(data: Optional[Path], task: Optional[str] = None, images: Optional[Path] = None,
                 leave_out: tuple[str, ...] = ()) -> list[list[ViewItem]]:
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
        return public_view_items(root, leave_out)
    if leave_out:
        raise DataError(f"--leave-out is for the public sets' folder; {root} is not one")
    sources = class_folder_items(root)
    if len(sources) < 2:
        raise DataError(f"{root}: neither the public sets, a CVAT / FPUS23 folder, nor two or more class "
                        "folders of images (ROOT/<class>/<image>)")
    return sources
