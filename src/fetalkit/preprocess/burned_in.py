"""What text removal took out of a file: the replaced pixels and the regions they form.

>>> tally = BurnedInTally()
>>> cleaned = [tally.clean(f) for f in frames]           # doctest: +SKIP
>>> tally.px, tally.regions()                            # doctest: +SKIP
(412, [{'x': 8, 'y': 6, 'w': 151, 'h': 14, 'px': 412}])

``tally.clean`` is a ``clean_pixels`` function for :func:`fetalkit.deid.deidentify_file`
(frame -> cleaned frame, the text remover of ``fetalkit clean``), so a de-identified
DICOM can list the burned-in text regions it removed.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.text import TextRemovalParams

# Letters of one word or line are a few pixels apart: joined before boxing (rows, columns).
JOIN_HW = (3, 9)


class BurnedInTally:
    """Counts the pixels text removal replaces over the frames of one file.

    ``regions()`` boxes the union of every frame's removed pixels, so a cine with
    fixed burned-in text gives one box per line of text, not one per frame.
    """

    def __init__(self, params: TextRemovalParams = TextRemovalParams()):
        self.params = params
        self.px = 0
        self.frames = 0
        self.union: Optional[np.ndarray] = None

    def clean(self, frame: np.ndarray) -> np.ndarray:
        """Remove the burned-in text of one frame (as ``fetalkit clean``) and count what went."""
        result, _ = clean_frame(frame, self.params)
        self.add(result.overlay_mask)
        return result.image

    def add(self, overlay_mask: np.ndarray) -> None:
        removed = overlay_mask.astype(bool)
        self.px += int(removed.sum())
        self.frames += 1
        if self.union is None:
            self.union = removed.copy()
        elif self.union.shape == removed.shape:
            self.union |= removed

    def regions(self) -> list[dict]:
        """``[{"x", "y", "w", "h", "px"}]``: boxes in frame pixels of the removed pixels, top to bottom."""
        if self.union is None or not self.union.any():
            return []
        joined = cv2.dilate(self.union.view(np.uint8), np.ones(JOIN_HW, np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        px = np.bincount(labels[self.union], minlength=n)
        boxes = [{"x": int(x), "y": int(y), "w": int(w), "h": int(h), "px": int(px[k])}
                 for k, (x, y, w, h, _) in enumerate(stats) if k > 0]
        return sorted(boxes, key=lambda b: (b["y"], b["x"]))
