"""Live masking over a WebSocket: frames in, masked JPEG frames and a small status out.

The frame logic is :meth:`fetalkit.masking.pipeline.Masker.step`, one call per frame,
so the detector's fail-safe holds here as in ``fetalkit mask``: a frame the
detector fails on comes back with its imaging sector blanked.  Only frames that
went through ``step`` are ever sent; a frame that cannot be decoded or masked
is answered with an error status and no picture, and the page then blanks its
view.  A frame's declared size is checked before it is decoded (a 1 MB PNG can
declare 30000 x 30000 pixels): a larger one than :func:`fetalkit.io.inputs.max_pixels`
gets the error status, and the stream goes on.

Protocol (``/api/live``): the page sends one JSON text message
``{"source": "camera" | "file", "upload": id, "classes": "a,b", "style": "fill"}``;
then, for ``camera``, one binary JPEG per frame (the next after the answer to the
previous, so the rate follows the server), and for ``file`` nothing more (the
server plays the file staged with ``POST /api/live/files`` at its frame rate).
Each answer is a text status ``{"frame", "fps", "hold", "masks", "held", "fail_safe"}``
followed by one binary JPEG; ``{"error": ...}`` has no picture; ``{"end": true}``
closes a played file.
"""

from __future__ import annotations

import time
from collections import deque

import cv2
import numpy as np

from fetalkit.errors import InputError
from fetalkit.io.inputs import check_pixels, declared_image_size
from fetalkit.masking.pipeline import Masker, MaskConfig

JPEG_QUALITY = 85
FPS_WINDOW = 30


def hold_state(record: dict) -> str:
    """One word for the page: what the hold rule did on this frame."""
    if record.get("fail_safe"):
        return "fail-safe"
    if record["held"]:
        return "held"
    return "detected" if record["detections"] else "clear"


class LiveMasker:
    """One live stream's masker (its own hold-rule state) over the shared detector."""

    def __init__(self, detector, cfg: MaskConfig, domain=None):
        self.masker = Masker(detector, cfg, domain=domain)
        self.index = 0
        self.times: deque[float] = deque(maxlen=FPS_WINDOW)

    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])

    def mask(self, frame: np.ndarray) -> tuple[dict, bytes]:
        """Mask one frame (BGR or gray): its status and its masked JPEG."""
        result = self.masker.step(self.index, frame)
        ok, jpeg = cv2.imencode(".jpg", result.frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError("cannot encode the masked frame as JPEG")
        self.times.append(time.perf_counter())
        record = result.record
        status = {"frame": self.index, "fps": round(self.fps(), 1), "hold": hold_state(record),
                  "masks": len(record["masks"]), "held": len(record["held"]),
                  "fail_safe": bool(record.get("fail_safe")), "outside_domain": bool(record.get("outside_domain"))}
        self.index += 1
        return status, jpeg.tobytes()

    def mask_jpeg(self, data: bytes) -> tuple[dict, bytes]:
        """Decode a frame sent by the page (JPEG or PNG) and mask it; its declared size is checked first."""
        name = f"frame {self.index}"
        size = declared_image_size(data, name) if data else None
        if size is not None:
            check_pixels(name, *size)
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if size is not None else None
        if frame is None:
            raise InputError(f"frame {self.index}: not a JPEG/PNG picture ({len(data)} bytes); the view is blanked")
        return self.mask(frame)
