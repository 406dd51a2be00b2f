"""Synthetic FPUS23-style CVAT folders: phantom frames with plane, fetus and probe tags.

:func:`write_phantom_cvat` writes what :func:`fetalkit.datasets.fpus23.fpus23_view_items`
reads from the real FPUS23 release, so tests and demos run the real reader path
without the FPUS23 images::

    OUT/annotation/stream_<k>/annotations.xml     CVAT for images 1.1, FPUS23's tags
    OUT/annotation/stream_<k>/frame_NNNNNN.png    the frames, beside their XML
    OUT/labels.csv                                stream,image,plane,fetus,probe (the truth)

Each frame is a small :func:`~fetalkit.synth.phantom.head_phantom` with a
``head`` box.  Its labels are drawn per frame from each task's value set in
``FPUS23_TASKS`` (the real streams keep fetus and probe fixed per stream; drawing
per frame lets a stream hold several classes), and each label paints a bright
cue, so a small classifier can learn every task:

* plane: a horizontal bar across the middle half of the width, at 1/4, 2/4 or
  3/4 of the height (Head_plane, Abd_plane, Femur_plane);
* fetus: a disc near the left edge at 0.2, 0.4, 0.6 or 0.8 of the height
  (hdvb, hdvf, huvb, huvf);
* probe: a square near the right edge at 1/3 (h) or 2/3 (v) of the height.

The last frame of every stream (of two or more) has no ``diagnostic_plane`` tag
and no bar, as most real frames carry none; frame 0 repeats its ``Orientation``
tag, as 615 real frames do.  Deterministic in ``seed``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from fetalkit.datasets.fpus23 import CVAT_FILE, FPUS23_TASKS
from fetalkit.io.images import write_image
from fetalkit.synth.phantom import _write_csv, head_phantom

TRUTH_FILE = "labels.csv"
TRUTH_HEADER = ("stream", "image", *FPUS23_TASKS)
CUE_GREY = 240


def _cue_position(task: str, label: str) -> float:
    """Height fraction of a label's cue: evenly spaced by the value's index in its task."""
    values = FPUS23_TASKS[task].values
    return (values.index(label) + 1) / (len(values) + 1)


def paint_cues(image: np.ndarray, labels: dict[str, Optional[str]], rng: np.random.Generator) -> np.ndarray:
    """A copy of ``image`` with the bright cue of each task's label (``None``: no cue)."""
    out = image.copy()
    h, w = out.shape
    jitter = rng.uniform(-0.02, 0.02, size=3)   # cue positions wander a little, as anatomy would
    if labels.get("plane"):
        y = int(round((_cue_position("plane", labels["plane"]) + jitter[0]) * h))
        half = max(1, h // 32)
        out[max(0, y - half):y + half + 1, w // 4:3 * w // 4] = CUE_GREY
    if labels.get("fetus"):
        y = int(round((_cue_position("fetus", labels["fetus"]) + jitter[1]) * h))
        cv2.circle(out, (int(0.08 * w), y), max(2, h // 10), CUE_GREY, -1)
    if labels.get("probe"):
        y = int(round((_cue_position("probe", labels["probe"]) + jitter[2]) * h))
        half = max(2, h // 16)
        out[max(0, y - half):y + half + 1, int(0.92 * w) - half:int(0.92 * w) + half + 1] = CUE_GREY
    return out


def _label_meta(labels_el: ET.Element) -> None:
    """The <labels> of an FPUS23 task: one select attribute per classification tag, plus ``head``."""
    for spec in FPUS23_TASKS.values():
        label = ET.SubElement(labels_el, "label")
        ET.SubElement(label, "name").text = spec.tag
        attr = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, text in (("name", spec.attribute), ("mutable", "False"), ("input_type", "select"),
                          ("default_value", spec.values[0]), ("values", "\n".join(spec.values))):
            ET.SubElement(attr, key).text = text
    head = ET.SubElement(labels_el, "label")
    ET.SubElement(head, "name").text = "head"
    ET.SubElement(head, "attributes")


def _tag(image_el: ET.Element, task: str, value: str) -> None:
    spec = FPUS23_TASKS[task]
    tag = ET.SubElement(image_el, "tag", label=spec.tag, source="manual")
    ET.SubElement(tag, "attribute", name=spec.attribute).text = value


def write_stream_xml(path: Path, stream: str, shape_hw: tuple[int, int],
                     frames: list[tuple[str, dict[str, Optional[str]], tuple[int, int, int, int]]]) -> Path:
    """One stream's CVAT 1.1 XML in the FPUS23 structure.

    ``frames``: (image name, {task: value or None}, head box x1, y1, x2, y2 in px).
    Images are listed last to first and frame 0 repeats its ``Orientation`` tag,
    as in the real files.
    """
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task_el = ET.SubElement(ET.SubElement(root, "meta"), "task")
    for key, text in (("id", "0"), ("name", stream), ("size", str(len(frames))), ("mode", "annotation"),
                      ("start_frame", "0"), ("stop_frame", str(len(frames) - 1))):
        ET.SubElement(task_el, key).text = text
    _label_meta(ET.SubElement(task_el, "labels"))
    h, w = shape_hw
    for k in reversed(range(len(frames))):
        name, labels, box = frames[k]
        image_el = ET.SubElement(root, "image", id=str(k), name=name, width=str(w), height=str(h))
        ET.SubElement(image_el, "box", label="head", occluded="0", source="manual", z_order="0",
                      **{key: f"{v:.2f}" for key, v in zip(("xtl", "ytl", "xbr", "ybr"), box)})
        for task, value in labels.items():
            if value is not None:
                _tag(image_el, task, value)
        if k == 0 and labels.get("fetus"):
            _tag(image_el, "fetus", labels["fetus"])
    tree = ET.ElementTree(root)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_phantom_cvat(out_dir: Path, n_streams: int = 4, frames_per_stream: int = 6, seed: int = 0,
                       shape_hw: tuple[int, int] = (128, 192)) -> Path:
    """Write a small synthetic FPUS23-style folder (see the module docstring).

    Parameters
    ----------
    out_dir : folder to create or fill.
    n_streams, frames_per_stream : ``stream_0 .. stream_<n-1>``, each with
        ``frame_000000.png ..``.
    seed : the labels and phantoms are a deterministic function of it.
    shape_hw : (H, W) of the frames (at least 64 x 64).

    Returns
    -------
    ``out_dir``, to pass to :func:`~fetalkit.datasets.fpus23.fpus23_view_items`.

    Example
    -------
    >>> root = write_phantom_cvat(tmp_path)                              # doctest: +SKIP
    >>> len(fpus23_view_items(root, "fetus")[0])                         # doctest: +SKIP
    24
    """
    if n_streams < 1 or frames_per_stream < 1:
        raise ValueError(f"need at least one stream and one frame, got {n_streams} x {frames_per_stream}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    truth = []
    for k in range(n_streams):
        stream, folder = f"stream_{k}", out / "annotation" / f"stream_{k}"
        frames = []
        for f in range(frames_per_stream):
            labels: dict[str, Optional[str]] = {t: str(rng.choice(spec.values)) for t, spec in FPUS23_TASKS.items()}
            if f == frames_per_stream - 1 > 0:
                labels["plane"] = None
            phantom = head_phantom(int(rng.integers(2**31 - 1)), shape_hw)
            name = f"frame_{f:06d}.png"
            write_image(folder / name, paint_cues(phantom.image, labels, rng))
            frames.append((name, labels, _mask_box(phantom.mask)))
            truth.append((stream, name, *(labels[t] or "" for t in FPUS23_TASKS)))
        write_stream_xml(folder / CVAT_FILE, stream, shape_hw, frames)
    _write_csv(out / TRUTH_FILE, TRUTH_HEADER, truth)
    return out
