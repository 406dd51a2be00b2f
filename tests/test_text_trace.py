"""No readable trace of burned-in text (fetalkit.preprocess.text).

A person contrast-stretches a cleaned band and reads the dark outlines the
letters left; :func:`band_trace_ratio` measures that (edge energy of the
stretched band over the text, cleaned / original).  The cases put text on the
procedural phantom below a scanner-like header (a grey bar shaded top to
bottom, outside the sector): text outlined in black as Voluson draws it, large
bold text (font scale 2.5, 7 px strokes), grey text (140), thin (1-2 px) text
dimmer than the bright paths' seeds (100-120) and black text on a white label, on the bar and on tissue inside the sector.  The real SonoNet
frames are checked when present (``benchmarks/measure_text_trace.py`` prints
the same per frame).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import need_dataset
from fetalkit.io.images import read_gray
from fetalkit.preprocess.jobs import clean_frame
from fetalkit.preprocess.sector import detect_sector
from fetalkit.audit.pixels import band_trace_ratio
from fetalkit.preprocess.text import remove_overlay
from fetalkit.synth.phantom import head_phantom

HEADER_PX = 100
FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_TRACE = 0.03


@pytest.fixture(scope="module")
def scene():
    """(frame, sector, head) of the phantom below a header with a shaded grey bar."""
    p = head_phantom(0)
    w = p.image.shape[1]
    header = np.zeros((HEADER_PX, w), np.uint8)
    header[10:90, 40:760] = np.rint(57 - 29 * np.arange(80) / 79).astype(np.uint8)[:, None]
    none = np.zeros((HEADER_PX, w), np.uint8)
    return np.vstack([header, p.image]), np.vstack([none, p.sector]), np.vstack([none, p.mask])


def _text(frame, words, org, scale, thickness, grey, outline=False):
    out = frame.copy()
    if outline:  # scanners draw white letters with a dark outline
        cv2.putText(out, words, org, FONT, scale, 0, thickness + 2, cv2.LINE_AA)
    cv2.putText(out, words, org, FONT, scale, grey, thickness, cv2.LINE_AA)
    return frame, out


def _label(frame, words, org, scale, thickness):
    (tw, th), base = cv2.getTextSize(words, FONT, scale, thickness)
    x, y = org
    labelled = frame.copy()
    cv2.rectangle(labelled, (x - 6, y - th - 6), (x + tw + 6, y + base + 6), 255, -1)
    return _text(labelled, words, org, scale, thickness, 0)


# name: (inside the sector, draw(frame) -> (frame without the text, frame with it))
CASES = {
    "outlined on the bar": (False, lambda f: _text(f, "20.05.2015 2:47:33 PM", (60, 60), 0.8, 2, 255, True)),
    "large on the bar": (False, lambda f: _text(f, "20.05.2015", (60, 80), 2.5, 7, 255)),
    "grey on the bar": (False, lambda f: _text(f, "MRN 0012345 ANON", (60, 60), 1.0, 2, 140)),
    "black on a label, header": (False, lambda f: _label(f, "JOHN DOE 1980", (80, 60), 1.0, 2)),
    "large on tissue": (True, lambda f: _text(f, "20.05.2015", (160, HEADER_PX + 300), 2.5, 7, 255)),
    "grey on tissue": (True, lambda f: _text(f, "MRN 0012345", (220, HEADER_PX + 250), 1.2, 3, 140)),
    "thin grey on tissue": (True, lambda f: _text(f, "MRN 0012345", (220, HEADER_PX + 250), 0.8, 1, 120)),
    "thin dim on tissue": (True, lambda f: _text(f, "ID 4471 ANON", (200, HEADER_PX + 280), 0.6, 2, 100)),
    "black on a label, sector": (True, lambda f: _label(f, "JOHN DOE 1980", (220, HEADER_PX + 330), 1.0, 2)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, scene):
    frame, sector, head = scene
    inside, draw = CASES[request.param]
    reference, framed = draw(frame)
    text = np.abs(framed.astype(np.int16) - reference) > 2
    assert sector[text].all() if inside else not sector[text].any()
    return request.param, inside, reference, framed, sector, head, text


def _check_clean(inside, reference, framed, cleaned, sector, head, text, flagged):
    # no readable trace: outside the sector nothing is left; inside it no more
    # structure than the text-free frame shows there (the tissue's own speckle)
    allowed = MAX_TRACE + (band_trace_ratio(framed, reference, text) if inside else 0.0)
    trace = band_trace_ratio(framed, cleaned, text)
    assert trace <= allowed, (trace, allowed)
    # the text pixels are gone: replaced, and close to what lay under them
    assert flagged[text].mean() >= 0.99
    drawn = np.abs(framed.astype(np.int16) - reference)[text].mean()
    left = np.abs(cleaned.astype(np.int16) - reference)[text].mean()
    assert left <= 0.2 * drawn, (left, drawn)
    # anatomy is left alone: the head outside the text (grown by 4 px: a 1 px stroke's
    # removal reaches its anti-aliased rim and the dilation beyond it) is unchanged
    near_text = cv2.dilate(text.view(np.uint8), np.ones((9, 9), np.uint8)) > 0
    changed = cleaned != framed
    assert not changed[(head > 0) & ~near_text].any()
    assert changed[(sector > 0) & ~near_text].mean() < 0.0005


def test_no_readable_trace_grey(case):
    _, inside, reference, framed, sector, head, text = case
    result = remove_overlay(framed, sector)
    _check_clean(inside, reference, framed, result.image, sector, head, text, result.overlay_mask > 0)


def test_no_readable_trace_bgr(case):
    """The same from a BGR frame (colour input keeps its channels; the grey result is checked)."""
    _, inside, reference, framed, sector, head, text = case
    result = remove_overlay(cv2.cvtColor(framed, cv2.COLOR_GRAY2BGR), sector)
    assert result.image.shape == framed.shape + (3,)
    cleaned = cv2.cvtColor(result.image, cv2.COLOR_BGR2GRAY)
    _check_clean(inside, reference, framed, cleaned, sector, head, text, result.overlay_mask > 0)


def test_text_outside_the_sector_is_blanked_flat(case):
    """Outside the sector each word box is one grey level: no outline, no gradient."""
    name, inside, _, framed, sector, _, text = case
    if inside:
        pytest.skip("inside the sector text is inpainted (or blanked only on a bar or label)")
    result = remove_overlay(framed, sector)
    assert result.filled_px > 0 and result.inpainted_px == 0
    n, groups = cv2.connectedComponents(result.overlay_mask, connectivity=8)
    for i in range(1, n):
        assert np.ptp(result.image[groups == i]) == 0, name
    # the bar itself is not text: beyond the line's box (grown by 10 px) it is untouched
    bar = np.zeros(framed.shape, bool)
    bar[10:90, 40:760] = True
    x, y, w, h = cv2.boundingRect(text.view(np.uint8))
    bar[max(0, y - 10):y + h + 10, max(0, x - 10):x + w + 10] = False
    assert np.array_equal(result.image[bar], framed[bar])


def test_measure_sees_outlines():
    """An outline left where white letters were reads as a trace; a flat fill does not."""
    bar = np.full((40, 300), 45, np.uint8)
    outlined = bar.copy()
    cv2.putText(outlined, "20.05.2015", (5, 30), FONT, 0.8, 0, 4, cv2.LINE_AA)
    drawn = outlined.copy()
    cv2.putText(drawn, "20.05.2015", (5, 30), FONT, 0.8, 255, 2, cv2.LINE_AA)
    text = drawn != bar
    outline_only = np.where(outlined < bar, outlined, bar)  # the letters gone, their outline kept
    assert band_trace_ratio(drawn, outline_only, text) > 0.2
    assert band_trace_ratio(drawn, outline_only, text, stretch="clahe") > 0.2
    assert band_trace_ratio(drawn, bar, text) == 0.0
    with pytest.raises(ValueError):
        band_trace_ratio(drawn, bar, text, stretch="gamma")


def test_real_header_bars_leave_no_trace():
    """SonoNet (Voluson E8): the header text on the grey bars, cleaned as `fetalkit clean` does."""
    folder = need_dataset("sononet_examples")
    paths = sorted(folder.glob("*.tif*"))
    if not paths:
        pytest.skip(f"no SonoNet frames in {folder}")
    ratios = []
    for path in paths:
        gray = read_gray(path)
        sector = detect_sector(gray).mask > 0
        # header text: bright strokes outside the sector in the top rows, on the bars
        tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, np.ones((17, 17), np.uint8))
        threshold = cv2.threshold(tophat[~sector], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
        text = (tophat >= threshold) & ~cv2.dilate(sector.view(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        text[int(0.1 * gray.shape[0]):] = False
        ratios.append(band_trace_ratio(gray, clean_frame(gray)[0].image, text))
    assert max(ratios) <= MAX_TRACE, dict(zip([p.stem for p in paths], np.round(ratios, 4)))
