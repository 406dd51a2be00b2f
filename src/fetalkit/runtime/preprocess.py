"""Model input preparation shared by training and runtime (one place, so they cannot drift)."""

from __future__ import annotations

import cv2
import numpy as np

# ImageNet mean/std averaged over RGB: the gray input of an ImageNet-initialised encoder.
GRAY_MEAN = 0.449
GRAY_STD = 0.226


def resize_gray(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize an H x W uint8 image to the model size (area interpolation when shrinking)."""
    h, w = size_hw
    interp = cv2.INTER_AREA if image.shape[0] >= h and image.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def normalise(images_u8: np.ndarray, mean: float = GRAY_MEAN, std: float = GRAY_STD) -> np.ndarray:
    """uint8 (..., H, W) -> float32 ``(x / 255 - mean) / std``."""
    return ((images_u8.astype(np.float32) / 255.0) - mean) / std


def to_model_input(image: np.ndarray, size_hw: tuple[int, int], mean: float = GRAY_MEAN,
                   std: float = GRAY_STD) -> np.ndarray:
    """H x W uint8 -> 1 x 1 x h x w float32 network input."""
    return normalise(resize_gray(image, size_hw), mean, std)[None, None]
