"""FPUS23 frame labels for the view classifier (Prabakaran et al., IEEE Access 2023).

FPUS23 is 39 video streams of a 23-week fetus phantom, 15,113 frames of 672 x 389
px in all, each stream annotated in one CVAT for images 1.1 XML,
``annotation/stream_<pose>_<region>_<probe>/annotations.xml``.  Every frame is an
``<image name="frame_NNNNNN.png">`` whose labels are ``<tag>`` elements with one
``<attribute>`` each (read by :func:`fetalkit.detection.formats.read_cvat`).
The three classifiers of the paper map to (``FPUS23_TASKS``):

=======  ================================  ==========================================
task     CVAT tag / attribute              frames per value over the 39 streams
=======  ================================  ==========================================
plane    ``diagnostic_plane`` / ``plane``  Abd_plane 104 (42 in stream_hdvb_aroundabd_h,
                                           62 in stream_huvf_aroundabd_h); Head_plane
                                           and Femur_plane are declared, never used
fetus    ``Orientation`` / ``Pose``        hdvb 3446, hdvf 3235, huvb 3676, huvf 4756
                                           (all 15,113 frames; 10/10/9/10 streams)
probe    ``Probe`` / ``orientation``       h 7918 (20 streams), v 6963 (18 streams);
                                           stream_hdvb_aroundarms_v (232) has none
=======  ================================  ==========================================

What the counts mean for training:

* **plane cannot be learnt from these XMLs**: one value on 104 frames of 2
  streams.  The paper's plane classifier (``Plane/Plane_Dataset.py`` in its
  repository) reads separate image folders, ``BPD_PLANE``, ``AC_PLANE``,
  ``FL_PLANE`` and ``NO_PLANE``, not the XMLs.
* **fetus and probe are constant within a stream** (the stream name says them),
  so a split by frame would put near-identical neighbours on both sides; split by
  stream (``group``) as :func:`fetalkit.datasets.views.split_view_items` does.
* 621 frames repeat a tag with the same value (311 + 304 ``Orientation``, 4
  ``location``, 2 ``diagnostic_plane``); a frame is one item.  The paper's 15,728
  "images" are the 15,113 frames plus the 615 repeated ``Orientation`` tags.
* The anatomy region, ``location`` / ``View_fetus`` (abdomen 2526, arms 1861,
  head 3003, legs 2159; none in the 8 ``longrec`` streams), is not one of the
  three tasks.  It is ``abdomen`` on 284 of the 285 frames of
  stream_hdvf_aroundlegs_h.

Images: the XMLs ship without pixels, and every stream numbers its frames from
``frame_000000.png``, so the frames must stay in one folder per stream.  Put
the image download's stream folders either beside the XMLs
(``annotation/<stream>/frame_NNNNNN.png`` or ``annotation/<stream>/images/...``) or
anywhere as ``DIR/<stream>/frame_NNNNNN.png`` and pass ``images=DIR``
(``--images DIR`` on the command line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fetalkit.datasets.views import ViewItem
from fetalkit.detection.formats import read_cvat
from fetalkit.errors import DataError

CVAT_FILE = "annotations.xml"
IMAGES_FIX = "pass --images DIR where DIR/<stream>/<frame>.png are the FPUS23 frames"


@dataclass(frozen=True)
class Fpus23Task:
    """Where one classification task's label lives in an FPUS23 CVAT XML."""

    tag: str                  # the <tag label=...>
    attribute: str            # its <attribute name=...> holding the class
    values: tuple[str, ...]   # the value set the XMLs declare (meta/task/labels)


FPUS23_TASKS = {
    "plane": Fpus23Task("diagnostic_plane", "plane", ("Head_plane", "Abd_plane", "Femur_plane")),
    "fetus": Fpus23Task("Orientation", "Pose", ("hdvb", "hdvf", "huvb", "huvf")),
    "probe": Fpus23Task("Probe", "orientation", ("h", "v")),
}


def fpus23_task(task: str) -> Fpus23Task:
    """The tag/attribute of ``task`` (``plane``, ``fetus`` or ``probe``); DataError otherwise."""
    if task not in FPUS23_TASKS:
        raise DataError(f"unknown FPUS23 task {task!r}; use one of {', '.join(FPUS23_TASKS)}")
    return FPUS23_TASKS[task]


def fpus23_xmls(root: Path) -> list[Path]:
    """The stream XMLs of ``root``: ``annotation/stream_*/``, ``stream_*/``, ``root/`` or ``root`` itself."""
    root = Path(root)
    if root.is_file():
        return [root]
    if (root / CVAT_FILE).is_file():   # one stream's folder
        return [root / CVAT_FILE]
    for pattern in (f"annotation/stream_*/{CVAT_FILE}", f"stream_*/{CVAT_FILE}"):
        found = sorted(root.glob(pattern))
        if found:
            return found
    raise DataError(f"{root}: no annotation/stream_*/{CVAT_FILE} or stream_*/{CVAT_FILE}; give the FPUS23 "
                    f"folder (the one holding annotation/), one stream's folder or its {CVAT_FILE}")


def _frame_label(tags: dict, spec: Fpus23Task, where: str) -> Optional[str]:
    """The task's value on one frame, ``None`` when the frame does not carry it."""
    attrs = tags.get(spec.tag)
    value = attrs.get(spec.attribute) if isinstance(attrs, dict) else None
    if value is not None and value not in spec.values:
        raise DataError(f"{where}: {spec.tag}/{spec.attribute} is {value!r}, not one of "
                        f"{', '.join(spec.values)}; fix the annotation (export from CVAT as 'CVAT for images 1.1')")
    return value


def _image_folders(xml: Path, stream: str, images: Optional[Path]) -> list[Path]:
    """Where a stream's frames may be, in the order they are tried."""
    if images is not None:
        return [images / stream]
    return [xml.parent, xml.parent / "images"]


def fpus23_view_items(root: Path, task: str, images: Optional[Path] = None) -> list[list[ViewItem]]:
    """FPUS23 frames labelled for one task, as one source for the view classifier.

    Parameters
    ----------
    root : the FPUS23 folder (holding ``annotation/stream_*/annotations.xml``), a
        folder of ``stream_*/annotations.xml``, one stream's folder or its
        ``annotations.xml``.
    task : ``plane``, ``fetus`` or ``probe`` (see ``FPUS23_TASKS``).
    images : a folder of ``<stream>/<frame>.png``; ``None`` looks beside each XML
        (``<xml folder>/<frame>.png``, then ``<xml folder>/images/<frame>.png``).

    Returns
    -------
    ``[items]``: one :class:`ViewItem` per frame carrying the task's label, in
    stream then frame-name order, with ``label`` the tag's value and ``group`` the stream (the XML's
    folder name): a stream is one acquisition, so it is split whole.  Frames
    without the label are skipped.

    DataError for an unknown task, a folder without XMLs, no frame with the
    label, a value outside the task's set, or frames whose image is missing.

    Example
    -------
    >>> [items] = fpus23_view_items(Path("data/fpus23"), "fetus", images=Path("frames"))  # doctest: +SKIP
    >>> items[0].label, items[0].group, items[0].source.name                              # doctest: +SKIP
    ('hdvb', 'stream_hdvb_aroundabd_h', 'frame_000000.png')
    """
    spec = fpus23_task(task)
    images = None if images is None else Path(images)
    if images is not None and not images.is_dir():
        raise DataError(f"{images}: no such folder; {IMAGES_FIX}")
    xmls = fpus23_xmls(root)
    items: list[ViewItem] = []
    missing: list[tuple[str, list[Path]]] = []   # (frame name, folders tried)
    for xml in xmls:
        # the FPUS23 XMLs list frames last to first; items go in frame order
        for s in sorted(read_cvat(xml).samples, key=lambda smp: smp.file_name):
            label = _frame_label(s.tags, spec, f"{xml}: image {s.file_name}")
            if label is None:
                continue
            folders = _image_folders(xml, s.group, images)
            found = next((d / s.file_name for d in folders if (d / s.file_name).is_file()), None)
            if found is None:
                missing.append((s.file_name, folders))
            items.append(ViewItem(found or folders[0] / s.file_name, label, s.group))
    if not items:
        raise DataError(f"{root}: no frame of the {len(xmls)} annotation file(s) carries a {task!r} label "
                        f"({spec.tag}/{spec.attribute}); choose another task or other streams")
    if missing:
        raise DataError(_missing_message(missing, len(items), task, images))
    return [items]


def _missing_message(missing: list[tuple[str, list[Path]]], n_labelled: int, task: str,
                     images: Optional[Path]) -> str:
    name, folders = missing[0]
    n_streams = len({str(f[0]) for _, f in missing})
    head = (f"{len(missing)} of {n_labelled} FPUS23 frames labelled for {task!r} have no image, in {n_streams} "
            f"stream(s): e.g. {name} is not in {' nor '.join(str(f) for f in folders)}")
    if images is None:
        return f"{head}; put each stream's frames beside its {CVAT_FILE}, or {IMAGES_FIX}"
    return f"{head}; {IMAGES_FIX}, the stream folders named as the annotation folders"
