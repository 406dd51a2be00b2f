import numpy as np
import pytest

from fetalkit.biometry.ellipse import ellipse_perimeter, make_ellipse, ellipse_points
from fetalkit.datasets.hc18 import list_hc18, outline_to_ellipse, outline_to_mask, read_pixel_csv, subject_of
from fetalkit.errors import DataError, InputError


def test_subject_grouping():
    assert subject_of("010_HC") == subject_of("010_2HC") == "010"
    assert subject_of("123_3HC") == "123"
    with pytest.raises(DataError):
        subject_of("abc")


def _outline(shape, e, thickness=2):
    import cv2
    img = np.zeros(shape, np.uint8)
    pts = np.round(ellipse_points(e, 2000)).astype(np.int32)
    cv2.polylines(img, [pts], True, 255, thickness)
    return img


def test_outline_to_mask_fills_inside_even_when_clipped_by_border():
    e = make_ellipse(380, 60, 250, 150, 0)  # crosses the top border: a flood fill would leak
    outline = _outline((540, 800), e)
    mask = outline_to_mask(outline)
    assert mask[60, 380] == 1 and mask[500, 50] == 0
    fitted = outline_to_ellipse(outline)
    assert ellipse_perimeter(fitted.semi_axis_a_px, fitted.semi_axis_b_px) == pytest.approx(
        ellipse_perimeter(250, 150), rel=0.01)


def test_read_pixel_csv_errors(tmp_path):
    good = tmp_path / "px.csv"
    good.write_text("filename,pixel size(mm)\na.png,0.1\nb.png,0.2\n")
    assert read_pixel_csv(good) == {"a.png": (0.1, None), "b.png": (0.2, None)}
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,pixel size(mm)\na.png,zero\n")
    with pytest.raises(InputError, match=r"bad.csv:2"):
        read_pixel_csv(bad)
    with pytest.raises(InputError, match="not found"):
        read_pixel_csv(tmp_path / "missing.csv")


def test_real_outlines_give_the_csv_head_circumference(hc18_dir):
    """The filled mask from the outline reproduces the published HC (checked on 60 images)."""
    items = list_hc18(hc18_dir)
    assert len(items) > 800
    assert len({it.subject_id for it in items}) < len(items)  # repeat scans exist and are grouped
    rng = np.random.default_rng(0)
    for item in [items[i] for i in rng.choice(len(items), 60, replace=False)]:
        s = item.load()
        assert s.image.dtype == np.uint8 and s.image.ndim == 2 and s.mask.shape == s.image.shape
        hc = ellipse_perimeter(s.ellipse.semi_axis_a_px, s.ellipse.semi_axis_b_px) * s.pixel_mm
        assert hc == pytest.approx(s.hc_mm, abs=0.2), item.image_id
        # the filled mask has the area of the ellipse (a filled region, not an outline)
        area_mm2 = s.mask.sum() * s.pixel_mm ** 2
        assert area_mm2 == pytest.approx(np.pi * s.ellipse.semi_axis_a_px * s.ellipse.semi_axis_b_px
                                         * s.pixel_mm ** 2, rel=0.03)
