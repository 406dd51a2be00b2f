"""Mask rendering: margins, minimum size, styles, fail-safe blank; inputs never changed in place."""

import numpy as np
import pytest

from fetalkit.masking.render import blank_frame, grow_boxes, render_masks


def test_grow_boxes_margin_min_size_and_clipping():
    b = np.array([[10, 10, 20, 30]], np.float32)
    assert grow_boxes(b, (100, 100), margin=5).tolist() == [[5, 5, 25, 35]]
    assert grow_boxes(b, (100, 100), margin=0.1).tolist() == [[8, 8, 22, 32]]        # 10 % of the longer side
    assert grow_boxes(b, (100, 100), min_size_px=40).tolist() == [[0, 0, 35, 40]]  # x -5..35 clipped at 0
    assert grow_boxes(np.array([[1.4, 1.6, 8.2, 9.5]]), (50, 50)).tolist() == [[1, 1, 9, 10]]  # outwards
    assert grow_boxes(np.zeros((0, 4)), (10, 10)).shape == (0, 4)


@pytest.mark.parametrize("style", ["fill", "blur", "pixelate"])
def test_styles_hide_the_box_and_leave_the_rest(style):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (80, 100), dtype=np.uint8)
    before = frame.copy()
    out = render_masks(frame, np.array([[20, 10, 60, 50]]), style)
    np.testing.assert_array_equal(frame, before)                 # not in place
    np.testing.assert_array_equal(out[:10], frame[:10])          # outside untouched
    np.testing.assert_array_equal(out[:, 60:], frame[:, 60:])
    roi, orig = out[10:50, 20:60].astype(float), frame[10:50, 20:60].astype(float)
    assert roi.std() < 0.35 * orig.std()                         # the detail is gone
    with pytest.raises(ValueError, match="unknown mask style"):
        render_masks(frame, np.zeros((0, 4)), "smudge")


def test_blank_frame_fills_sector_or_all():
    frame = np.full((20, 30), 200, np.uint8)
    sector = np.zeros((20, 30), np.uint8)
    sector[5:15, 5:25] = 1
    out = blank_frame(frame, sector)
    assert (out[5:15, 5:25] == 0).all() and (out[:5] == 200).all() and (frame == 200).all()
    assert (blank_frame(frame) == 0).all()
