"""The detector runtime: onnxruntime only, for fetalkit's own detectors and YOLO ONNX exports.

Accepted ONNX layouts (``DetectorLayout``):

* ``dense`` (fetalkit export): input ``N x 1 x H x W`` gray, x/255 (normalisation is in
  the graph); outputs ``boxes N x A x 4`` (x1, y1, x2, y2, input pixels) and
  ``scores N x A x C``.  Image letterboxed into the top-left corner, zero padding:
  longer side to the card's ``input_hw``, each side padded to a multiple of the card's
  ``input_multiple`` (older exports without it take a fixed square).
* ``yolov8`` (Ultralytics YOLOv8 / YOLO11 ``export format=onnx``): input ``N x 3 x S x S``
  RGB, x/255; one output ``N x (4 + C) x A`` of (cx, cy, w, h, class scores).
  Image letterboxed in the centre with grey 114, as Ultralytics trains.
* ``yolov5`` (YOLOv5 ``export.py --include onnx``): as yolov8 but one output
  ``N x A x (5 + C)`` of (cx, cy, w, h, objectness, class scores); score = obj x class.

Thresholds and per-class NMS run here, so the operating point is a runtime choice.
A YOLO file needs no card: its class names come from the ``names`` metadata that
Ultralytics writes, else from a card or ``class_names``.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fetalkit.errors import InputError, ModelError
from fetalkit.types import ImageDetections
from fetalkit.runtime.card import card_path_for, read_card

LAYOUTS = ("dense", "yolov8", "yolov5")
DEFAULT_OPERATING_POINT = {"conf": 0.25, "iou": 0.6}


def letterbox(image: np.ndarray, size: int, centre: bool = False, pad_value: int = 0,
              multiple: int | None = None) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio so the longer side is ``size``, pad to ``size x size``
    (with ``multiple``: pad each side only up to a multiple of it, so a wide frame costs
    the network less; needs a model with free input sides).

    Returns the padded image and the scale (model pixels per image pixel).  Padding goes
    to the bottom/right, or around the image with ``centre`` (offset via :func:`letterbox_offset`).
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ph, pw = (size, size) if multiple is None else (-(-nh // multiple) * multiple, -(-nw // multiple) * multiple)
    out = np.full((ph, pw) + image.shape[2:], pad_value, image.dtype)
    oy, ox = letterbox_offset((h, w), size) if centre else (0, 0)
    out[oy:oy + nh, ox:ox + nw] = resized
    return out, scale


def letterbox_offset(hw: tuple[int, int], size: int) -> tuple[int, int]:
    scale = size / max(hw)
    nh, nw = max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))
    return (size - nh) // 2, (size - nw) // 2


def nms_per_class(boxes_xyxy: np.ndarray, scores: np.ndarray, conf: float, iou: float,
                  max_det: int = 100) -> ImageDetections:
    """Candidates ``A x 4`` with class scores ``A x C`` -> detections above ``conf`` after
    per-class NMS at ``iou`` (a candidate may yield one detection per class, as in COCO practice)."""
    keep_a, keep_c = np.nonzero(scores >= conf)
    if not len(keep_a):
        return ImageDetections.empty()
    b, s, c = boxes_xyxy[keep_a], scores[keep_a, keep_c], keep_c
    xywh = np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]).astype(np.float32)
    idx = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), s.astype(float).tolist(), c.astype(np.int32).tolist(),
                                             float(conf), float(iou)), dtype=np.int64).reshape(-1)
    idx = idx[np.argsort(-s[idx], kind="stable")][:max_det]
    return ImageDetections(b[idx].astype(np.float32), s[idx].astype(np.float32), c[idx].astype(np.int64))


@dataclass
class DetectorSpec:
    layout: str
    size: int
    in_channels: int
    classes: list[str]
    operating_point: dict
    multiple: int | None = None  # free input sides: pad to a multiple of this, not to a square


def _yolo_spec(session, path: Path, class_names: list[str] | None) -> DetectorSpec:
    outs = session.get_outputs()
    inp = session.get_inputs()[0]
    if len(outs) < 1 or len(outs[0].shape) != 3 or len(inp.shape) != 4:
        raise ModelError(f"{path}: not a detector fetalkit can run (no card, and not a YOLO layout: "
                         f"input {inp.shape}, outputs {[o.shape for o in outs]}); export with 'fetalkit export detector'")
    _, a, b = outs[0].shape
    size = inp.shape[2] if isinstance(inp.shape[2], int) else 640
    names = class_names
    meta = session.get_modelmeta().custom_metadata_map
    if names is None and "names" in meta:
        try:
            parsed = ast.literal_eval(meta["names"])
            names = [parsed[k] for k in sorted(parsed)] if isinstance(parsed, dict) else list(parsed)
        except (ValueError, SyntaxError):
            names = None
    if isinstance(a, int) and isinstance(b, int):
        layout = "yolov8" if a < b else "yolov5"
    else:
        layout = "yolov8" if isinstance(a, int) else "yolov5"
    n_cls = (a - 4 if layout == "yolov8" else b - 5) if isinstance(a if layout == "yolov8" else b, int) else None
    if names is None:
        raise ModelError(f"{path}: YOLO model without class names; pass them (--class-names a,b) or add a card")
    if n_cls is not None and n_cls != len(names):
        raise ModelError(f"{path}: the model has {n_cls} classes but {len(names)} names were given")
    return DetectorSpec(layout, int(size), int(inp.shape[1]) if isinstance(inp.shape[1], int) else 3, list(names),
                        dict(DEFAULT_OPERATING_POINT))


@dataclass
class ModelInput:
    """One image made ready for the network: the input tensor and how to map boxes back."""

    x: np.ndarray                 # 1 x C x H x W float32
    scale: float                  # model pixels per image pixel
    offset: tuple[int, int]       # (y, x) of the image in the input
    image_hw: tuple[int, int]
    resized: np.ndarray           # the image at model scale, uint8, without the padding


def to_image_pixels(boxes_input_px: np.ndarray, m: ModelInput) -> np.ndarray:
    """Boxes in network-input pixels -> image pixels (letterbox offset and scale undone, clipped to the image)."""
    (oy, ox), scale = m.offset, m.scale
    boxes = (np.asarray(boxes_input_px, np.float32) - np.array([ox, oy, ox, oy], np.float32)) / scale
    hh, ww = m.image_hw
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, ww)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, hh)
    return boxes.astype(np.float32)


class OnnxDetector:
    """An ONNX detector run by onnxruntime: ``detect(image)`` -> boxes in image pixels."""

    def __init__(self, path: str | Path, threads: int = 2, class_names: list[str] | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        self._opts = dict(intra_op_num_threads=threads, inter_op_num_threads=1,
                          graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        self.session = self._new_session({})
        self._sized: dict[tuple[int, int], object] = {}
        self.input_name = self.session.get_inputs()[0].name
        self._input_dims = self.session.get_inputs()[0].shape  # names where the sides are free
        if card_path_for(self.path).is_file():
            self.card = read_card(self.path)
            if self.card["task"] != "detector":
                raise ModelError(f"{self.path}: a {self.card['task']} model, but this command needs a detector")
            layout = self.card.get("output", "dense")
            if layout not in LAYOUTS:
                raise ModelError(f"{card_path_for(self.path)}: unknown detector output layout {layout!r} ({', '.join(LAYOUTS)})")
            self.spec = DetectorSpec(layout, int(self.card["input_hw"][0]), 1 if layout == "dense" else 3,
                                     list(class_names or self.card["classes"]),
                                     {**DEFAULT_OPERATING_POINT, **self.card.get("operating_point", {})},
                                     self.card.get("input_multiple") if layout == "dense" else None)
            if layout != "dense":
                self.spec.in_channels = int(self.session.get_inputs()[0].shape[1])
        else:
            self.card = {}
            self.spec = _yolo_spec(self.session, self.path, class_names)
        self._check_graph()

    def _new_session(self, dims: dict[str, int]):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        for key, value in self._opts.items():
            setattr(opts, key, value)
        for name, value in dims.items():
            opts.add_free_dimension_override_by_name(name, value)
        try:
            return ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None

    def session_for(self, hw: tuple[int, int]):
        """The session for an input of ``hw``: with free input sides, one per size met, with
        the sides fixed so onnxruntime folds the graph's shape arithmetic (about 0.5 ms a frame)."""
        names = self._input_dims
        if self.spec.multiple is None or not all(isinstance(d, str) for d in names[2:]):
            return self.session
        if hw not in self._sized:
            dims = {names[2]: hw[0], names[3]: hw[1]} | ({names[0]: 1} if isinstance(names[0], str) else {})
            self._sized[hw] = self._new_session(dims)
        return self._sized[hw]

    def _check_graph(self) -> None:
        inp = self.session.get_inputs()[0].shape
        outs = [o.shape for o in self.session.get_outputs()]
        ok = len(inp) == 4 and inp[1] in (self.spec.in_channels, "channels") or isinstance(inp[1], str)
        if self.spec.layout == "dense":
            ok = ok and len(outs) == 2 and len(outs[0]) == 3 and len(outs[1]) == 3
        if not ok:
            raise ModelError(f"{self.path}: graph input {inp} / outputs {outs} do not fit the "
                             f"{self.spec.layout} detector layout")

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def operating_point(self) -> dict:
        return self.spec.operating_point

    def model_input(self, image: np.ndarray) -> ModelInput:
        """Letterbox a 2-D uint8 gray image into the network input (no inference yet)."""
        if image.ndim != 2 or image.dtype != np.uint8:
            raise InputError(f"detector input must be a 2-D uint8 gray image, got {image.dtype} {image.shape}")
        centre = self.spec.layout != "dense"
        boxed, scale = letterbox(image, self.spec.size, centre=centre, pad_value=114 if centre else 0,
                                 multiple=self.spec.multiple)
        oy, ox = letterbox_offset(image.shape, self.spec.size) if centre else (0, 0)
        nh, nw = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        x = boxed.astype(np.float32) * (1.0 / 255.0)
        x = np.ascontiguousarray(np.broadcast_to(x, (self.spec.in_channels,) + x.shape)[None])
        return ModelInput(x, scale, (oy, ox), image.shape, boxed[oy:oy + nh, ox:ox + nw])

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Letterboxed model input (1 x C x H x W float32), scale and (y, x) offset."""
        m = self.model_input(image)
        return m.x, m.scale, m.offset

    def candidates(self, image: np.ndarray | ModelInput) -> tuple[np.ndarray, np.ndarray]:
        """All candidate boxes (image pixels, x1 y1 x2 y2) and their class scores, before NMS.
        ``image`` may be a :meth:`model_input` already made (e.g. on another thread)."""
        m = image if isinstance(image, ModelInput) else self.model_input(image)
        outs = self.session_for(m.x.shape[2:]).run(None, {self.input_name: m.x})
        if self.spec.layout == "dense":
            boxes, scores = outs[0][0], outs[1][0]
        else:
            raw = outs[0][0]
            raw = raw.T if self.spec.layout == "yolov8" else raw
            cx, cy, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
            boxes = np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores = raw[:, 4:] if self.spec.layout == "yolov8" else raw[:, 5:] * raw[:, 4:5]
        return to_image_pixels(boxes, m), scores.astype(np.float32)

    def detect(self, image: np.ndarray | ModelInput, conf: float | None = None,
               iou: float | None = None) -> ImageDetections:
        conf = self.operating_point["conf"] if conf is None else conf
        iou = self.operating_point["iou"] if iou is None else iou
        boxes, scores = self.candidates(image)
        return nms_per_class(boxes, scores, conf, iou)


def detections_json(file_name: str, dets: ImageDetections, classes: list[str]) -> list[dict]:
    """COCO-results-style records: file_name, category, bbox [x, y, w, h] in input pixels, score."""
    return [{"file_name": file_name, "category": classes[int(k)],
             "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
             "score": round(float(s), 5)}
            for (x1, y1, x2, y2), s, k in zip(dets.boxes_xyxy, dets.scores, dets.labels)]


def dump_json(records: list[dict]) -> str:
    return json.dumps(records, indent=1)


def fuse_two_views(a: ImageDetections, b: ImageDetections, match_iou: float = 0.55) -> ImageDetections:
    """Detections of two views of one image (e.g. the image and its mirror, boxes mapped
    back) fused into one set, per class: a box of ``a`` and the unmatched box of ``b`` of
    highest IoU >= ``match_iou`` become their score-weighted mean box with the mean score;
    a box one view alone found keeps its place at half its score (the other view saw nothing).

    >>> one = ImageDetections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.8], np.float32), np.array([0]))
    >>> two = ImageDetections(np.array([[2, 0, 12, 10]], np.float32), np.array([0.4], np.float32), np.array([0]))
    >>> f = fuse_two_views(one, two, match_iou=0.5)
    >>> [round(float(v), 2) for v in f.boxes_xyxy[0]], round(float(f.scores[0]), 2)
    ([0.67, 0.0, 10.67, 10.0], 0.6)
    """
    from fetalkit.detection.boxes import box_iou
    boxes, scores, labels = [], [], []
    for k in np.union1d(a.labels, b.labels):
        ia, ib = np.flatnonzero(a.labels == k), np.flatnonzero(b.labels == k)
        iou = box_iou(a.boxes_xyxy[ia], b.boxes_xyxy[ib]) if len(ia) and len(ib) else np.zeros((len(ia), len(ib)))
        free = np.ones(len(ib), bool)
        for r in np.argsort(-a.scores[ia], kind="stable"):
            cand = np.where(free & (iou[r] >= match_iou), iou[r], -1.0)
            i = ia[r]
            if len(cand) and cand.max() >= 0:
                j = ib[int(cand.argmax())]
                free[int(cand.argmax())] = False
                w = np.array([a.scores[i], b.scores[j]], np.float32)
                boxes.append((w[:, None] * np.stack([a.boxes_xyxy[i], b.boxes_xyxy[j]])).sum(0) / max(w.sum(), 1e-9))
                scores.append(w.mean())
            else:
                boxes.append(a.boxes_xyxy[i])
                scores.append(a.scores[i] / 2)
            labels.append(k)
        for j in ib[free]:
            boxes.append(b.boxes_xyxy[j])
            scores.append(b.scores[j] / 2)
            labels.append(k)
    if not boxes:
        return ImageDetections.empty()
    order = np.argsort(-np.asarray(scores), kind="stable")
    return ImageDetections(np.asarray(boxes, np.float32)[order], np.asarray(scores, np.float32)[order],
                           np.asarray(labels, np.int64)[order])


class FlipAveraged:
    """Test-time flip averaging around a detector: the letterboxed input and its mirror image
    are run, each view's detections (NMS at the operating point's IoU, from ``low_conf``)
    are fused by :func:`fuse_two_views`.  Twice the inference per image; ``candidates``
    returns the fused boxes, so ``evaluate_detector`` and ``fetalkit mask``'s detection
    step use it as they use the plain detector."""

    def __init__(self, detector: OnnxDetector, low_conf: float = 0.001):
        self.inner = detector
        self.low_conf = low_conf
        self.path, self.spec, self.card = detector.path, detector.spec, detector.card

    @property
    def classes(self) -> list[str]:
        return self.inner.classes

    @property
    def operating_point(self) -> dict:
        return self.inner.operating_point

    def model_input(self, image: np.ndarray) -> ModelInput:
        return self.inner.model_input(image)

    def candidates(self, image: np.ndarray | ModelInput) -> tuple[np.ndarray, np.ndarray]:
        m = image if isinstance(image, ModelInput) else self.model_input(image)
        hw = m.x.shape[2:]
        iou = self.operating_point["iou"]
        views = []
        for mirrored in (False, True):
            x = np.ascontiguousarray(m.x[..., ::-1]) if mirrored else m.x
            # boxes in input pixels of the whole letterboxed input, mapped back below
            boxes, scores = self.inner.candidates(ModelInput(x, 1.0, (0, 0), hw, m.resized))
            if mirrored:
                boxes = np.column_stack([hw[1] - boxes[:, 2], boxes[:, 1], hw[1] - boxes[:, 0], boxes[:, 3]])
            views.append(nms_per_class(boxes, scores, self.low_conf, iou))
        fused = fuse_two_views(*views)
        dense = np.zeros((len(fused.scores), len(self.classes)), np.float32)
        dense[np.arange(len(fused.scores)), fused.labels] = fused.scores
        return to_image_pixels(fused.boxes_xyxy.reshape(-1, 4), m), dense

    def detect(self, image: np.ndarray | ModelInput, conf: float | None = None,
               iou: float | None = None) -> ImageDetections:
        conf = self.operating_point["conf"] if conf is None else conf
        iou = self.operating_point["iou"] if iou is None else iou
        return nms_per_class(*self.candidates(image), conf, iou)
