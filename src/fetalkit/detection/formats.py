"""Detection label formats: COCO json, YOLO txt, CVAT 1.1 XML (read), and the folder layout
fetalkit writes.

Folder layouts::

    COCO:  DIR/annotations.json + DIR/images/...      (file_name relative to DIR/images)
    YOLO:  DIR/images/NAME.png + DIR/labels/NAME.txt + DIR/classes.txt (one name per line;
           a data.yaml ``names:`` list is read too).  Line: ``class cx cy w h``, 0..1.

fetalkit adds two optional keys to COCO image records: ``group`` (the split unit, e.g.
a subject or an id block) and ``tags`` (e.g. CVAT tags); other tools ignore them.
Errors name the file (and line) and what to fix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from fetalkit.detection.boxes import DetSample, DetSet, check_boxes
from fetalkit.errors import DataError
from fetalkit.io.images import IMAGE_SUFFIXES, write_image

COCO_FILE = "annotations.json"


# --------------------------------------------------------------------------- COCO

def read_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> DetSet:
    """A COCO detection json (``image_root`` defaults to ``images/`` beside it, else its folder)."""
    path = Path(json_path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable COCO json ({e}); check the file") from None
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= doc.keys():
        raise DataError(f"{path}: a COCO json needs 'images', 'annotations' and 'categories' lists")
    root = Path(image_root) if image_root else (path.parent / "images" if (path.parent / "images").is_dir()
                                                 else path.parent)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in cats]
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict = {im["id"]: ([], []) for im in doc["images"]}
    for k, ann in enumerate(doc["annotations"]):
        where = f"{path}: annotation {k} (id {ann.get('id')})"
        if ann.get("image_id") not in per_image:
            raise DataError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
        if ann.get("category_id") not in cat_index:
            raise DataError(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        per_image[ann["image_id"]][0].append([x, y, x + w, y + h])
        per_image[ann["image_id"]][1].append(cat_index[ann["category_id"]])
    samples = []
    for im in doc["images"]:
        boxes, labels = per_image[im["id"]]
        where = f"{path}: image {im.get('file_name')}"
        b = check_boxes(np.asarray(boxes, np.float32), int(im["width"]), int(im["height"]), where)
        samples.append(DetSample(im["file_name"], root / im["file_name"], int(im["width"]), int(im["height"]),
                                 b, np.asarray(labels, np.int64), str(im.get("group", "")), dict(im.get("tags", {}))))
    return DetSet(names, samples)


def coco_dict(ds: DetSet) -> dict:
    """The set as a COCO json document (category ids 1..K in ``ds.categories`` order)."""
    images, anns = [], []
    for i, s in enumerate(ds.samples, start=1):
        rec = {"id": i, "file_name": s.file_name, "width": s.width, "height": s.height}
        if s.group:
            rec["group"] = s.group
        if s.tags:
            rec["tags"] = s.tags
        images.append(rec)
        for box, label in zip(s.boxes_xyxy, s.labels):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(label) + 1,
                         "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                         "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(ds.categories)]
    return {"images": images, "annotations": anns, "categories": cats}


# --------------------------------------------------------------------------- YOLO

def _yolo_names(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        return [ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip()]
    if (root / "data.yaml").is_file():  # the 'names:' list of a YOLO data.yaml, without a yaml dependency
        text = (root / "data.yaml").read_text()
        for line in text.splitlines():
            if line.strip().startswith("names:") and "[" in line:
                return [n.strip().strip("'\"") for n in line.split("[", 1)[1].rsplit("]", 1)[0].split(",") if n.strip()]
        names, inside = [], False
        for line in text.splitlines():
            if line.strip().startswith("names:"):
                inside = True
                continue
            if inside and ":" in line and line.startswith((" ", "\t")):
                names.append(line.split(":", 1)[1].strip().strip("'\""))
            elif inside and line.strip():
                break
        if names:
            return names
    raise DataError(f"{root}: a YOLO folder needs classes.txt (one class name per line) or data.yaml with 'names'")


def read_yolo(root: str | os.PathLike) -> DetSet:
    """A YOLO folder (``images/`` + ``labels/``); an image without a label file is a negative."""
    root = Path(root)
    names = _yolo_names(root)
    image_dir, label_dir = root / "images", root / "labels"
    if not image_dir.is_dir():
        raise DataError(f"{root}: no images/ folder; a YOLO folder holds images/, labels/ and classes.txt")
    samples = []
    for img in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = img.relative_to(image_dir)
        image = cv2.imread(str(img), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"{img}: unreadable image; remove it or replace it")
        h, w = image.shape[:2]
        txt = (label_dir / rel).with_suffix(".txt")
        boxes, labels = [], []
        if txt.is_file():
            for n, line in enumerate(txt.read_text().splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                where = f"{txt}:{n}"
                try:
                    cls = int(parts[0])
                    cx, cy, bw, bh = (float(v) for v in parts[1:5])
                except (ValueError, IndexError):
                    raise DataError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}") from None
                if len(parts) != 5:
                    raise DataError(f"{where}: expected 5 numbers ('class cx cy w h'), got {len(parts)}")
                if not 0 <= cls < len(names):
                    raise DataError(f"{where}: class {cls} has no name in classes.txt ({len(names)} classes)")
                box = np.array([[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]])
                boxes.append(check_boxes(box, w, h, where)[0])
                labels.append(cls)
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        samples.append(DetSample(str(rel), img, w, h, b, np.asarray(labels, np.int64)))
    if not samples:
        raise DataError(f"{image_dir}: no images found")
    return DetSet(names, samples)


def yolo_lines(sample: DetSample) -> str:
    out = []
    for (x1, y1, x2, y2), k in zip(sample.boxes_xyxy, sample.labels):
        out.append(f"{int(k)} {(x1 + x2) / 2 / sample.width:.6f} {(y1 + y2) / 2 / sample.height:.6f} "
                   f"{(x2 - x1) / sample.width:.6f} {(y2 - y1) / sample.height:.6f}")
    return "\n".join(out) + ("\n" if out else "")


# --------------------------------------------------------------------------- CVAT

def read_cvat(xml_path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> DetSet:
    """A CVAT for images 1.1 XML: ``<box>`` elements become boxes, ``<tag>`` elements (with their
    attributes, e.g. FPUS23's fetus orientation, probe orientation, view, plane) become tags."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: not a readable CVAT XML ({e})") from None
    images = root.findall("image")
    if root.tag != "annotations" or not images:
        raise DataError(f"{path}: not a CVAT 1.1 'annotations' file with <image> elements "
                        "(export from CVAT as 'CVAT for images 1.1')")
    box_labels = [lab.findtext("name") for lab in root.iterfind("meta/task/labels/label")]
    seen = {b.get("label") for im in images for b in im.findall("box")}
    names = [n for n in box_labels if n in seen] + sorted(seen - set(box_labels))
    index = {n: i for i, n in enumerate(names)}
    image_root = Path(image_root) if image_root else path.parent
    samples = []
    for im in images:
        w, h = int(im.get("width")), int(im.get("height"))
        boxes, labels = [], []
        for b in im.findall("box"):
            where = f"{path}: image {im.get('name')}, box {b.get('label')}"
            try:
                boxes.append([float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")])
            except (TypeError, ValueError):
                raise DataError(f"{where}: missing or non-numeric xtl/ytl/xbr/ybr") from None
            labels.append(index[b.get("label")])
        tags = {}
        for t in im.findall("tag"):
            attrs = {a.get("name"): (a.text or "").strip() for a in t.findall("attribute")}
            tags[t.get("label")] = attrs if attrs else True
        b = check_boxes(np.asarray(boxes, np.float32), w, h, f"{path}: image {im.get('name')}")
        samples.append(DetSample(im.get("name"), image_root / im.get("name"), w, h, b,
                                 np.asarray(labels, np.int64), group=path.parent.name, tags=tags))
    return DetSet(names, samples)


# --------------------------------------------------------------------------- folders

def read_detection_set(path: str | os.PathLike) -> DetSet:
    """Read a COCO json / folder with ``annotations.json``, a YOLO folder or a CVAT XML."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return read_coco(p)
        if p.suffix.lower() == ".xml":
            return read_cvat(p)
        raise DataError(f"{p}: unknown label file; give a COCO .json, a CVAT .xml or a YOLO folder")
    if (p / COCO_FILE).is_file():
        return read_coco(p / COCO_FILE)
    if (p / "labels").is_dir() or (p / "classes.txt").is_file() or (p / "data.yaml").is_file():
        return read_yolo(p)
    xmls = sorted(p.rglob("annotations.xml"))
    if xmls:
        sets = [read_cvat(x) for x in xmls]
        return merge_sets(sets, str(p))
    raise DataError(f"{p}: no {COCO_FILE}, YOLO labels/ or CVAT annotations.xml found")


def merge_sets(sets: list[DetSet], where: str) -> DetSet:
    """Concatenate sets, unifying category names (order of first appearance)."""
    names: list[str] = []
    for s in sets:
        names += [n for n in s.categories if n not in names]
    samples = []
    for s in sets:
        remap = np.array([names.index(n) for n in s.categories] or [0], np.int64)
        for smp in s.samples:
            samples.append(DetSample(str(Path(smp.group) / smp.file_name) if smp.group else smp.file_name,
                                     smp.image_path, smp.width, smp.height, smp.boxes_xyxy,
                                     remap[smp.labels] if len(smp.labels) else smp.labels, smp.group, smp.tags))
    if not samples:
        raise DataError(f"{where}: no images in the label files")
    return DetSet(names, samples)


def write_detection_set(ds: DetSet, out_dir: str | os.PathLike, fmt: str, images: dict | None = None,
                        copy_images: bool = True) -> Path:
    """Write ``ds`` as a COCO or YOLO folder, all or nothing: built in a temp folder beside
    ``out_dir`` and renamed into place (an existing ``out_dir`` is refused, never merged).

    ``images`` maps a sample's ``file_name`` to pixels for samples made in memory
    (e.g. derived negatives); other images are copied from ``image_path`` (a missing
    one is an error) unless ``copy_images`` is off (label files only).
    """
    out = Path(out_dir)
    if fmt not in ("coco", "yolo"):
        raise DataError(f"unknown format {fmt!r}; use coco or yolo")
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new --out folder (fetalkit never merges label sets)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp_{out.name}_"))
    try:
        for s in ds.samples:
            dst = tmp / "images" / s.file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if images and s.file_name in images:
                write_image(dst, images[s.file_name])
            elif copy_images:
                if not s.image_path.is_file():
                    raise DataError(f"{s.image_path}: image of {s.file_name} not found; put the images beside "
                                    "the labels, or write label files only (--no-copy-images)")
                shutil.copyfile(s.image_path, dst)
            if fmt == "yolo":
                txt = (tmp / "labels" / s.file_name).with_suffix(".txt")
                txt.parent.mkdir(parents=True, exist_ok=True)
                txt.write_text(yolo_lines(s))
        if fmt == "coco":
            (tmp / COCO_FILE).write_text(json.dumps(coco_dict(ds)))
        else:
            (tmp / "classes.txt").write_text("\n".join(ds.categories) + "\n")
            (tmp / "data.yaml").write_text("path: .\ntrain: images\nval: images\n"
                                           f"names: [{', '.join(ds.categories)}]\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
