"""The one ONNX session wrapper: load model + card, preprocess, run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fetalkit.errors import ModelError
from fetalkit.runtime.card import read_card
from fetalkit.runtime.preprocess import normalise, resize_gray


class OnnxModel:
    """An ONNX model with its card, run by onnxruntime on the CPU.

    Parameters
    ----------
    path : the ``.onnx`` file (its card ``.json`` beside it).
    threads : intra-op threads (2 suits a 2-core machine).
    """

    def __init__(self, path: str | Path, threads: int = 2):
        import onnxruntime as ort
        self.path = Path(path)
        self.card = read_card(self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = tuple(int(v) for v in self.card["input_hw"])
        shape = inp.shape
        if len(shape) != 4 or shape[1] not in (1, "channels"):
            raise ModelError(f"{self.path}: expected a 1-channel N x 1 x H x W input, the graph has {shape}")
        self.mean = float(self.card["normalise"]["mean"])
        self.std = float(self.card["normalise"]["std"])

    @property
    def task(self) -> str:
        return self.card["task"]

    def prepare(self, images: list[np.ndarray]) -> np.ndarray:
        """Resize + normalise a list of H x W uint8 images into an N x 1 x h x w batch."""
        batch = np.stack([resize_gray(im, self.input_hw) for im in images])
        return normalise(batch, self.mean, self.std)[:, None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        return self.run(self.prepare(images))
