"""Offline OCR for the audits: Tesseract (Debian's ``tesseract-ocr``, Apache-2.0) through pytesseract.

Nothing is downloaded: Tesseract's English model comes with the Debian package.
When either part is missing, :func:`ocr_status` says so in one line and the
audits go on without OCR (their reports say "OCR unavailable"); the pixel
measures that need no OCR still run.

Tesseract is asked for *sparse* text on a whole frame (``--psm 11``: words
anywhere, no page layout) and for a block of lines on the stacked text regions
(``--psm 6``, where sparse mode reads nothing), on the image upscaled 2-3 x: scanner text is 8-12 px high, below the
x-height Tesseract's model reads best.  Light text on dark bars is read as it is
(Tesseract 5 inverts lines it cannot read).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import cv2
import numpy as np

# A word counts when Tesseract gives it at least this confidence (0-100): on outlines
# and flat bars it returns scraps such as "Sen" or "iia" at confidence 0-46.
MIN_CONF = 50
MIN_CHARS = 3           # tokens of fewer letters and digits than this are ignored (ticks, "|", "%")
TIMEOUT_S = 60          # one Tesseract call; a hung call must not hang an archive job

_ALNUM = re.compile(r"[0-9A-Za-z]")


@dataclass(frozen=True)
class OcrWord:
    """One word read by the OCR: its text, Tesseract's confidence (0-100) and its box in image pixels."""

    text: str
    conf: float
    box_xywh: tuple[int, int, int, int]

    @property
    def alnum(self) -> int:
        """How many letters and digits the word holds."""
        return len(_ALNUM.findall(self.text))


@functools.lru_cache(maxsize=1)
def ocr_status() -> tuple[bool, str]:
    """(available, why not): whether pytesseract and the ``tesseract`` program can be used here."""
    try:
        import pytesseract
    except ImportError:
        return False, "OCR unavailable: pytesseract is not installed (pip install pytesseract)"
    try:
        pytesseract.get_tesseract_version()
    except Exception:  # noqa: BLE001 - pytesseract raises its own types when the program is missing
        return False, "OCR unavailable: the tesseract program is not installed (apt-get install tesseract-ocr)"
    return True, ""


def ocr_available() -> bool:
    return ocr_status()[0]


def read_words(gray: np.ndarray, upscale: int = 2, min_conf: float = MIN_CONF,
               min_chars: int = MIN_CHARS, page_mode: int = 11) -> list[OcrWord]:
    """Words Tesseract reads in an H x W uint8 grey image, boxes in that image's pixels.

    Returns an empty list when OCR is unavailable (check :func:`ocr_status`).

    Parameters
    ----------
    gray : H x W uint8.
    upscale : the image is enlarged this many times (bicubic) before reading.
    min_conf : least confidence of a word kept.
    min_chars : least number of letters and digits of a word kept.
    page_mode : Tesseract's ``--psm``: 11 (sparse words anywhere, for a whole frame) or
        6 (one block of lines, for the stacked text regions of ``pixels.ocr_canvas``).
    """
    if not ocr_available() or gray.size == 0 or int(gray.max()) == int(gray.min()):
        return []
    import pytesseract
    big = cv2.resize(gray, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC) if upscale > 1 else gray
    try:
        data = pytesseract.image_to_data(big, config=f"--psm {int(page_mode)}", output_type=pytesseract.Output.DICT,
                                         timeout=TIMEOUT_S)
    except RuntimeError:  # pytesseract's time-out: read nothing rather than hang
        return []
    words = []
    for text, conf, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"], data["width"],
                                      data["height"]):
        word = OcrWord(text.strip(), float(conf), (int(x) // upscale, int(y) // upscale,
                                                    max(1, int(w) // upscale), max(1, int(h) // upscale)))
        if word.text and word.conf >= min_conf and word.alnum >= min_chars:
            words.append(word)
    return words


def normalised(token: str) -> str:
    """Letters and digits of a token, upper case: how two readings of one word are compared."""
    return "".join(_ALNUM.findall(token)).upper()
