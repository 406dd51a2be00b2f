"""The scan-view classifier at run time: onnxruntime only.

The input a classifier sees is made by :func:`view_input`, in training and at run time
alike: the frame is cropped to its imaged area (without a scanner screen's black
surround and graphics, :func:`fetalkit.preprocess.sector.imaged_box`), then
letterboxed into a square (centred, black padding), so that neither the screen
layout nor the aspect ratio of the source can stand in for the view.
"""

from __future__ import annotations

import numpy as np

from fetalkit.preprocess.sector import imaged_box
from fetalkit.runtime.detector import letterbox


def view_input(gray: np.ndarray, size_px: int) -> np.ndarray:
    """H x W uint8 frame -> ``size_px`` x ``size_px`` uint8: imaged area, letterboxed and centred."""
    box = imaged_box(gray)
    if box is not None:
        x1, y1, x2, y2 = box
        gray = gray[y1:y2, x1:x2]
    return letterbox(np.ascontiguousarray(gray), size_px, centre=True)[0]


class ViewClassifier:
    """Class probabilities of scan views from an ONNX ``view`` model and its card.

    >>> vc = ViewClassifier()                                   # doctest: +SKIP
    >>> label, p, probs = vc.classify(frame)                    # doctest: +SKIP
    """

    def __init__(self, model=None, threads: int = 2):
        from fetalkit.runtime.registry import load_model
        self.model = model if hasattr(model, "predict") else load_model(model, "view", threads=threads)
        self.classes: list[str] = list(self.model.card["classes"])
        self.size_px = int(self.model.input_hw[0])

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """N x C class probabilities (the softmax is in the graph)."""
        return self.model.predict([view_input(im, self.size_px) for im in images])

    def classify(self, image: np.ndarray) -> tuple[str, float, np.ndarray]:
        probs = self.probabilities([image])[0]
        k = int(probs.argmax())
        return self.classes[k], float(probs[k]), probs
