"""Simulated scan sequences with a known target box in every frame, built from still images.

Real ultrasound video with box labels on every frame is not public, so the masking
benchmark makes sequences from held-out labelled stills:

* smooth probe motion: translation, rotation and zoom follow low-passed random walks;
* speckle re-noising: every frame gets fresh multiplicative noise;
* brief degraded frames (motion blur or a drop in gain, 1-4 frames), where detectors
  tend to fail - the frames the hold rules exist for;
* cut-away segments: frames of another view without the target (to count false holds).

Every frame carries the ground-truth box of the target (None on cut-away frames),
computed by warping the target's label mask with the same transform as the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Sequence:
    frames: list[np.ndarray]                       # H x W uint8
    target_boxes: list[np.ndarray | None]          # per frame: x1 y1 x2 y2 of the target, None if absent
    kinds: list[str] = field(default_factory=list)  # per frame: clean | blur | dropout | cutaway
    source: str = ""                                # the image the sequence was made from
    draw: int = 0                                   # which draw of motion and noise (bench video --draws)

    def widen(self, aspect: float) -> None:
        """Put every frame in the centre of a black frame ``aspect`` times as wide as high,
        as a scanner screen shows its image (target boxes move with it)."""
        ox = 0
        for i, f in enumerate(self.frames):
            self.frames[i], ox = on_wide_screen(f, aspect)
        self.target_boxes = [None if b is None else b + np.array([ox, 0, ox, 0], b.dtype) for b in self.target_boxes]


def on_wide_screen(image: np.ndarray, aspect: float) -> tuple[np.ndarray, int]:
    """``image`` in the centre of a black frame ``aspect`` times as wide as high (a scanner
    screen); returns the frame and the image's x offset in it."""
    h, w = image.shape[:2]
    width = max(w, round(h * aspect))
    ox = (width - w) // 2
    screen = np.zeros((h, width) + image.shape[2:], image.dtype)
    screen[:, ox:ox + w] = image
    return screen, ox


def smooth_walk(n: int, scale: float, rng: np.random.Generator, smooth: int = 9) -> np.ndarray:
    """A random walk low-passed by a moving average: slow, probe-like drift of amplitude ~``scale``."""
    steps = rng.normal(0, 1, n + smooth)
    walk = np.cumsum(steps)
    walk = np.convolve(walk, np.ones(smooth) / smooth, mode="valid")[:n]
    walk -= walk[0]
    peak = np.abs(walk).max()
    return walk * (scale / peak if peak > 0 else 0.0)


def probe_motion(n: int, size_hw: tuple[int, int], rng: np.random.Generator, shift_px: float = 12.0,
                 rotate_deg: float = 6.0, zoom: float = 0.06) -> list[np.ndarray]:
    """2 x 3 affine matrices (about the image centre) of a smooth simulated probe motion."""
    h, w = size_hw
    tx, ty = smooth_walk(n, shift_px, rng), smooth_walk(n, shift_px, rng)
    rot, sc = smooth_walk(n, rotate_deg, rng), 1.0 + smooth_walk(n, zoom, rng)
    mats = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rot[i]), float(sc[i]))
        m[:, 2] += (tx[i], ty[i])
        mats.append(m)
    return mats


def speckle(frame: np.ndarray, rng: np.random.Generator, sigma: float = 0.12) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(1.0, sigma, frame.shape).astype(np.float32), (3, 3), 0)
    return np.clip(frame.astype(np.float32) * noise, 0, 255).astype(np.uint8)


def degrade(frame: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":  # probe moving fast: a long linear motion blur
        k = int(rng.integers(9, 17))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1.0 / k
        kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D((k / 2, k / 2), float(rng.uniform(0, 180)), 1.0),
                                (k, k))
        kernel /= max(kernel.sum(), 1e-6)
        return cv2.filter2D(frame, -1, kernel)
    if kind == "dropout":  # lost contact: the image fades
        return (frame.astype(np.float32) * rng.uniform(0.15, 0.35)).astype(np.uint8)
    return frame


def target_box(mask: np.ndarray, min_visible: float = 0.5, full_area: float | None = None) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if not len(xs) or (full_area and len(xs) < min_visible * full_area):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def make_sequence(image: np.ndarray, target_mask: np.ndarray, cutaway_images: list[np.ndarray], n_frames: int,
                  rng: np.random.Generator, degraded_rate: float = 0.04, cutaway_len: tuple[int, int] = (8, 20),
                  n_cutaways: int = 1) -> Sequence:
    """A sequence of ``n_frames`` of one still with its target mask (H x W bool), with
    ``n_cutaways`` cut-away segments taken from ``cutaway_images`` (views without the target)."""
    h, w = image.shape
    mats = probe_motion(n_frames, (h, w), rng)
    kinds = ["clean"] * n_frames
    # cut-away segments, away from the first frames so the detector has seen the target
    for _ in range(n_cutaways if cutaway_images else 0):
        length = int(rng.integers(*cutaway_len))
        start = int(rng.integers(n_frames // 4, max(n_frames // 4 + 1, n_frames - length)))
        for i in range(start, min(n_frames, start + length)):
            kinds[i] = "cutaway"
    i = 1
    while i < n_frames:  # degraded bursts of 1-4 frames
        if kinds[i] == "clean" and rng.random() < degraded_rate:
            kind, length = ("blur" if rng.random() < 0.6 else "dropout"), int(rng.integers(1, 5))
            for j in range(i, min(n_frames, i + length)):
                if kinds[j] == "clean":
                    kinds[j] = kind
            i += length
        i += 1
    full_area = float(target_mask.sum())
    cut = cutaway_images[int(rng.integers(len(cutaway_images)))] if cutaway_images else None
    frames, boxes = [], []
    for m, kind in zip(mats, kinds):
        src = cut if kind == "cutaway" else image
        frame = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        frame = degrade(speckle(frame, rng), kind, rng)
        frames.append(frame)
        if kind == "cutaway":
            boxes.append(None)
        else:
            warped = cv2.warpAffine(target_mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
            boxes.append(target_box(warped, full_area=full_area))
    return Sequence(frames, boxes, kinds)
